"""`candleflow ingest` end to end: a fake Bybit / OKX on 127.0.0.1 and the real `trades` topic.

As for Kraken and Binance (tests/services/test_ingest.py): the fake venue sends the
subscription ack, trades, a pong, a malformed frame and a bad trade, drops the
connection, then repeats trades already published after the reconnect; trades
that happened while disconnected are only in the REST history. The topic must hold
each trade once, none missing, in order; the bad input is in `dlq`, and control
frames (acks, pongs — OKX's plain-text ``pong`` included) are not dead letters.
"""

from __future__ import annotations

import json

import pytest

from candleflow.dlq import raw_bytes
from tests.exchanges.e2e import dead_letters, frame, published_trades, start_ingest, stop_ingest
from tests.exchanges.fakeserver import FakeExchange

pytestmark = pytest.mark.slow

T0 = 1_732_000_000_000  # trade n happens at T0 + n seconds + n ms


def ts(n: int) -> int:
    return T0 + n * 1001


def run_venue(settings, tmp_path, exchange: str, symbol: str, scripts, respond, routes, expected: int,
              letters: int):
    with FakeExchange(scripts, respond=respond, rest_routes=routes) as fake:
        process = start_ingest(tmp_path / "candleflow.yaml", exchange, [symbol], fake.ws_url, fake.rest_url)
        try:
            published = published_trades(settings, expected=expected, idle_s=20)
            dlq = dead_letters(settings, expected=letters, idle_s=10)
        finally:
            code, stderr = stop_ingest(process)
    assert code == 0, stderr
    assert fake.connections == 2 and fake.errors == []
    return fake, published, dlq


# ---- Bybit ----------------------------------------------------------------------------------

def bybit_entry(n: int) -> dict:
    return {"T": ts(n), "s": "BTCUSDT", "S": "Buy" if n % 2 else "Sell", "v": f"0.{n:03d}", "p": f"{90000 + n}.5",
            "i": str(2290000000000000000 + n), "BT": False}


def bybit_trades(*ns: int) -> str:
    return frame({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": ts(max(ns)) + 3,
                  "data": [bybit_entry(n) for n in ns]})


def bybit_recent(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """The venue's latest trades, newest first: 3 to 8 (6 and 7 only exist here)."""
    rows = [{"execId": e["i"], "symbol": e["s"], "price": e["p"], "size": e["v"], "side": e["S"],
             "time": str(e["T"]), "isBlockTrade": False} for e in map(bybit_entry, (8, 7, 6, 5, 3))]
    return 200, {}, json.dumps({"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": rows},
                                "retExtInfo": {}, "time": ts(9)}).encode()


BYBIT_ACK = frame({"success": True, "ret_msg": "subscribe", "conn_id": "c1", "req_id": "trades-1", "op": "subscribe"})
BYBIT_PONG = frame({"success": True, "ret_msg": "pong", "conn_id": "c1", "req_id": "", "op": "ping"})


def test_bybit_reconnect_recent_trades_gap_fill_duplicates_and_bad_frames(settings_factory, tmp_path):
    settings = settings_factory(partitions=2, ingest={"silence_timeout_s": 5, "backoff_initial_s": 0.2})
    bad_json = '{"topic":"publicTrade.BTCUSDT","type":"snapshot","data":[{"T":'
    bad_entry = {**bybit_entry(4), "v": "0"}
    scripts = [
        [("recv", "subscribe"), ("send", BYBIT_ACK), ("send", bybit_trades(1, 2)), ("send", BYBIT_PONG),
         ("send", bybit_trades(3)), ("send", bad_json),
         ("send", frame({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "data": [bad_entry]})),
         ("send", bybit_trades(5)), ("sleep", 0.3), ("drop",)],
        # 6 and 7 happened while disconnected; 5 is pushed again, twice
        [("recv", "subscribe"), ("send", BYBIT_ACK), ("send", bybit_trades(5, 8)), ("send", bybit_trades(5)),
         ("send", BYBIT_PONG), ("sleep", 1.5), ("send", bybit_trades(9)), ("hold",)],
    ]
    fake, published, letters = run_venue(
        settings, tmp_path, "bybit", "BTC/USDT", scripts,
        respond=lambda text: BYBIT_PONG if '"ping"' in text else None,
        routes={"/v5/market/recent-trade": bybit_recent}, expected=8, letters=2)
    assert fake.rest_requests[0] == ("/v5/market/recent-trade",
                                     {"category": "spot", "symbol": "BTCUSDT", "limit": "60"})
    assert [t.trade_id for _, t in published] == [str(2290000000000000000 + n) for n in (1, 2, 3, 5, 6, 7, 8, 9)]
    assert {key for key, _ in published} == {"bybit:BTC/USDT"}
    six = next(t for _, t in published if t.trade_id.endswith("06"))
    assert (six.symbol, six.price, six.qty, six.side, six.ts_ms) == ("BTC/USDT", 90006.5, 0.006, "sell", ts(6))
    nine = published[-1][1]
    assert (nine.price, nine.qty, nine.side, nine.ts_ms) == (90009.5, 0.009, "buy", ts(9))
    assert sorted(letter.reason for letter in letters) == ["invalid_json", "invalid_qty"]
    by_reason = {letter.reason: letter for letter in letters}
    assert raw_bytes(by_reason["invalid_json"]) == bad_json.encode()
    assert json.loads(raw_bytes(by_reason["invalid_qty"])) == bad_entry
    assert all(letter.service == "ingest" and letter.source == "bybit" for letter in letters)
    assert len(published_trades(settings, idle_s=1)) == 8  # nothing late from the gap fill


