"""`candleflow backfill --from-file`: directories and globs of trade files, bad rows reported and skipped."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from candleflow.backfill.handover import load_state
from candleflow.cli import app
from candleflow.records import Trade, encode
from tests.backfill.parity import assert_rows_equal, stored_rows, streamed_rows
from tests.backfill.test_pipeline import SINCE_MS, synthetic_trades


def run_cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "backfill", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_directory_of_csv_and_jsonl_with_bad_rows(backfill_config, tmp_path: Path) -> None:
    settings, config = backfill_config()
    trades = synthetic_trades(1_500, [("kraken", "BTC/USD")])
    first, second = trades.slice(0, 800), trades.slice(800)
    folder = tmp_path / "trades"
    folder.mkdir()
    lines = first.select("ts_ms", "price", "qty", "side", "trade_id").write_csv().splitlines()
    lines.insert(3, "1700002800123,abc,1.0,buy,x1")  # line 4: price is not a number
    lines.insert(7, "1700002800456,101.5,-2,sell,x2")  # line 8: negative quantity
    lines.insert(9, ",101.5,1,sell,x3")  # line 10: no timestamp
    (folder / "a.csv").write_text("\n".join(lines) + "\n")
    records = [encode(Trade(recv_ms=0, **row)).decode() for row in second.to_dicts()]
    records.insert(5, '{"exchange":"kraken","symbol":"BTC/USD","trade_id":"y","price":0,"qty":1,'
                      '"side":"buy","ts_ms":1700002900000,"recv_ms":0}')
    (folder / "b.jsonl").write_text("\n".join(records) + "\n")

    code, output = run_cli(config, "--from-file", str(folder), "--exchange", "kraken", "--symbol", "BTC/USD",
                           "--no-online")
    assert code == 0, output
    assert "a.csv:4:" in output and "a.csv:8:" in output and "a.csv:10:" in output and "b.jsonl:6:" in output
    assert "4 bad row(s) skipped" in output
    assert_rows_equal(stored_rows(settings), streamed_rows(trades, ["1m", "5m"], settings), settings)


def test_glob_of_kraken_time_and_sales_files(backfill_config, tmp_path: Path) -> None:
    settings, config = backfill_config()
    trades = synthetic_trades(1_200, [("kraken", "ETH/USD")], seed=11)
    for index, part in enumerate((trades.slice(0, 500), trades.slice(500))):
        text = "".join(f"{ts // 1000}.{ts % 1000:03d}{index}," f"{p!r},{q!r}\n"
                       for ts, p, q in part.select("ts_ms", "price", "qty").iter_rows())
        (tmp_path / f"ETHUSD_{index}.csv").write_text(text)
    code, output = run_cli(config, "--from-file", str(tmp_path / "ETHUSD_*.csv"), "--format", "kraken-csv",
                           "--symbol", "ETH/USD", "--timeframes", "5m", "--no-online", "--handover-state")
    assert code == 0, output
    assert "from 2 file(s)" in output
    assert "1,200 without trade id kept (not de-duplicated)" in output
    state = load_state(settings.data_dir, "kraken", "ETH/USD", "5m")
    stored = stored_rows(settings)
    assert state is not None and state.count == len(stored)
    assert state.last_start_ms == max(start for *_, start in stored)
    # Kraken's files carry no side: every trade counts as a sell (buy_volume 0), no trade ids.
    no_side = trades.with_columns(pl.lit(None, pl.String).alias("side"), pl.lit(None, pl.String).alias("trade_id"))
    assert_rows_equal(stored_rows(settings), streamed_rows(no_side, ["5m"], settings), settings)


def test_nothing_valid_fails_and_bad_usage_is_status_2(backfill_config, tmp_path: Path) -> None:
    settings, config = backfill_config()
    bad = tmp_path / "bad.csv"
    bad.write_text("ts_ms,price,qty\n1700000000000,nan,1\nabc,1,1\n")
    code, output = run_cli(config, "--from-file", str(bad), "--exchange", "kraken", "--symbol", "BTC/USD")
    assert code == 1
    assert "nothing valid" in output and "bad.csv:2:" in output and "bad.csv:3:" in output
    assert stored_rows(settings) == {}

    code, output = run_cli(config, "--from-file", str(bad), "--timeframes", "7m")
    assert code == 2 and "candles.timeframes" in output
    code, output = run_cli(config, "--from-file", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in output
    code, output = run_cli(config, "--exchange", "kraken", "--symbols", "BTC/USD", "--since", "yesterday-ish")
    assert code == 2 and "--since" in output
