"""Incremental TA-Lib indicators: one candle in, the same numbers TA-Lib's batch function gives.

Why not TA-Lib itself, candle by candle? Its batch functions recompute from the
start of whatever array they get, and its "stream" functions re-seed every
call, so for indicators with infinite memory (EMA, RSI, ATR, ADX, KAMA, MACD,
OBV, AD, ADOSC ...) neither reproduces the value the batch function gives on
the full history unless the full history is passed in every time.

So the functions of the default set are re-implemented here as small state
machines that follow TA-Lib's algorithms step by step (seeding, Wilder
smoothing, running sums, circular buffers), with TA-Lib's default settings
(unstable period 0, default compatibility). The reference is the library that
is installed (TA-Lib 0.8.x, checked by the parity tests), which differs from
the classic 0.4/0.6 C sources in a few places that matter for exactness:

- zero tests (TA_IS_ZERO) are exact comparisons with 0, not a 1e-8 band;
- WMA rebuilds its running sums from the window every 8·period outputs;
- VAR/STDDEV/BBANDS deviations are accurate (no cancellation between running
  sums of x and x²), so the window variance is computed in two exact passes;
- CCI returns 0 when the distance to the mean or the mean deviation is within
  1e-14 of the mean (a flat window), MFI when the total money flow is < 1e-8.

Most outputs are bit-identical to TA-Lib; the rest differ in the last bits
(the compiled library's own operation order), far inside the 1e-9 parity
tolerance. The state of each object is a flat list of numbers
(:meth:`Incremental.to_state`), so it survives a restart exactly: a float
written as JSON text and read back is the same double.

Any other TA-Lib function falls back to :class:`Replay`, which keeps the whole
input history in its state and runs the TA-Lib function on it for every candle:
exact by construction, but O(n) time per candle and O(n) state, so meant for
occasional extra indicators, not for long-running keys at scale.

Every ``update`` returns a tuple with one float per TA-Lib output, NaN during
warm-up (exactly where the batch function returns NaN).

``make install`` compiles this module with mypyc (setup.py), which is why the
types are precise (float and int attributes and locals become C values) and the
window scans are plain loops. The compiled build does the same operations in
the same order, so its results and states are bit-identical to this source's;
tests/core/test_compiled.py checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, final

NAN: Final = float("nan")


def _is_zero(value: float) -> bool:
    """TA_IS_ZERO as TA-Lib 0.8 behaves: exactly zero (0.6's 1e-8 band is gone; checked in the tests)."""
    return value == 0.0


def per_to_k(period: int) -> float:
    return 2.0 / float(period + 1)


# Window scans as plain typed loops: compiled, they run over C doubles. They give exactly what the
# builtins would (max() keeps its first value and replaces it by each later one that is greater).


def _highest(values: list[float]) -> float:
    """max(values)."""
    best = values[0]
    for value in values:
        if value > best:
            best = value
    return best


def _lowest(values: list[float]) -> float:
    """min(values)."""
    best = values[0]
    for value in values:
        if value < best:
            best = value
    return best


def _last_index_of_highest(values: list[float]) -> int:
    """The index of max(values), the latest one on ties."""
    best = values[0]
    index = 0
    for i in range(1, len(values)):
        value = values[i]
        if value > best:
            best = value
            index = i
        elif value == best:
            index = i
    return index


def _last_index_of_lowest(values: list[float]) -> int:
    """The index of min(values), the latest one on ties."""
    best = values[0]
    index = 0
    for i in range(1, len(values)):
        value = values[i]
        if value < best:
            best = value
            index = i
        elif value == best:
            index = i
    return index


class Incremental:
    """Base: `update(*inputs) -> tuple[float, ...]`; state is the list of slot values."""

    # The attributes that make up the state, in the order it is saved. A class constant rather
    # than __slots__, because compiled (mypyc) classes do not expose __slots__.
    STATE: ClassVar[tuple[str, ...]] = ()
    n_outputs: ClassVar[int] = 1

    # Each subclass defines update(*inputs) -> one float per output, naming its inputs (not
    # declared here: the signatures differ).

    def state_slots(self) -> tuple[str, ...]:
        """The slots that make up the state (all of them, unless a subclass says otherwise)."""
        return self.STATE

    def plain_state(self) -> tuple[object, ...]:
        """The values of the state slots that hold plain data (not nested indicators), in order:
        this object's part of FeatureEngine.raw_state, read after every candle.

        Each class with plain slots spells them out, so that the compiled build reads
        them natively (interpreted code reads a compiled object's attributes several
        times slower than a plain object's); tests/core/test_compiled.py checks that
        they match the slots.
        """
        values = [getattr(self, slot) for slot in self.state_slots()]
        return tuple([value for value in values if not isinstance(value, Incremental)])

    def to_state(self) -> list[Any]:
        return [_dump(getattr(self, slot)) for slot in self.STATE]

    def load_state(self, state: list[Any]) -> None:
        for slot, value in zip(self.STATE, state, strict=True):
            current = getattr(self, slot)
            setattr(self, slot, load_slot(value, current))


def state_parts(root: Incremental) -> list[tuple[Incremental, tuple[str, ...]]]:
    """`root` and the indicators nested in it, each with its slots that hold plain data.

    A flat list of per-object value tuples (see FeatureEngine.raw_state) encodes
    in one call with no Python callbacks; the nesting never changes after
    construction, so this layout is computed once.
    """
    parts: list[tuple[Incremental, tuple[str, ...]]] = []

    def walk(obj: Incremental) -> None:
        plain: list[str] = []
        nested: list[Incremental] = []
        for slot in obj.state_slots():
            value = getattr(obj, slot)
            if isinstance(value, Incremental):
                nested.append(value)
            else:
                plain.append(slot)
        parts.append((obj, tuple(plain)))
        for child in nested:
            walk(child)

    walk(root)
    return parts


def _dump(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return None if value != value else value  # NaN is not JSON
    if kind is list:
        return value[:]
    if kind is int or kind is bool:
        return value
    if isinstance(value, Incremental):
        return value.to_state()
    return value


def load_slot(value: Any, current: Any) -> Any:
    """A saved slot value, converted like the current one (null -> NaN for floats, lists copied)."""
    if isinstance(current, Incremental):
        current.load_state(value)
        return current
    if isinstance(current, float):
        return NAN if value is None else float(value)
    if isinstance(current, list):
        # Inputs are floats; a state saved when a Candle's int `trades` went in as is holds ints.
        return [float(item) if type(item) is int else item for item in value]
    return value


# --- moving averages -----------------------------------------------------------


@final
class SMA(Incremental):
    """INT_SMA: a running total; the trailing input is subtracted after each output (as TA-Lib does,
    so rounding left by inputs long gone is reproduced too)."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "total", "window")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.total = 0.0
        self.window: list[float] = []  # the last period-1 inputs

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.total, self.window)

    def update(self, x: float) -> tuple[float]:
        return (self.step(x),)

    def step(self, x: float) -> float:
        period = self.period
        count = self.count = self.count + 1
        total = self.total + x
        if count < period:
            self.total = total
            self.window.append(x)
            return NAN
        out = total / period
        if period > 1:
            total -= self.window.pop(0)
            self.window.append(x)
        else:
            total -= x
        self.total = total
        return out


@final
class EMA(Incremental):
    """INT_EMA: seeded by the SMA of the first `period` inputs, then prev + (x - prev)·k."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "k", "count", "seed_total", "value")

    def __init__(self, period: int, k: float | None = None) -> None:
        self.period = period
        self.k = per_to_k(period) if k is None else k
        self.count = 0
        self.seed_total = 0.0
        self.value = NAN

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.k, self.count, self.seed_total, self.value)

    def update(self, x: float) -> tuple[float]:
        return (self.step(x),)

    def step(self, x: float) -> float:
        self.count += 1
        if self.count > self.period:  # the steady state, tested first
            self.value = ((x - self.value) * self.k) + self.value
            return self.value
        self.seed_total += x
        if self.count < self.period:
            return NAN
        self.value = self.seed_total / self.period
        return self.value


@final
class WMA(Incremental):
    """TA_WMA: running weighted sum and plain sum, the trailing input dropped one step late,
    both rebuilt from the window every 8·period outputs."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "period_sum", "period_sub", "trailing", "window")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.period_sum = 0.0
        self.period_sub = 0.0
        self.trailing = 0.0
        self.window: list[float] = []  # inputs not yet used as the trailing value

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.period_sum, self.period_sub, self.trailing, self.window)

    def update(self, x: float) -> tuple[float]:
        period = self.period
        self.count += 1
        self.window.append(x)
        if self.count < period:
            self.period_sub += x
            self.period_sum += x * self.count
            return (NAN,)
        outputs = self.count - period  # index of this output
        if outputs > 0 and (outputs + 1) % (8 * period) == 0:
            # TA-Lib 0.8 rebuilds both sums from the window every 8·period outputs
            # (bounding the drift of the running sums); found by bit-exact comparison.
            self.period_sub = 0.0
            self.period_sum = 0.0
            for weight, value in enumerate(self.window[:-1], 1):
                self.period_sub += value
                self.period_sum += value * weight
            self.trailing = 0.0
        self.period_sub += x
        self.period_sub -= self.trailing
        self.period_sum += x * period
        self.trailing = self.window.pop(0)
        out = self.period_sum / ((period * (period + 1)) >> 1)
        self.period_sum -= self.period_sub
        return (out,)


@final
class DEMA(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("ema1", "ema2")

    def __init__(self, period: int) -> None:
        self.ema1 = EMA(period)
        self.ema2 = EMA(period)

    def update(self, x: float) -> tuple[float]:
        e1 = self.ema1.step(x)
        if e1 != e1:
            return (NAN,)
        e2 = self.ema2.step(e1)
        if e2 != e2:
            return (NAN,)
        return ((2.0 * e1) - e2,)


@final
class TEMA(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("ema1", "ema2", "ema3")

    def __init__(self, period: int) -> None:
        self.ema1 = EMA(period)
        self.ema2 = EMA(period)
        self.ema3 = EMA(period)

    def update(self, x: float) -> tuple[float]:
        e1 = self.ema1.step(x)
        if e1 != e1:
            return (NAN,)
        e2 = self.ema2.step(e1)
        if e2 != e2:
            return (NAN,)
        e3 = self.ema3.step(e2)
        if e3 != e3:
            return (NAN,)
        return ((3.0 * e1) - (3.0 * e2) + e3,)


# KAMA's smoothing constants, between 2 and 30 periods (module constants: compiled classes have no
# class-level float constants).
_KAMA_CONST_MAX: Final = 2.0 / (30.0 + 1.0)
_KAMA_CONST_DIFF: Final = 2.0 / (2.0 + 1.0) - _KAMA_CONST_MAX


@final
class KAMA(Incremental):
    """TA_KAMA: efficiency ratio over `period` changes (a running sum of absolute changes, as in
    TA-Lib), smoothing constant between 2 and 30 periods."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "window", "sum_roc", "trailing_value", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.window: list[float] = []  # the last period+1 inputs
        self.sum_roc = 0.0
        self.trailing_value = 0.0
        self.value = NAN

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.window, self.sum_roc, self.trailing_value, self.value)

    def _smooth(self, x: float, period_roc: float) -> None:
        if self.sum_roc <= period_roc or _is_zero(self.sum_roc):
            ratio = 1.0
        else:
            ratio = abs(period_roc / self.sum_roc)
        ratio = (ratio * _KAMA_CONST_DIFF) + _KAMA_CONST_MAX
        ratio *= ratio
        self.value = ((x - self.value) * ratio) + self.value

    def update(self, x: float) -> tuple[float]:
        period = self.period
        window = self.window
        self.count += 1
        if self.count <= period:
            if window:
                self.sum_roc += abs(window[-1] - x)
            window.append(x)
            return (NAN,)
        if self.count == period + 1:
            self.sum_roc += abs(window[-1] - x)
            self.value = window[-1]
            trailing = window[0]
            self._smooth(x, x - trailing)
            self.trailing_value = trailing
        else:
            trailing = window[1]  # window[0] is the previous trailing value
            self.sum_roc -= abs(self.trailing_value - trailing)
            self.sum_roc += abs(x - window[-1])
            self.trailing_value = trailing
            self._smooth(x, x - trailing)
            window.pop(0)
        window.append(x)
        return (self.value,)


