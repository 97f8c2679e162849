"""Trade file readers (every format, bad rows with line numbers) and candle writers."""

from __future__ import annotations

import gzip
import zipfile
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candleflow.core.candles_batch import aggregate_candles
from candleflow.records import Trade, encode
from candleflow.tradefiles import (
    TRADE_FRAME_SCHEMA,
    TradeFileError,
    expand_sources,
    read_candles,
    read_trades,
    write_candles,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bad_lines(result) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in result.errors]


# --- generic CSV -------------------------------------------------------------------------


def test_csv_with_defaults_and_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "trades.csv", "\n".join([
        "ts_ms,price,qty,side,trade_id",   # line 1
        "1000,100.5,0.25,buy,a1",          # 2 ok
        "",                                # 3 blank: skipped silently
        "1001,abc,1,sell,a2",              # 4 price not a number
        "1002,100,-1,sell,a3",             # 5 qty <= 0
        "1003,nan,1,buy,a4",               # 6 NaN price
        "1004,100,inf,buy,a5",             # 7 infinite qty
        "1005,100",                        # 8 missing fields
        "1006,100,1,hold,a7",              # 9 bad side
        "10.5,100,1,buy,a8",               # 10 ts not integer ms
        "1007,101,2,S,a9",                 # 11 ok: an upper-case short side is fine
        "1008,0,1,buy,a10",                # 12 price 0
        "",
    ]))
    result = read_trades(path, exchange="kraken", symbol="BTC/USD")
    assert result.trades.schema == pl.Schema(TRADE_FRAME_SCHEMA)
    assert result.trades.rows() == [
        ("kraken", "BTC/USD", "a1", 100.5, 0.25, "buy", 1000, True),
        ("kraken", "BTC/USD", "a9", 101.0, 2.0, "sell", 1007, False),
    ]
    assert bad_lines(result) == [(4, "invalid_price"), (5, "invalid_qty"), (6, "invalid_price"), (7, "invalid_qty"),
                                 (8, "missing_field"), (9, "invalid_side"), (10, "invalid_timestamp"),
                                 (12, "invalid_price")]
    assert str(result.errors[0]).startswith(f"{path}:4: price")
    assert result.counts["read"] == 10 and result.counts["valid"] == 2 and result.counts["bad"] == 8
    assert result.counts["bad_invalid_price"] == 3 and result.rows == 2


def test_csv_columns_override_defaults_and_are_required_without_them(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "exchange,symbol,ts_ms,price,qty\nbinance,BTC/USDT,5,1,1\n,,6,2,2\n")
    result = read_trades(path, exchange="kraken", symbol="ETH/USD")
    assert result.trades.select("exchange", "symbol", "side").rows() == [
        ("binance", "BTC/USDT", None), ("kraken", "ETH/USD", None)]
    assert result.trades["is_buy"].to_list() == [False, False]  # no side: not counted as buys
    with pytest.raises(TradeFileError, match="--exchange"):
        read_trades(write(tmp_path / "u.csv", "ts_ms,price,qty\n1,1,1\n"), symbol="BTC/USD")
    with pytest.raises(TradeFileError, match="ts_ms"):
        read_trades(write(tmp_path / "v.csv", "time,price,qty\n1,1,1\n"), exchange="kraken", symbol="BTC/USD")
    # a default cannot fill a blank cell when there is no default
    blank = read_trades(write(tmp_path / "w.csv", "exchange,symbol,ts_ms,price,qty\n,BTC/USD,1,1,1\n"))
    assert bad_lines(blank) == [(2, "missing_field")] and blank.rows == 0


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    assert read_trades(write(tmp_path / "a.csv", ""), exchange="k", symbol="A/B").rows == 0
    assert read_trades(write(tmp_path / "b.csv", "ts_ms,price,qty\n"), exchange="k", symbol="A/B").rows == 0


# --- JSON lines -----------------------------------------------------------------------


def test_jsonl_trade_records(tmp_path: Path) -> None:
    good = Trade(exchange="kraken", symbol="BTC/USD", trade_id="7", price=101.5, qty=0.5, side="sell",
                 ts_ms=1_700_000_000_123, recv_ms=1_700_000_000_200)
    lines = [
        encode(good).decode(),                                      # 1
        "{not json",                                                # 2
        encode(good).decode().replace('"qty":0.5', '"qty":-0.5'),   # 3
        "",                                                         # 4 blank
        '{"exchange":"kraken","symbol":"BTC/USD","price":1.0}',     # 5 missing fields
        encode(good).decode().replace('"sell"', '"hold"'),          # 6
    ]
    result = read_trades(write(tmp_path / "t.jsonl", "\n".join(lines) + "\n"))
    assert result.trades.rows() == [("kraken", "BTC/USD", "7", 101.5, 0.5, "sell", 1_700_000_000_123, False)]
    assert bad_lines(result) == [(2, "invalid_json"), (3, "invalid_qty"), (5, "missing_field"),
                                 (6, "invalid_side")]
    assert result.counts["read"] == 5


# --- Parquet ----------------------------------------------------------------------------


