"""The one computation: trades -> candles -> features -> offline dataset + newest row online."""

from __future__ import annotations

import random

import polars as pl

from candleflow.backfill import pipeline
from candleflow.store.base import MarketKey, online_writer
from tests.backfill.parity import assert_rows_equal, stored_rows, streamed_rows

HOUR_MS = 3_600_000
SINCE_MS = 1_700_002_800_000  # a whole hour: every window from here on is complete


def synthetic_trades(n: int, markets: list[tuple[str, str]], since_ms: int = SINCE_MS, seed: int = 5) -> pl.DataFrame:
    """Random walks with quiet stretches (gap fills) and same-millisecond bursts, in arrival order."""
    rng = random.Random(seed)
    rows = []
    for exchange, symbol in markets:
        ts, price = since_ms, 100.0 + rng.random() * 50
        for i in range(n):
            ts += 0 if rng.random() < 0.1 else int(rng.expovariate(1 / 4_000)) + (600_000 if rng.random() < 0.01 else 1)
            price *= 1 + rng.gauss(0, 0.001)
            rows.append({"exchange": exchange, "symbol": symbol, "trade_id": str(i), "price": round(price, 4),
                         "qty": round(rng.uniform(0.001, 3), 6), "side": rng.choice(["buy", "sell"]), "ts_ms": ts})
    return pl.DataFrame(rows)


def test_backfill_equals_streaming_and_keeps_the_newest_row_online(backfill_config) -> None:
    settings, _ = backfill_config()
    trades = synthetic_trades(3_000, [("kraken", "BTC/USD"), ("binance", "ETH/USDT")])
    # Replayed pages repeat trades: the backfill keeps the first copy of each id.
    with_repeats = pl.concat([trades, trades.slice(100, 50)])
    result = pipeline.run(with_repeats, ["1m", "5m"], settings, since_ms=SINCE_MS)
    assert result.duplicates == 50
    assert result.trades == trades.height
    assert result.keys == 4

    stored = stored_rows(settings)
    assert_rows_equal(stored, streamed_rows(trades, ["1m", "5m"], settings), settings)
    assert any(row["gap_fill"] for row in stored.values())

    writer = online_writer(settings)
    writer.setup()
    try:
        keys = [MarketKey(e, s, tf) for e, s in (("kraken", "BTC/USD"), ("binance", "ETH/USDT")) for tf in ("1m", "5m")]
        online = writer.read(keys)
        for key, row in zip(keys, online):
            newest = max((r for i, r in stored.items() if i[:3] == tuple(key)), key=lambda r: r["start_ms"])
            assert row is not None and row["start_ms"] == newest["start_ms"] and row["close"] == newest["close"]
            assert row["rsi_14"] == newest["rsi_14"]
        # A later backfill of older history must not replace the fresher online rows.
        older = pipeline.run(trades.filter(pl.col("ts_ms") < SINCE_MS + 3 * HOUR_MS), ["1m"], settings,
                             since_ms=SINCE_MS)
        assert older.online_stale == 2 and older.online_written == 0
        assert writer.read(keys[:1])[0]["start_ms"] == online[0]["start_ms"]
    finally:
        writer.close()


def test_only_complete_windows_are_written() -> None:
    trades = synthetic_trades(2_000, [("kraken", "BTC/USD")])
    since = SINCE_MS + 2 * 60_000  # inside a 5m window
    until = int(trades["ts_ms"][1500]) // 60_000 * 60_000 + 30_000  # inside a 1m window
    from candleflow.config import Settings

    rows, result = pipeline.compute(trades, ["1m", "5m"], Settings(), since_ms=since, until_ms=until)
    assert rows["start_ms"].min() >= since
    assert rows["end_ms"].max() <= until
    assert result.partial_windows >= 2  # the 5m window holding `since`, the 1m and 5m windows holding `until`
    five = rows.filter(pl.col("timeframe") == "5m")
    assert five["start_ms"].min() == SINCE_MS + 5 * 60_000
    assert result.out_of_range == trades.filter((pl.col("ts_ms") < since) | (pl.col("ts_ms") >= until)).height


def test_a_market_that_stopped_early_keeps_only_windows_before_its_newest_trade() -> None:
    from candleflow.config import Settings

    trades = synthetic_trades(1_000, [("kraken", "BTC/USD"), ("kraken", "ETH/USD")])
    cut = int(trades.filter(pl.col("symbol") == "ETH/USD")["ts_ms"][600])
    eth = trades.filter((pl.col("symbol") == "BTC/USD") | (pl.col("ts_ms") <= cut))
    rows, _ = pipeline.compute(eth, ["1m"], Settings(), since_ms=SINCE_MS,
                               market_until={("kraken", "ETH/USD"): cut})
    assert rows.filter(pl.col("symbol") == "ETH/USD")["end_ms"].max() <= cut
    assert rows.filter(pl.col("symbol") == "BTC/USD")["end_ms"].max() > cut
