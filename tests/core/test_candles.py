"""The incremental candle core against a straightforward reference, plus the contract's corner cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candleflow.config import timeframe_ms
from candleflow.core.candles import CandleAggregator
from candleflow.records import Candle, Trade

T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000  # an hour boundary


def trade(ts: int, price: float, qty: float = 1.0, side: str = "buy", n: int = 0) -> Trade:
    return Trade(exchange="kraken", symbol="BTC/USD", trade_id=str(n), price=price, qty=qty, side=side,
                 ts_ms=ts, recv_ms=ts)


def reference(accepted: list[Trade], timeframes: list[str], grace_ms: int, watermark: int,
              exchange: str = "kraken", symbol: str = "BTC/USD") -> list[Candle]:
    """Candles of the closed windows, computed the obvious way: group, stable-sort by ts, sum in order."""
    out = []
    for tf in timeframes:
        ms = timeframe_ms(tf)
        groups: dict[int, list[Trade]] = {}
        for t in accepted:
            groups.setdefault(t.ts_ms - t.ts_ms % ms, []).append(t)
        if not groups:
            continue
        last_close = None
        start = min(groups)
        while start + ms + grace_ms <= watermark:
            trades = sorted(groups.get(start, []), key=lambda t: t.ts_ms)
            if trades:
                volume = quote = buy = 0.0
                for t in trades:
                    volume += t.qty
                    quote += t.price * t.qty
                    if t.side == "buy":
                        buy += t.qty
                candle = Candle(exchange=exchange, symbol=symbol, timeframe=tf, start_ms=start, end_ms=start + ms,
                                open=trades[0].price, high=max(t.price for t in trades),
                                low=min(t.price for t in trades), close=trades[-1].price, volume=volume,
                                quote_volume=quote, vwap=quote / volume, trades=len(trades), buy_volume=buy,
                                gap_fill=False)
            else:
                candle = Candle(exchange=exchange, symbol=symbol, timeframe=tf, start_ms=start, end_ms=start + ms,
                                open=last_close, high=last_close, low=last_close, close=last_close, volume=0.0,
                                quote_volume=0.0, vwap=last_close, trades=0, buy_volume=0.0, gap_fill=True)
            out.append(candle)
            last_close = candle.close
            start += ms
    return out


def by_key(candles: list[Candle]) -> list[Candle]:
    return sorted(candles, key=lambda c: (c.timeframe, c.start_ms))


prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
qtys = st.floats(min_value=1e-8, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def event_logs(draw, in_order_windows: bool):
    """A log of trades and watermark advances. Trades move forward in time with some jitter;
    with `in_order_windows`, trade times never go back (the service's normal case)."""
    events = []
    clock = T0 + draw(st.integers(0, 120_000))
    watermark = None
    for i in range(draw(st.integers(1, 60))):
        if draw(st.integers(0, 5)) == 0:
            watermark = max(watermark or 0, clock + draw(st.integers(-5_000, 200_000)))
            events.append(("watermark", watermark))
            continue
        clock += draw(st.integers(0, 40_000))
        ts = clock if in_order_windows else max(0, clock - draw(st.integers(0, 30_000)))
        events.append(("trade", trade(ts, draw(prices), draw(qtys), draw(st.sampled_from(["buy", "sell"])), i)))
    events.append(("watermark", max(watermark or 0, clock) + 10 * 60_000))
    return events


def run(events, timeframes, grace_ms, roundtrip: bool):
    agg = CandleAggregator("kraken", "BTC/USD", timeframes, grace_ms)
    emitted, accepted, late = [], [], []
    watermark = None
    for kind, item in events:
        if roundtrip:  # what the state store does between any two messages
            agg = CandleAggregator.from_state(json.loads(json.dumps(agg.to_state())), timeframes)
        if kind == "watermark":
            emitted += agg.close_until(item)
            watermark = item
            continue
        result = agg.add(item)
        for tf in timeframes:
            ms = timeframe_ms(tf)
            expect_late = watermark is not None and item.ts_ms - item.ts_ms % ms + ms + grace_ms <= watermark
            assert (tf in result.late) == expect_late
            assert (tf in result.merged) != expect_late
        if result.merged:
            accepted.append((item, set(result.merged)))
        late.append(result.late)
    return emitted, accepted, watermark


@settings(max_examples=60, deadline=None)
@given(event_logs(in_order_windows=True), st.sampled_from([["1m"], ["1m", "5m"], ["30s", "1m", "15m", "1h"]]),
       st.integers(0, 5_000), st.booleans())
def test_incremental_equals_reference_float_for_float(events, timeframes, grace_ms, roundtrip):
    emitted, accepted, watermark = run(events, timeframes, grace_ms, roundtrip)
    expected = []
    for tf in timeframes:
        expected += reference([t for t, tfs in accepted if tf in tfs], [tf], grace_ms, watermark)
    assert by_key(emitted) == by_key(expected)  # Candle equality compares floats exactly
    # Per timeframe, candles come out in start order, consecutive, each exactly once.
    for tf in timeframes:
        starts = [c.start_ms for c in emitted if c.timeframe == tf]
        assert starts == sorted(set(starts))
        assert all(b - a == timeframe_ms(tf) for a, b in zip(starts, starts[1:]))


@settings(max_examples=40, deadline=None)
@given(event_logs(in_order_windows=False), st.sampled_from([["1m"], ["1m", "5m", "1h"]]), st.integers(0, 5_000))
def test_out_of_order_trades_inside_grace_are_merged(events, timeframes, grace_ms):
    """Open/close follow event time, not arrival; sums equal the reference up to summation order."""
    emitted, accepted, watermark = run(events, timeframes, grace_ms, roundtrip=False)
    expected = []
    for tf in timeframes:
        expected += reference([t for t, tfs in accepted if tf in tfs], [tf], grace_ms, watermark)
    assert len(emitted) == len(expected)
    for got, want in zip(by_key(emitted), by_key(expected)):
        assert (got.timeframe, got.start_ms, got.open, got.high, got.low, got.close, got.trades, got.gap_fill) == (
            want.timeframe, want.start_ms, want.open, want.high, want.low, want.close, want.trades, want.gap_fill)
        for field in ("volume", "quote_volume", "buy_volume", "vwap"):
            assert math.isclose(getattr(got, field), getattr(want, field), rel_tol=1e-12, abs_tol=1e-12)


def test_gap_fills_repeat_the_previous_close_and_none_before_the_first_trade():
    agg = CandleAggregator("kraken", "BTC/USD", ["1m"], grace_ms=2_000, watermark_ms=T0)
    agg.add(trade(T0 + 61_000, 100.0, 2.0, "buy"))
    agg.add(trade(T0 + 62_000, 101.0, 1.0, "sell"))
    assert agg.close_until(T0 + 120_000 + 1_999) == []  # end + grace not reached yet
    candles = agg.close_until(T0 + 4 * 60_000 + 2_000)
    assert [(c.start_ms - T0, c.gap_fill, c.trades) for c in candles] == [
        (60_000, False, 2), (120_000, True, 0), (180_000, True, 0)]
    real, gap = candles[0], candles[1]
    assert (real.open, real.high, real.low, real.close, real.volume, real.buy_volume) == (100.0, 101.0, 100.0, 101.0,
                                                                                          3.0, 2.0)
    assert real.vwap == (100.0 * 2.0 + 101.0 * 1.0) / 3.0
    assert (gap.open, gap.high, gap.low, gap.close, gap.vwap, gap.volume, gap.quote_volume) == (
        101.0, 101.0, 101.0, 101.0, 101.0, 0.0, 0.0)


def test_late_trade_is_not_merged_and_ties_keep_arrival_order():
    agg = CandleAggregator("kraken", "BTC/USD", ["1m", "1h"], grace_ms=1_000)
    agg.add(trade(T0 + 5_000, 10.0))
    agg.add(trade(T0 + 5_000, 11.0))  # same ms: arrives later, so it is the close
    agg.add(trade(T0 + 1_000, 9.0))  # earlier in event time: the new open
    [candle] = agg.close_until(T0 + 61_000)
    assert (candle.open, candle.close, candle.trades) == (9.0, 11.0, 3)
    result = agg.add(trade(T0 + 30_000, 50.0))  # its minute is closed, its hour is not
    assert result.late == ("1m",) and result.merged == ("1h",)
    assert agg.close_until(T0 + 3_601_000)[-1].high == 50.0


def test_open_candles_snapshot_leaves_the_state_alone():
    agg = CandleAggregator("kraken", "BTC/USD", ["1m", "5m"], grace_ms=0)
    agg.add(trade(T0 + 1_000, 10.0))
    before = json.dumps(agg.to_state())
    snapshot = agg.open_candles()
    assert [(c.timeframe, c.close) for c in snapshot] == [("1m", 10.0), ("5m", 10.0)]
    assert json.dumps(agg.to_state()) == before


def test_state_of_a_removed_timeframe_is_dropped_and_a_new_one_starts_fresh():
    agg = CandleAggregator("kraken", "BTC/USD", ["1m"], grace_ms=0)
    agg.add(trade(T0 + 1_000, 10.0))
    again = CandleAggregator.from_state(agg.to_state(), ["1m", "5m"])
    assert [c.timeframe for c in again.close_until(T0 + 300_000)] == ["1m"] * 5
    with pytest.raises(ValueError):
        CandleAggregator.from_state({"v": 99})


def test_core_candles_imports_no_io_libraries():
    code = ("import sys, candleflow.core.candles; bad = {'confluent_kafka', 'quixstreams', 'httpx',"
            " 'websockets', 'feast'} & set(sys.modules); print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    # The module itself names no I/O (its config import pulls in pydantic, which loads socket).
    import ast
    import candleflow.core.candles as module

    tree = ast.parse(open(module.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "candleflow"}
    assert "open(" not in open(module.__file__).read()
