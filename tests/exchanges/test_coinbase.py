"""Coinbase Advanced Trade `market_trades` / `heartbeats` and Exchange REST trade history, from documented frames."""

import asyncio
import json

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from candleflow.exchanges import coinbase
from candleflow.exchanges.base import RateLimited
from candleflow.exchanges.gapfill import Pacer, fill_gap
from candleflow.records import Trade

from .fixtures import fixture

RECV = 1_700_000_000_000


def parse(name, sequence=None):
    return coinbase.parse_frame(fixture("coinbase", name), RECV, sequence=sequence)


def test_documented_update_is_one_exact_trade_with_the_taker_side():
    result = parse("ws_market_trades_update.json")
    assert result.errors == [] and result.control == [] and result.snapshot is False
    # side BUY is the maker's side: the taker sold. The zero-padded id is the REST spelling "0".
    assert result.trades == [Trade(exchange="coinbase", symbol="ETH/USD", trade_id="0", price=1260.01, qty=0.3,
                                   side="sell", ts_ms=1565815347265, recv_ms=RECV)]


def test_snapshot_is_flagged_and_put_in_time_order():
    result = parse("ws_market_trades_snapshot.json")
    assert result.snapshot is True and result.errors == []
    assert [(t.trade_id, t.price, t.qty, t.side, t.ts_ms) for t in result.trades] == [
        ("535478911", 30110.77, 0.01, "sell", 1687552286452),
        ("535478912", 30110.78, 0.00143291, "buy", 1687552286992),
    ]


def test_numbers_from_their_text_and_every_timestamp_form():
    result = parse("ws_market_trades_precision.json")
    assert result.errors == []
    first, second = result.trades
    # 9 fractional digits truncated to the millisecond
    assert (first.price, first.qty, first.ts_ms) == (30110.78, 1e-08, 1687552287123)
    # an offset instead of Z, 3 fractional digits
    assert (second.price, second.qty, second.side, second.ts_ms) == (30111.0, 2.5, "buy", 1687552287999)


def test_json_numbers_are_read_from_their_literal_text_and_other_types_rejected():
    result = parse("ws_market_trades_number_price.json")
    assert [(t.trade_id, t.price, t.qty, t.side) for t in result.trades] == [("8", 30110.1, 0.001, "buy")]
    assert [e.reason for e in result.errors] == ["invalid_price"]  # `true` is not a number


@pytest.mark.parametrize(("name", "kind"), [
    ("ws_subscriptions_ack.json", "subscribed"), ("ws_subscribe_error.json", "error"),
    ("ws_heartbeats.json", "heartbeat"), ("ws_ticker_other_channel.json", "ignored"),
])
def test_control_frames_carry_no_trade(name, kind):
    result = parse(name)
    assert result.trades == [] and result.errors == []
    assert [c.kind for c in result.control] == [kind]


def test_error_message_is_kept():
    assert "ETH-XYZ" in parse("ws_subscribe_error.json").control[0].detail


def test_bad_entry_is_an_error_and_its_neighbour_still_parses():
    result = parse("ws_market_trades_malformed_price.json")
    assert [e.reason for e in result.errors] == ["invalid_price"]
    assert json.loads(result.errors[0].raw)["trade_id"] == "1"
    assert [t.trade_id for t in result.trades] == ["2"]


@pytest.mark.parametrize(("name", "reason"), [
    ("ws_market_trades_missing_price.json", "missing_field"),
    ("ws_market_trades_unknown_symbol.json", "unknown_symbol"),
    ("ws_market_trades_invalid_side.json", "invalid_side"),
    ("ws_market_trades_invalid_time.json", "invalid_timestamp"),
    ("ws_market_trades_truncated.json", "invalid_json"),
])
def test_malformed_frames(name, reason):
    result = parse(name)
    assert result.trades == [] and [e.reason for e in result.errors] == [reason]
    assert result.errors[0].raw


def test_subscribe_frames_and_symbols():
    assert coinbase.subscribe_frames(["BTC/USD", "ETH/USD"]) == [
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"market_trades"}',
        '{"type":"subscribe","channel":"heartbeats"}']
    assert coinbase.ping_frame() is None and coinbase.PING_INTERVAL_S == 0
    assert coinbase.canonical_symbol("ETH-USD") == "ETH/USD" and coinbase.venue_symbol("BTC/USDC") == "BTC-USDC"


# ---- sequence_num gaps ---------------------------------------------------------------------

