"""A REST backfill killed mid-run (a real subprocess, SIGKILL) resumes with no duplicate and no hole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import polars as pl
from typer.testing import CliRunner

from candleflow.backfill.cache import PageCache
from candleflow.cli import app
from tests.backfill.fakes import FakeBinance, FakeKraken, FakeTrade, Script, make_history
from tests.backfill.parity import assert_rows_equal, stored_rows, streamed_rows

SINCE_MS = 1_700_002_800_000  # a whole hour


def trades_frame(history: list[FakeTrade], exchange: str, symbol: str) -> pl.DataFrame:
    return pl.DataFrame([{"exchange": exchange, "symbol": symbol, "trade_id": str(t.trade_id),
                          "price": float(t.price), "qty": float(t.qty), "side": "buy" if t.buy else "sell",
                          "ts_ms": t.ts_ms} for t in history if t.ts_ms >= SINCE_MS])


def pages_committed(cache: PageCache) -> int:
    try:
        return msgspec.json.decode(cache.checkpoint_path.read_bytes())["pages"]
    except (OSError, msgspec.DecodeError):
        return 0


def test_killed_backfill_resumes_without_duplicate_or_hole(backfill_config) -> None:
    settings, config = backfill_config()
    history = make_history(6_000, SINCE_MS)
    cache = PageCache(settings.data_dir, "kraken", "BTC/USD", SINCE_MS)
    with FakeKraken({"BTC/USD": history}, page_size=200, delay_s=0.05) as fake:
        command = [sys.executable, "-m", "candleflow", "--config", str(config), "backfill", "--exchange", "kraken",
                   "--symbols", "BTC/USD", "--since", str(SINCE_MS), "--rest-url", fake.url, "--min-interval", "0",
                   "--no-online"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        kills = []
        for kill_after_pages in (5, 14):  # two kills, at different depths
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while pages_committed(cache) < kill_after_pages and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert process.poll() is None, "the backfill finished before it could be killed"
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            kills.append((pages_committed(cache), len(fake.server.rest_requests)))
        assert kills[0][0] < kills[1][0] < 30
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        # The last run started where the last checkpoint pointed.
        checkpoint_cursor = list(cache.pages())[kills[1][0] - 1].next_cursor
        assert fake.server.rest_requests[kills[1][1]][1]["since"] == checkpoint_cursor

    ids = [i for page in cache.pages() for i in page.trade_id]
    assert ids == [str(t.trade_id) for t in history]  # every trade once, in order: no duplicate, no hole
    assert "6,000 trades" in finished.stderr
    assert_rows_equal(stored_rows(settings), streamed_rows(trades_frame(history, "kraken", "BTC/USD"),
                                                           ["1m", "5m"], settings), settings)


def test_binance_rest_backfill_through_the_command(backfill_config) -> None:
    settings, config = backfill_config()
    eth = make_history(2_500, SINCE_MS - 60_000, seed=3, first_id=500)
    sol = make_history(1_800, SINCE_MS, seed=4, first_id=9_000)
    script = Script(rate_limited={1, 2}, bad_rows={eth[1000].trade_id})
    with FakeBinance({"ETH/USDT": eth, "SOL/USDT": sol}, script=script) as fake:
        result = CliRunner().invoke(app, [
            "--config", str(config), "backfill", "-e", "binance", "-s", "ETH/USDT,SOL/USDT",
            "--since", "2023-11-14T23:00:00Z", "--rest-url", fake.url, "--min-interval", "0", "--no-online"])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0, output
    assert "rate limited 2 time(s)" in output and "bad row: binance ETH/USDT page 0 (cursor None): invalid_price" in output
    valid_eth = [t for t in eth if t.trade_id != eth[1000].trade_id]
    expected = pl.concat([trades_frame(valid_eth, "binance", "ETH/USDT"), trades_frame(sol, "binance", "SOL/USDT")])
    assert_rows_equal(stored_rows(settings), streamed_rows(expected, ["1m", "5m"], settings), settings)


def test_unknown_exchange_or_symbol_is_usage_error(backfill_config) -> None:
    _, config = backfill_config()
    for args, needle in ((["-e", "nasdaq", "-s", "BTC/USD"], "unknown exchange"),
                         (["-e", "bybit", "-s", "BTC/USDT"], "only the most recent trades"),
                         (["-e", "kraken", "-s", "BTCUSD"], "--symbols")):
        result = CliRunner().invoke(app, ["--config", str(config), "backfill", *args, "--since", "2024-01-01"])
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == 2, output
        assert needle in output