@final
class MACD(Incremental):
    """TA_MACD: the fast EMA starts late so that it is seeded on the slow EMA's last `fast` inputs.

    Both EMAs use k = 2/(period+1); TA-Lib's fixed 0.15/0.075 factors belong to
    MACDFIX (periods 0), not to MACD(12, 26, 9), as the parity tests confirm.
    """

    STATE: ClassVar[tuple[str, ...]] = ("fast_start", "count", "fast", "slow", "signal")
    n_outputs: ClassVar[int] = 3

    def __init__(self, fastperiod: int, slowperiod: int, signalperiod: int) -> None:
        if slowperiod < fastperiod:
            fastperiod, slowperiod = slowperiod, fastperiod
        self.fast_start = slowperiod - fastperiod
        self.count = 0
        self.fast = EMA(fastperiod)
        self.slow = EMA(slowperiod)
        self.signal = EMA(signalperiod)

    def plain_state(self) -> tuple[object, ...]:
        return (self.fast_start, self.count)

    def update(self, x: float) -> tuple[float, float, float]:
        self.count += 1
        slow = self.slow.step(x)
        if self.count <= self.fast_start:
            return (NAN, NAN, NAN)
        fast = self.fast.step(x)
        if slow != slow:
            return (NAN, NAN, NAN)
        macd = fast - slow
        signal = self.signal.step(macd)
        if signal != signal:
            return (NAN, NAN, NAN)
        return (macd, signal, macd - signal)