def test_parquet_with_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pl.DataFrame({"ts_ms": [1, 2, 3, None], "price": [1.5, -1.0, 2.0, 3.0], "qty": [1.0, 1.0, None, 1.0],
                  "side": ["buy", "sell", "sell", "buy"]}).write_parquet(path)
    result = read_trades(path, exchange="okx", symbol="BTC/USDT")
    assert result.trades.rows() == [("okx", "BTC/USDT", None, 1.5, 1.0, "buy", 1, True)]
    assert bad_lines(result) == [(2, "invalid_price"), (3, "missing_field"), (4, "missing_field")]


def test_parquet_row_groups_mixed_case_venues_and_late_bad_rows(tmp_path: Path) -> None:
    # Several row groups (a many-chunk table), venues spelled in several cases, bad rows in a late group:
    # texts are normalised per distinct value and the bad rows keep their row numbers.
    path = tmp_path / "groups.parquet"
    exchanges = ["Kraken", "BINANCE", "kraken", "binance", "KRAKEN", "Binance", "kraken", "binance"]
    sides = ["buy", "SELL", " b ", "sell", "buy", "hold", "s", "buy"]
    prices = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.0, 8.0]
    pl.DataFrame({"exchange": exchanges, "symbol": ["BTC/USD"] * 8, "ts_ms": list(range(1, 9)), "price": prices,
                  "qty": [1.0] * 8, "side": sides}).write_parquet(path, row_group_size=2)
    result = read_trades(path)
    assert result.trades.select("exchange", "side", "ts_ms").rows() == [
        ("kraken", "buy", 1), ("binance", "sell", 2), ("kraken", "buy", 3), ("binance", "sell", 4),
        ("kraken", "buy", 5), ("binance", "buy", 8)]
    assert bad_lines(result) == [(6, "invalid_side"), (7, "invalid_price")]


def test_parquet_text_columns_are_checked_like_csv_and_float_times_are_rejected(tmp_path: Path) -> None:
    text = tmp_path / "text.parquet"
    pl.DataFrame({"ts_ms": ["5", "6", "x"], "price": ["1.5", "abc", "2"], "qty": ["1", "1", "1"],
                  "side": [" Sell ", "b", "buy"]}).write_parquet(text)
    result = read_trades(text, exchange="okx", symbol="BTC/USDT")
    assert result.trades.rows() == [("okx", "BTC/USDT", None, 1.5, 1.0, "sell", 5, False)]
    assert bad_lines(result) == [(2, "invalid_price"), (3, "invalid_timestamp")]

    floats = tmp_path / "float_times.parquet"
    pl.DataFrame({"ts_ms": [1.0, 2.5], "price": [1.0, 1.0], "qty": [1.0, 1.0]}).write_parquet(floats)
    result = read_trades(floats, exchange="okx", symbol="BTC/USDT")
    assert result.trades.height == 0 and {e.reason for e in result.errors} == {"invalid_timestamp"}


# --- Kraken time and sales ----------------------------------------------------------------


def test_kraken_csv_exact_milliseconds_and_symbol_from_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "XBTUSD.csv", "\n".join([
        "1381095255.4005,122.0,0.1",
        "1688669597.9999999,30000.1,0.00000001",  # a float of seconds would round this to ...598000
        "1381095256,123,0.2",                     # whole seconds
        "1381095257.5",                           # missing price and volume
        "13810952x7,1,1",
        "1381095258.1,1,1,extra,columns",         # extra columns are ignored
    ]) + "\n")
    result = read_trades(path, format="kraken-csv")
    assert result.trades.select("exchange", "symbol", "ts_ms", "price", "qty", "side", "is_buy").rows() == [
        ("kraken", "BTC/USD", 1381095255400, 122.0, 0.1, None, False),
        ("kraken", "BTC/USD", 1688669597999, 30000.1, 1e-08, None, False),
        ("kraken", "BTC/USD", 1381095256000, 123.0, 0.2, None, False),
        ("kraken", "BTC/USD", 1381095258100, 1.0, 1.0, None, False),
    ]
    assert bad_lines(result) == [(4, "missing_field"), (5, "invalid_timestamp")]
    assert read_trades(path, format="kraken-csv", symbol="ETH/EUR").trades["symbol"][0] == "ETH/EUR"


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=4_000_000_000), fraction=st.text("0123456789", max_size=9))
def test_kraken_seconds_to_ms_is_decimal_truncation(tmp_path_factory, seconds: int, fraction: str) -> None:
    text = f"{seconds}.{fraction}" if fraction else str(seconds)
    path = tmp_path_factory.mktemp("k") / "XBTUSD.csv"
    path.write_text(f"{text},1,1\n")
    expected = int((Decimal(text) * 1000).to_integral_value(rounding=ROUND_FLOOR))
    assert read_trades(path, format="kraken-csv").trades["ts_ms"].to_list() == [expected]


# --- Binance data dumps -------------------------------------------------------------------


