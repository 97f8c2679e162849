"""Feature rows from candles: which indicators, how their outputs are named, and the engines.

Pure: no Kafka, no files. The streaming service and the batch path both use
this module, so they give the same numbers.

**Naming rule** (DESIGN.md, "Features"): an output is named
``{prefix}[_{output}][_{params}]``:

- ``prefix``: the entry's ``name``, else the TA-Lib function name in lower case;
- ``output``: only for functions with several outputs. It is the entry's
  ``outputs`` mapping if given, else TA-Lib's output name in lower case with
  the function name and a ``slow``/``fast`` prefix or ``band`` suffix taken
  off (``macdsignal`` -> ``signal``, ``upperband`` -> ``upper``, ``slowk`` ->
  ``k``, ``aroonup`` -> ``up``); an output named like the function itself
  (``macd`` of MACD) gets no output part;
- ``params``: the entry's ``label`` if given, else the values of the
  parameters the entry sets explicitly, in TA-Lib's parameter order, joined by
  ``_`` (``2.0`` is written ``2``, ``0.5`` is ``0p5``, ``-1`` is ``m1``). A
  down-deviation equal to its up-deviation is written once (BBANDS
  ``nbdevup=2, nbdevdn=2`` -> ``_2``).

So ``{function: MACD, params: {fastperiod: 12, slowperiod: 26, signalperiod: 9}}``
gives ``macd_12_26_9``, ``macd_signal_12_26_9`` and ``macd_hist_12_26_9``.

The five candle features (``log_return_1``, ``range_pct``, ``body_pct``,
``vwap_dist``, ``buy_ratio``) come after the indicator outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from candleflow.config import CANDLE_FEATURES, FeaturesConfig, IndicatorSpec, timeframe_ms
from candleflow.core.steps import (
    CANDLE_FEATURE_CODES,
    CLOSE,
    COMPILED,
    INPUT_COLUMNS,
    StateReader,
    Step,
    StepRunner,
    candle_features,
    input_values,
)
from candleflow.records import CANDLE_FIELDS, FEATURES_META_FIELDS

# The default set: outputs named exactly as DESIGN.md and the README list them.
DEFAULT_INDICATORS: tuple[dict[str, Any], ...] = (
    {"function": "SMA", "params": {"timeperiod": 20}},
    {"function": "SMA", "params": {"timeperiod": 50}},
    {"function": "EMA", "params": {"timeperiod": 9}},
    {"function": "EMA", "params": {"timeperiod": 21}},
    {"function": "EMA", "params": {"timeperiod": 50}},
    {"function": "WMA", "params": {"timeperiod": 20}},
    {"function": "DEMA", "params": {"timeperiod": 20}},
    {"function": "TEMA", "params": {"timeperiod": 20}},
    {"function": "KAMA", "params": {"timeperiod": 10}},
    {"function": "MACD", "params": {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}},
    {"function": "ADX", "params": {"timeperiod": 14}},
    {"function": "AROON", "params": {"timeperiod": 14}, "outputs": {"aroonup": "up", "aroondown": "down"}},
    {"function": "RSI", "params": {"timeperiod": 7}},
    {"function": "RSI", "params": {"timeperiod": 14}},
    {"function": "RSI", "params": {"timeperiod": 21}},
    {"function": "STOCH", "params": {"fastk_period": 14, "slowk_period": 3, "slowd_period": 3}},
    {"function": "CCI", "params": {"timeperiod": 20}},
    {"function": "MFI", "params": {"timeperiod": 14}},
    {"function": "ROC", "params": {"timeperiod": 10}},
    {"function": "WILLR", "params": {"timeperiod": 14}},
    {"function": "MOM", "params": {"timeperiod": 10}},
    {"function": "ATR", "params": {"timeperiod": 14}},
    {"function": "NATR", "params": {"timeperiod": 14}},
    {"function": "BBANDS", "params": {"timeperiod": 20, "nbdevup": 2, "nbdevdn": 2}},
    {"function": "STDDEV", "params": {"timeperiod": 20}},
    {"function": "OBV"},
    {"function": "AD"},
    {"function": "ADOSC", "params": {"fastperiod": 3, "slowperiod": 10}},
)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class FeatureConfigError(ValueError):
    """An indicator entry is invalid; the message names the entry."""


def default_specs() -> list[IndicatorSpec]:
    return [IndicatorSpec.model_validate(entry) for entry in DEFAULT_INDICATORS]


@dataclass(frozen=True)
class Indicator:
    """One configured TA-Lib function, resolved: what it reads, its parameters, its output names."""

    function: str  # TA-Lib name, upper case
    params: dict[str, float | int]  # every parameter, TA-Lib defaults filled in
    inputs: dict[str, tuple[str, ...]]  # TA-Lib input name -> candle columns
    outputs: tuple[tuple[int, str], ...]  # (index of the TA-Lib output, column name)
    timeframes: tuple[str, ...] | None
    entry: str  # "indicators[3] (RSI)", for messages

    @property
    def columns(self) -> list[str]:
        return [name for _, name in self.outputs]

    def applies_to(self, timeframe: str) -> bool:
        return self.timeframes is None or timeframe in self.timeframes

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Candle columns in the order the TA-Lib function takes them."""
        return tuple(col for cols in self.inputs.values() for col in cols)


