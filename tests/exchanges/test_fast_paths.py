"""Kraken's and Binance's fast paths give exactly what the general parser gives, for any frame.

The fast path only runs for frames that start with the usual trade prefix; the same
frame with one leading space is still the same JSON but takes the general path, so
comparing the two results checks the fast path against the general one.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from candleflow.exchanges import binance, kraken
from candleflow.exchanges.fastpath import KRAKEN_TRADE_PREFIX

_numbers = (st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e12)
            | st.integers(min_value=-5, max_value=10**9)
            | st.sampled_from(["1.5", "0", "-1", "abc", "", None]))
_sides = st.sampled_from(["buy", "sell", "BUY", "hold", None])
_kraken_symbols = st.sampled_from(["BTC/USD", "XBT/USD", "ETH/EUR", "MATIC/USD", "BTCUSD", "", None])
_timestamps = st.sampled_from([
    "2023-09-25T07:49:37.708706Z", "2023-09-25T07:49:37.708Z", "2023-09-25T07:49:37.123456789Z",
    "2023-09-25T07:49:37Z", "2023-09-25 07:49:37", "not a time", "", None,
])


def _outcome(result) -> tuple:
    return ([(t.exchange, t.symbol, t.trade_id, t.price, t.qty, t.side, t.ts_ms, t.recv_ms) for t in result.trades],
            result.snapshot, [(e.reason, e.detail) for e in result.errors],
            [(c.kind, c.detail) for c in result.control])


def _drop_none(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if v is not None}


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.fixed_dictionaries({
    "symbol": _kraken_symbols, "side": _sides, "price": _numbers, "qty": _numbers, "ord_type": st.just("market"),
    "trade_id": st.integers(min_value=0, max_value=10**12) | st.sampled_from(["x1", None]),
    "timestamp": _timestamps,
}), min_size=1, max_size=4), kind=st.sampled_from(["update", "snapshot"]))
def test_kraken_fast_path_equals_the_general_path(entries: list[dict], kind: str) -> None:
    frame = json.dumps({"channel": "trade", "type": kind, "data": [_drop_none(e) for e in entries]},
                       separators=(",", ":")).encode()
    assert frame.startswith(KRAKEN_TRADE_PREFIX)  # the fast path is tried
    assert _outcome(kraken.parse_frame(frame, 7)) == _outcome(kraken.parse_frame(b" " + frame, 7))


@settings(max_examples=300, deadline=None)
@given(event=st.fixed_dictionaries({
    "E": st.integers(min_value=0, max_value=2 * 10**12),
    "s": st.sampled_from(["BTCUSDT", "ETHBTC", "BTCXYZ", "", None]),
    "t": st.integers(min_value=0, max_value=10**12) | st.sampled_from(["12", None]),
    "p": _numbers, "q": _numbers,
    "T": st.integers(min_value=-1, max_value=2 * 10**12) | st.sampled_from(["1700000000000", None]),
    "m": st.booleans() | st.none(), "M": st.just(True),
}))
def test_binance_fast_path_equals_the_general_path(event: dict) -> None:
    frame = json.dumps({"e": "trade", **_drop_none(event)}, separators=(",", ":")).encode()
    assert frame.startswith(b'{"e":"trade"')
    assert _outcome(binance.parse_frame(frame, 7)) == _outcome(binance.parse_frame(b" " + frame, 7))