# ---- OKX ------------------------------------------------------------------------------------

def okx_id(n: int) -> int:
    return 130639000 + 10 * n


def okx_entry(n: int) -> dict:
    # trade 5 aggregates three fills of one taker order (ids okx_id(5) - 2 .. okx_id(5))
    return {"instId": "BTC-USDT", "tradeId": str(okx_id(n)), "px": f"{42000 + n}.9", "sz": f"0.{n:03d}",
            "side": "buy" if n % 2 else "sell", "ts": str(ts(n)), "count": "3" if n == 5 else "1"}


def okx_trades(*ns: int) -> str:
    return frame({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [okx_entry(n) for n in ns]})


def okx_fills(n: int) -> list[dict]:
    """What REST history lists for trade n: its individual fills, newest first."""
    entry = {k: v for k, v in okx_entry(n).items() if k != "count"} | {"source": "0"}
    if n != 5:
        return [entry]
    sizes = ("0.0025", "0.0015", "0.001")  # sum: okx_entry(5)["sz"]
    return [entry | {"tradeId": str(okx_id(5) - k), "sz": sz} for k, sz in enumerate(sizes)]


def okx_rows(*ns: int) -> bytes:
    return json.dumps({"code": "0", "msg": "", "data": [f for n in ns for f in okx_fills(n)]}).encode()


def okx_recent(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, okx_rows(8, 7)  # the latest trades, newest first


def okx_history(params: dict[str, str], calls=[0]) -> tuple[int, dict[str, str], bytes]:  # noqa: B006 - counts calls
    calls[0] += 1
    if calls[0] == 1:  # the first attempt is rate limited: the fill waits and retries the walk
        return 200, {}, b'{"code":"50011","msg":"Rate limit reached.","data":[]}'
    older = [n for n in (6, 5, 3, 2, 1) if okx_id(n) < int(params["after"])]
    return 200, {}, okx_rows(*older)


OKX_ACK = frame({"event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": "a4d3ae55"})


def test_okx_plain_text_pong_reconnect_history_walk_duplicates_and_bad_frames(settings_factory, tmp_path):
    settings = settings_factory(partitions=2, ingest={"silence_timeout_s": 5, "backoff_initial_s": 0.2})
    bad_json = '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":'
    bad_entry = {**okx_entry(4), "px": "NaN"}
    scripts = [
        [("recv", "subscribe"), ("send", OKX_ACK), ("send", okx_trades(1, 2)), ("send", "pong"),
         ("send", okx_trades(3)), ("send", bad_json),
         ("send", frame({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [bad_entry]})),
         ("send", okx_trades(5)), ("sleep", 0.3), ("drop",)],
        # 6 and 7 happened while disconnected; 5 is pushed again, twice
        [("recv", "subscribe"), ("send", OKX_ACK), ("send", okx_trades(5, 8)), ("send", okx_trades(5)),
         ("send", "pong"), ("sleep", 2.5), ("send", okx_trades(9)), ("hold",)],
    ]
    routes = {"/api/v5/market/trades": okx_recent, "/api/v5/market/history-trades": okx_history}
    fake, published, letters = run_venue(
        settings, tmp_path, "okx", "BTC/USDT", scripts, respond=lambda text: "pong" if text == "ping" else None,
        routes=routes, expected=8, letters=2)
    assert fake.rest_requests[0] == ("/api/v5/market/trades", {"instId": "BTC-USDT", "limit": "500"})
    assert ("/api/v5/market/history-trades", {"instId": "BTC-USDT", "type": "1", "after": str(okx_id(7)),
                                              "limit": "100"}) in fake.rest_requests
    assert [path for path, _ in fake.rest_requests].count("/api/v5/market/history-trades") == 2  # 50011, retry
    # REST's three fills of trade 5 are merged as the live channel sent them: no extra volume
    assert [t.trade_id for _, t in published] == [str(okx_id(n)) for n in (1, 2, 3, 5, 6, 7, 8, 9)]
    assert {key for key, _ in published} == {"okx:BTC/USDT"}
    assert sum(t.qty for _, t in published) == pytest.approx(sum(n / 1000 for n in (1, 2, 3, 5, 6, 7, 8, 9)))
    six = next(t for _, t in published if t.trade_id == str(okx_id(6)))
    assert (six.symbol, six.price, six.qty, six.side, six.ts_ms) == ("BTC/USDT", 42006.9, 0.006, "sell", ts(6))
    nine = published[-1][1]
    assert (nine.price, nine.qty, nine.side, nine.ts_ms) == (42009.9, 0.009, "buy", ts(9))
    # the plain-text pongs are control frames, not dead letters
    assert sorted(letter.reason for letter in letters) == ["invalid_json", "invalid_price"]
    by_reason = {letter.reason: letter for letter in letters}
    assert raw_bytes(by_reason["invalid_json"]) == bad_json.encode()
    assert json.loads(raw_bytes(by_reason["invalid_price"])) == bad_entry
    assert all(letter.service == "ingest" and letter.source == "okx" for letter in letters)
    assert len(published_trades(settings, idle_s=1)) == 8
