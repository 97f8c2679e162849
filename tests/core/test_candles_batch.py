"""The vectorised candle core against a plain-Python reference of the computation contract.

Every comparison is exact float equality: the batch path must give the same
floats as a left-to-right loop, and as the incremental core.
"""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candleflow.config import timeframe_ms
from candleflow.core.candles_batch import CANDLE_SCHEMA, aggregate_candles, aggregate_frame, empty_candles
from candleflow.records import CANDLE_FIELDS, Trade, candle_from_dict, candle_key

EXCHANGE, SYMBOL = "kraken", "BTC/USD"


def reference_candles(trades, timeframe, exchange=EXCHANGE, symbol=SYMBOL, fill_gaps=True):
    """The contract, one trade at a time: stable sort by ts_ms, sequential sums from 0.0."""
    tf = timeframe_ms(timeframe)
    ordered = sorted(trades, key=lambda t: t[0])  # list.sort is stable: ties keep input order
    windows: dict[int, list] = {}
    for ts, price, qty, is_buy in ordered:
        windows.setdefault(ts - ts % tf, []).append((price, qty, is_buy))
    out = []
    previous_close = None
    starts = sorted(windows)
    all_starts = range(starts[0], starts[-1] + tf, tf) if (fill_gaps and starts) else starts
    for start in all_starts:
        rows = windows.get(start)
        if rows is None:
            out.append(dict(exchange=exchange, symbol=symbol, timeframe=timeframe, start_ms=start, end_ms=start + tf,
                            open=previous_close, high=previous_close, low=previous_close, close=previous_close,
                            volume=0.0, quote_volume=0.0, vwap=previous_close, trades=0, buy_volume=0.0,
                            gap_fill=True))
            continue
        volume = quote = buy = 0.0
        for price, qty, is_buy in rows:
            volume += qty
            quote += price * qty
            if is_buy:
                buy += qty
        prices = [r[0] for r in rows]
        out.append(dict(exchange=exchange, symbol=symbol, timeframe=timeframe, start_ms=start, end_ms=start + tf,
                        open=prices[0], high=max(prices), low=min(prices), close=prices[-1], volume=volume,
                        quote_volume=quote, vwap=quote / volume, trades=len(rows), buy_volume=buy, gap_fill=False))
        previous_close = prices[-1]
    return out


def batch(trades, timeframe, **kwargs):
    ts, price, qty, is_buy = (list(column) for column in zip(*trades)) if trades else ([], [], [], [])
    return aggregate_candles(ts, price, qty, is_buy, exchange=EXCHANGE, symbol=SYMBOL, timeframe=timeframe, **kwargs)


def same_floats(actual: list[dict], expected: list[dict]) -> bool:
    """Equal, and every float bit for bit (== alone would accept 0.0 for -0.0)."""
    if actual != expected:
        return False
    return all(math.copysign(1.0, a[k]) == math.copysign(1.0, e[k])
               for a, e in zip(actual, expected) for k in a if isinstance(a[k], float))


positive = st.floats(min_value=1e-8, max_value=1e8, allow_nan=False, allow_infinity=False, allow_subnormal=False)
timeframes = st.sampled_from(["1s", "15s", "1m", "5m"])


@st.composite
def trade_sets(draw, max_size=120):
    """Unsorted trades with many ts ties (a few distinct times) and gaps (a wide time range)."""
    base = draw(st.integers(min_value=0, max_value=2_000_000_000_000))
    span = draw(st.sampled_from([0, 999, 60_000, 900_000]))
    distinct = draw(st.lists(st.integers(min_value=0, max_value=span), min_size=1, max_size=12))
    n = draw(st.integers(min_value=1, max_value=max_size))
    return [(base + draw(st.sampled_from(distinct)), draw(positive), draw(positive), draw(st.booleans()))
            for _ in range(n)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trades=trade_sets(), timeframe=timeframes, fill_gaps=st.booleans())
def test_matches_the_reference_float_for_float(trades, timeframe, fill_gaps):
    assert same_floats(batch(trades, timeframe, fill_gaps=fill_gaps).to_dicts(),
                       reference_candles(trades, timeframe, fill_gaps=fill_gaps))


@settings(max_examples=50, deadline=None)
@given(trade=st.tuples(st.integers(min_value=0, max_value=4_000_000_000_000), positive, positive, st.booleans()),
       timeframe=timeframes)
def test_single_trade_is_one_candle(trade, timeframe):
    [candle] = batch([trade], timeframe).to_dicts()
    ts, price, qty, is_buy = trade
    tf = timeframe_ms(timeframe)
    assert candle["start_ms"] == ts - ts % tf and candle["end_ms"] == candle["start_ms"] + tf
    assert candle["open"] == candle["high"] == candle["low"] == candle["close"] == price
    assert candle["volume"] == qty and candle["quote_volume"] == price * qty
    assert candle["buy_volume"] == (qty if is_buy else 0.0)
    assert candle["trades"] == 1 and candle["gap_fill"] is False