# --- momentum ------------------------------------------------------------------


@final
class RSI(Incremental):
    """TA_RSI: Wilder smoothing of gains and losses, seeded by their plain average."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "prev", "gain", "loss")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.prev = 0.0
        self.gain = 0.0
        self.loss = 0.0

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.prev, self.gain, self.loss)

    def update(self, x: float) -> tuple[float]:
        period = self.period
        count = self.count = self.count + 1
        if count == 1:
            self.prev = x
            return (NAN,)
        change = x - self.prev
        self.prev = x
        gain, loss = self.gain, self.loss
        if count > period + 1:  # after the seed: Wilder smoothing
            loss *= period - 1
            gain *= period - 1
        if change < 0:
            loss -= change
        else:
            gain += change
        if count <= period:  # still summing the seed
            self.gain, self.loss = gain, loss
            return (NAN,)
        loss /= period
        gain /= period
        self.gain, self.loss = gain, loss
        total = gain + loss
        return (100.0 * (gain / total) if total != 0.0 else 0.0,)  # _is_zero(total), inlined


@final
class MOM(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("period", "window")

    def __init__(self, period: int) -> None:
        self.period = period
        self.window: list[float] = []

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.window)

    def update(self, x: float) -> tuple[float]:
        window = self.window
        window.append(x)
        if len(window) <= self.period:
            return (NAN,)
        return (x - window.pop(0),)


@final
class ROC(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("period", "window")

    def __init__(self, period: int) -> None:
        self.period = period
        self.window: list[float] = []

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.window)

    def update(self, x: float) -> tuple[float]:
        window = self.window
        window.append(x)
        if len(window) <= self.period:
            return (NAN,)
        prev = window.pop(0)
        return (((x / prev) - 1.0) * 100.0 if prev != 0.0 else 0.0,)


@final
class WILLR(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("period", "highs", "lows")

    def __init__(self, period: int) -> None:
        self.period = period
        self.highs: list[float] = []
        self.lows: list[float] = []

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.highs, self.lows)

    def update(self, high: float, low: float, close: float) -> tuple[float]:
        highs, lows = self.highs, self.lows
        highs.append(high)
        lows.append(low)
        if len(highs) < self.period:
            return (NAN,)
        if len(highs) > self.period:
            highs.pop(0)
            lows.pop(0)
        highest, lowest = _highest(highs), _lowest(lows)
        diff = (highest - lowest) / (-100.0)
        return ((highest - close) / diff if diff != 0.0 else 0.0,)


@final
class STOCH(Incremental):
    """TA_STOCH with SMA smoothing: fast %K, its SMA (slow %K), that SMA again (slow %D)."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "highs", "lows", "slow_k", "slow_d")
    n_outputs: ClassVar[int] = 2

    def __init__(self, fastk_period: int, slowk_period: int, slowd_period: int) -> None:
        self.period = fastk_period
        self.highs: list[float] = []
        self.lows: list[float] = []
        self.slow_k = SMA(slowk_period)
        self.slow_d = SMA(slowd_period)

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.highs, self.lows)

    def update(self, high: float, low: float, close: float) -> tuple[float, float]:
        highs, lows = self.highs, self.lows
        highs.append(high)
        lows.append(low)
        if len(highs) < self.period:
            return (NAN, NAN)
        if len(highs) > self.period:
            highs.pop(0)
            lows.pop(0)
        lowest = _lowest(lows)
        diff = (_highest(highs) - lowest) / 100.0
        fast_k = (close - lowest) / diff if diff != 0.0 else 0.0
        slow_k = self.slow_k.step(fast_k)
        if slow_k != slow_k:
            return (NAN, NAN)
        slow_d = self.slow_d.step(slow_k)
        if slow_d != slow_d:
            return (NAN, NAN)
        return (slow_k, slow_d)


