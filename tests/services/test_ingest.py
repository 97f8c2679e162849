"""`candleflow ingest` end to end: a fake Kraken / Binance on 127.0.0.1 and the real `trades` topic.

The fake venue speaks the documented frames: subscription ack, snapshot, updates,
heartbeats, malformed frames, a dropped connection mid-stream, a repeated
snapshot after the reconnect, and trades that happened while disconnected which
only the REST history can return. The topic must then hold exactly the venue's
trades: each once, none missing, in order per key; the bad input is in `dlq`.
"""

from __future__ import annotations

import json

import pytest

from candleflow.dlq import raw_bytes
from candleflow.records import encode
from tests.exchanges.e2e import dead_letters, frame, published_trades, start_ingest, stop_ingest
from tests.exchanges.fakeserver import FakeExchange

pytestmark = pytest.mark.slow

BASE_NS = 1_732_000_000_000_000_000  # trade n happens at BASE + n seconds (+ n microseconds)


def kraken_ts(n: int) -> str:
    import datetime as dt

    seconds, micros = divmod(BASE_NS // 1000 + n * 1_000_001, 1_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def kraken_ms(n: int) -> int:
    return (BASE_NS // 1000 + n * 1_000_001) // 1000


def kraken_trade(n: int) -> dict:
    return {"symbol": "BTC/USD", "side": "buy" if n % 2 else "sell", "price": 60000 + n + 0.5,
            "qty": round(0.001 * n, 6), "ord_type": "limit", "trade_id": 1000 + n, "timestamp": kraken_ts(n)}


def kraken_trades(kind: str, *ns: int) -> str:
    return frame({"channel": "trade", "type": kind, "data": [kraken_trade(n) for n in ns]})


def kraken_rest_row(n: int) -> list:
    t = kraken_trade(n)
    seconds, micros = divmod(BASE_NS // 1000 + n * 1_000_001, 1_000_000)
    return [f"{t['price']:.5f}", f"{t['qty']:.8f}", float(f"{seconds}.{micros:06d}"), t["side"][0], "l", "",
            t["trade_id"]]


ACK = frame({"method": "subscribe", "result": {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"},
             "success": True, "time_in": "2024-11-19T07:06:40.000000Z", "time_out": "2024-11-19T07:06:40.000100Z"})
HEARTBEAT = frame({"channel": "heartbeat"})
BAD_JSON = '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD",'
BAD_PRICE_ENTRY = {**kraken_trade(4), "price": 0}


def kraken_rest(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    if params.get("pair") != "XBTUSD":
        return 200, {}, b'{"error":["EQuery:Unknown asset pair"]}'
    since_ns = int(params["since"])
    rows = [kraken_rest_row(n) for n in (5, 6, 7) if kraken_ms(n) * 1_000_000 + 1 > since_ns]
    last = str(since_ns if not rows else (BASE_NS // 1000 + 7 * 1_000_001) * 1000)
    return 200, {}, json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": last}}).encode()


def test_kraken_reconnect_gap_fill_duplicates_and_bad_frames(settings_factory, tmp_path):
    settings = settings_factory(partitions=2, ingest={"silence_timeout_s": 5, "backoff_initial_s": 0.2})
    scripts = [
        [("recv", "subscribe"), ("send", ACK), ("send", kraken_trades("snapshot", 1, 2)), ("send", HEARTBEAT),
         ("send", kraken_trades("update", 3)), ("send", BAD_JSON),
         ("send", frame({"channel": "trade", "type": "update", "data": [BAD_PRICE_ENTRY]})),
         ("send", kraken_trades("update", 5)), ("sleep", 0.3), ("drop",)],
        # trades 6 and 7 happened while disconnected; the snapshot only reaches back to 7, twice
        [("recv", "subscribe"), ("send", ACK), ("send", kraken_trades("snapshot", 7, 8)),
         ("send", kraken_trades("snapshot", 7, 8)), ("send", HEARTBEAT), ("sleep", 1.5),
         ("send", kraken_trades("update", 9)), ("hold",)],
    ]
    with FakeExchange(scripts, respond=lambda t: '{"method":"pong"}' if '"ping"' in t else None,
                      rest_routes={"/0/public/Trades": kraken_rest}) as fake:
        process = start_ingest(tmp_path / "candleflow.yaml", "kraken", ["BTC/USD"], fake.ws_url, fake.rest_url)
        try:
            published = published_trades(settings, expected=8, idle_s=20)
            letters = dead_letters(settings, expected=2, idle_s=10)
        finally:
            code, stderr = stop_ingest(process)
    assert code == 0, stderr
    assert fake.connections == 2 and fake.errors == []
    assert fake.rest_requests[0] == ("/0/public/Trades", {"pair": "XBTUSD", "since": str(kraken_ms(5) * 1_000_000)})
    # exactly the venue's trades: each once, none missing, in order, all under one key
    assert [t.trade_id for _, t in published] == [str(1000 + n) for n in (1, 2, 3, 5, 6, 7, 8, 9)]
    assert {key for key, _ in published} == {"kraken:BTC/USD"}
    six = next(t for _, t in published if t.trade_id == "1006")
    assert (six.symbol, six.price, six.qty, six.side, six.ts_ms) == ("BTC/USD", 60006.5, 0.006, "sell", kraken_ms(6))
    nine = published[-1][1]
    assert (nine.price, nine.qty, nine.side, nine.ts_ms) == (60009.5, 0.009, "buy", kraken_ms(9))
    assert sorted(letter.reason for letter in letters) == ["invalid_json", "invalid_price"]
    by_reason = {letter.reason: letter for letter in letters}
    assert raw_bytes(by_reason["invalid_json"]) == BAD_JSON.encode()
    assert json.loads(raw_bytes(by_reason["invalid_price"])) == BAD_PRICE_ENTRY
    assert all(letter.service == "ingest" and letter.source == "kraken" for letter in letters)
    # and nothing more arrives later (no late duplicate from the gap fill)
    assert len(published_trades(settings, idle_s=1)) == 8


BINANCE_T0 = 1_732_000_000_000


def binance_event(n: int) -> dict:
    return {"e": "trade", "E": BINANCE_T0 + n * 1000 + 1, "s": "BTCUSDT", "t": 500 + n, "p": f"{90000 + n}.01",
            "q": f"0.{n:03d}", "T": BINANCE_T0 + n * 1000, "m": n % 2 == 0, "M": True}


def binance_rest_row(n: int) -> dict:
    e = binance_event(n)
    return {"id": e["t"], "price": e["p"], "qty": e["q"], "quoteQty": "1", "time": e["T"], "isBuyerMaker": e["m"],
            "isBestMatch": True}


def binance_agg(params):
    start = int(params["startTime"])
    n = next(n for n in range(1, 10) if BINANCE_T0 + n * 1000 >= start)
    row = {"a": 9000 + n, "p": "1", "q": "1", "f": 500 + n, "l": 500 + n, "T": BINANCE_T0 + n * 1000, "m": True,
           "M": True}
    return 200, {}, json.dumps([row]).encode()


def binance_history(params, calls=[0]):  # noqa: B006 - counts calls across the test
    calls[0] += 1
    if calls[0] == 1:  # the first attempt is rate limited: the fill waits Retry-After and retries
        return 429, {"Retry-After": "1"}, b'{"code":-1003,"msg":"Too many requests"}'
    start = int(params["fromId"]) - 500
    rows = [binance_rest_row(n) for n in range(start, 7) if n >= 1]
    return 200, {}, json.dumps(rows).encode()


def test_binance_announced_disconnect_rate_limited_gap_fill_and_replay(settings_factory, tmp_path):
    settings = settings_factory(partitions=2, ingest={"silence_timeout_s": 5, "backoff_initial_s": 0.2})
    ack = frame({"result": None, "id": 1})
    bad = frame({**binance_event(4), "p": "NaN"})
    scripts = [
        [("recv", "SUBSCRIBE"), ("send", ack), ("send", frame(binance_event(1))),
         ("send", frame({"stream": "btcusdt@trade", "data": binance_event(2)})), ("send", bad),
         ("send", frame(binance_event(3))), ("sleep", 0.3), ("close", 1001, "24h limit")],
        # 4 and 5 were missed; 3 is sent again
        [("recv", "SUBSCRIBE"), ("send", ack), ("send", frame(binance_event(3))), ("send", frame(binance_event(6))),
         ("sleep", 2.5), ("send", frame(binance_event(7))), ("hold",)],
    ]
    recording = tmp_path / "binance.jsonl"
    routes = {"/api/v3/aggTrades": binance_agg, "/api/v3/historicalTrades": binance_history}
    with FakeExchange(scripts, rest_routes=routes) as fake:
        process = start_ingest(tmp_path / "candleflow.yaml", "binance", ["BTC/USDT"], fake.ws_url, fake.rest_url,
                               "--record", str(recording))
        try:
            published = published_trades(settings, expected=7, idle_s=20)
            letters = dead_letters(settings, expected=1, idle_s=10)
        finally:
            code, stderr = stop_ingest(process)
    assert code == 0, stderr
    assert [t.trade_id for _, t in published] == [str(500 + n) for n in range(1, 8)]
    first, second = published[0][1], published[1][1]
    assert (first.symbol, first.price, first.qty, first.side, first.ts_ms) == (
        "BTC/USDT", 90001.01, 0.001, "buy", BINANCE_T0 + 1000)
    assert second.side == "sell"  # m=true: the buyer was the maker, so the taker sold
    assert [letter.reason for letter in letters] == ["invalid_price"] and raw_bytes(letters[0]) == bad.encode()
    assert ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "startTime": str(BINANCE_T0 + 3000), "limit": "1"}) \
        in fake.rest_requests
    assert [p for p, _ in fake.rest_requests].count("/api/v3/historicalTrades") >= 2  # 429, then the retry

    # the recording replays into fresh topics: the websocket trades (REST-recovered ones are not frames)
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert {line["exchange"] for line in lines} == {"binance"} and all(line["recv_ms"] > 0 for line in lines)
    replayed = settings_factory(partitions=2)
    from candleflow.services.ingest import IngestOptions, run

    summary = run(replayed, IngestOptions(replay=recording, speed=None))
    assert summary.undelivered == 0 and summary.dead_letters == 1
    assert [t.trade_id for _, t in published_trades(replayed, expected=5)] == ["501", "502", "503", "506", "507"]


def test_simulate_is_deterministic_and_published(settings_factory):
    from candleflow.services.ingest import IngestOptions, run

    settings = settings_factory(partitions=2)
    summary = run(settings, IngestOptions(simulate=True, speed=None, count=500, sim_seed=7))
    assert (summary.published, summary.dead_letters, summary.undelivered) == (500, 0, 0)
    trades = [t for _, t in published_trades(settings, expected=500)]
    from candleflow.exchanges.simulate import SimulatedMarket

    assert len(trades) == 500 and {t.exchange for t in trades} == {"sim"}
    again = list(SimulatedMarket(seed=7, start_ms=0).trades(500))
    ids = sorted((t.symbol, int(t.trade_id), t.price, t.qty, t.side) for t in trades)
    assert ids == sorted((t.symbol, int(t.trade_id), t.price, t.qty, t.side) for t in again)


def test_replay_through_the_native_parser_publishes_what_the_python_path_publishes(settings_factory, tmp_path,
                                                                                   monkeypatch):
    # One recording of Kraken and Binance frames, usual and malformed, with many repeated trade
    # ids, replayed twice into fresh topics: through the Rust parser (exchanges/native.py), when
    # it is built, and through the adapters' Python fast paths. Both topics must hold the same
    # trades in the same order per key (recv_ms aside: replay stamps the wall clock), and the
    # same dead letters.
    import random

    from candleflow.exchanges.native import NATIVE
    from candleflow.services import ingest
    from candleflow.services.ingest import IngestOptions, run
    from tests.exchanges.test_compiled_ingest import binance_frame, kraken_frame

    if NATIVE is None:
        pytest.skip("the Rust frame parser is not built here: nothing to compare")
    rng = random.Random(3)
    recording = tmp_path / "mixed.jsonl"
    with recording.open("w") as out:
        for n in range(1_500):
            name, raw = ("kraken", kraken_frame(rng)) if rng.random() < 0.5 else ("binance", binance_frame(rng))
            if rng.random() < 0.5:  # the usual frame, a trade id seen now and then already
                trade_id, price = rng.randrange(1_000), round(rng.uniform(1, 9e4), rng.randint(0, 8))
                raw = (frame({"channel": "trade", "type": "update", "data": [{**kraken_trade(n), "trade_id": trade_id,
                                                                             "price": price}]})
                       if name == "kraken" else frame({**binance_event(n % 100), "t": trade_id, "p": f"{price:.8f}"}))
                raw = raw.encode()
            out.write(json.dumps({"exchange": name, "recv_ms": n, "frame": raw.decode()}) + "\n")

    def replayed(native: object) -> tuple[dict[str, list[dict]], list[tuple[str, bytes]], object]:
        monkeypatch.setattr(ingest, "NATIVE", native)
        settings = settings_factory(partitions=2)
        summary = run(settings, IngestOptions(replay=recording, speed=None))
        per_key: dict[str, list[dict]] = {}
        for key, trade in published_trades(settings, expected=summary.published):
            per_key.setdefault(key, []).append({**json.loads(encode(trade)), "recv_ms": None})
        letters = [(letter.reason, raw_bytes(letter)) for letter in dead_letters(settings, expected=summary.dead_letters)]
        return per_key, sorted(letters), summary

    native_topics, native_letters, native_summary = replayed(NATIVE)
    python_topics, python_letters, python_summary = replayed(None)
    assert native_summary == python_summary and native_summary.published > 500 and native_summary.dead_letters > 300
    assert native_topics == python_topics
    assert native_letters == python_letters
