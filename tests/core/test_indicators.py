"""Parity: the streaming engine equals TA-Lib's batch functions on the full history, candle by candle.

The batch functions run once over the whole history; row k is compared with
the streaming output at candle k. That is valid because a TA-Lib output at k
depends only on inputs 0..k (checked below for every default function).
Restarts are simulated by writing the engine state as JSON text, dropping the
engine and continuing with one rebuilt from that text.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candleflow.config import FeaturesConfig, IndicatorSpec
from candleflow.core.features import (
    FeatureEngine,
    candle_columns,
    check_specs,
    compute_batch,
    indicators_for,
    run_talib,
)
from candleflow.core.indicators import Replay, make_incremental

DEFAULT = indicators_for(FeaturesConfig(), "1m")
REL = ABS = 1e-9


def make_candles(n: int, *, price: float = 100.0, vol: float = 0.01, seed: int = 0, gap_fraction: float = 0.1,
                 flat_fraction: float = 0.0, zero_volume: bool = False) -> list[dict[str, float]]:
    """A random walk of OHLCV candles; some are gap fills (open=high=low=close, volume 0)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, vol, n)
    steps[rng.uniform(size=n) < flat_fraction] = 0.0
    close = price * np.exp(np.cumsum(steps))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, vol / 2, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, vol / 2, n))
    volume = np.zeros(n) if zero_volume else rng.exponential(5.0, n)
    gap = rng.uniform(size=n) < gap_fraction
    open_, high, low = (np.where(gap, close, a) for a in (open_, high, low))
    volume = np.where(gap, 0.0, volume)
    buy = volume * rng.uniform(0, 1, n)
    vwap = np.where(volume > 0, (low + high + close) / 3, close)
    return [
        {"open": float(open_[i]), "high": float(high[i]), "low": float(low[i]), "close": float(close[i]),
         "volume": float(volume[i]), "quote_volume": float(volume[i] * vwap[i]), "vwap": float(vwap[i]),
         "buy_volume": float(buy[i]), "trades": 0.0 if gap[i] else 3.0}
        for i in range(n)
    ]


def stream(indicators, candles, restarts=()) -> list[dict[str, float | None]]:
    """Run the streaming engine; at each index in `restarts` rebuild it from its JSON state."""
    engine = FeatureEngine(indicators)
    rows = []
    for k, candle in enumerate(candles):
        if k in restarts:
            text = json.dumps(engine.to_state(), allow_nan=False)
            engine = FeatureEngine.from_state(indicators, engine.candle_features, json.loads(text))
        rows.append(engine.update(candle))
    return rows


def assert_parity(indicators, candles, restarts=()) -> None:
    batch = compute_batch(indicators, candle_columns(candles))
    rows = stream(indicators, candles, restarts)
    assert set(batch) == set(rows[0])
    for name, expected in batch.items():
        got = np.array([np.nan if row[name] is None else row[name] for row in rows])
        warmup_b, warmup_s = np.isnan(expected), np.isnan(got)
        mismatch = np.flatnonzero(warmup_b != warmup_s)
        assert mismatch.size == 0, f"{name}: null pattern differs from TA-Lib at candles {mismatch[:5]}"
        ok = ~warmup_b
        err = np.abs(got[ok] - expected[ok])
        tol = np.maximum(REL * np.abs(expected[ok]), ABS)
        bad = np.flatnonzero(err > tol)
        if bad.size:
            k = np.flatnonzero(ok)[bad[0]]
            pytest.fail(f"{name} at candle {k}: streaming {got[k]!r} != batch {expected[k]!r}")


def test_every_default_output_is_covered_by_an_exact_incremental_implementation():
    for indicator in DEFAULT:
        assert make_incremental(indicator.function, indicator.params) is not None, indicator.entry


@pytest.mark.parametrize("case", [
    dict(seed=1),
    dict(seed=2, price=60_000.0, vol=1e-4),  # BTC-like: tiny deviations next to a large price
    dict(seed=3, price=1e-4, vol=1e-3),  # a micro-priced token
    dict(seed=4, vol=0.0),  # flat prices
    dict(seed=5, zero_volume=True),  # no volume at all
    dict(seed=6, gap_fraction=0.9),  # mostly gap-fill candles
    dict(seed=7, flat_fraction=0.5, vol=1e-5, price=30_000.0),
], ids=["walk", "btc-like", "micro-price", "flat", "zero-volume", "gap-fills", "sticky"])
def test_default_set_matches_talib_batch_with_restarts(case):
    candles = make_candles(1_200, **case)
    assert_parity(DEFAULT, candles, restarts={1, 17, 33, 600, 1_199})


