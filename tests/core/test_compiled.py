"""The compiled features engine (setup.py: mypyc) gives exactly what its pure-Python sources give.

`make install` compiles ``candleflow.core.indicators`` and ``candleflow.core.steps``
in place; Python then imports the extensions instead of the ``.py`` files. The
same random candle histories run through the compiled build (this process) and
through the pure-Python sources (a copy of the package without the extensions,
in a subprocess) must give the same rows and the same saved states, bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import msgspec
import pytest

from candleflow.config import FeaturesConfig, IndicatorSpec
from candleflow.core import indicators, steps
from candleflow.core.features import FeatureEngine, check_specs, indicators_for
from candleflow.exchanges import fastpath
from candleflow.records import Candle
from tests.fixtures.pure_python import pure_python_results

COMPILED_MODULES = (indicators, steps)
needs_compiled = pytest.mark.skipif(
    not steps.COMPILED, reason="the compiled features engine is not built here (pure-Python install): "
                               "nothing to compare; `make install` builds it")

EXTRA_SPECS = [  # non-default parameters, an input other than close, and a TA-Lib replay (SAR)
    {"function": "MACD", "params": {"fastperiod": 5, "slowperiod": 3, "signalperiod": 2}},
    {"function": "BBANDS", "params": {"timeperiod": 7, "nbdevup": 1.5, "nbdevdn": 2.5}},
    {"function": "STOCH", "params": {"fastk_period": 5, "slowk_period": 1, "slowd_period": 4}},
    {"function": "ATR", "params": {"timeperiod": 1}},
    {"function": "VAR", "params": {"timeperiod": 4}},
    {"function": "WMA", "params": {"timeperiod": 3}},
    {"function": "MOM", "params": {"timeperiod": 3}, "inputs": {"price": "trades"}, "name": "trades_mom"},
    {"function": "SAR"},
]


def random_candles(seed: int, n: int) -> list[dict[str, float]]:
    """A random walk; some candles are gap fills (flat, no volume), some stretches flat."""
    rng = random.Random(seed)
    close, out = rng.choice([1e-4, 1.0, 100.0, 60_000.0]), []
    for _ in range(n):
        open_ = close
        if rng.random() > 0.2:  # else a flat stretch
            close = open_ * math.exp(rng.gauss(0.0, 0.01))
        if rng.random() < 0.1:  # a gap fill
            out.append({"open": close, "high": close, "low": close, "close": close, "volume": 0.0,
                        "quote_volume": 0.0, "vwap": close, "buy_volume": 0.0, "trades": 0.0})
            continue
        high = max(open_, close) * (1 + rng.uniform(0, 0.005))
        low = min(open_, close) * (1 - rng.uniform(0, 0.005))
        volume = rng.expovariate(0.2)
        out.append({"open": open_, "high": high, "low": low, "close": close, "volume": volume,
                    "quote_volume": volume * close, "vwap": (high + low + close) / 3,
                    "buy_volume": volume * rng.random(), "trades": float(rng.randint(1, 9))})
    return out


def _exact(value: object) -> object:
    return value.hex() if isinstance(value, float) else value


def history(indicator_set: str, seed: int, n: int) -> str:
    """Rows, previews and saved states (JSON and the MessagePack of raw_state) of one random history,
    floats written exactly; the engine restarts from its saved state at random candles."""
    if indicator_set == "default":
        chosen = indicators_for(FeaturesConfig(), "1m")
    else:
        chosen = check_specs([IndicatorSpec.model_validate(spec) for spec in EXTRA_SPECS])
    features = FeaturesConfig().candle_features
    rng = random.Random(seed)
    engine = FeatureEngine(chosen, features)
    out: list[object] = []
    for k, values in enumerate(random_candles(seed, n)):
        candle: object = values
        if k % 2:  # Candle records too, whose `trades` is an int
            candle = Candle(exchange="kraken", symbol="BTC/USD", timeframe="1m", start_ms=k * 60_000,
                            end_ms=(k + 1) * 60_000, trades=int(values["trades"]), gap_fill=False,
                            **{name: value for name, value in values.items() if name != "trades"})
        if rng.random() < 0.02:
            packed = msgspec.msgpack.encode(engine.raw_state())
            saved = engine.to_state()
            out += [packed.hex(), json.dumps(saved, sort_keys=True)]
            state = msgspec.msgpack.decode(packed) if rng.random() < 0.5 else json.loads(json.dumps(saved))
            engine = FeatureEngine.from_state(chosen, features, state)
        if rng.random() < 0.02:
            out.append({name: _exact(value) for name, value in engine.preview(candle).items()})
        out.append({name: _exact(value) for name, value in engine.update(candle).items()})
    out.append(json.dumps(engine.to_state(), sort_keys=True))
    return json.dumps(out, sort_keys=True)


CASES = [("default", 1, 3_000), ("default", 2, 1_500), ("extra", 3, 400)]


@needs_compiled
def test_the_compiled_engine_matches_the_pure_python_sources_bit_for_bit(tmp_path):
    assert all(not module.__file__.endswith(".py") for module in COMPILED_MODULES)
    compiled = [history(*case) for case in CASES]
    pure = pure_python_results(tmp_path, __name__, "history", [m.__name__ for m in COMPILED_MODULES])
    for case, mine, theirs in zip(CASES, compiled, pure, strict=True):
        if mine != theirs:
            entries = zip(json.loads(mine), json.loads(theirs), strict=True)
            k, (got, expected) = next((k, pair) for k, pair in enumerate(entries) if pair[0] != pair[1])
            pytest.fail(f"{case}: entry {k} differs: compiled {str(got)[:400]} != pure {str(expected)[:400]}")


@needs_compiled
def test_the_compiled_build_is_not_older_than_its_sources():
    # The compiled code is in the modules' shared library (setup.py: group_name); the module
    # files themselves are small loaders that a rebuild leaves untouched when they do not change.
    library = importlib.util.find_spec("candleflow_core__mypyc")
    assert library is not None and library.origin is not None
    built = Path(library.origin).stat().st_mtime
    for module in (*COMPILED_MODULES, fastpath):  # fastpath: the ingest hot path, in the same library
        source = Path(module.__file__).parent / (module.__name__.rsplit(".", 1)[1] + ".py")
        assert built >= source.stat().st_mtime, (
            f"the compiled build is older than {source.name}, whose stale build shadows it: run `make install`")


def test_each_indicator_reads_its_plain_state_slots_in_order():
    # plain_state() spells out, per class, the slots FeatureEngine.raw_state holds for it.
    specs = [IndicatorSpec.model_validate(spec) for spec in EXTRA_SPECS]
    engines = [FeatureEngine(indicators_for(FeaturesConfig(), "1m")), FeatureEngine(check_specs(specs), [])]
    classes = set()
    for engine in engines:
        for candle in random_candles(7, 60):
            engine.update(candle)
        for part, slots in engine._parts:
            expected = tuple(getattr(part, slot) for slot in slots)
            assert msgspec.msgpack.encode(part.plain_state()) == msgspec.msgpack.encode(expected), type(part)
            classes.add(type(part))
    defined = {cls for cls in vars(indicators).values()
               if isinstance(cls, type) and issubclass(cls, indicators.Incremental) and cls is not indicators.Incremental}
    assert defined <= classes, f"not covered: {sorted(cls.__name__ for cls in defined - classes)}"
