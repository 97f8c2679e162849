"""Bybit v5 `publicTrade` stream and REST `/v5/market/recent-trade`, from documented frames."""

import asyncio
import json
import types

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from candleflow.exchanges import bybit
from candleflow.exchanges.base import RateLimited
from candleflow.exchanges.ws import Feed
from candleflow.records import Trade

from .fakeserver import FakeExchange
from .fixtures import fixture

RECV = 1_700_000_000_000


def parse(name):
    return bybit.parse_frame(fixture("bybit", name), RECV)


def test_linear_trade_with_uuid_id_is_one_exact_trade():
    result = parse("ws_trade_linear.json")
    assert result.errors == [] and result.control == []
    # every publicTrade push is labelled "snapshot" but carries new trades only
    assert result.snapshot is False
    assert result.trades == [Trade(exchange="bybit", symbol="BTC/USDT", trade_id="20f43950-d8dd-5b31-9112-a178eb6023af",
                                   price=16578.5, qty=0.001, side="buy", ts_ms=1672304486865, recv_ms=RECV)]


def test_spot_trades_keep_order_side_and_exponent_quantities():
    result = parse("ws_trade_spot.json")
    assert result.errors == []
    assert result.trades == [
        Trade(exchange="bybit", symbol="ETH/USDC", trade_id="2290000000061666327", price=3089.27, qty=0.01514,
              side="sell", ts_ms=1732010800120, recv_ms=RECV),
        Trade(exchange="bybit", symbol="ETH/USDC", trade_id="2290000000061666328", price=3089.3, qty=0.00025,
              side="buy", ts_ms=1732010800121, recv_ms=RECV)]


@pytest.mark.parametrize(("name", "kind"), [
    ("ws_subscribe_ack.json", "subscribed"), ("ws_subscribe_error.json", "error"), ("ws_pong.json", "pong"),
    ("ws_pong_op.json", "pong"), ("ws_orderbook_other_topic.json", "ignored"),
])
def test_control_frames_carry_no_trade(name, kind):
    result = parse(name)
    assert result.trades == [] and result.errors == []
    assert [c.kind for c in result.control] == [kind]


def test_subscribe_error_names_the_reason():
    assert "handler not found" in parse("ws_subscribe_error.json").control[0].detail


def test_bad_entry_is_an_error_and_its_neighbour_still_parses():
    result = parse("ws_trade_malformed_price.json")
    assert [e.reason for e in result.errors] == ["invalid_price"]
    assert json.loads(result.errors[0].raw)["i"] == "1"
    assert [(t.trade_id, t.side) for t in result.trades] == [("2", "sell")]


@pytest.mark.parametrize(("name", "reason"), [
    ("ws_trade_missing_price.json", "missing_field"), ("ws_trade_unknown_symbol.json", "unknown_symbol"),
    ("ws_trade_invalid_side.json", "invalid_side"), ("ws_trade_truncated.json", "invalid_json"),
])
def test_malformed_frames(name, reason):
    result = parse(name)
    assert result.trades == [] and [e.reason for e in result.errors] == [reason]
    assert result.errors[0].raw


def test_subscribe_frames_are_chunked_by_ten_and_ping():
    symbols = [f"C{n}/USDT" for n in range(12)]
    frames = [json.loads(f) for f in bybit.subscribe_frames(symbols)]
    assert [f["args"] for f in frames] == [[f"publicTrade.C{n}USDT" for n in range(10)],
                                          ["publicTrade.C10USDT", "publicTrade.C11USDT"]]
    assert all(f["op"] == "subscribe" for f in frames) and frames[0]["req_id"] != frames[1]["req_id"]
    assert bybit.ping_frame() == '{"op":"ping"}' and bybit.PING_INTERVAL_S == 20.0
    assert bybit.canonical_symbol("BTCUSDT") == "BTC/USDT" and bybit.venue_symbol("ETH/USDC") == "ETHUSDC"


def test_rest_page_is_oldest_first_and_exact():
    page = bybit.parse_rest_trades(fixture("bybit", "rest_trades_page1.json"), "BTC/USDT", RECV)
    assert page.errors == [] and page.next_cursor is None
    assert page.trades == [
        Trade(exchange="bybit", symbol="BTC/USDT", trade_id="2100000000007764263", price=16618.49, qty=0.001,
              side="buy", ts_ms=1672052955758, recv_ms=RECV),
        Trade(exchange="bybit", symbol="BTC/USDT", trade_id="2100000000007764264", price=16618.49, qty=0.00012,
              side="buy", ts_ms=1672052955758, recv_ms=RECV),
        Trade(exchange="bybit", symbol="BTC/USDT", trade_id="2100000000007764265", price=16618.5, qty=0.5,
              side="sell", ts_ms=1672052955760, recv_ms=RECV)]


def test_rest_bad_row_is_an_error_beside_good_rows():
    page = bybit.parse_rest_trades(fixture("bybit", "rest_trades_bad_row.json"), "BTC/USDT", RECV)
    assert [e.reason for e in page.errors] == ["invalid_price"]
    assert [t.trade_id for t in page.trades] == ["2100000000007764265"]


