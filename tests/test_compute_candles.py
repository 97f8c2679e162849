"""`candleflow compute candles`: files in, Candle records out, bad rows reported, exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from candleflow.cli import app
from candleflow.core.candles_batch import aggregate_frame
from candleflow.records import decode_candle
from candleflow.tradefiles import read_candles, read_trades

TRADES_CSV = "\n".join([
    "exchange,symbol,ts_ms,price,qty,side,trade_id",
    "kraken,BTC/USD,1700000000000,100.0,0.5,buy,1",
    "kraken,BTC/USD,1700000030000,101.0,0.25,sell,2",
    "kraken,ETH/USD,1700000010000,2000.0,1.0,sell,3",
    "kraken,BTC/USD,1700000200000,99.0,1.0,buy,4",   # two idle minutes before it (1m gap fills)
    "kraken,BTC/USD,1700000201000,not-a-price,1.0,buy,5",
    "kraken,BTC/USD,1700000202000,98.0,0,buy,6",
    "",
])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No candleflow.yaml of the project's own working directory, no stray configuration.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("CANDLEFLOW_"):
            monkeypatch.delenv(name)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(app, ["compute", "candles", *args])


def test_csv_to_jsonl_with_gap_fills_and_bad_rows(workdir: Path) -> None:
    (workdir / "trades.csv").write_text(TRADES_CSV)
    result = run("--input", "trades.csv", "--timeframes", "1m,5m", "--output", "candles.jsonl")
    assert result.exit_code == 0, result.output
    assert "trades.csv:6: price is not a finite number > 0" in result.stderr
    assert "trades.csv:7: qty is not a finite number > 0" in result.stderr
    assert "4 trade(s), 2 bad row(s) skipped (invalid_price: 1, invalid_qty: 1)" in result.stdout

    candles = [decode_candle(line) for line in (workdir / "candles.jsonl").read_text().splitlines()]
    assert [(c.key, c.start_ms, c.trades, c.gap_fill) for c in candles] == [
        ("kraken:BTC/USD:1m", 1699999980000, 2, False),
        ("kraken:BTC/USD:1m", 1700000040000, 0, True),
        ("kraken:BTC/USD:1m", 1700000100000, 0, True),
        ("kraken:BTC/USD:1m", 1700000160000, 1, False),
        ("kraken:BTC/USD:5m", 1699999800000, 2, False),
        ("kraken:BTC/USD:5m", 1700000100000, 1, False),
        ("kraken:ETH/USD:1m", 1699999980000, 1, False),
        ("kraken:ETH/USD:5m", 1699999800000, 1, False),
    ]
    gap = candles[1]
    assert gap.open == gap.close == gap.vwap == 101.0 and gap.volume == 0.0
    # the same numbers as the core on the same trades
    expected = aggregate_frame(read_trades(workdir / "trades.csv").trades, ["1m", "5m"])
    assert read_candles(workdir / "candles.jsonl").equals(expected)


def test_kraken_csv_to_parquet_with_symbol_and_default_timeframes(workdir: Path) -> None:
    (workdir / "dump.csv").write_text("1700000000.5,100,1\n1700000061.25,101,2\n")
    result = run("-i", "dump.csv", "-f", "kraken-csv", "--symbol", "XBT/USD", "-o", "out/candles.parquet")
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(workdir / "out/candles.parquet")
    # the configured default timeframes: 1m, 5m, 15m, 1h
    assert sorted(set(frame["timeframe"])) == ["15m", "1h", "1m", "5m"]
    assert set(frame["symbol"]) == {"BTC/USD"} and set(frame["exchange"]) == {"kraken"}
    assert frame.filter(pl.col("timeframe") == "1m")["start_ms"].to_list() == [1699999980000, 1700000040000]


def test_only_bad_rows_exit_1(workdir: Path) -> None:
    (workdir / "bad.csv").write_text("ts_ms,price,qty\n1,x,1\n2,1,-1\n")
    result = run("-i", "bad.csv", "-o", "out.csv", "--exchange", "kraken", "--symbol", "BTC/USD")
    assert result.exit_code == 1
    assert "no valid trade" in result.stderr and "bad.csv:2" in result.stderr
    assert not (workdir / "out.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--timeframes", "1x"], "invalid timeframe"),
    (["--timeframes", "1m,1m"], "duplicate timeframe"),
    (["--format", "xlsx"], "unknown format"),
    (["--output-format", "xlsx"], "unknown output format"),
])
def test_bad_arguments_exit_2(workdir: Path, args: list[str], message: str) -> None:
    (workdir / "t.csv").write_text(TRADES_CSV)
    result = run("-i", "t.csv", "-o", "out.jsonl", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_input_or_defaults_exit_2(workdir: Path) -> None:
    assert run("-i", "nothere.csv", "-o", "o.jsonl").exit_code == 2
    (workdir / "t.csv").write_text("ts_ms,price,qty\n1,1,1\n")
    result = run("-i", "t.csv", "-o", "o.jsonl", "--symbol", "BTC/USD")
    assert result.exit_code == 2 and "--exchange" in result.stderr
    (workdir / "t.dat").write_text("")
    assert run("-i", "t.dat", "-o", "o.jsonl").exit_code == 2  # format not given, extension unknown


def test_real_process(workdir: Path) -> None:
    (workdir / "trades.csv").write_text(TRADES_CSV)
    proc = subprocess.run(
        [sys.executable, "-m", "candleflow", "compute", "candles", "-i", "trades.csv", "-t", "1m", "-o", "c.csv"],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 candle(s) (2 gap fill(s)) for 2 key(s)" in proc.stdout
    assert read_candles(workdir / "c.csv").height == 5
