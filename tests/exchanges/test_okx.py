"""OKX v5 `trades` channel and REST `/market/trades` + `/market/history-trades`, from documented frames."""

import asyncio
import json
import types

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from candleflow.exchanges import okx
from candleflow.exchanges.base import RateLimited
from candleflow.exchanges.ws import Feed
from candleflow.records import Trade

from .fakeserver import FakeExchange
from .fixtures import fixture

RECV = 1_700_000_000_000


def parse(name):
    return okx.parse_frame(fixture("okx", name), RECV)


def test_trade_is_one_exact_trade():
    result = parse("ws_trade_update.json")
    assert result.errors == [] and result.control == [] and result.snapshot is False
    assert result.trades == [Trade(exchange="okx", symbol="BTC/USDT", trade_id="130639474", price=42219.9,
                                   qty=0.12060306, side="buy", ts_ms=1630048897897, recv_ms=RECV)]


def test_several_trades_in_one_message_keep_order():
    result = parse("ws_trade_two.json")
    assert result.trades == [
        Trade(exchange="okx", symbol="ETH/USDC", trade_id="51234001", price=3089.27, qty=1.5, side="sell",
              ts_ms=1732010800120, recv_ms=RECV),
        Trade(exchange="okx", symbol="ETH/USDC", trade_id="51234002", price=3089.3, qty=0.00025, side="buy",
              ts_ms=1732010800121, recv_ms=RECV)]


@pytest.mark.parametrize(("name", "kind"), [
    ("ws_subscribe_ack.json", "subscribed"), ("ws_subscribe_error.json", "error"), ("ws_pong.txt", "pong"),
    ("ws_notice_reconnect.json", "reconnect"), ("ws_channel_conn_count.json", "info"),
    ("ws_tickers_other_channel.json", "ignored"),
])
def test_control_frames_carry_no_trade(name, kind):
    result = parse(name)
    assert result.trades == [] and result.errors == []
    assert [c.kind for c in result.control] == [kind]


def test_plain_text_pong_is_control_but_other_text_is_malformed():
    assert [c.kind for c in okx.parse_frame("pong", RECV).control] == ["pong"]
    assert [e.reason for e in okx.parse_frame("pongg", RECV).errors] == ["invalid_json"]
    assert "60012" in parse("ws_subscribe_error.json").control[0].detail


def test_bad_entry_is_an_error_and_its_neighbour_still_parses():
    result = parse("ws_trade_malformed_price.json")
    assert [e.reason for e in result.errors] == ["invalid_price"]
    assert json.loads(result.errors[0].raw)["tradeId"] == "1"
    assert [(t.trade_id, t.side) for t in result.trades] == [("2", "sell")]


@pytest.mark.parametrize(("name", "reason"), [
    ("ws_trade_missing_price.json", "missing_field"), ("ws_trade_unknown_symbol.json", "unknown_symbol"),
    ("ws_trade_bad_timestamp.json", "invalid_timestamp"), ("ws_trade_truncated.json", "invalid_json"),
])
def test_malformed_frames(name, reason):
    result = parse(name)
    assert result.trades == [] and [e.reason for e in result.errors] == [reason]
    assert result.errors[0].raw


def test_subscribe_and_ping_frames():
    assert okx.subscribe_frames(["BTC/USDT", "ETH/USDC"]) == [
        '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"},{"channel":"trades","instId":"ETH-USDC"}]}']
    assert okx.ping_frame() == "ping" and okx.PING_INTERVAL_S < 30
    assert okx.canonical_symbol("BTC-USDT") == "BTC/USDT" and okx.venue_symbol("ETH/USDC") == "ETH-USDC"


def test_rest_page_is_oldest_first_and_exact():
    page = okx.parse_rest_trades(fixture("okx", "rest_trades_recent.json"), "BTC/USDT", RECV)
    assert page.errors == []
    assert page.trades == [
        Trade(exchange="okx", symbol="BTC/USDT", trade_id="242720720", price=29963.1, qty=0.03, side="buy",
              ts_ms=1654161640001, recv_ms=RECV),
        Trade(exchange="okx", symbol="BTC/USDT", trade_id="242720721", price=29963.1, qty=0.00424, side="buy",
              ts_ms=1654161641568, recv_ms=RECV),
        Trade(exchange="okx", symbol="BTC/USDT", trade_id="242720722", price=29963.2, qty=0.00001, side="sell",
              ts_ms=1654161646974, recv_ms=RECV)]