def test_rest_error_code_is_raised():
    with pytest.raises(ValueError, match="10001"):
        bybit.parse_rest_trades(fixture("bybit", "rest_trades_error.json"), "BTC/USDT", RECV)


def _fetch(handler, **kwargs):
    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await bybit.fetch_trades(client, "BTC/USDT", recv_ms=RECV, base_url="http://127.0.0.1:1",
                                            **kwargs)

    return asyncio.run(run())


def test_fetch_trades_asks_for_the_recent_spot_trades():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.url.params)))
        return httpx.Response(200, content=fixture("bybit", "rest_trades_page1.json"))

    page = _fetch(handler, since_ms=1672052955000)
    assert len(page.trades) == 3 and page.next_cursor is None  # no cursor: one page is all there is
    assert seen == [("/v5/market/recent-trade", {"category": "spot", "symbol": "BTCUSDT", "limit": "60"})]


@pytest.mark.parametrize(("status", "name"), [(200, "rest_trades_rate_limited.json"),
                                              (403, "rest_trades_rate_limited.json"),
                                              (429, "rest_trades_rate_limited.json")])
def test_rate_limit_waits_until_the_announced_reset(status, name):
    def handler(request):
        return httpx.Response(status, headers={"X-Bapi-Limit-Reset-Timestamp": str(RECV + 3000)},
                              content=fixture("bybit", name))

    with pytest.raises(RateLimited) as info:
        _fetch(handler, since_ms=0)
    assert info.value.retry_after_s == 3.0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    bybit.parse_frame(raw, RECV)


_json_values = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["T", "s", "S", "v", "p", "i", "L", "BT"]),
                                _json_values | st.sampled_from(["BTCUSDT", "Buy", "Sell", "1.5"]), max_size=8)
                | _json_values, max_size=3),
       st.sampled_from(["publicTrade.BTCUSDT", "orderbook.1.BTCUSDT", None]), st.sampled_from([None, "subscribe"]))
def test_parse_never_raises_on_trade_shaped_garbage(entries, topic, op):
    frame = {"topic": topic, "type": "snapshot", "data": entries}
    if op:
        frame["op"] = op
    result = bybit.parse_frame(json.dumps(frame).encode(), RECV)
    for trade in result.trades:
        assert trade.price > 0 and trade.qty > 0 and trade.side in ("buy", "sell")


def test_feed_pings_with_op_ping_and_the_pong_is_control():
    from .test_ws import run_feed

    fast = types.SimpleNamespace(**{**{n: getattr(bybit, n) for n in dir(bybit) if not n.startswith("_")},
                                    "PING_INTERVAL_S": 0.1})
    pong = fixture("bybit", "ws_pong.json").decode()
    scripts = [[("recv", "subscribe"), ("send", fixture("bybit", "ws_subscribe_ack.json").decode()), ("hold",)]]
    results = []
    with FakeExchange(scripts, respond=lambda text: pong if text == '{"op":"ping"}' else None) as fake:
        feed = Feed(fast, ["BTC/USDT"], ws_url=fake.ws_url, on_frame=lambda raw, ms, result: results.append(result))
        run_feed(feed, lambda: sum(c.kind == "pong" for r in results for c in r.control) >= 2)
    assert json.loads(fake.received[0][0]) == {"op": "subscribe", "args": ["publicTrade.BTCUSDT"], "req_id": "trades-1"}
    assert fake.received[0].count('{"op":"ping"}') >= 2
    assert [c.kind for r in results for c in r.control][:3] == ["subscribed", "pong", "pong"]
    assert all(not r.errors and not r.trades for r in results) and feed.stats.reconnects == 0


def test_parse_command_reads_bybit_frames():
    from .test_parse_cmd import run_parse

    lines = [fixture("bybit", "ws_subscribe_ack.json"), fixture("bybit", "ws_pong.json"),
             fixture("bybit", "ws_trade_spot.json"), b"{not json", fixture("bybit", "ws_trade_malformed_price.json")]
    result = run_parse("bybit", b"\n".join(lines) + b"\n")
    assert result.returncode == 0
    trades = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(t["trade_id"], t["symbol"], t["side"]) for t in trades] == [
        ("2290000000061666327", "ETH/USDC", "sell"), ("2290000000061666328", "ETH/USDC", "buy"),
        ("2", "BTC/USDT", "sell")]
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("line 4: invalid_json:") and errors[1].startswith("line 5: invalid_price:")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.fixed_dictionaries({"retCode": st.integers(-1, 20000) | st.text(max_size=5)},
                                       optional={"retMsg": _json_values,
                                                 "result": st.fixed_dictionaries({}, optional={"list": st.lists(
                                                     st.dictionaries(st.sampled_from(
                                                         ["execId", "symbol", "price", "size", "side", "time"]),
                                                         _json_values | st.sampled_from(["Buy", "Sell", "1.5"]),
                                                         max_size=6) | _json_values, max_size=3)})})
                 .map(lambda body: json.dumps(body).encode())))
def test_rest_parser_only_raises_its_documented_errors(body):
    try:
        page = bybit.parse_rest_trades(body, "BTC/USDT", RECV)
    except (RateLimited, ValueError):
        return
    assert all(t.price > 0 and t.qty > 0 for t in page.trades)