def test_ties_keep_input_order_and_gaps_take_the_previous_close():
    trades = [  # (ts_ms, price, qty, is_buy), deliberately not in time order
        (185_000, 12.0, 1.0, False),
        (60_000, 10.0, 1.0, True),
        (60_000, 11.0, 2.0, False),  # same ts as the trade before: it comes after it
        (59_999, 9.0, 0.5, True),
    ]
    rows = batch(trades, "1m").to_dicts()
    assert [(r["start_ms"], r["trades"], r["gap_fill"]) for r in rows] == [
        (0, 1, False), (60_000, 2, False), (120_000, 0, True), (180_000, 1, False)]
    assert (rows[1]["open"], rows[1]["close"], rows[1]["high"], rows[1]["low"]) == (10.0, 11.0, 11.0, 10.0)
    assert rows[1]["buy_volume"] == 1.0 and rows[1]["volume"] == 3.0 and rows[1]["vwap"] == 32.0 / 3.0
    gap = rows[2]
    assert gap["open"] == gap["high"] == gap["low"] == gap["close"] == gap["vwap"] == 11.0
    assert gap["volume"] == gap["quote_volume"] == gap["buy_volume"] == 0.0
    no_gaps = batch(trades, "1m", fill_gaps=False)
    assert no_gaps["start_ms"].to_list() == [0, 60_000, 180_000]


def test_sums_are_sequential_not_pairwise():
    # Quantities whose pairwise sum (numpy's np.sum and np.add.reduceat) differs from a left-to-right one.
    rng = np.random.default_rng(7)
    qty = rng.random(1000) * 10.0 ** rng.uniform(-6, 6, 1000)
    sequential = 0.0
    for q in qty.tolist():
        sequential += q
    assert np.add.reduceat(qty, [0])[0] != sequential  # why candles_batch does not use reduceat for sums
    ts = np.full(len(qty), 1_000)
    frame = aggregate_candles(ts, np.ones(len(qty)), qty, np.ones(len(qty), bool),
                              exchange=EXCHANGE, symbol=SYMBOL, timeframe="1m")
    assert frame["volume"][0] == sequential and frame["buy_volume"][0] == sequential


def test_huge_time_span_falls_back_to_the_stable_argsort():
    # (span + 1) * n overflows int64, so the packed-key sort cannot be used.
    trades = [(2**62, 3.0, 1.0, True), (5, 1.0, 1.0, False), (2**62, 4.0, 1.0, False), (5, 2.0, 1.0, True)]
    rows = batch(trades, "1d", fill_gaps=False).to_dicts()
    assert rows == reference_candles(trades, "1d", fill_gaps=False)
    assert [(r["open"], r["close"]) for r in rows] == [(1.0, 2.0), (3.0, 4.0)]


def test_schema_and_records():
    frame = batch([(1, 2.0, 3.0, True), (200_000, 4.0, 1.0, False)], "1m")
    assert tuple(frame.columns) == CANDLE_FIELDS
    assert frame.schema == pl.Schema(CANDLE_SCHEMA)
    for row in frame.to_dicts():
        candle_from_dict(row)  # every row is a valid Candle record
    assert batch([], "1m").equals(empty_candles())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="differ in length"):
        aggregate_candles([1, 2], [1.0], [1.0, 1.0], [True, False], exchange=EXCHANGE, symbol=SYMBOL, timeframe="1m")
    with pytest.raises(ValueError, match="invalid timeframe"):
        batch([(1, 1.0, 1.0, True)], "1x")
    with pytest.raises(ValueError, match="lacks column"):
        aggregate_frame(pl.DataFrame({"ts_ms": [1]}), ["1m"])
    with pytest.raises(ValueError, match="duplicate timeframe"):
        aggregate_frame(pl.DataFrame(schema={"exchange": pl.String, "symbol": pl.String, "ts_ms": pl.Int64,
                                             "price": pl.Float64, "qty": pl.Float64, "is_buy": pl.Boolean}),
                        ["1m", "1m"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_aggregate_frame_over_many_keys(data):
    markets = [("kraken", "BTC/USD"), ("kraken", "BTC/USDT"), ("binance", "BTC/USDT"), ("kraken", "ETH/USD")]
    rows = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=60))):
        exchange, symbol = data.draw(st.sampled_from(markets))
        ts = data.draw(st.integers(min_value=1_700_000_000_000, max_value=1_700_000_600_000))
        side = data.draw(st.sampled_from(["buy", "sell"]))
        rows.append((exchange, symbol, ts, data.draw(positive), data.draw(positive), side))
    trades = pl.DataFrame(rows, schema=["exchange", "symbol", "ts_ms", "price", "qty", "side"], orient="row")
    tfs = data.draw(st.lists(st.sampled_from(["1m", "5m", "15m", "1h"]), min_size=1, max_size=4, unique=True))

    result = aggregate_frame(trades, tfs).to_dicts()

    expected = []
    for exchange, symbol in markets:
        mine = [(r[2], r[3], r[4], r[5] == "buy") for r in rows if (r[0], r[1]) == (exchange, symbol)]
        for tf in tfs:
            if mine:
                expected.append((candle_key(exchange, symbol, tf),
                                 reference_candles(mine, tf, exchange=exchange, symbol=symbol)))
    expected.sort(key=lambda item: item[0])
    assert same_floats(result, [candle for _, candles in expected for candle in candles])


