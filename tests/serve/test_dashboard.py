"""The dashboard's server side on a real broker and a real store: page, markets, history, live stream, pipeline."""

from __future__ import annotations

import fnmatch
import json
import queue
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import Consumer
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from candleflow.broker.local import free_port
from candleflow.config import Settings, load_config
from candleflow.records import encode
from candleflow.serve import create_app
from candleflow.serve.live import DASHBOARD_DIR, chart_library
from tests.fixtures.kafka import commit_offsets, produce
from tests.serve.market_rows import MarketSeries, write_history
from tests.store.rows import store_overrides

REPO = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """The serve app in a real HTTP server (server-sent events need one), on a free port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class EventReader:
    """Reads a server-sent-events stream in the background; `next(kind)` waits for the next event of a kind."""

    def __init__(self, url: str) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.seen: list[tuple[str, Any]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as response:
                kind = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[len("event: "):]
                    elif line.startswith("data: ") and kind:
                        self.events.put((kind, json.loads(line[len("data: "):])))
                        kind = None
        except (httpx.HTTPError, RuntimeError):  # closed by the test
            pass

    def next(self, kind: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {kind!r} event; got {self.seen}"
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if event[0] == kind:
                return event[1]

    def wait_status(self, state: str, timeout: float = 60) -> dict[str, Any]:
        while True:
            status = self.next("status", timeout)
            if status["state"] == state:
                return status

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def live_settings(settings_factory: Callable[..., Settings], topic_factory: Callable[..., str]) -> Settings:
    """Unique topics (partial updates on, so features.partial is read too) and consumer groups."""
    tag = uuid.uuid4().hex[:8]
    return settings_factory(
        candles={"timeframes": ["1m", "5m"], "partial_updates": True, "consumer_group": f"candles-{tag}"},
        features={"consumer_group": f"features-{tag}"},
        sink={"consumer_group": f"sink-{tag}"},
        topics={"features_partial": {"name": topic_factory("features-partial", 2), "partitions": 2}},
    )


# -- page and static files -------------------------------------------------------------------


def test_page_files_and_chart_library_are_served(tmp_path: Path) -> None:
    settings = load_config(None, store_overrides(tmp_path, "sqlite"))
    with TestClient(create_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script src="/vendor/lightweight-charts.js">' in page.text
        assert "window.candleflow" in client.get("/dashboard/app.js").text
        assert client.get("/dashboard/style.css").status_code == 200
        library = client.get("/vendor/lightweight-charts.js")
        if chart_library() is None:  # npm ci has not run: the answer says how to install it
            assert library.status_code == 404 and "npm ci" in library.text
        else:
            assert library.status_code == 200 and "createChart" in library.text
        # The API's own 404s stay JSON (the page is not a catch-all).
        assert client.get("/v1/nothing").json() == {"detail": "Not Found"}


def test_dashboard_files_ship_in_the_package() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["candleflow"]
    files = [p.relative_to(REPO / "src" / "candleflow").as_posix() for p in DASHBOARD_DIR.iterdir()]
    assert {"serve/dashboard/index.html", "serve/dashboard/app.js", "serve/dashboard/style.css"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in files), (files, patterns)
    lock = json.loads((REPO / "package-lock.json").read_text())
    declared = json.loads((REPO / "package.json").read_text())["dependencies"]["lightweight-charts"]
    assert lock["packages"]["node_modules/lightweight-charts"]["version"] == declared  # pinned


# -- markets and history ---------------------------------------------------------------------


def test_markets_and_history_rows_with_indicators(tmp_path: Path) -> None:
    settings = load_config(None, {**store_overrides(tmp_path, "sqlite"), "candles": {"timeframes": ["1m", "5m"]}})
    btc = MarketSeries(settings, "kraken", "BTC/USD", "1m", history=60)
    eth = MarketSeries(settings, "binance", "ETH/USDT", "5m", history=20, price=3000.0, seed=3)
    btc_rows = [btc.close_next() for _ in range(60)]
    write_history(settings, btc_rows)
    write_history(settings, [eth.close_next() for _ in range(20)])

    with TestClient(create_app(settings)) as client:
        listing = client.get("/v1/markets").json()
        assert listing["timeframes"] == ["1m", "5m"]
        markets = {(m["exchange"], m["symbol"]): m["timeframes"] for m in listing["markets"]}
        assert markets[("kraken", "BTC/USD")] == ["1m"]
        assert markets[("binance", "ETH/USDT")] == ["5m"]
        assert markets[("kraken", "SOL/USD")] == []  # configured, no data yet

        history = client.get("/v1/history/kraken/BTC-USD", params={"timeframe": "1m", "limit": 25}).json()
        assert history["rows"] == btc_rows[-25:]  # candle fields and every indicator, nulls in warm-up
        assert history["rows"][-1]["bbands_upper_20_2"] > history["rows"][-1]["bbands_lower_20_2"]
        candles = client.get("/v1/candles/kraken/BTC-USD", params={"limit": 25}).json()["candles"]
        assert [{k: r[k] for k in c} for r, c in zip(history["rows"], candles)] == candles

        missing = client.get("/v1/history/kraken/BTC-USD", params={"timeframe": "5m"})
        assert missing.status_code == 404 and "kraken:BTC/USD at timeframe 5m" in missing.json()["detail"]
        for bad in ("/v1/history/kraken/BTC-USD?timeframe=7m", "/v1/history/Kraken/BTC-USD",
                    "/v1/history/kraken/BTCUSD", "/v1/stream/kraken/BTC-USD?timeframe=7m"):
            assert client.get(bad).status_code == 422, bad


# -- live stream -----------------------------------------------------------------------------


def test_stream_sends_each_market_its_closed_and_open_candles(live_settings: Settings) -> None:
    settings = live_settings
    btc = MarketSeries(settings, "kraken", "BTC/USD", "1m", history=30)
    eth = MarketSeries(settings, "kraken", "ETH/USD", "1m", history=30, price=3000.0, seed=5)
    for _ in range(30):
        btc.close_next(), eth.close_next()
    features, partial = settings.topics.features.name, settings.topics.features_partial.name
    skipped_before = REGISTRY.get_sample_value("candleflow_serve_live_records_total",
                                               {"topic": features, "outcome": "skipped"}) or 0

    with running(settings) as url:
        btc_reader = EventReader(f"{url}/v1/stream/kraken/BTC-USD?timeframe=1m")
        eth_reader = EventReader(f"{url}/v1/stream/kraken/ETH%2FUSD?timeframe=1m")
        try:
            status = btc_reader.wait_status("live")
            assert status["topics"] == [features, partial]
            eth_reader.wait_status("live")

            eth_row, btc_row = eth.close_next(), btc.close_next()
            # One partition, so the hub reads them in this order: by the time BTC's row
            # reaches its reader, ETH's row and the bad record have been handled.
            produce(settings.kafka, features, [(b"kraken:ETH/USD:1m", encode(eth_row)), (b"x", b"not json"),
                                               (b"kraken:BTC/USD:1m", encode(btc_row))], partition=0)
            assert btc_reader.next("candle") == btc_row
            assert eth_reader.next("candle") == eth_row

            preview = btc.preview_next()
            produce(settings.kafka, partial, [(b"kraken:BTC/USD:1m", encode(preview))])
            assert btc_reader.next("partial") == preview
        finally:
            btc_reader.close()
            eth_reader.close()
    assert [kind for kind, _ in btc_reader.seen if kind != "status"] == ["candle", "partial"]
    assert [kind for kind, _ in eth_reader.seen if kind != "status"] == ["candle"]
    assert REGISTRY.get_sample_value("candleflow_serve_live_records_total",
                                     {"topic": features, "outcome": "skipped"}) == skipped_before + 1


def test_without_kafka_the_stream_says_so_and_history_is_still_served(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    settings = load_config(None, {**store_overrides(tmp_path, "sqlite"), "kafka": {"bootstrap_servers": nobody},
                                  "candles": {"timeframes": ["1m"]}})
    series = MarketSeries(settings, "kraken", "BTC/USD", "1m", history=10)
    rows = [series.close_next() for _ in range(10)]
    write_history(settings, rows)
    with running(settings) as url:
        reader = EventReader(f"{url}/v1/stream/kraken/BTC-USD")
        try:
            status = reader.wait_status("unavailable")
            assert nobody in status["detail"] and "unreachable" in status["detail"]
        finally:
            reader.close()
        assert httpx.get(f"{url}/v1/history/kraken/BTC-USD").json()["rows"] == rows
        pipeline = httpx.get(f"{url}/v1/pipeline", timeout=30).json()
        assert pipeline["kafka"]["reachable"] is False and nobody in pipeline["kafka"]["error"]


# -- pipeline --------------------------------------------------------------------------------


def test_pipeline_reports_throughput_lag_last_candle_and_dead_letters(live_settings: Settings) -> None:
    settings = live_settings
    topics = settings.topics
    series = MarketSeries(settings, "kraken", "BTC/USD", "1m", history=5)
    rows = [series.close_next() for _ in range(5)]
    candles = [{k: v for k, v in row.items() if k in ("exchange", "symbol", "timeframe", "start_ms", "end_ms")}
               for row in rows]
    produce(settings.kafka, topics.trades.name, [(b"kraken:BTC/USD", b"{}")] * 10, partition=0)
    produce(settings.kafka, topics.candles.name, [(b"kraken:BTC/USD:1m", encode(c)) for c in candles], partition=1)
    produce(settings.kafka, topics.features.name, [(b"kraken:BTC/USD:1m", encode(r)) for r in rows[:3]])
    produce(settings.kafka, topics.dlq.name, [(None, b"bad")] * 2)
    commit_offsets(settings.kafka, settings.candles.consumer_group, topics.trades.name, {0: 4})
    # A live member of the features group.
    member = Consumer({**settings.kafka.client_config(), "group.id": settings.features.consumer_group})
    member.subscribe([topics.candles.name])
    deadline = time.monotonic() + 60
    while not member.assignment():
        assert time.monotonic() < deadline, "no assignment"
        member.poll(0.2)

    try:
        with TestClient(create_app(settings)) as client:
            first = client.get("/v1/pipeline").json()
            produce(settings.kafka, topics.candles.name, [(b"kraken:BTC/USD:1m", b"{}")] * 3, partition=0)
            time.sleep(1.1)  # past the snapshot cache, so the second one measures rates
            second = client.get("/v1/pipeline").json()
    finally:
        member.close()

    assert first["kafka"]["reachable"] is True and first["missing_topics"] == []
    services = {s["name"]: s for s in first["services"]}
    assert services["candles"]["lag"] == 6 and services["candles"]["members"] == 0
    assert services["features"]["members"] == 1 and services["features"]["lag"] is None  # nothing committed
    assert services["ingest"]["produced_total"] == 10
    assert services["candles"]["last_record"]["end_ms"] == rows[-1]["end_ms"]
    assert services["features"]["last_record"]["end_ms"] == rows[2]["end_ms"]
    assert first["last_candle"]["end_ms"] == rows[-1]["end_ms"]
    assert first["last_candle"]["symbol"] == "BTC/USD" and first["last_candle"]["age_s"] >= 0
    assert first["dead_letters"]["total"] == 2
    assert {t["name"]: t["end_offsets"] for t in first["topics"]}[topics.features.name] == 3
    assert all(s["produced_per_s"] is None for s in first["services"])  # no earlier snapshot

    candles_now = {s["name"]: s for s in second["services"]}["candles"]
    assert candles_now["produced_per_s"] > 0 and candles_now["produced_total"] == 8
    assert {s["name"]: s for s in second["services"]}["ingest"]["produced_per_s"] == 0
    # The newest candle is still the last valid one (the 3 new records are not candles).
    assert second["last_candle"]["end_ms"] == rows[-1]["end_ms"]