@final
class CCI(Incremental):
    """TA_CCI: sums over the circular buffer in its physical order, as the C code does."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "buffer")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.buffer = [0.0] * period

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.buffer)

    def update(self, high: float, low: float, close: float) -> tuple[float]:
        period = self.period
        last = (high + low + close) / 3
        buffer = self.buffer
        buffer[self.count % period] = last
        self.count += 1
        if self.count < period:
            return (NAN,)
        # Plain left-to-right sums from 0.0, like the C loops (not sum(), which compensates
        # rounding on Python >= 3.12).
        average = 0.0
        for value in buffer:
            average += value
        average /= period
        deviation = 0.0
        for value in buffer:
            deviation += abs(value - average)
        distance = last - average
        mean_deviation = deviation / period
        # TA-Lib 0.8 treats a distance or deviation within 1e-14 of the mean as noise (0), so a
        # flat window gives 0 rather than a ratio of rounding errors (found by comparison).
        noise = 1e-14 * abs(average)
        if distance == 0.0 or deviation == 0.0 or abs(distance) <= noise or mean_deviation <= noise:
            return (0.0,)
        return (distance / (0.015 * mean_deviation),)


# A total money flow below this gives MFI 0 (TA-Lib 0.8 behaviour, checked against it in the tests).
_MFI_MIN_TOTAL: Final = 1e-8


@final
class MFI(Incremental):
    """TA_MFI: running sums of positive and negative money flow over a circular buffer."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "prev", "pos_sum", "neg_sum", "pos", "neg")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.prev = 0.0
        self.pos_sum = 0.0
        self.neg_sum = 0.0
        self.pos = [0.0] * period
        self.neg = [0.0] * period

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.prev, self.pos_sum, self.neg_sum, self.pos, self.neg)

    def update(self, high: float, low: float, close: float, volume: float) -> tuple[float]:
        period = self.period
        typical = (high + low + close) / 3
        self.count += 1
        if self.count == 1:
            self.prev = typical
            return (NAN,)
        slot = (self.count - 2) % period
        if self.count > period + 1:
            self.pos_sum -= self.pos[slot]
            self.neg_sum -= self.neg[slot]
        change = typical - self.prev
        self.prev = typical
        flow = typical * volume
        if change < 0:
            self.neg[slot] = flow
            self.neg_sum += flow
            self.pos[slot] = 0.0
        elif change > 0:
            self.pos[slot] = flow
            self.pos_sum += flow
            self.neg[slot] = 0.0
        else:
            self.pos[slot] = 0.0
            self.neg[slot] = 0.0
        if self.count <= period:
            return (NAN,)
        total = self.pos_sum + self.neg_sum
        return (0.0 if total < _MFI_MIN_TOTAL else 100.0 * (self.pos_sum / total),)