def test_aggregate_frame_groups_runs_and_interleaved_markets_alike(monkeypatch):
    # Rows of a market come in runs (one file per market) or interleaved; both ways give the same candles.
    from candleflow.core import candles_batch

    rng = random.Random(5)
    markets = [("kraken", "BTC/USD"), ("binance", "BTC/USDT"), ("kraken", "ETH/USD")]
    rows = [(*rng.choice(markets), 1_700_000_000_000 + rng.randrange(0, 3_600_000), rng.uniform(1, 100),
             rng.uniform(0.001, 5), rng.choice([True, False])) for _ in range(3000)]
    trades = pl.DataFrame(rows, schema=["exchange", "symbol", "ts_ms", "price", "qty", "is_buy"], orient="row")
    by_runs = aggregate_frame(trades, ["1m", "15m"])
    monkeypatch.setattr(candles_batch, "_MAX_RUNS", 0)
    by_codes = aggregate_frame(trades, ["1m", "15m"])
    assert by_runs.equals(by_codes)
    monkeypatch.setattr(candles_batch, "_MAX_SCANNED_MARKETS", 0)  # many markets: grouped by one stable sort
    by_sorting = aggregate_frame(trades, ["1m", "15m"])
    assert by_runs.equals(by_sorting)
    shared = candles_batch.market_rows(trades)
    assert sorted(market for market, _ in shared) == sorted(markets)
    assert aggregate_frame(trades, ["1m", "15m"], markets=shared).equals(by_runs)
    expected = []
    for exchange, symbol in sorted(markets, key=lambda m: candle_key(*m, "15m")):
        mine = [(r[2], r[3], r[4], r[5]) for r in rows if (r[0], r[1]) == (exchange, symbol)]
        expected += reference_candles(mine, "15m", exchange=exchange, symbol=symbol)
    assert same_floats(by_runs.filter(pl.col("timeframe") == "15m").to_dicts(), expected)


def test_aggregate_frame_prefers_is_buy_and_handles_no_trades():
    frame = pl.DataFrame({"exchange": ["kraken"] * 2, "symbol": ["BTC/USD"] * 2, "ts_ms": [1, 2],
                          "price": [1.0, 2.0], "qty": [1.0, 3.0], "side": ["sell", "sell"], "is_buy": [True, None]})
    [candle] = aggregate_frame(frame, ["1m"]).to_dicts()
    assert candle["buy_volume"] == 1.0
    assert aggregate_frame(frame.clear(), ["1m"]).equals(empty_candles())


# --- parity with the incremental core -------------------------------------------------

try:
    from candleflow.core.candles import CandleAggregator
except ImportError:  # pragma: no cover - the incremental core is built separately
    CandleAggregator = None


def incremental_candles(trades, timeframe):
    """Feed trades in order to one aggregator per timeframe; close exactly up to the last traded window."""
    aggregator = CandleAggregator(EXCHANGE, SYMBOL, [timeframe], grace_ms=0)
    for i, (ts, price, qty, is_buy) in enumerate(trades):
        aggregator.add(Trade(exchange=EXCHANGE, symbol=SYMBOL, trade_id=str(i), price=price, qty=qty,
                             side="buy" if is_buy else "sell", ts_ms=ts, recv_ms=ts))
    tf = timeframe_ms(timeframe)
    last = max(ts for ts, *_ in trades)
    return aggregator.close_until(last - last % tf + tf)


@pytest.mark.skipif(CandleAggregator is None, reason="candleflow.core.candles (incremental core) is not available")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trades=trade_sets(), timeframe=timeframes)
def test_same_candles_as_the_incremental_core(trades, timeframe):
    # The streaming path sees trades in arrival order; the batch path sorts them by
    # time (stable). Arrival in time order, with ties in any order, is where the
    # two must agree bit for bit.
    in_time_order = sorted(trades, key=lambda t: t[0])
    expected = incremental_candles(in_time_order, timeframe)
    # The batch path gets the same trades out of time order: blocks of equal ts_ms
    # shuffled, each block still in arrival order (the tie-break both paths share).
    blocks: dict[int, list] = {}
    for trade in in_time_order:
        blocks.setdefault(trade[0], []).append(trade)
    shuffled = list(blocks.values())
    random.Random(len(trades)).shuffle(shuffled)
    actual = [candle_from_dict(row) for row in batch([t for block in shuffled for t in block], timeframe).to_dicts()]
    assert actual == expected
