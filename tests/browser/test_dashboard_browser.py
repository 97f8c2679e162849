"""The dashboard in headless Chromium against `candleflow serve` (a real process), a real broker and store.

The chart must hold exactly the API's candles, add a candle when one closes
(a Features row on the `features` topic), show the still-open candle (a
provisional row on `features.partial`), and fill the pipeline panel. A
screenshot is saved to $CANDLEFLOW_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from candleflow.broker.local import free_port
from candleflow.config import Settings
from candleflow.records import encode
from tests.browser.cdp import Browser, find_browser
from tests.fixtures.kafka import produce
from tests.fixtures.processes import stop_process
from tests.serve.market_rows import MarketSeries, write_history

REPO = Path(__file__).resolve().parents[2]
HISTORY = 150

pytestmark = pytest.mark.skipif(
    find_browser() is None,
    reason="Chromium is not installed and could not be installed here; `make test` installs Debian's "
           "`chromium` package with scripts/install-system-deps.sh (needs apt-get and root)")


def artifacts_dir() -> Path:
    return Path(os.environ.get("CANDLEFLOW_TEST_ARTIFACTS") or REPO / "test-artifacts")


def chart_point(row: dict[str, Any]) -> dict[str, Any]:
    """A candle as the chart holds it: time in UTC seconds, then OHLC."""
    return {"time": row["start_ms"] // 1000, "open": row["open"], "high": row["high"], "low": row["low"],
            "close": row["close"]}


@contextmanager
def serve_process(config: Path, port: int, log: Path) -> Iterator[str]:
    with open(log, "wb") as output:
        proc = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config), "serve",
                                 "--port", str(port)], stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # Feast's first import is slow on a busy machine
        while True:
            assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"serve did not answer: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(find_browser() or "chromium", tmp_path / "chromium-profile")
    try:
        yield chromium
    finally:
        chromium.stop()


def test_dashboard_shows_the_api_candles_and_updates_live(settings_factory: Callable[..., Settings],
                                                          topic_factory: Callable[..., str], tmp_path: Path,
                                                          browser: Browser) -> None:
    artifacts = artifacts_dir()  # read before settings_factory clears CANDLEFLOW_* variables
    settings = settings_factory(
        candles={"timeframes": ["1m", "5m"], "partial_updates": True},
        topics={"features_partial": {"name": topic_factory("features-partial", 2), "partitions": 2}},
    )
    btc = MarketSeries(settings, "kraken", "BTC/USD", "1m", history=HISTORY + 1)
    write_history(settings, [btc.close_next() for _ in range(HISTORY)])
    eth = MarketSeries(settings, "kraken", "ETH/USD", "1m", history=40, price=3200.0, seed=11)
    write_history(settings, [eth.close_next() for _ in range(40)])
    # A little traffic, so the pipeline panel has topics to measure.
    produce(settings.kafka, settings.topics.dlq.name, [(None, b"unparseable")])

    with serve_process(tmp_path / "candleflow.yaml", free_port(), tmp_path / "serve.log") as url:
        page = browser.page()
        page.navigate(f"{url}/?exchange=kraken&symbol=BTC-USD&timeframe=1m")
        page.wait_for("window.candleflow && window.candleflow.ready && window.candleflow.candles.length > 0")

        api = httpx.get(f"{url}/v1/candles/kraken/BTC-USD", params={"timeframe": "1m", "limit": 500}).json()
        assert len(api["candles"]) == HISTORY
        assert page.evaluate("window.candleflow.candles") == [chart_point(c) for c in api["candles"]]
        assert page.evaluate("window.candleflow.volumes") == [
            {"time": c["start_ms"] // 1000, "value": c["volume"]} for c in api["candles"]]
        assert page.evaluate("document.getElementById('symbol').value") == "BTC/USD"
        # The overlays and panels draw the rows' indicator values.
        history = httpx.get(f"{url}/v1/history/kraken/BTC-USD", params={"timeframe": "1m"}).json()["rows"]
        for line, column in (("bbUpper", "bbands_upper_20_2"), ("bbLower", "bbands_lower_20_2"), ("rsi", "rsi_14"),
                             ("macd", "macd_12_26_9"), ("signal", "macd_signal_12_26_9"), ("hist", "macd_hist_12_26_9")):
            expected = [{"time": r["start_ms"] // 1000, "value": r[column]} for r in history if r[column] is not None]
            assert expected and page.evaluate(f"window.candleflow.line('{line}')") == expected, line

        # A candle closes: the features service's row arrives on the topic.
        page.wait_for("window.candleflow.state.stream.state === 'live'")
        closed = btc.close_next()
        produce(settings.kafka, settings.topics.features.name, [(b"kraken:BTC/USD:1m", encode(closed))])
        page.wait_for(f"window.candleflow.candles.length === {HISTORY + 1}")
        assert page.evaluate("window.candleflow.candles.at(-1)") == chart_point(closed)

        # The still-open candle, when partial updates are on.
        still_open = btc.preview_next()
        produce(settings.kafka, settings.topics.features_partial.name, [(b"kraken:BTC/USD:1m", encode(still_open))])
        page.wait_for(f"window.candleflow.candles.length === {HISTORY + 2}")
        assert page.evaluate("window.candleflow.candles.at(-1)") == chart_point(still_open)

        # The pipeline panel, read from Kafka: one row per service, the closed candle's row
        # on the features topic, the dead letter counted.
        page.wait_for("document.querySelectorAll('#services tr').length === 4")
        page.wait_for("document.getElementById('last-candle').textContent.startsWith('Last candle: kraken:BTC/USD 1m')")
        page.wait_for("document.getElementById('dead-letters').textContent.includes(': 1')")
        assert "is not installed" not in page.evaluate("document.getElementById('notice').textContent")
        assert page.errors == []

        shot = page.screenshot(artifacts / "dashboard.png")
        assert shot.stat().st_size > 10_000
        page.close()