def test_long_history_matches_with_a_restart_in_the_middle():
    candles = make_candles(6_000, seed=11, price=2_500.0, vol=5e-4, gap_fraction=0.3)
    assert_parity(DEFAULT, candles, restarts={3_001})


def test_price_regime_change_leaves_no_residue():
    # A huge price followed by tiny ones: a running total would keep rounding from the huge values.
    candles = make_candles(300, seed=12, price=1e9, vol=1e-3)[:100] + make_candles(300, seed=13, price=0.05)
    assert_parity(DEFAULT, candles, restarts={150})


def test_history_shorter_than_every_warm_up_is_all_null_then_continues():
    candles = make_candles(40, seed=14)
    assert_parity(DEFAULT, candles[:5])
    assert_parity(DEFAULT, candles, restarts={2, 20})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 260),
    price=st.sampled_from([1e-3, 1.0, 100.0, 50_000.0]),
    vol=st.sampled_from([0.0, 1e-5, 1e-3, 0.03]),
    gap_fraction=st.floats(0.0, 1.0),
    restart=st.integers(0, 260),
)
def test_property_random_walks(seed, n, price, vol, gap_fraction, restart):
    candles = make_candles(n, seed=seed, price=price, vol=vol, gap_fraction=gap_fraction)
    assert_parity(DEFAULT, candles, restarts={restart})


@pytest.mark.parametrize("spec", [
    {"function": "MACD", "params": {"fastperiod": 5, "slowperiod": 3, "signalperiod": 2}},  # swapped periods
    {"function": "STOCH", "params": {"fastk_period": 5, "slowk_period": 1, "slowd_period": 4}},
    {"function": "BBANDS", "params": {"timeperiod": 7, "nbdevup": 1.5, "nbdevdn": 2.5}},
    {"function": "STDDEV", "params": {"timeperiod": 9, "nbdev": 3}},
    {"function": "ADOSC", "params": {"fastperiod": 10, "slowperiod": 3}},
    {"function": "ATR", "params": {"timeperiod": 1}},
    {"function": "SMA", "params": {"timeperiod": 1}},
    {"function": "VAR", "params": {"timeperiod": 4}},
    {"function": "KAMA", "params": {"timeperiod": 2}},
    {"function": "AROON", "params": {"timeperiod": 2}},
])
def test_other_parameters_of_native_functions(spec):
    indicators = check_specs([IndicatorSpec.model_validate(spec)], candle_features=[])
    assert make_incremental(indicators[0].function, indicators[0].params) is not None
    for case in (dict(seed=21), dict(seed=22, vol=0.0), dict(seed=23, gap_fraction=0.7)):
        assert_parity(indicators, make_candles(400, **case), restarts={9, 200})


@pytest.mark.parametrize("spec", [
    {"function": "SAR"},
    {"function": "T3", "params": {"timeperiod": 5}},
    {"function": "BBANDS", "params": {"timeperiod": 10, "matype": "EMA"}, "name": "bb_ema"},
    {"function": "CDLDOJI"},
    {"function": "HT_TRENDLINE"},
    {"function": "SMA", "params": {"timeperiod": 5}, "inputs": {"price": "volume"}, "name": "volume_sma"},
])
def test_any_other_talib_function_falls_back_to_exact_replay(spec):
    indicators = check_specs([IndicatorSpec.model_validate(spec)], candle_features=[])
    engine = FeatureEngine(indicators, [])
    native = make_incremental(indicators[0].function, indicators[0].params)
    if spec.get("inputs") is None and native is None:
        assert isinstance(engine._steps[0][0], Replay)
    assert_parity(indicators, make_candles(150, seed=31), restarts={75})