def test_rest_error_codes():
    with pytest.raises(RateLimited):
        okx.parse_rest_trades(fixture("okx", "rest_trades_rate_limited.json"), "BTC/USDT", RECV)
    with pytest.raises(ValueError, match="51001"):
        okx.parse_rest_trades(fixture("okx", "rest_trades_error.json"), "BTC/USDT", RECV)


def test_rest_fills_merge_like_the_live_channel_aggregates_them():
    fills = okx.parse_rest_trades(fixture("okx", "rest_history_taker_fills.json"), "BTC/USDT", RECV).trades
    assert [t.trade_id for t in fills] == ["130639470", "130639472", "130639473", "130639474", "130639475",
                                           "130639476"]
    merged = okx.merge_taker_fills(fills)
    # 472..474: one taker order at one price, exactly the live message of ws_trade_update.json (count 3)
    live = parse("ws_trade_update.json").trades[0]
    assert [(t.trade_id, t.qty, t.side, t.price) for t in merged] == [
        ("130639470", 0.3, "buy", 42219.9),  # not consecutive with 472: another order
        (live.trade_id, live.qty, live.side, live.price),  # 0.02 + 0.1 + 0.00060306, summed exactly
        ("130639475", 0.01, "sell", 42219.9),  # the other side
        ("130639476", 0.5, "buy", 42220.0)]  # another price
    assert merged[1] == live


def _fetch(handler, **kwargs):
    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await okx.fetch_trades(client, "BTC/USDT", recv_ms=RECV, base_url="http://127.0.0.1:1", **kwargs)

    return asyncio.run(run())


def _venue(seen):
    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append((request.url.path, params))
        if request.url.path.endswith("/history-trades"):
            name = "rest_history_page1.json" if params["after"] == "242720720" else None
            return httpx.Response(200, content=fixture("okx", name) if name else b'{"code":"0","msg":"","data":[]}')
        return httpx.Response(200, content=fixture("okx", "rest_trades_recent.json"))

    return handler


def test_fetch_since_walks_back_through_history_then_returns_oldest_first():
    seen = []
    page = _fetch(_venue(seen), since_ms=1654161635000)
    assert [t.trade_id for t in page.trades] == ["242720719", "242720720", "242720721", "242720722"]
    assert page.next_cursor == "242720722"
    assert seen == [("/api/v5/market/trades", {"instId": "BTC-USDT", "limit": "500"}),
                    ("/api/v5/market/history-trades", {"instId": "BTC-USDT", "type": "1", "after": "242720720",
                                                       "limit": "100"})]


def test_fetch_stops_walking_once_the_requested_point_is_covered():
    seen = []
    page = _fetch(_venue(seen), cursor="242720720")
    assert [t.trade_id for t in page.trades] == ["242720721", "242720722"]
    assert [path for path, _ in seen] == ["/api/v5/market/trades"]  # the recent page reaches back far enough
    seen.clear()
    assert [t.trade_id for t in _fetch(_venue(seen), cursor="1").trades][:2] == ["242720718", "242720719"]
    assert len(seen) == 3  # recent, history after 242720720, history after 242720718 (empty: the end)


@pytest.mark.parametrize(("status", "body"), [(429, b"{}"), (200, None)])
def test_rate_limit_is_raised(status, body):
    def handler(request):
        return httpx.Response(status, content=body or fixture("okx", "rest_trades_rate_limited.json"))

    with pytest.raises(RateLimited) as info:
        _fetch(handler, since_ms=0)
    assert info.value.retry_after_s == okx.RATE_LIMIT_WAIT_S