def frame(channel, sequence_num, **extra):
    return json.dumps({"channel": channel, "client_id": "", "timestamp": "2023-06-23T20:31:27.000000000Z",
                       "sequence_num": sequence_num, **extra}).encode()


def trades_frame(sequence_num, trade_id):
    trade = {"trade_id": str(trade_id), "product_id": "BTC-USD", "price": "30000.5", "size": "0.1", "side": "SELL",
             "time": "2023-06-23T20:31:26.5Z"}
    return frame("market_trades", sequence_num, events=[{"type": "update", "trades": [trade]}])


def test_a_sequence_gap_asks_for_a_reconnect_and_leaves_the_trades_to_rest():
    watch = coinbase.SequenceWatch()
    ack = frame("subscriptions", 0, events=[{"subscriptions": {"market_trades": ["BTC-USD"]}}])
    assert [c.kind for c in coinbase.parse_frame(ack, RECV, watch).control] == ["subscribed"]
    assert [t.trade_id for t in coinbase.parse_frame(trades_frame(1, 10), RECV, watch).trades] == ["10"]
    assert [c.kind for c in coinbase.parse_frame(frame("heartbeats", 2, events=[]), RECV, watch).control] == [
        "heartbeat"]
    gap = coinbase.parse_frame(trades_frame(5, 13), RECV, watch)
    assert gap.trades == [] and [c.kind for c in gap.control] == ["reconnect"]
    assert "2 message(s) lost" in gap.control[0].detail
    # the trades are not dropped silently: a dead letter keeps the frame, the REST fill brings them back
    assert [e.reason for e in gap.errors] == ["sequence_gap"] and gap.errors[0].raw == trades_frame(5, 13)
    assert [c.kind for c in coinbase.parse_frame(frame("heartbeats", 9), RECV, watch).control] == ["heartbeat"]
    heartbeat_gap = coinbase.parse_frame(frame("heartbeats", 11), RECV, watch)
    assert heartbeat_gap.errors == [] and [c.kind for c in heartbeat_gap.control] == ["heartbeat", "reconnect"]
    # the next connection numbers from 0 again: a new baseline, not another gap
    assert coinbase.parse_frame(trades_frame(0, 14), RECV, watch).control == []
    assert coinbase.parse_frame(trades_frame(1, 15), RECV, watch).control == []


def test_sequence_watch_baselines():
    watch = coinbase.SequenceWatch()
    assert [watch.missed(n) for n in (7, 8, 9, 9, 3, 4)] == [0, 0, 0, 0, 0, 0]
    assert watch.missed(10) == 5 and watch.missed(42) == 0  # after a gap, the next number is a baseline
    assert watch.missed(50, baseline=True) == 0 and watch.missed(51) == 0


# ---- REST history ---------------------------------------------------------------------------

def test_rest_page_parses_exactly_oldest_first_with_taker_side():
    page = coinbase.parse_rest_trades(fixture("coinbase", "rest_trades_page1.json"), "BTC/USD", RECV)
    assert page.errors == [] and page.next_cursor == "86327330"
    assert page.trades[0] == Trade(exchange="coinbase", symbol="BTC/USD", trade_id="86327327", price=6225.32,
                                   qty=0.06469797, side="buy", ts_ms=1584664619860, recv_ms=RECV)
    assert [(t.trade_id, t.side) for t in page.trades[1:]] == [("86327328", "buy"), ("86327329", "sell")]