@final
class AROON(Incremental):
    """TA_AROON over `period`+1 candles; ties go to the most recent candle. Outputs (down, up)."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "highs", "lows")
    n_outputs: ClassVar[int] = 2

    def __init__(self, period: int) -> None:
        self.period = period
        self.highs: list[float] = []
        self.lows: list[float] = []

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.highs, self.lows)

    def update(self, high: float, low: float) -> tuple[float, float]:
        highs, lows = self.highs, self.lows
        highs.append(high)
        lows.append(low)
        period = self.period
        if len(highs) <= period:
            return (NAN, NAN)
        if len(highs) > period + 1:
            highs.pop(0)
            lows.pop(0)
        # The index (0..period) of the highest high and of the lowest low, the latest on ties.
        # TA-Lib: factor * (period - (today - idx)), where today - idx is period - (index in the window).
        high_idx = _last_index_of_highest(highs)
        low_idx = _last_index_of_lowest(lows)
        factor = 100.0 / period
        return (factor * low_idx, factor * high_idx)


@final
class ADX(Incremental):
    """TA_ADX: Wilder sums of +DM, -DM and true range; ADX seeded by the mean of the first DX values."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "count", "prev_high", "prev_low", "prev_close", "plus_dm",
                                        "minus_dm", "tr", "sum_dx", "adx")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.prev_high = self.prev_low = self.prev_close = 0.0
        self.plus_dm = self.minus_dm = self.tr = 0.0
        self.sum_dx = 0.0
        self.adx = NAN

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.count, self.prev_high, self.prev_low, self.prev_close,
                self.plus_dm, self.minus_dm, self.tr, self.sum_dx, self.adx)

    def update(self, high: float, low: float, close: float) -> tuple[float]:
        period = self.period
        self.count += 1
        count = self.count
        if count == 1:
            self.prev_high, self.prev_low, self.prev_close = high, low, close
            return (NAN,)
        diff_p = high - self.prev_high
        diff_m = self.prev_low - low
        self.prev_high, self.prev_low = high, low
        true_range = high - low
        gap = abs(high - self.prev_close)
        if gap > true_range:
            true_range = gap
        gap = abs(low - self.prev_close)
        if gap > true_range:
            true_range = gap
        self.prev_close = close
        if count <= period:  # the first period-1 moves: plain sums
            if diff_m > 0 and diff_p < diff_m:
                self.minus_dm += diff_m
            elif diff_p > 0 and diff_p > diff_m:
                self.plus_dm += diff_p
            self.tr += true_range
            return (NAN,)
        self.minus_dm -= self.minus_dm / period
        self.plus_dm -= self.plus_dm / period
        if diff_m > 0 and diff_p < diff_m:
            self.minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            self.plus_dm += diff_p
        self.tr = self.tr - (self.tr / period) + true_range
        dx = NAN
        if not _is_zero(self.tr):
            minus_di = 100.0 * (self.minus_dm / self.tr)
            plus_di = 100.0 * (self.plus_dm / self.tr)
            total = minus_di + plus_di
            if not _is_zero(total):
                dx = 100.0 * (abs(minus_di - plus_di) / total)
        if count < 2 * period:
            if dx == dx:
                self.sum_dx += dx
            return (NAN,)
        if count == 2 * period:
            if dx == dx:
                self.sum_dx += dx
            self.adx = self.sum_dx / period
            return (self.adx,)
        if dx == dx:
            self.adx = ((self.adx * (period - 1)) + dx) / period
        return (self.adx,)


