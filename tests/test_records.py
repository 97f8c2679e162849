"""Trade, Candle and Features records: round trips and validation that names the field."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candleflow.records import (
    CANDLE_FIELDS,
    Candle,
    RecordError,
    Trade,
    candle_key,
    decode_candle,
    decode_features,
    decode_trade,
    encode,
    to_dict,
    trade_key,
)

TRADE = {
    "exchange": "kraken", "symbol": "BTC/USD", "trade_id": "123456", "price": 64123.5, "qty": 0.0125,
    "side": "buy", "ts_ms": 1_700_000_000_123, "recv_ms": 1_700_000_000_150,
}
CANDLE = {
    "exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "start_ms": 1_700_000_040_000,
    "end_ms": 1_700_000_100_000, "open": 100.0, "high": 101.5, "low": 99.5, "close": 101.0, "volume": 3.0,
    "quote_volume": 301.0, "vwap": 100.333333, "trades": 3, "buy_volume": 2.0, "gap_fill": False,
}


def test_trade_round_trip_keeps_every_field() -> None:
    trade = decode_trade(json.dumps(TRADE))
    assert to_dict(trade) == TRADE
    assert decode_trade(encode(trade)) == trade
    assert trade.key == trade_key("kraken", "BTC/USD") == "kraken:BTC/USD"


def test_candle_round_trip_keeps_every_field() -> None:
    candle = decode_candle(json.dumps(CANDLE))
    assert to_dict(candle) == CANDLE
    assert decode_candle(encode(candle)) == candle
    assert candle.key == candle_key("kraken", "BTC/USD", "1m") == "kraken:BTC/USD:1m"
    assert tuple(CANDLE) == CANDLE_FIELDS  # field order is the wire order


def test_features_row_keeps_indicators_and_nulls() -> None:
    row = {**CANDLE, "rsi_14": 55.5, "ema_21": None, "provisional": True}
    assert decode_features(json.dumps(row)) == row


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("price", 0, "price"),
        ("price", -1.5, "price"),
        ("price", 1e999, "price"),  # JSON overflow -> inf
        ("qty", 0.0, "qty"),
        ("qty", "1.0", "qty"),
        ("side", "long", "side"),
        ("side", None, "side"),
        ("ts_ms", 1.5, "ts_ms"),
        ("ts_ms", -1, "ts_ms"),
        ("trade_id", 42, "trade_id"),
        ("symbol", "", "symbol"),
        ("exchange", True, "exchange"),
    ],
)
def test_invalid_trade_field_is_named(field: str, value: object, fragment: str) -> None:
    raw = json.dumps({**TRADE, field: value}).replace("Infinity", "1e999")
    with pytest.raises(RecordError, match=fragment):
        decode_trade(raw)


@pytest.mark.parametrize("field", list(TRADE))
def test_missing_trade_field_is_named(field: str) -> None:
    data = {k: v for k, v in TRADE.items() if k != field}
    with pytest.raises(RecordError, match=f"`{field}`"):
        decode_trade(json.dumps(data))


def test_nan_is_not_json_and_is_rejected() -> None:
    with pytest.raises(RecordError, match="not valid JSON"):
        decode_trade(json.dumps(TRADE).replace("64123.5", "NaN"))


def test_nan_price_built_in_python_is_rejected() -> None:
    with pytest.raises(ValueError, match="price"):
        Trade(**{**TRADE, "price": math.nan})


@pytest.mark.parametrize(
    ("field", "value"),
    [("high", -1.0), ("volume", -0.1), ("trades", -1), ("end_ms", 1_700_000_040_000), ("gap_fill", "no"),
     ("vwap", 0.0), ("timeframe", "")],
)
def test_invalid_candle_field_is_named(field: str, value: object) -> None:
    with pytest.raises(RecordError, match=field):
        decode_candle(json.dumps({**CANDLE, field: value}))


@pytest.mark.parametrize(("field", "value"), [("close", math.nan), ("low", math.inf), ("volume", math.nan),
                                              ("buy_volume", math.inf), ("open", -math.inf), ("symbol", "")])
def test_non_finite_candle_built_in_python_is_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Candle(**{**CANDLE, field: value})


@pytest.mark.parametrize(("name", "value"), [("rsi_14", "55"), ("rsi_14", True), ("ema_21", [1.0])])
def test_features_indicator_must_be_number_or_null(name: str, value: object) -> None:
    with pytest.raises(RecordError, match=name):
        decode_features(json.dumps({**CANDLE, name: value}))


def test_features_candle_part_is_validated() -> None:
    with pytest.raises(RecordError, match="close"):
        decode_features(json.dumps({**CANDLE, "close": -2.0, "rsi_14": 50.0}))


def test_gap_fill_candle_with_zero_volume_is_valid() -> None:
    candle = Candle(**{**CANDLE, "volume": 0.0, "quote_volume": 0.0, "buy_volume": 0.0, "trades": 0,
                       "gap_fill": True, "open": 101.0, "high": 101.0, "low": 101.0, "vwap": 101.0})
    assert candle.gap_fill and candle.volume == 0.0


# JSON has no NaN or infinity: json.dumps would write invalid JSON, which names no field.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(TRADE)), value=_json_values)
def test_any_single_field_corruption_is_either_valid_or_a_named_error(field: str, value: object) -> None:
    raw = json.dumps({**TRADE, field: value})
    try:
        trade = decode_trade(raw)
    except RecordError as exc:
        assert field in str(exc)
    else:  # accepted: then it must satisfy every rule
        assert trade.price > 0 and math.isfinite(trade.price)
        assert trade.qty > 0 and math.isfinite(trade.qty)
        assert trade.side in ("buy", "sell")
        assert isinstance(trade.ts_ms, int) and trade.ts_ms >= 0


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_exceptions(raw: bytes) -> None:
    for decode in (decode_trade, decode_candle, decode_features):
        try:
            decode(raw)
        except RecordError:
            pass
