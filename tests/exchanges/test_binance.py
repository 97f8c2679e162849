"""Binance `<symbol>@trade` (raw and combined streams) and REST history, from documented frames."""

import asyncio
import json

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from candleflow.exchanges import binance
from candleflow.exchanges.base import RateLimited
from candleflow.records import Trade

from .fixtures import fixture

RECV = 1_700_000_000_000


def parse(name):
    return binance.parse_frame(fixture("binance", name), RECV)


def test_raw_stream_trade_buyer_maker_means_taker_sold():
    result = parse("ws_trade_raw.json")
    assert result.errors == [] and result.control == []
    assert result.trades == [Trade(exchange="binance", symbol="BNB/BTC", trade_id="12345", price=0.001, qty=100.0,
                                   side="sell", ts_ms=1672515782136, recv_ms=RECV)]


def test_combined_stream_trade():
    result = parse("ws_trade_combined.json")
    assert result.trades == [Trade(exchange="binance", symbol="BTC/USDT", trade_id="3370034463", price=16541.46,
                                   qty=0.00062, side="buy", ts_ms=1672515782136, recv_ms=RECV)]


@pytest.mark.parametrize(("name", "kind"), [
    ("ws_subscribe_ack.json", "subscribed"), ("ws_subscribe_error.json", "error"),
    ("ws_aggtrade_other_channel.json", "ignored"),
])
def test_control_frames(name, kind):
    result = parse(name)
    assert result.trades == [] and result.errors == [] and [c.kind for c in result.control] == [kind]


@pytest.mark.parametrize(("name", "reason"), [
    ("ws_trade_malformed_price.json", "invalid_price"), ("ws_trade_zero_qty.json", "invalid_qty"),
    ("ws_trade_unknown_symbol.json", "unknown_symbol"), ("ws_trade_missing_price.json", "missing_field"),
])
def test_bad_trades_are_errors_with_raw_bytes(name, reason):
    result = parse(name)
    assert result.trades == [] and [e.reason for e in result.errors] == [reason]
    assert result.errors[0].raw == fixture("binance", name)


def test_subscribe_frames():
    assert binance.subscribe_frames(["BTC/USDT", "ETH/USDT"]) == [
        '{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":1}']
    assert binance.combined_url(["BTC/USDT"]) == "wss://stream.binance.com:9443/stream?streams=btcusdt@trade"
    assert binance.ping_frame() is None and binance.MAX_CONNECTION_S < 24 * 3600


def test_rest_page_and_cursor():
    page = binance.parse_rest_trades(fixture("binance", "rest_trades_page1.json"), "BNB/BTC", RECV)
    assert page.trades == [
        Trade(exchange="binance", symbol="BNB/BTC", trade_id="28457", price=4.000001, qty=12.0, side="sell",
              ts_ms=1499865549590, recv_ms=RECV),
        Trade(exchange="binance", symbol="BNB/BTC", trade_id="28458", price=4.000002, qty=1.5, side="buy",
              ts_ms=1499865549591, recv_ms=RECV)]
    assert page.next_cursor == "28459"


def test_fetch_from_time_finds_first_id_then_pages_by_id():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.url.params)))
        if request.url.path.endswith("aggTrades"):
            return httpx.Response(200, content=fixture("binance", "rest_aggtrades_page1.json"))
        return httpx.Response(200, content=fixture("binance", "rest_trades_page1.json"))

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await binance.fetch_trades(client, "BNB/BTC", since_ms=1498793709153, recv_ms=RECV,
                                              base_url="http://127.0.0.1:1")

    page = asyncio.run(run())
    assert len(page.trades) == 2
    assert seen == [("/api/v3/aggTrades", {"symbol": "BNBBTC", "startTime": "1498793709153", "limit": "1"}),
                    ("/api/v3/historicalTrades", {"symbol": "BNBBTC", "limit": "1000", "fromId": "27781"})]


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_carries_retry_after(status):
    def handler(request):
        return httpx.Response(status, headers={"Retry-After": "7"},
                              content=fixture("binance", "rest_trades_rate_limited.json"))

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await binance.fetch_trades(client, "BTC/USDT", cursor="1", recv_ms=RECV, base_url="http://127.0.0.1:1")

    with pytest.raises(RateLimited) as info:
        asyncio.run(run())
    assert info.value.retry_after_s == 7.0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    binance.parse_frame(raw, RECV)


_json_values = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["e", "s", "t", "p", "q", "T", "m", "E", "stream", "data", "id", "code"]),
                       _json_values | st.just("trade") | st.just("BTCUSDT"), max_size=10),
       st.booleans())
def test_parse_never_raises_on_trade_shaped_garbage(event, combined):
    frame = {"stream": "btcusdt@trade", "data": event} if combined else event
    result = binance.parse_frame(json.dumps(frame).encode(), RECV)
    for trade in result.trades:
        assert trade.price > 0 and trade.qty > 0