# --- volatility ----------------------------------------------------------------


@final
class ATR(Incremental):
    """TA_ATR: SMA of the first `period` true ranges, then Wilder smoothing. NATR divides by close."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "normalised", "count", "prev_close", "seed", "value")

    def __init__(self, period: int, normalised: bool = False) -> None:
        self.period = period
        self.normalised = normalised
        self.count = 0
        self.prev_close = 0.0
        self.seed = SMA(period)
        self.value = NAN

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.normalised, self.count, self.prev_close, self.value)

    def update(self, high: float, low: float, close: float) -> tuple[float]:
        self.count += 1
        if self.count == 1:
            self.prev_close = close
            return (NAN,)
        true_range = high - low
        gap = abs(self.prev_close - high)
        if gap > true_range:
            true_range = gap
        gap = abs(self.prev_close - low)
        if gap > true_range:
            true_range = gap
        self.prev_close = close
        period = self.period
        if self.count <= period + 1:
            if period == 1:
                self.value = true_range
            else:
                self.value = self.seed.step(true_range)
                if self.value != self.value:
                    return (NAN,)
        else:
            if period == 1:
                self.value = true_range
            else:
                self.value *= period - 1
                self.value += true_range
                self.value /= period
        if self.normalised:
            return ((self.value / close) * 100.0 if not _is_zero(close) else 0.0,)
        return (self.value,)


def _window_variance(window: list[float]) -> float:
    """Population variance of a window: the corrected two-pass algorithm (Chan, Golub & LeVeque).

    TA-Lib 0.8's VAR/STDDEV/BBANDS are accurate to ~1e-12 relative or better (no
    cancellation between running sums of x and x²), so the streaming side
    computes the variance accurately from the window rather than reproducing
    an error-prone recurrence. The deviations from the computed mean are
    nearly exact (each value is close to the mean), and the correction term
    (their sum, squared, over n) removes the error of the mean itself to first
    order: the result is within a few units in the last place of the exact
    variance whatever the prices' magnitude, up to where the squared deviations
    overflow (~1e154; tests/core/test_indicators.py), with plain float loops.
    """
    period = len(window)
    total = 0.0
    for value in window:
        total += value
    mean = total / period
    deviations = 0.0
    squares = 0.0
    for value in window:
        deviation = value - mean
        deviations += deviation
        squares += deviation * deviation
    # Never below zero: the correction cannot exceed the squares but for rounding.
    return max(squares - deviations * deviations / period, 0.0) / period


@final
class VAR(Incremental):
    """Variance over the last `period` inputs (finite memory: only the window is kept)."""

    STATE: ClassVar[tuple[str, ...]] = ("period", "window")

    def __init__(self, period: int) -> None:
        self.period = period
        self.window: list[float] = []

    def plain_state(self) -> tuple[object, ...]:
        return (self.period, self.window)

    def step(self, x: float) -> float:
        window = self.window
        window.append(x)
        if len(window) < self.period:
            return NAN
        if len(window) > self.period:
            window.pop(0)
        return _window_variance(window)

    def update(self, x: float) -> tuple[float]:
        return (self.step(x),)


@final
class STDDEV(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("nbdev", "var")

    def __init__(self, period: int, nbdev: float) -> None:
        self.nbdev = nbdev
        self.var = VAR(period)

    def plain_state(self) -> tuple[object, ...]:
        return (self.nbdev,)

    def update(self, x: float) -> tuple[float]:
        variance = self.var.step(x)
        if variance != variance:
            return (NAN,)
        if not variance > 0.0:
            return (0.0,)
        return (math.sqrt(variance) * self.nbdev,)


@final
class BBANDS(Incremental):
    """TA_BBANDS with an SMA middle band and the population deviation of the same window."""

    STATE: ClassVar[tuple[str, ...]] = ("nbdevup", "nbdevdn", "sma", "var")
    n_outputs: ClassVar[int] = 3

    def __init__(self, period: int, nbdevup: float, nbdevdn: float) -> None:
        self.nbdevup = nbdevup
        self.nbdevdn = nbdevdn
        self.sma = SMA(period)
        self.var = VAR(period)

    def plain_state(self) -> tuple[object, ...]:
        return (self.nbdevup, self.nbdevdn)

    def update(self, x: float) -> tuple[float, float, float]:
        middle = self.sma.step(x)
        variance = self.var.step(x)
        if middle != middle:
            return (NAN, NAN, NAN)
        deviation = math.sqrt(variance) if variance > 0.0 else 0.0
        if self.nbdevup == self.nbdevdn:
            spread = deviation * self.nbdevup
            return (middle + spread, middle, middle - spread)
        return (middle + deviation * self.nbdevup, middle, middle - deviation * self.nbdevdn)


# --- volume --------------------------------------------------------------------


@final
class OBV(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("started", "prev", "value")

    def __init__(self) -> None:
        self.started = False
        self.prev = 0.0
        self.value = 0.0

    def plain_state(self) -> tuple[object, ...]:
        return (self.started, self.prev, self.value)

    def update(self, close: float, volume: float) -> tuple[float]:
        if not self.started:
            self.started = True
            self.value = volume
        elif close > self.prev:
            self.value += volume
        elif close < self.prev:
            self.value -= volume
        self.prev = close
        return (self.value,)


def _ad_step(ad: float, high: float, low: float, close: float, volume: float) -> float:
    spread = high - low
    if spread > 0.0:
        ad += (((close - low) - (high - close)) / spread) * volume
    return ad


@final
class AD(Incremental):
    STATE: ClassVar[tuple[str, ...]] = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def plain_state(self) -> tuple[object, ...]:
        return (self.value,)

    def update(self, high: float, low: float, close: float, volume: float) -> tuple[float]:
        self.value = _ad_step(self.value, high, low, close, volume)
        return (self.value,)


@final
class ADOSC(Incremental):
    """TA_ADOSC: two EMAs of the A/D line, both seeded with its first value (not an SMA)."""

    STATE: ClassVar[tuple[str, ...]] = ("lookback", "fast_k", "slow_k", "count", "ad", "fast", "slow")

    def __init__(self, fastperiod: int, slowperiod: int) -> None:
        self.lookback = max(fastperiod, slowperiod) - 1
        self.fast_k = per_to_k(fastperiod)
        self.slow_k = per_to_k(slowperiod)
        self.count = 0
        self.ad = 0.0
        self.fast = 0.0
        self.slow = 0.0

    def plain_state(self) -> tuple[object, ...]:
        return (self.lookback, self.fast_k, self.slow_k, self.count, self.ad, self.fast, self.slow)

    def update(self, high: float, low: float, close: float, volume: float) -> tuple[float]:
        self.ad = ad = _ad_step(self.ad, high, low, close, volume)
        self.count += 1
        if self.count == 1:
            self.fast = self.slow = ad
        else:
            self.fast = (self.fast_k * ad) + ((1.0 - self.fast_k) * self.fast)
            self.slow = (self.slow_k * ad) + ((1.0 - self.slow_k) * self.slow)
        if self.count <= self.lookback:
            return (NAN,)
        return (self.fast - self.slow,)


# --- the generic fallback --------------------------------------------------------


@final
class Replay(Incremental):
    """Any TA-Lib function: keep every input, run the batch function, return its last row.

    Exact by construction (the batch output at k depends only on inputs 0..k),
    at O(n) time per candle and O(n) state. Used for functions without an
    incremental implementation above.
    """

    STATE: ClassVar[tuple[str, ...]] = ("history", "_run")

    def __init__(self, run: Callable[[list[list[float]]], Sequence[Any]], n_inputs: int) -> None:
        self._run = run
        self.history: list[list[float]] = [[] for _ in range(n_inputs)]

    def update(self, *values: float) -> tuple[float, ...]:
        for column, value in zip(self.history, values):
            column.append(value)
        outputs = self._run(self.history)
        return tuple(float(out[-1]) for out in outputs)

    def state_slots(self) -> tuple[str, ...]:
        return ("history",)

    def plain_state(self) -> tuple[object, ...]:
        return (self.history,)

    def to_state(self) -> list[Any]:
        return [[list(column) for column in self.history]]

    def load_state(self, state: list[Any]) -> None:
        self.history = [[float(v) for v in column] for column in state[0]]


def _int(params: dict[str, Any], name: str) -> int:
    return int(params[name])


def make_incremental(function: str, params: dict[str, Any]) -> Incremental | None:
    """The exact incremental implementation of a TA-Lib function, or None if there is none."""
    p = params
    if function == "SMA":
        return SMA(_int(p, "timeperiod"))
    if function == "EMA":
        return EMA(_int(p, "timeperiod"))
    if function == "WMA":
        return WMA(_int(p, "timeperiod"))
    if function == "DEMA":
        return DEMA(_int(p, "timeperiod"))
    if function == "TEMA":
        return TEMA(_int(p, "timeperiod"))
    if function == "KAMA":
        return KAMA(_int(p, "timeperiod"))
    if function == "MACD":
        return MACD(_int(p, "fastperiod"), _int(p, "slowperiod"), _int(p, "signalperiod"))
    if function == "RSI":
        return RSI(_int(p, "timeperiod"))
    if function == "MOM":
        return MOM(_int(p, "timeperiod"))
    if function == "ROC":
        return ROC(_int(p, "timeperiod"))
    if function == "WILLR":
        return WILLR(_int(p, "timeperiod"))
    if function == "STOCH" and p["slowk_matype"] == 0 and p["slowd_matype"] == 0:
        return STOCH(_int(p, "fastk_period"), _int(p, "slowk_period"), _int(p, "slowd_period"))
    if function == "CCI":
        return CCI(_int(p, "timeperiod"))
    if function == "MFI":
        return MFI(_int(p, "timeperiod"))
    if function == "AROON":
        return AROON(_int(p, "timeperiod"))
    if function == "ADX":
        return ADX(_int(p, "timeperiod"))
    if function == "ATR":
        return ATR(_int(p, "timeperiod"))
    if function == "NATR":
        return ATR(_int(p, "timeperiod"), normalised=True)
    if function == "STDDEV":
        return STDDEV(_int(p, "timeperiod"), float(p["nbdev"]))
    if function == "VAR" and float(p["nbdev"]) == 1.0:
        return VAR(_int(p, "timeperiod"))
    if function == "BBANDS" and p["matype"] == 0:
        return BBANDS(_int(p, "timeperiod"), float(p["nbdevup"]), float(p["nbdevdn"]))
    if function == "OBV":
        return OBV()
    if function == "AD":
        return AD()
    if function == "ADOSC":
        return ADOSC(_int(p, "fastperiod"), _int(p, "slowperiod"))
    return None
