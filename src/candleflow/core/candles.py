"""Incremental OHLCV candles: one trade in at a time, closed candles out when the watermark passes.

Pure: no Kafka, no files. The streaming service drives one
:class:`CandleAggregator` per market (``exchange:symbol``); the state of an
aggregator is a plain JSON-able dict (:meth:`CandleAggregator.to_state` /
:meth:`CandleAggregator.from_state`), so a state store can keep it, and the
floats in it round-trip exactly through JSON text.

The rules (shared with the batch path, ``candleflow.core.candles_batch``):

- the window of a trade for a timeframe of ``tf`` ms is
  ``[ts - ts % tf, ts - ts % tf + tf)``; every timeframe is aggregated from the
  trades directly, independently of the others;
- open / close are the prices of the first / last trade by ``ts_ms``, ties by
  arrival; high / low are the max / min price;
- ``volume``, ``quote_volume`` (price·qty) and ``buy_volume`` (qty of taker
  buys) are plain sequential float64 sums starting from 0.0, in arrival order.
  That is the batch path's order (stable sort on ``ts_ms``) whenever the
  trades of a window arrive in ``ts_ms`` order, the normal case; a trade that
  arrives out of order inside an open window is still merged (open, close,
  high, low and the count stay exact) but its sums are added in arrival order;
- ``vwap = quote_volume / volume``;
- a window is *closed* once ``end + grace <= watermark``. The caller owns the
  watermark (the service takes it from its input log: the largest trade time
  or wall-clock tick seen on the partition) and passes it to
  :meth:`CandleAggregator.close_until`. A trade for a closed window is late:
  it is not merged (:class:`AddResult` names the timeframes where it was late);
- after a market's first candle, every closed window without trades is a gap
  fill: open = high = low = close = vwap = the previous close, volumes 0,
  ``trades = 0``, ``gap_fill = True``. Nothing is emitted before the first trade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from candleflow.config import timeframe_ms
from candleflow.records import Candle, Trade

STATE_VERSION = 1

# Index of each field in an open window's list (lists, not objects: a window is
# touched once per trade, and the list is its serialised form as well).
_START, _OPEN, _HIGH, _LOW, _CLOSE, _VOLUME, _QUOTE, _BUY, _TRADES, _FIRST_TS, _LAST_TS = range(11)


@dataclass(frozen=True, slots=True)
class AddResult:
    """What happened to one trade: the timeframes it was merged into and those where it was late."""

    merged: tuple[str, ...]
    late: tuple[str, ...]

    @property
    def is_late(self) -> bool:
        return bool(self.late)


class _Timeframe:
    """One timeframe of one market: its open windows and the last closed candle."""

    __slots__ = ("name", "ms", "grace_ms", "windows", "last_start", "last_close")

    def __init__(self, name: str, grace_ms: int) -> None:
        self.name = name
        self.ms = timeframe_ms(name)
        self.grace_ms = grace_ms
        # start_ms -> window list (see the _START.. indices); usually one or two entries.
        self.windows: dict[int, list[Any]] = {}
        self.last_start: int | None = None  # start of the last candle emitted
        self.last_close: float | None = None  # its close, the price of the next gap fill


class CandleAggregator:
    """Candles of one market (exchange, symbol) for several timeframes at once."""

    def __init__(self, exchange: str, symbol: str, timeframes: Sequence[str], grace_ms: int = 2_000,
                 watermark_ms: int | None = None) -> None:
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        if not timeframes:
            raise ValueError("at least one timeframe is required")
        self.exchange = exchange
        self.symbol = symbol
        self.grace_ms = grace_ms
        self.timeframes = [_Timeframe(tf, grace_ms) for tf in timeframes]
        # Windows ending at or before watermark - grace are closed.
        self.watermark_ms = watermark_ms

    # --- trades in ------------------------------------------------------------------

    def add(self, trade: Trade) -> AddResult:
        """Merge a trade of this market into the open window of each timeframe (unless closed there)."""
        ts, price, qty = trade.ts_ms, trade.price, trade.qty
        is_buy = trade.side == "buy"
        watermark = self.watermark_ms
        merged: list[str] = []
        late: list[str] = []
        for tf in self.timeframes:
            start = ts - ts % tf.ms
            if watermark is not None and start + tf.ms + tf.grace_ms <= watermark:
                late.append(tf.name)
                continue
            window = tf.windows.get(start)
            if window is None:
                tf.windows[start] = [start, price, price, price, price, 0.0 + qty, 0.0 + price * qty,
                                     0.0 + qty if is_buy else 0.0, 1, ts, ts]
            else:
                if price > window[_HIGH]:
                    window[_HIGH] = price
                if price < window[_LOW]:
                    window[_LOW] = price
                if ts < window[_FIRST_TS]:  # strictly earlier: on a tie the first arrival stays open
                    window[_FIRST_TS] = ts
                    window[_OPEN] = price
                if ts >= window[_LAST_TS]:  # on a tie the last arrival is the close
                    window[_LAST_TS] = ts
                    window[_CLOSE] = price
                window[_VOLUME] += qty
                window[_QUOTE] += price * qty
                if is_buy:
                    window[_BUY] += qty
                window[_TRADES] += 1
            merged.append(tf.name)
        return AddResult(tuple(merged), tuple(late))

    # --- candles out ----------------------------------------------------------------

    def close_until(self, watermark_ms: int) -> list[Candle]:
        """Close every window with ``end + grace <= watermark_ms``: its candle and the gap fills before it.

        Candles come out per timeframe (in the configured order), each timeframe in start order.
        The watermark never goes back: a smaller one than already seen changes nothing.
        """
        if self.watermark_ms is not None and watermark_ms <= self.watermark_ms:
            return []
        self.watermark_ms = watermark_ms
        out: list[Candle] = []
        for tf in self.timeframes:
            # Windows starting at or before `last_closable` are closed.
            last_closable = watermark_ms - tf.grace_ms - tf.ms
            if tf.last_start is None:
                if not tf.windows:
                    continue  # no trade yet: no candles, not even gap fills
                start = min(tf.windows)
            else:
                start = tf.last_start + tf.ms
            while start <= last_closable:
                window = tf.windows.pop(start, None)
                candle = self._gap_fill(tf, start) if window is None else self._candle(tf, window, gap_fill=False)
                out.append(candle)
                tf.last_start = start
                tf.last_close = candle.close
                start += tf.ms
        return out

    def open_candles(self) -> list[Candle]:
        """The still-open windows as provisional candles (for live views); the state is unchanged."""
        return [self._candle(tf, tf.windows[start], gap_fill=False)
                for tf in self.timeframes for start in sorted(tf.windows)]

    def _candle(self, tf: _Timeframe, w: list[Any], gap_fill: bool) -> Candle:
        return Candle(exchange=self.exchange, symbol=self.symbol, timeframe=tf.name, start_ms=w[_START],
                      end_ms=w[_START] + tf.ms, open=w[_OPEN], high=w[_HIGH], low=w[_LOW], close=w[_CLOSE],
                      volume=w[_VOLUME], quote_volume=w[_QUOTE], vwap=w[_QUOTE] / w[_VOLUME], trades=w[_TRADES],
                      buy_volume=w[_BUY], gap_fill=gap_fill)

    def _gap_fill(self, tf: _Timeframe, start: int) -> Candle:
        price = tf.last_close
        assert price is not None  # gap fills only follow a real candle
        return Candle(exchange=self.exchange, symbol=self.symbol, timeframe=tf.name, start_ms=start,
                      end_ms=start + tf.ms, open=price, high=price, low=price, close=price, volume=0.0,
                      quote_volume=0.0, vwap=price, trades=0, buy_volume=0.0, gap_fill=True)

    # --- state ----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue: plain JSON types only."""
        return {
            "v": STATE_VERSION,
            "exchange": self.exchange,
            "symbol": self.symbol,
            "grace_ms": self.grace_ms,
            "watermark_ms": self.watermark_ms,
            "timeframes": {tf.name: {"last_start": tf.last_start, "last_close": tf.last_close,
                                     "windows": [tf.windows[s] for s in sorted(tf.windows)]}
                           for tf in self.timeframes},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], timeframes: Sequence[str] | None = None,
                   grace_ms: int | None = None) -> CandleAggregator:
        """Rebuild an aggregator. Timeframes not in the state (a configuration change) start fresh,
        timeframes in the state but not in `timeframes` are dropped."""
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unknown candle state version {state.get('v')!r}")
        saved = state["timeframes"]
        names = list(saved) if timeframes is None else list(timeframes)
        agg = cls(state["exchange"], state["symbol"], names,
                  state["grace_ms"] if grace_ms is None else grace_ms, state["watermark_ms"])
        for tf in agg.timeframes:
            entry = saved.get(tf.name)
            if entry is None:
                continue
            tf.last_start = entry["last_start"]
            tf.last_close = entry["last_close"]
            # Copies: the caller's dict stays untouched when this aggregator moves on.
            tf.windows = {w[_START]: list(w) for w in entry["windows"]}
        return agg


def window_start(ts_ms: int, timeframe: str) -> int:
    """Start of the window of `timeframe` that holds `ts_ms` (UTC epoch aligned)."""
    tf = timeframe_ms(timeframe)
    return ts_ms - ts_ms % tf