def test_feed_pings_in_plain_text_and_reconnects_on_the_upgrade_notice():
    from .test_ws import run_feed

    fast = types.SimpleNamespace(**{**{n: getattr(okx, n) for n in dir(okx) if not n.startswith("_")},
                                    "PING_INTERVAL_S": 0.1})
    ack = fixture("okx", "ws_subscribe_ack.json").decode()
    scripts = [[("recv", "subscribe"), ("send", ack), ("recv", "ping"), ("recv", "ping"),
                ("send", fixture("okx", "ws_notice_reconnect.json").decode()), ("hold",)],
               [("recv", "subscribe"), ("send", ack), ("hold",)]]
    results, subscribed = [], []
    with FakeExchange(scripts, respond=lambda text: "pong" if text == "ping" else None) as fake:
        feed = Feed(fast, ["BTC/USDT"], ws_url=fake.ws_url, backoff_initial_s=5,
                    on_frame=lambda raw, ms, result: results.append(result), on_subscribed=subscribed.append)
        run_feed(feed, lambda: len(subscribed) >= 2)
    assert fake.received[0][0] == okx.subscribe_frames(["BTC/USDT"])[0] and fake.received[0].count("ping") >= 2
    kinds = [c.kind for r in results for c in r.control]
    assert kinds[:4] == ["subscribed", "pong", "pong", "reconnect"]
    assert "reconnect" in kinds and all(not r.errors for r in results)  # "pong" is never a dead letter
    # the announced disconnect reconnects at once (no 5 s back-off) and counts as a reconnect
    assert subscribed == [False, True] and feed.stats.last_disconnect == "venue asked to reconnect"


def test_parse_command_reads_okx_frames_and_skips_pong():
    from .test_parse_cmd import run_parse

    lines = [fixture("okx", "ws_subscribe_ack.json"), fixture("okx", "ws_pong.txt"),
             fixture("okx", "ws_trade_two.json"), b"{not json", fixture("okx", "ws_trade_malformed_price.json")]
    result = run_parse("okx", b"\n".join(lines) + b"\n")
    assert result.returncode == 0
    trades = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(t["trade_id"], t["symbol"], t["side"]) for t in trades] == [
        ("51234001", "ETH/USDC", "sell"), ("51234002", "ETH/USDC", "buy"), ("2", "BTC/USDT", "sell")]
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("line 4: invalid_json:") and errors[1].startswith("line 5: invalid_price:")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    okx.parse_frame(raw, RECV)


_json_values = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["instId", "tradeId", "px", "sz", "side", "ts", "count"]),
                                _json_values | st.sampled_from(["BTC-USDT", "buy", "sell", "1.5", "1630048897897"]),
                                max_size=7) | _json_values, max_size=3),
       st.sampled_from([{"channel": "trades", "instId": "BTC-USDT"}, {"channel": "tickers"}, None, "x", 1]),
       st.sampled_from([None, "subscribe", "error", "notice", 5]))
def test_parse_never_raises_on_trade_shaped_garbage(entries, arg, event):
    frame = {"arg": arg, "data": entries}
    if event is not None:
        frame["event"] = event
    result = okx.parse_frame(json.dumps(frame).encode(), RECV)
    for trade in result.trades:
        assert trade.price > 0 and trade.qty > 0 and trade.side in ("buy", "sell")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.fixed_dictionaries({"code": st.sampled_from(["0", "50011", "51001", 0]) | _json_values},
                                       optional={"msg": _json_values, "data": st.lists(st.dictionaries(
                                           st.sampled_from(["instId", "tradeId", "px", "sz", "side", "ts"]),
                                           _json_values | st.sampled_from(["buy", "sell", "1.5", "17"]), max_size=6)
                                           | _json_values, max_size=3) | _json_values})
                 .map(lambda body: json.dumps(body).encode())))
def test_rest_parser_only_raises_its_documented_errors(body):
    try:
        page = okx.parse_rest_trades(body, "BTC/USDT", RECV)
    except (RateLimited, ValueError):
        return
    assert all(t.price > 0 and t.qty > 0 for t in page.trades)
    merged = okx.merge_taker_fills(page.trades)
    assert len(merged) <= len(page.trades)
    assert sum(t.qty for t in merged) == pytest.approx(sum(t.qty for t in page.trades))