def _function_info(function: str) -> dict[str, Any]:
    import talib
    from talib import abstract

    if function not in talib.get_functions():
        raise KeyError(function)
    return abstract.Function(function).info  # type: ignore[attr-defined]


def _ma_type(value: str) -> int:
    import talib

    names = {"sma": 0, "ema": 1, "wma": 2, "dema": 3, "tema": 4, "trima": 5, "kama": 6, "mama": 7, "t3": 8}
    names.update({name.lower(): int(code) for code, name in getattr(talib.MA_Type, "_lookup", {}).items()
                  if name.isidentifier()})
    try:
        return names[value.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown moving-average type {value!r} (one of {', '.join(sorted(names))})") from None


def _format_value(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text.replace("-", "m").replace(".", "p")


def short_output_name(function: str, output: str) -> str:
    """TA-Lib output name -> the output part of a column name ('' for the main output)."""
    fn, out = function.lower(), output.lower()
    if out == fn:
        return ""
    if out.startswith(fn) and len(out) > len(fn):
        out = out[len(fn):]
    for prefix in ("slow", "fast"):
        if out.startswith(prefix) and len(out) > len(prefix):
            out = out[len(prefix):]
    if out.endswith("band") and len(out) > 4:
        out = out[:-4]
    return out


def _params_label(explicit: dict[str, float | int], order: Sequence[str]) -> str:
    parts = []
    for name in order:
        if name not in explicit:
            continue
        if name.endswith("dn") and explicit.get(name[:-2] + "up") == explicit[name]:
            continue  # "2 deviations both ways" is written once
        parts.append(_format_value(explicit[name]))
    return "_".join(parts)


def resolve_spec(spec: IndicatorSpec, entry: str) -> Indicator:
    """Check one entry against TA-Lib and work out its output names; raise FeatureConfigError naming it."""

    def bad(problem: str) -> FeatureConfigError:
        return FeatureConfigError(f"{entry}: {problem}")

    function = spec.function.strip().upper()
    try:
        info = _function_info(function)
    except KeyError:
        raise bad(f"unknown TA-Lib function {spec.function!r}") from None
    defaults: dict[str, Any] = dict(info["parameters"])

    explicit: dict[str, float | int] = {}
    for name, value in spec.params.items():
        if name not in defaults:
            known = ", ".join(defaults) or "none"
            raise bad(f"unknown parameter {name!r} for {function} (parameters: {known})")
        default = defaults[name]
        if isinstance(value, str):
            if not name.endswith("matype"):
                raise bad(f"parameter {name}={value!r} must be a number")
            try:
                value = _ma_type(value)
            except ValueError as exc:
                raise bad(f"parameter {name}: {exc}") from None
        if isinstance(value, bool):
            raise bad(f"parameter {name}={value!r} must be a number")
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad(f"parameter {name}={value!r} must be an integer")
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad(f"parameter {name}={value!r} must be finite")
        explicit[name] = value
    params = {**defaults, **explicit}

    inputs: dict[str, tuple[str, ...]] = {}
    for input_name, columns in info["input_names"].items():
        cols = (columns,) if isinstance(columns, str) else tuple(columns)
        inputs[input_name] = cols
    for input_name, columns in (spec.inputs or {}).items():
        if input_name not in inputs:
            raise bad(f"unknown input {input_name!r} for {function} (inputs: {', '.join(inputs)})")
        cols = (columns,) if isinstance(columns, str) else tuple(columns)
        if len(cols) != len(inputs[input_name]):
            raise bad(f"input {input_name} takes {len(inputs[input_name])} column(s), got {len(cols)}")
        inputs[input_name] = cols
    for input_name, cols in inputs.items():
        for col in cols:
            if col not in INPUT_COLUMNS:
                raise bad(f"input {input_name} reads {col!r}, which is not a candle column "
                          f"({', '.join(INPUT_COLUMNS)})")

    prefix = spec.name if spec.name is not None else function.lower()
    if not _NAME_RE.match(prefix):
        raise bad(f"name {prefix!r} must be lower case letters, digits and '_', starting with a letter")
    label = spec.label if spec.label is not None else _params_label(explicit, list(defaults))
    if label and not re.match(r"^[a-z0-9_]+$", label):
        raise bad(f"label {label!r} must be lower case letters, digits and '_'")

    ta_outputs: list[str] = list(info["output_names"])
    if spec.outputs is not None:
        chosen = []
        for ta_name, short in spec.outputs.items():
            if ta_name not in ta_outputs:
                raise bad(f"unknown output {ta_name!r} for {function} (outputs: {', '.join(ta_outputs)})")
            if short and not re.match(r"^[a-z0-9_]+$", short):
                raise bad(f"output name {short!r} must be lower case letters, digits and '_'")
            chosen.append((ta_outputs.index(ta_name), short))
        if not chosen:
            raise bad("outputs selects no output")
    elif len(ta_outputs) == 1:
        chosen = [(0, "")]
    else:
        chosen = [(i, short_output_name(function, name)) for i, name in enumerate(ta_outputs)]
    outputs = tuple((index, "_".join(part for part in (prefix, short, label) if part)) for index, short in chosen)

    timeframes = None
    if spec.timeframes is not None:
        for tf in spec.timeframes:
            try:
                timeframe_ms(tf)
            except ValueError as exc:
                raise bad(str(exc)) from None
        timeframes = tuple(spec.timeframes)

    indicator = Indicator(function=function, params=params, inputs=inputs, outputs=outputs,
                          timeframes=timeframes, entry=entry)
    _check_runs(indicator, bad)
    return indicator


def _check_runs(indicator: Indicator, bad: Any) -> None:
    """TA-Lib itself is the judge of parameter ranges: run the function once on a small series."""
    rng = np.random.default_rng(7)
    n = 64
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    sample = {"open": close * 0.999, "high": close * 1.01, "low": close * 0.99, "close": close,
              "volume": rng.uniform(1, 10, n), "quote_volume": close * 5, "vwap": close, "buy_volume": np.ones(n),
              "trades": np.full(n, 3.0)}
    try:
        run_talib(indicator, sample)
    except Exception as exc:  # TA-Lib reports bad ranges as generic exceptions
        values = ", ".join(f"{k}={v}" for k, v in indicator.params.items())
        raise bad(f"TA-Lib rejects the parameters ({values}): {exc}") from None


def run_talib(indicator: Indicator, columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every TA-Lib output of `indicator` over whole columns (float64 arrays)."""
    import talib

    func = getattr(talib, indicator.function)
    args = [np.ascontiguousarray(columns[col], dtype=np.float64) for col in indicator.input_columns]
    result = func(*args, **indicator.params)
    if not isinstance(result, tuple):
        result = (result,)
    return [np.asarray(out, dtype=np.float64) for out in result]


_RESERVED = set(CANDLE_FIELDS) | set(FEATURES_META_FIELDS)


def check_specs(specs: Sequence[IndicatorSpec], candle_features: Iterable[str] = CANDLE_FEATURES,
                where: str = "indicators") -> list[Indicator]:
    """Resolve every entry; raise FeatureConfigError naming the first bad one or a clashing name."""
    resolved: list[Indicator] = []
    owners: dict[str, str] = {name: f"the candle field {name!r}" for name in _RESERVED}
    owners.update({name: f"the candle feature {name!r}" for name in candle_features})
    for index, spec in enumerate(specs):
        entry = f"{where}[{index}] ({spec.function})"
        indicator = resolve_spec(spec, entry)
        for column in indicator.columns:
            # Two entries may share a name only if they never meet on a timeframe.
            clash = owners.get(column)
            if clash is not None and (clash.startswith("the candle") or _overlap(clash, indicator, resolved)):
                raise FeatureConfigError(f"{entry}: output name {column!r} clashes with {clash}")
            owners[column] = entry
        if len(set(indicator.columns)) != len(indicator.columns):
            raise FeatureConfigError(f"{entry}: two outputs share a name: {indicator.columns}")
        resolved.append(indicator)
    return resolved


def _overlap(other_entry: str, indicator: Indicator, resolved: list[Indicator]) -> bool:
    other = next(r for r in resolved if r.entry == other_entry)
    if other.timeframes is None or indicator.timeframes is None:
        return True
    return bool(set(other.timeframes) & set(indicator.timeframes))


_resolved_cache: dict[tuple[Any, ...], list[Indicator]] = {}


def indicators_for(config: FeaturesConfig, timeframe: str | None = None) -> list[Indicator]:
    """The resolved indicators of `config` (the default set when none is configured)."""
    specs = config.specs()
    where = "indicators" if config.indicators is not None else (
        f"{config.indicators_file}: indicators" if specs is not None else "default indicators")
    if specs is None:
        specs = default_specs()
    key = (where, tuple(spec.model_dump_json() for spec in specs), tuple(config.candle_features))
    if key not in _resolved_cache:
        _resolved_cache[key] = check_specs(specs, config.candle_features, where)
    resolved = _resolved_cache[key]
    return [ind for ind in resolved if timeframe is None or ind.applies_to(timeframe)]


def feature_columns(config: FeaturesConfig, timeframe: str) -> list[str]:
    """Ordered output columns of a Features row for `timeframe` (after the candle's own fields)."""
    columns = [name for ind in indicators_for(config, timeframe) for name in ind.columns]
    return columns + list(config.candle_features)


def all_feature_columns(config: FeaturesConfig) -> list[str]:
    """Every output column any timeframe can have, in configuration order."""
    seen: dict[str, None] = {}
    for ind in indicators_for(config):
        for name in ind.columns:
            seen.setdefault(name, None)
    for name in config.candle_features:
        seen.setdefault(name, None)
    return list(seen)


# --- engines -------------------------------------------------------------------

STATE_VERSION = 1


def _candle_value(candle: Any, column: str) -> float:
    value = candle[column] if isinstance(candle, dict) else getattr(candle, column)
    return float(value)


def _replay_runner(indicator: Indicator) -> Any:
    columns = indicator.input_columns

    def run(history: list[list[float]]) -> list[np.ndarray]:
        return run_talib(indicator, {col: np.asarray(values, dtype=np.float64)
                                     for col, values in zip(columns, history)})

    return run


_steps_factories: dict[tuple[Any, ...], Any] = {}
_state_reader_factories: dict[tuple[Any, ...], Any] = {}


def _steps_factory(calls: tuple[tuple[tuple[str, ...], tuple[tuple[int, int], ...]], ...]) -> Any:
    """For FeatureEngine._compile_steps: a function that takes the indicators' update methods and
    returns the straight-line step function; compiled once per indicator layout, not for every
    engine."""
    factory = _steps_factories.get(calls)
    if factory is None:
        updates = [f"update_{number}" for number in range(len(calls))]
        lines = [f"def factory({', '.join(updates)}):",
                 "    def run_steps(values, row):",
                 f"        {', '.join(INPUT_COLUMNS)} = values"]
        for update, (inputs, outputs) in zip(updates, calls):
            lines.append(f"        result = {update}({', '.join(inputs)})")
            for index, slot in outputs:
                lines.append(f"        value = result[{index}]")
                lines.append(f"        row[{slot}] = None if value != value else value")
        lines.append("    return run_steps")
        namespace: dict[str, Any] = {}
        exec(compile("\n".join(lines), "<FeatureEngine steps>", "exec"), namespace)
        factory = _steps_factories[calls] = namespace["factory"]
    return factory


def _state_reader_factory(layout: tuple[tuple[str, ...], ...]) -> Any:
    """For FeatureEngine: a function that takes the state parts (objects) and returns a function
    reading all their plain slots at once, ``[(part_0.slot_a, part_0.slot_b), (), ...]``, as
    straight-line code (it runs after every candle); compiled once per state layout."""
    factory = _state_reader_factories.get(layout)
    if factory is None:
        parts = [f"part_{number}" for number in range(len(layout))]
        tuples = ["(" + "".join(f"{part}.{slot}, " for slot in slots) + ")" for part, slots in zip(parts, layout)]
        lines = [f"def factory({', '.join(parts)}):",
                 "    def read_state():",
                 f"        return [{', '.join(tuples)}]",
                 "    return read_state"]
        namespace: dict[str, Any] = {}
        exec(compile("\n".join(lines), "<FeatureEngine state>", "exec"), namespace)
        factory = _state_reader_factories[layout] = namespace["factory"]
    return factory


class FeatureEngine:
    """Streaming features of one (exchange, symbol, timeframe): the next final candle in, its row out.

    ``update`` changes the state; ``preview`` computes the row a still-open
    candle would get without changing it. ``to_state()`` is plain JSON data
    (lists of numbers) and ``from_state`` restores an engine that continues
    exactly where the saved one stopped.
    """

    def __init__(self, indicators: Sequence[Indicator], candle_features: Sequence[str] = CANDLE_FEATURES) -> None:
        from candleflow.core.indicators import Replay, make_incremental

        self.indicators = list(indicators)
        self.candle_features = tuple(candle_features)
        self.count = 0
        self.prev_close = math.nan
        self.columns = [name for ind in self.indicators for name in ind.columns] + list(self.candle_features)
        # The row is filled as a list, one slot per column in this order (see update_values).
        self._empty_row: list[float | None] = [None] * len(self.columns)
        # (indicator, its input columns, (its output index, row slot) per kept output)
        self._steps: list[tuple[Any, tuple[str, ...], tuple[tuple[int, int], ...]]] = []
        slot = 0
        for ind in self.indicators:
            impl = make_incremental(ind.function, ind.params)
            if impl is None:
                impl = Replay(_replay_runner(ind), len(ind.input_columns))
            outputs = tuple((index, slot + number) for number, (index, _) in enumerate(ind.outputs))
            slot += len(ind.outputs)
            self._steps.append((impl, ind.input_columns, outputs))
        self._run_steps = self._compile_steps()
        unknown = [name for name in self.candle_features if name not in CANDLE_FEATURE_CODES]
        if unknown:
            raise ValueError(f"unknown candle feature(s) {unknown} (known: {', '.join(CANDLE_FEATURE_CODES)})")
        self._feature_codes = [CANDLE_FEATURE_CODES[name] for name in self.candle_features]
        self._feature_slots = list(range(slot, slot + len(self.candle_features)))
        self.fingerprint = self._fingerprint()
        from candleflow.core.indicators import state_parts

        # The state layout: every indicator object (nested ones included) with its plain slots.
        self._parts = [part for impl, _, _ in self._steps for part in state_parts(impl)]
        # read_state() -> [tuple of each part's plain slot values, ...]. Compiled, the parts read
        # their own slots; interpreted, reading them as straight-line code is the fastest.
        if COMPILED:
            self._read_state = StateReader([obj for obj, _ in self._parts])
        else:
            self._read_state = _state_reader_factory(tuple(slots for _, slots in self._parts))(
                *(obj for obj, _ in self._parts))

    def _compile_steps(self) -> Any:
        """One function that feeds a candle's values to every indicator in order and fills the row.

        The hot path of the streaming service. Equivalent to::

            for impl, inputs, outputs in self._steps:
                result = impl.update(*(values[INPUT_COLUMNS.index(col)] for col in inputs))
                for index, slot in outputs:
                    row[slot] = None if result[index] is NaN else result[index]

        When :mod:`candleflow.core.steps` is compiled (setup.py), that loop itself
        (:class:`~candleflow.core.steps.StepRunner`) is the fastest. Interpreted, the
        function is written out as straight-line code instead (a call per indicator
        with its inputs by name, one line per output), which avoids the loop's input
        getters, argument tuples and output lookups.
        """
        if COMPILED:
            return StepRunner([Step(impl.update, [INPUT_COLUMNS.index(col) for col in inputs], outputs)
                               for impl, inputs, outputs in self._steps])
        calls = tuple((inputs, outputs) for _, inputs, outputs in self._steps)
        return _steps_factory(calls)(*(impl.update for impl, _, _ in self._steps))

    @classmethod
    def for_timeframe(cls, config: FeaturesConfig, timeframe: str) -> FeatureEngine:
        return cls(indicators_for(config, timeframe), config.candle_features)

    def _fingerprint(self) -> str:
        """Changes when the indicator set changes, so state saved under other settings is never reused."""
        import hashlib

        text = repr([STATE_VERSION] + [(ind.function, sorted(ind.params.items()), ind.input_columns, ind.outputs)
                     for ind in self.indicators]) + repr(self.candle_features)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def update(self, candle: Any) -> dict[str, float | None]:
        """The feature values of the next final candle (a Candle or a dict with its fields), by column."""
        return dict(zip(self.columns, self.update_values(candle)))

    def update_values(self, candle: Any) -> list[float | None]:
        """:meth:`update` as a list, the values in ``columns`` order (what the streaming service encodes)."""
        values = input_values(candle)
        row = self._empty_row.copy()
        self._run_steps(values, row)
        candle_features(self._feature_codes, self._feature_slots, values, self.count, self.prev_close, row)
        self.count += 1
        self.prev_close = values[CLOSE]
        return row

    def preview(self, candle: Any, spare: FeatureEngine | None = None) -> dict[str, float | None]:
        """The row `candle` would get if it closed now; the engine itself is left unchanged.

        The row is computed in `spare`, an engine of the same layout whose own state is
        overwritten with a copy of this one's (MessagePack, as the service stores it); a new
        engine by default. Building an engine costs several times what loading a state does,
        so a caller previewing often keeps one spare per layout and passes it every time."""
        import msgspec

        if spare is None:
            spare = FeatureEngine(self.indicators, self.candle_features)
        spare.load_state(msgspec.msgpack.decode(msgspec.msgpack.encode(self.raw_state())))
        return spare.update(candle)

    def raw_state(self) -> dict[str, Any]:
        """The state with live references (no copies, NaN kept): encode it at once, as the
        service's state store does (MessagePack, NaN kept; JSON writes NaN as null, see
        :meth:`to_state`). Both decode to data :meth:`load_state` restores exactly."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "count": self.count,
            "prev_close": self.prev_close,
            "indicators": self._read_state(),
        }

    def to_state(self) -> dict[str, Any]:
        """The state as plain JSON data (numbers, lists, null for NaN), detached from the engine."""
        import msgspec

        return msgspec.json.decode(msgspec.json.encode(self.raw_state()))

    def load_state(self, state: dict[str, Any]) -> None:
        from candleflow.core.indicators import load_slot

        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint:
            raise ValueError("saved feature state belongs to another indicator configuration")
        saved_parts = state["indicators"]
        if len(saved_parts) != len(self._parts):
            raise ValueError("saved feature state does not match the indicator layout")
        self.count = int(state["count"])
        prev = state["prev_close"]
        self.prev_close = math.nan if prev is None else float(prev)
        for (obj, slots), values in zip(self._parts, saved_parts):
            for slot, value in zip(slots, values, strict=True):
                setattr(obj, slot, load_slot(value, getattr(obj, slot)))

    @classmethod
    def from_state(cls, indicators: Sequence[Indicator], candle_features: Sequence[str],
                   state: dict[str, Any]) -> FeatureEngine:
        engine = cls(indicators, candle_features)
        engine.load_state(state)
        return engine


def candle_columns(rows: Sequence[Any]) -> dict[str, np.ndarray]:
    """Float64 arrays of the candle inputs, from Candles or dicts (one key, in time order)."""
    return {col: np.fromiter((_candle_value(r, col) for r in rows), dtype=np.float64, count=len(rows))
            for col in INPUT_COLUMNS}


def compute_batch(indicators: Sequence[Indicator], columns: dict[str, np.ndarray],
                  candle_features: Sequence[str] = CANDLE_FEATURES) -> dict[str, np.ndarray]:
    """Every output column over the whole history of one key, with TA-Lib's vectorised functions.

    NaN marks warm-up (null in a Features row). Row k depends only on candles
    0..k, so this equals the streaming engine candle by candle.
    """
    out: dict[str, np.ndarray] = {}
    n = len(columns["close"])
    for ind in indicators:
        if n == 0:
            results = [np.empty(0)] * (max(i for i, _ in ind.outputs) + 1)
        else:
            results = run_talib(ind, columns)
        for index, name in ind.outputs:
            out[name] = results[index]
    close, high, low, open_ = columns["close"], columns["high"], columns["low"], columns["open"]
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in candle_features:
            if name == "log_return_1":
                values = np.full(n, np.nan)
                if n > 1:
                    values[1:] = np.log(close[1:] / close[:-1])
            elif name == "range_pct":
                values = (high - low) / close
            elif name == "body_pct":
                values = (close - open_) / open_
            elif name == "vwap_dist":
                values = close / columns["vwap"] - 1.0
            elif name == "buy_ratio":
                volume = columns["volume"]
                values = np.where(volume > 0, columns["buy_volume"] / np.where(volume > 0, volume, 1.0), np.nan)
            else:  # pragma: no cover - the config only allows the names above
                raise ValueError(f"unknown candle feature {name!r}")
            out[name] = values
    return out