BINANCE_ROWS = [
    "1,42000.5,0.01,420.005,1704067200000,True,True",      # ms, buyer is maker: taker sold
    "2,42000.6,0.02,840.012,1704067200001999,false,True",  # µs (newer spot dumps)
    "3,42000.7,0.03,1260.021,1704067200002,FALSE,True",
    "4,oops,0.03,1,1704067200003,False,True",
    "5,42000.8,0.04,1680.032,1704067200004,maybe,True",
]


def test_binance_csv_with_and_without_header(tmp_path: Path) -> None:
    with_header = write(tmp_path / "BTCUSDT-trades-2024-01.csv",
                        "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n" + "\n".join(BINANCE_ROWS))
    without = write(tmp_path / "BTCUSDT-trades-2024-01-02.csv", "\n".join(BINANCE_ROWS) + "\n")
    for path, first_line in ((with_header, 2), (without, 1)):
        result = read_trades(path, format="binance-csv")
        assert result.trades.rows() == [
            ("binance", "BTC/USDT", "1", 42000.5, 0.01, "sell", 1704067200000, False),
            ("binance", "BTC/USDT", "2", 42000.6, 0.02, "buy", 1704067200001, True),
            ("binance", "BTC/USDT", "3", 42000.7, 0.03, "buy", 1704067200002, True),
        ]
        assert bad_lines(result) == [(first_line + 3, "invalid_price"), (first_line + 4, "invalid_side")]


def test_binance_futures_layout_zip_and_gzip(tmp_path: Path) -> None:
    # Futures dumps have no is_best_match column; Binance ships files zipped.
    text = "id,price,qty,quote_qty,time,is_buyer_maker\n9,100,1,100,1704067200000,true\n"
    archive = tmp_path / "ETHUSDT-trades-2024-01.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ETHUSDT-trades-2024-01.csv", text)
    result = read_trades(archive, format="binance-csv")
    assert result.trades.select("symbol", "trade_id", "side", "ts_ms").rows() == [
        ("ETH/USDT", "9", "sell", 1704067200000)]
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(b"ts_ms,price,qty\n1,2,3\n"))
    assert read_trades(gz, exchange="kraken", symbol="BTC/USD").trades["price"].to_list() == [2.0]


def test_symbol_is_required_when_the_file_name_does_not_tell(tmp_path: Path) -> None:
    path = write(tmp_path / "trades.csv", "1,1,1,1,1,true\n")
    with pytest.raises(TradeFileError, match="--symbol"):
        read_trades(path, format="binance-csv")
    assert read_trades(path, format="binance-csv", symbol="SOLUSDT").trades["symbol"].to_list() == ["SOL/USDT"]


# --- several files ---------------------------------------------------------------------------


def test_directory_and_glob_read_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "b.csv", "ts_ms,price,qty\n2,2,1\nx,1,1\n")
    write(folder / "a.csv", "ts_ms,price,qty\n1,1,1\n")
    write(folder / "notes.txt", "not a trade file")
    for source in (folder, str(folder / "*.csv"), [folder / "a.csv", folder / "b.csv"]):
        result = read_trades(source, exchange="kraken", symbol="BTC/USD")
        assert result.trades["price"].to_list() == [1.0, 2.0]
        assert [Path(f).name for f in result.files] == ["a.csv", "b.csv"]
        assert [(Path(e.file).name, e.line) for e in result.errors] == [("b.csv", 3)]
    with pytest.raises(TradeFileError, match="no file matches"):
        expand_sources(str(tmp_path / "*.nothing"))
    with pytest.raises(TradeFileError, match="no such file"):
        read_trades(tmp_path / "missing.csv")
    with pytest.raises(TradeFileError, match="unknown format"):
        read_trades(folder, format="xlsx")
    with pytest.raises(TradeFileError, match="extension"):
        read_trades(folder / "notes.txt")


def test_error_list_is_capped_but_counts_are_complete(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "ts_ms,price,qty\n" + "1,x,1\n" * 50 + "2,1,1\n")
    result = read_trades(path, exchange="kraken", symbol="BTC/USD", max_errors=10)
    assert len(result.errors) == 10 and result.bad_rows == 50 and result.rows == 1


# --- writers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_candles_round_trip_bit_for_bit(tmp_path: Path, suffix: str) -> None:
    # Awkward floats: sums with long expansions, tiny and huge magnitudes.
    ts = [0, 1, 2, 180_000, 180_001]
    price = [0.1, 0.2, 1 / 3, 1e-300 * 3, 123456789.123456789]
    qty = [0.7, 0.1, 1e10 / 7, 2.5e-7, 0.30000000000000004]
    candles = aggregate_candles(ts, price, qty, [True, False, True, False, True],
                                exchange="kraken", symbol="BTC/USD", timeframe="1m")
    path = write_candles(candles, tmp_path / f"out{suffix}")
    back = read_candles(path)
    assert back.equals(candles)
    assert back.rows() == candles.rows()


def test_unknown_output_extension(tmp_path: Path) -> None:
    candles = aggregate_candles([1], [1.0], [1.0], [True], exchange="k", symbol="A/B", timeframe="1m")
    with pytest.raises(TradeFileError, match="output format"):
        write_candles(candles, tmp_path / "out.xlsx")
