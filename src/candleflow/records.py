"""The canonical records of DESIGN.md and their JSON codecs: the bottom layer.

Every service reads and writes exactly these shapes; field names are fixed.
Decoding validates: a missing field, a wrong type, an unknown side, or a price
or quantity that is not a finite number > 0 raises :class:`RecordError`, whose
message names the offending field.

Features rows are open-ended (one column per configured indicator output), so
they travel as plain dicts: the candle part is validated like a Candle, the
indicator part must be floats or nulls.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

EXCHANGES = ("kraken", "binance", "coinbase", "bybit", "okx")
SIDES = ("buy", "sell")
_INF = math.inf


class RecordError(ValueError):
    """A record failed to decode or validate; the message names the field."""


def _require_positive(record: str, field: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{record}.{field} must be a finite number > 0, got {value!r} - at `$.{field}`")


def _require_finite(record: str, field: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{record}.{field} must be finite, got {value!r} - at `$.{field}`")


def _require_non_negative(record: str, field: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{record}.{field} must be a finite number >= 0, got {value!r} - at `$.{field}`")


def _require_text(record: str, field: str, value: str) -> None:
    if not value:
        raise ValueError(f"{record}.{field} must not be empty - at `$.{field}`")


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """One executed trade, normalised. Topic `trades`, key `exchange:symbol`."""

    exchange: str
    symbol: str  # canonical BASE/QUOTE, upper case
    trade_id: str  # the exchange's own id, as text
    price: float
    qty: float  # base-asset quantity
    side: Literal["buy", "sell"]  # taker side
    ts_ms: int  # exchange event time, epoch ms
    recv_ms: int  # wall clock at ingest, epoch ms

    def __post_init__(self) -> None:
        # Every Trade passes through here once, on the hot ingest path: one chained test
        # accepts a valid trade; the checks below only run to name the offending field.
        if (self.exchange and self.symbol and self.trade_id and 0.0 < self.price < _INF and 0.0 < self.qty < _INF
                and self.ts_ms >= 0):
            return
        _require_text("trade", "exchange", self.exchange)
        _require_text("trade", "symbol", self.symbol)
        _require_text("trade", "trade_id", self.trade_id)
        _require_positive("trade", "price", self.price)
        _require_positive("trade", "qty", self.qty)
        if self.ts_ms < 0:
            raise ValueError(f"trade.ts_ms must be >= 0, got {self.ts_ms} - at `$.ts_ms`")

    @property
    def key(self) -> str:
        return trade_key(self.exchange, self.symbol)


class Candle(msgspec.Struct, frozen=True, kw_only=True):
    """OHLCV of one window `[start_ms, end_ms)`. Topic `candles`."""

    exchange: str
    symbol: str
    timeframe: str
    start_ms: int
    end_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    vwap: float
    trades: int
    buy_volume: float
    gap_fill: bool

    def __post_init__(self) -> None:
        # Every candle the features service reads passes through here: one chained test accepts
        # a valid candle (NaN fails every comparison); the checks below only name the offending field.
        if (self.exchange and self.symbol and self.timeframe and 0.0 < self.open < _INF and 0.0 < self.high < _INF
                and 0.0 < self.low < _INF and 0.0 < self.close < _INF and 0.0 < self.vwap < _INF
                and 0.0 <= self.volume < _INF and 0.0 <= self.quote_volume < _INF and 0.0 <= self.buy_volume < _INF
                and self.end_ms > self.start_ms and self.trades >= 0):
            return
        for field in ("exchange", "symbol", "timeframe"):
            _require_text("candle", field, getattr(self, field))
        for field in ("open", "high", "low", "close", "vwap"):
            _require_positive("candle", field, getattr(self, field))
        for field in ("volume", "quote_volume", "buy_volume"):
            _require_non_negative("candle", field, getattr(self, field))
        if self.end_ms <= self.start_ms:
            raise ValueError(f"candle.end_ms must be > start_ms, got {self.end_ms} <= {self.start_ms} - at `$.end_ms`")
        if self.trades < 0:
            raise ValueError(f"candle.trades must be >= 0, got {self.trades} - at `$.trades`")

    @property
    def key(self) -> str:
        return candle_key(self.exchange, self.symbol, self.timeframe)


CANDLE_FIELDS: tuple[str, ...] = Candle.__struct_fields__
TRADE_FIELDS: tuple[str, ...] = Trade.__struct_fields__
# Non-indicator columns a Features row may carry besides the candle's.
FEATURES_META_FIELDS: tuple[str, ...] = ("provisional",)


def trade_key(exchange: str, symbol: str) -> str:
    return f"{exchange}:{symbol}"


def candle_key(exchange: str, symbol: str, timeframe: str) -> str:
    return f"{exchange}:{symbol}:{timeframe}"


_encoder = msgspec.json.Encoder()
_trade_decoder = msgspec.json.Decoder(Trade)
_candle_decoder = msgspec.json.Decoder(Candle)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])


def _decode(decoder: msgspec.json.Decoder, raw: bytes | str, record: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RecordError(f"invalid {record}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RecordError(f"invalid {record}: not valid JSON ({exc})") from None


def encode(record: Trade | Candle | dict[str, Any]) -> bytes:
    """JSON bytes of any record (Trade, Candle or a Features dict)."""
    return _encoder.encode(record)


def decode_trade(raw: bytes | str) -> Trade:
    return _decode(_trade_decoder, raw, "trade")


def decode_candle(raw: bytes | str) -> Candle:
    return _decode(_candle_decoder, raw, "candle")


def candle_from_dict(data: dict[str, Any]) -> Candle:
    """Validate a dict (e.g. a Quix message value) as a Candle."""
    try:
        return msgspec.convert(data, Candle)
    except msgspec.ValidationError as exc:
        raise RecordError(f"invalid candle: {exc}") from None


def trade_from_dict(data: dict[str, Any]) -> Trade:
    try:
        return msgspec.convert(data, Trade)
    except msgspec.ValidationError as exc:
        raise RecordError(f"invalid trade: {exc}") from None


def to_dict(record: Trade | Candle) -> dict[str, Any]:
    return msgspec.structs.asdict(record)


def validate_features(row: dict[str, Any]) -> dict[str, Any]:
    """Check a Features row: a valid candle plus float-or-null indicator outputs."""
    candle_from_dict({k: row[k] for k in CANDLE_FIELDS if k in row})
    for name, value in row.items():
        if name in CANDLE_FIELDS or name in FEATURES_META_FIELDS:
            continue
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"invalid features: {name} must be a number or null, got {type(value).__name__} - at `$.{name}`")
        if not math.isfinite(value):
            raise RecordError(f"invalid features: {name} must be finite or null, got {value!r} - at `$.{name}`")
    return row


def decode_features(raw: bytes | str) -> dict[str, Any]:
    row = _decode(_dict_decoder, raw, "features")
    return validate_features(row)