@pytest.mark.parametrize(("price", "vol"), [(1e9, 1e-9), (1e9, 1e-6), (100.0, 1e-3), (0.05, 1e-2), (1e5, 1e-12)])
def test_window_variance_is_accurate_whatever_the_magnitude(price, vol):
    """VAR (and so STDDEV and BBANDS) within a few units in the last place of the exact variance of
    the window, computed in rationals: prices far from zero with a tiny spread are where a
    textbook formula loses every digit (TA-Lib itself is ~1e-12 off there, hence REL = 1e-9)."""
    from fractions import Fraction

    from candleflow.core.indicators import VAR

    values = price * np.exp(np.cumsum(np.random.default_rng(3).normal(0.0, vol, 200)))
    var = VAR(20)
    for k, value in enumerate(values.tolist()):
        got = var.step(value)
        if k < 19:
            assert math.isnan(got)
            continue
        window = [Fraction(v) for v in values[k - 19:k + 1].tolist()]
        mean = sum(window) / 20
        exact = float(sum((v - mean) ** 2 for v in window) / 20)
        assert abs(got - exact) <= 8 * math.ulp(exact), (k, got, exact)


@pytest.mark.parametrize("indicator", DEFAULT, ids=lambda ind: ind.function)
def test_talib_output_at_k_depends_only_on_inputs_up_to_k(indicator):
    # The premise of comparing against one batch run: the prefix run gives the same rows.
    columns = candle_columns(make_candles(400, seed=41, gap_fraction=0.2))
    full = run_talib(indicator, columns)
    for end in (1, 13, 34, 35, 120, 399):
        prefix = run_talib(indicator, {name: values[:end] for name, values in columns.items()})
        for whole, part in zip(full, prefix):
            np.testing.assert_allclose(part, whole[:end], rtol=REL, atol=ABS, equal_nan=True)


def test_preview_does_not_change_the_state():
    candles = make_candles(200, seed=51)
    engine = FeatureEngine(DEFAULT)
    for candle in candles[:150]:
        engine.update(candle)
    before = json.dumps(engine.to_state())
    preview = engine.preview(candles[150])
    assert json.dumps(engine.to_state()) == before
    assert preview == engine.update(candles[150])
    # Several previews between closes (an open candle growing), each from the state as it is then,
    # in one spare engine reused for every call (as the service does, one per layout).
    spare = FeatureEngine(DEFAULT)
    for candle in candles[151:]:
        for partial in (candles[0], candles[1], candle):
            preview = engine.preview(partial, spare)
        assert preview == engine.update(candle)


def test_state_is_plain_json_and_rejects_another_configuration():
    engine = FeatureEngine(DEFAULT)
    for candle in make_candles(60, seed=52):
        engine.update(candle)
    state = json.loads(json.dumps(engine.to_state(), allow_nan=False))
    other = check_specs([IndicatorSpec(function="RSI", params={"timeperiod": 3})])
    with pytest.raises(ValueError, match="another indicator configuration"):
        FeatureEngine.from_state(other, engine.candle_features, state)


def test_candle_features_are_computed_from_the_candle():
    engine = FeatureEngine([], ["log_return_1", "range_pct", "body_pct", "vwap_dist", "buy_ratio"])
    base = {"quote_volume": 0.0, "trades": 1.0}
    first = engine.update({**base, "open": 100.0, "high": 110.0, "low": 90.0, "close": 105.0, "volume": 4.0,
                           "vwap": 100.0, "buy_volume": 1.0})
    assert first == {"log_return_1": None, "range_pct": 20.0 / 105.0, "body_pct": 0.05,
                     "vwap_dist": 105.0 / 100.0 - 1.0, "buy_ratio": 0.25}
    second = engine.update({**base, "open": 105.0, "high": 105.0, "low": 105.0, "close": 105.0, "volume": 0.0,
                            "vwap": 105.0, "buy_volume": 0.0})
    assert second["log_return_1"] == 0.0 and second["buy_ratio"] is None
    assert math.isclose(second["range_pct"], 0.0)


def test_raw_state_encodes_to_the_same_state_as_to_state():
    import msgspec

    engine = FeatureEngine(DEFAULT)
    for candle in make_candles(70, seed=61):
        engine.update(candle)
    raw = msgspec.json.encode(engine.raw_state())
    assert msgspec.json.decode(raw) == json.loads(json.dumps(engine.to_state(), allow_nan=False))
    restored = FeatureEngine.from_state(DEFAULT, engine.candle_features, msgspec.json.decode(raw))
    nxt = make_candles(71, seed=61)[70]
    assert restored.update(nxt) == engine.update(nxt)
