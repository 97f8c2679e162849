"""Kraken WebSocket v2 `trade` channel and REST `/0/public/Trades`, from documented frames."""

import asyncio

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from candleflow.exchanges import kraken
from candleflow.exchanges.base import RateLimited
from candleflow.records import Trade

from .fixtures import fixture

RECV = 1_700_000_000_000


def parse(name):
    return kraken.parse_frame(fixture("kraken", name), RECV)


def test_update_is_one_exact_trade():
    result = parse("ws_trade_update.json")
    assert result.errors == [] and result.control == [] and result.snapshot is False
    assert result.trades == [Trade(exchange="kraken", symbol="MATIC/USD", trade_id="4665906", price=0.5117,
                                   qty=40.0, side="sell", ts_ms=1695628177708, recv_ms=RECV)]


def test_snapshot_is_flagged_and_keeps_order():
    result = parse("ws_trade_snapshot.json")
    assert result.snapshot is True
    assert [(t.trade_id, t.price, t.qty, t.side, t.ts_ms) for t in result.trades] == [
        ("4665846", 0.5147, 6423.46326, "buy", 1695628116925),
        ("4665847", 0.5147, 1136.19677815, "buy", 1695628176925),
    ]


def test_numbers_are_read_from_their_literal_text_and_xbt_is_btc():
    result = parse("ws_trade_update_precision.json")
    assert result.errors == []
    first, second = result.trades
    assert (first.symbol, first.price, first.qty, first.ts_ms) == ("BTC/USD", 26534.1, 1e-08, 1695628177100)
    # 9 fractional digits truncated to the millisecond; exponent literals are exact
    assert (second.symbol, second.price, second.qty, second.ts_ms) == ("BTC/USD", 100000.0, 0.0015, 1695628177123)
    assert second.side == "sell"


@pytest.mark.parametrize(("name", "kind"), [
    ("ws_subscribe_ack.json", "subscribed"), ("ws_subscribe_error.json", "error"),
    ("ws_heartbeat.json", "heartbeat"), ("ws_pong.json", "pong"), ("ws_status.json", "info"),
])
def test_control_frames_carry_no_trade(name, kind):
    result = parse(name)
    assert result.trades == [] and result.errors == []
    assert [c.kind for c in result.control] == [kind]


def test_bad_entry_is_an_error_and_its_neighbour_still_parses():
    result = parse("ws_trade_malformed_price.json")
    assert [e.reason for e in result.errors] == ["invalid_price"]
    assert b'"trade_id":1' in result.errors[0].raw
    assert [t.trade_id for t in result.trades] == ["2"]


@pytest.mark.parametrize(("name", "reason"), [
    ("ws_trade_missing_price.json", "missing_field"), ("ws_trade_truncated.json", "invalid_json"),
])
def test_malformed_frames(name, reason):
    result = parse(name)
    assert result.trades == [] and [e.reason for e in result.errors] == [reason]
    assert result.errors[0].raw


def test_subscribe_and_ping_frames():
    frames = kraken.subscribe_frames(["BTC/USD", "ETH/USD"])
    assert frames == ['{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD","ETH/USD"],'
                      '"snapshot":true}}']
    assert kraken.ping_frame() == '{"method":"ping"}'
    assert kraken.rest_pair("BTC/USD") == "XBTUSD"
    assert kraken.canonical_symbol("XBT/EUR") == "BTC/EUR"


def test_rest_page_parses_exactly():
    page = kraken.parse_rest_trades(fixture("kraken", "rest_trades_page1.json"), "BTC/USD", RECV)
    assert page.errors == [] and page.next_cursor == "1688669599000500000"
    assert page.trades[0] == Trade(exchange="kraken", symbol="BTC/USD", trade_id="61044952", price=30243.4,
                                   qty=0.34507674, side="buy", ts_ms=1688669597827, recv_ms=RECV)
    assert [(t.trade_id, t.side, t.ts_ms) for t in page.trades[1:]] == [
        ("61044953", "sell", 1688669598280), ("61044954", "sell", 1688669599000)]


def test_rest_rate_limit_is_raised():
    with pytest.raises(RateLimited):
        kraken.parse_rest_trades(fixture("kraken", "rest_trades_rate_limited.json"), "BTC/USD", RECV)


def test_fetch_trades_sends_the_ns_cursor():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, content=fixture("kraken", "rest_trades_page1.json"))

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            first = await kraken.fetch_trades(client, "BTC/USD", since_ms=1688669597000, recv_ms=RECV,
                                              base_url="http://127.0.0.1:1")
            await kraken.fetch_trades(client, "BTC/USD", cursor=first.next_cursor, recv_ms=RECV,
                                      base_url="http://127.0.0.1:1")
        return first

    first = asyncio.run(run())
    assert len(first.trades) == 3
    assert seen == [{"pair": "XBTUSD", "since": "1688669597000000000"},
                    {"pair": "XBTUSD", "since": "1688669599000500000"}]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    kraken.parse_frame(raw, RECV)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"channel": st.sampled_from(["trade", "heartbeat", "status"]),
                              "type": st.sampled_from(["snapshot", "update"]),
                              "data": st.lists(st.dictionaries(
                                  st.sampled_from(["symbol", "side", "price", "qty", "trade_id", "timestamp"]),
                                  _json_values), max_size=3)}))
def test_parse_never_raises_on_trade_shaped_garbage(frame):
    import json
    result = kraken.parse_frame(json.dumps(frame).encode(), RECV)
    for trade in result.trades:
        assert trade.price > 0 and trade.qty > 0