class History:
    """A fake `/products/{id}/trades`: trade n at T0 + 10 n ms, `after` = ids below, newest first."""

    T0 = 1_700_000_000_000

    def __init__(self, last_id: int) -> None:
        self.last_id = last_id
        self.requests: list[dict[str, str]] = []

    def row(self, n: int) -> dict:
        return {"time": _iso(self.T0 + 10 * n), "trade_id": n, "price": f"{30000 + n}.5", "size": "0.01",
                "side": "buy" if n % 2 else "sell"}

    def handler(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append(params)
        limit = int(params["limit"])
        top = min(int(params.get("after", self.last_id + 1)) - 1, self.last_id)
        rows = [self.row(n) for n in range(top, max(top - limit, 0), -1)]
        return httpx.Response(200, content=json.dumps(rows).encode())


def _iso(millis: int) -> str:
    import datetime as dt

    seconds, ms = divmod(millis, 1000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"


def run_fetch(history, **kwargs):
    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(history.handler)) as client:
            return await coinbase.fetch_trades(client, "BTC/USD", recv_ms=RECV, base_url="http://127.0.0.1:1",
                                               **kwargs)

    return asyncio.run(run())


def test_fetch_from_a_cursor_asks_for_the_ids_just_past_it():
    history = History(last_id=5000)
    page = run_fetch(history, cursor="1200")
    assert history.requests == [{"limit": "1000", "after": "2200"}]
    assert [int(t.trade_id) for t in page.trades] == list(range(1200, 2200))
    assert page.next_cursor == "2200"
    assert page.trades[0].ts_ms == History.T0 + 12_000 and page.trades[0].side == "buy"  # maker sold


def test_fetch_from_a_time_within_the_latest_page_is_one_request():
    history = History(last_id=5000)
    page = run_fetch(history, since_ms=History.T0 + 10 * 4500)
    assert history.requests == [{"limit": "1000"}]
    assert [int(t.trade_id) for t in page.trades] == list(range(4500, 5001))


@pytest.mark.parametrize("first", [1, 2, 777, 1234, 2001, 3999])
def test_fetch_from_an_older_time_finds_the_first_trade_then_pages_forward(first, monkeypatch):
    monkeypatch.setattr(coinbase, "REST_MIN_INTERVAL_S", 0)
    history = History(last_id=5000)

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(history.handler)) as client:
            return await fill_gap(coinbase, client, "BTC/USD", since_ms=History.T0 + 10 * first - 5,
                                  until_ms=History.T0 + 10 * 4200, pacer=Pacer(0), base_url="http://127.0.0.1:1")

    result = asyncio.run(run())
    assert result.failure == "" and result.errors == []
    ids = [int(t.trade_id) for t in result.trades]
    assert ids[0] == first and ids == list(range(first, ids[-1] + 1)) and ids[-1] >= 4200
    assert len(history.requests) <= 2 * 13 + (4200 - first) // 1000 + 3  # a search, not a walk


def test_rate_limit_raises_with_retry_after():
    def handler(request):
        headers = {"Retry-After": "3"} if request.url.params.get("after") else {}
        return httpx.Response(429, headers=headers, content=fixture("coinbase", "rest_trades_rate_limited.json"))

    async def run(**kwargs):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await coinbase.fetch_trades(client, "BTC/USD", recv_ms=RECV, base_url="http://127.0.0.1:1", **kwargs)

    with pytest.raises(RateLimited) as info:
        asyncio.run(run(cursor="5"))
    assert info.value.retry_after_s == 3.0
    with pytest.raises(RateLimited) as info:
        asyncio.run(run(since_ms=1))
    assert info.value.retry_after_s == 1.0


def test_unknown_product_is_an_error_not_a_page():
    def handler(request):
        return httpx.Response(404, content=b'{"message":"NotFound"}')

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await coinbase.fetch_trades(client, "XYZ/USD", cursor="5", recv_ms=RECV, base_url="http://127.0.0.1:1")

    with pytest.raises(ValueError, match="404"):
        asyncio.run(run())


# ---- never raises ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    coinbase.parse_frame(raw, RECV, coinbase.SequenceWatch())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "channel": st.sampled_from(["market_trades", "heartbeats", "subscriptions", "ticker"]),
    "sequence_num": st.integers(min_value=-5, max_value=10**12),
    "events": st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["snapshot", "update"]),
        "trades": st.lists(st.dictionaries(
            st.sampled_from(["trade_id", "product_id", "price", "size", "side", "time"]),
            _json_values | st.sampled_from(["BTC-USD", "BUY", "SELL", "1.5", "2023-06-23T20:31:26.5Z"])),
            max_size=3)}), max_size=2)}))
def test_parse_never_raises_on_trade_shaped_garbage(frame_obj):
    result = coinbase.parse_frame(json.dumps(frame_obj).encode(), RECV, coinbase.SequenceWatch())
    for trade in result.trades:
        assert trade.price > 0 and trade.qty > 0 and trade.side in ("buy", "sell")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=8), _json_values), max_size=5))
def test_rest_rows_of_garbage_are_errors_not_exceptions(rows):
    try:
        page = coinbase.parse_rest_trades(json.dumps(rows).encode(), "BTC/USD", RECV)
    except ValueError:
        return  # the body as a whole is not a list of rows
    assert len(page.trades) + len(page.errors) == len(rows)
