"""The streaming engine's per-candle work: the candle's input values, the indicator steps, the candle features.

Kept apart from :mod:`candleflow.core.features` (configuration, TA-Lib, the
batch engine) so that it can be compiled with mypyc together with
:mod:`candleflow.core.indicators` (see ``setup.py``); the types here are
precise for that reason (floats and ints become C values). Uncompiled, it is
plain Python with the same results: the compiled build runs the same
operations in the same order, so both give bit-identical rows and states.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Final, cast, final

from candleflow.core.indicators import Incremental

# The candle columns an indicator input may read, in the order input_values returns them.
INPUT_COLUMNS: Final = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "buy_volume", "trades")
CLOSE: Final = 3  # INPUT_COLUMNS.index("close")

# The candle features, by name (CANDLE_FEATURES in the configuration).
_LOG_RETURN: Final = 0
_RANGE_PCT: Final = 1
_BODY_PCT: Final = 2
_VWAP_DIST: Final = 3
_BUY_RATIO: Final = 4
CANDLE_FEATURE_CODES: Final = {"log_return_1": _LOG_RETURN, "range_pct": _RANGE_PCT, "body_pct": _BODY_PCT,
                               "vwap_dist": _VWAP_DIST, "buy_ratio": _BUY_RATIO}


def _compiled_probe() -> None:
    """Only here to tell whether this module is compiled (see COMPILED)."""


# True when this module is the mypyc-compiled build: its functions are then built-ins, not Python functions.
COMPILED: Final = not isinstance(_compiled_probe, types.FunctionType)


def input_values(candle: object) -> tuple[float, ...]:
    """The candle's INPUT_COLUMNS as floats, from a Candle or a dict with its fields.

    Always floats (a Candle's ``trades`` is an int): indicator states and rows then
    hold the same numbers whether or not the indicators are compiled.
    """
    if isinstance(candle, dict):
        return tuple([float(candle[column]) for column in INPUT_COLUMNS])
    return tuple([float(getattr(candle, column)) for column in INPUT_COLUMNS])


def candle_features(codes: list[int], slots: list[int], values: tuple[float, ...], count: int,
                    prev_close: float, row: list[float | None]) -> None:
    """Put the candle features (`codes`: CANDLE_FEATURE_CODES) of the candle `values` in their `slots`
    of `row`; `count` candles came before it, the last one closing at `prev_close`."""
    open_ = values[0]
    high = values[1]
    low = values[2]
    close = values[CLOSE]
    volume = values[4]
    vwap = values[6]
    buy_volume = values[7]
    for i in range(len(codes)):
        code = codes[i]
        slot = slots[i]
        if code == _LOG_RETURN:
            row[slot] = math.log(close / prev_close) if count > 0 else None
        elif code == _RANGE_PCT:
            row[slot] = (high - low) / close
        elif code == _BODY_PCT:
            row[slot] = (close - open_) / open_
        elif code == _VWAP_DIST:
            row[slot] = close / vwap - 1.0
        elif code == _BUY_RATIO:
            row[slot] = buy_volume / volume if volume > 0 else None


# An indicator's update method: its inputs in, one float per output out (NaN during warm-up).
# Typed as objects here: the runner passes the floats on as they are (no unboxing and boxing again).
Update = Callable[..., tuple[object, ...]]


@final
class Step:
    """One indicator of an engine: its update method, which candle values it reads, which outputs it
    keeps and where in the row (``outputs``: (output index, row slot) pairs)."""

    def __init__(self, update: Update, inputs: Sequence[int], outputs: Sequence[tuple[int, int]]) -> None:
        self.update = update
        self.inputs = list(inputs)  # indexes into the candle values
        self.arity = len(self.inputs)
        self.first = self.inputs[0] if self.inputs else 0
        self.second = self.inputs[1] if self.arity > 1 else 0
        self.third = self.inputs[2] if self.arity > 2 else 0
        self.fourth = self.inputs[3] if self.arity > 3 else 0
        self.output_indexes = [index for index, _ in outputs]
        self.output_slots = [slot for _, slot in outputs]


@final
class StepRunner:
    """Feeds a candle's values to every indicator in order and fills the row, as a typed loop.

    The compiled engine's hot path (FeatureEngine uses it when this module is
    compiled; uncompiled, its generated straight-line function is faster). The
    same work as::

        for impl, inputs, outputs in steps:
            result = impl.update(*(values[i] for i in inputs))
            for index, slot in outputs:
                row[slot] = None if result[index] is NaN else result[index]

    The row is a list, one slot per column of the engine's layout: a list item
    is set for a fraction of what a dict entry costs.
    """

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps

    def __call__(self, values: tuple[object, ...], row: list[object]) -> None:
        for step in self.steps:
            arity = step.arity
            update = step.update
            result: tuple[object, ...]
            if arity == 1:
                result = update(values[step.first])
            elif arity == 2:
                result = update(values[step.first], values[step.second])
            elif arity == 3:
                result = update(values[step.first], values[step.second], values[step.third])
            elif arity == 4:
                result = update(values[step.first], values[step.second], values[step.third], values[step.fourth])
            else:
                result = update(*[values[i] for i in step.inputs])
            indexes = step.output_indexes
            slots = step.output_slots
            for j in range(len(slots)):
                value = result[indexes[j]]
                number = cast(float, value)  # compiled: reads the double, no new object
                row[slots[j]] = None if number != number else value


@final
class StateReader:
    """The compiled engine's state snapshot: every indicator object's plain slot values,
    ``[part.plain_state() for part in parts]`` (native calls when compiled)."""

    def __init__(self, parts: list[Incremental]) -> None:
        self.parts = parts

    def __call__(self) -> list[tuple[object, ...]]:
        return [part.plain_state() for part in self.parts]
