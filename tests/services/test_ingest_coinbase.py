"""`candleflow ingest` end to end against a fake Coinbase, and `candleflow parse` on what it recorded.

The fake venue speaks Advanced Trade's documented frames: the `subscriptions` ack, a
`market_trades` snapshot (newest first), updates, `heartbeats`, a malformed frame and a
bad trade, a dropped connection, the snapshot sent twice after the reconnect, and a
`sequence_num` jump that makes ingest reconnect again. Trades that happened while
disconnected, and the one whose message was lost, are only in the Exchange REST history
(``/products/{id}/trades``, paged by trade id). The `trades` topic must then hold each
trade once, none missing, in order, with the taker side; the bad input is in `dlq`.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from candleflow.dlq import raw_bytes
from tests.exchanges.e2e import dead_letters, frame, published_trades, start_ingest, stop_ingest
from tests.exchanges.fakeserver import FakeExchange

pytestmark = pytest.mark.slow

T0 = 1_732_000_000_000  # trade n happens at T0 + n seconds + n ms; its id is 100 + n


def ts(n: int) -> int:
    return T0 + n * 1001


def rfc3339(millis: int, extra_digits: str) -> str:
    seconds, ms = divmod(millis, 1000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}{extra_digits}Z"


def maker_side(n: int) -> str:
    return "BUY" if n % 2 else "SELL"


def taker_side(n: int) -> str:
    return "sell" if n % 2 else "buy"


def ws_trade(n: int) -> dict:
    return {"trade_id": str(100 + n), "product_id": "BTC-USD", "price": f"{95000 + n}.25", "size": f"0.{n:04d}",
            "side": maker_side(n), "time": rfc3339(ts(n), f"{n:06d}")}  # 9 fractional digits


def message(channel: str, sequence_num: int, events: list) -> str:
    return frame({"channel": channel, "client_id": "", "timestamp": rfc3339(ts(20), "000000"),
                  "sequence_num": sequence_num, "events": events})


def trades(sequence_num: int, kind: str, *ns: int) -> str:
    return message("market_trades", sequence_num, [{"type": kind, "trades": [ws_trade(n) for n in ns]}])


def ack(sequence_num: int = 0) -> str:
    return message("subscriptions", sequence_num, [{"subscriptions": {"market_trades": ["BTC-USD"]}}])


def heartbeat(sequence_num: int, counter: int) -> str:
    return message("heartbeats", sequence_num, [{"current_time": "2024-11-19 07:06:40.5 +0000 UTC",
                                                  "heartbeat_counter": str(counter)}])


BAD_JSON = '{"channel":"market_trades","client_id":"","sequence_num":'
BAD_PRICE_ENTRY = {**ws_trade(4), "price": "NaN"}


def rest_history(fake_ref: list[FakeExchange]):
    """Exchange API trade history: newest first, ids below `after`; it grows as the session goes on."""

    def route(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        newest = 8 if fake_ref[0].connections <= 2 else 12  # what has happened by then
        top = min(int(params.get("after", 10**9)) - 1 - 100, newest)
        limit = int(params.get("limit", "1000"))
        rows = [{"time": rfc3339(ts(n), f"{n:03d}"), "trade_id": 100 + n, "price": f"{95000 + n}.25",
                 "size": f"0.{n:04d}", "side": maker_side(n).lower()}
                for n in range(top, 0, -1)][:limit]
        headers = {"CB-AFTER": str(rows[-1]["trade_id"])} if rows else {}  # the next, older page
        return 200, headers, json.dumps(rows).encode()

    return route


def test_coinbase_heartbeats_drop_repeated_snapshot_sequence_gap_and_rest_fill(settings_factory, tmp_path):
    settings = settings_factory(partitions=2, ingest={"silence_timeout_s": 5, "backoff_initial_s": 0.2})
    bad_price = message("market_trades", 4, [{"type": "update", "trades": [BAD_PRICE_ENTRY, ws_trade(5)]}])
    gap_frame = trades(6, "update", 11)  # sequence_num 5 (trade 10) never arrives
    scripts = [
        [("recv", "market_trades"), ("send", ack()), ("send", trades(1, "snapshot", 2, 1)),
         ("send", heartbeat(2, 1)), ("send", trades(3, "update", 3)), ("send", BAD_JSON), ("send", bad_price),
         ("send", heartbeat(5, 2)), ("sleep", 0.3), ("drop",)],
        # 6 and 7 happened while disconnected; the snapshot reaches back to 7 only, and comes twice
        [("recv", "market_trades"), ("send", ack()), ("send", trades(1, "snapshot", 8, 7)),
         ("send", trades(2, "snapshot", 8, 7)), ("send", heartbeat(3, 1)), ("sleep", 1.5),
         ("send", trades(4, "update", 9)), ("sleep", 0.3), ("send", gap_frame), ("hold",)],
        # after the gap: a fresh connection whose snapshot holds 11 and 12; 10 is only in REST
        [("recv", "market_trades"), ("send", ack()), ("send", trades(1, "snapshot", 12, 11)),
         ("send", heartbeat(2, 1)), ("hold",)],
    ]
    fake_ref: list[FakeExchange] = []
    recording = tmp_path / "coinbase.jsonl"
    with FakeExchange(scripts, rest_routes={"/products/BTC-USD/trades": rest_history(fake_ref)}) as fake:
        fake_ref.append(fake)
        process = start_ingest(tmp_path / "candleflow.yaml", "coinbase", ["BTC/USD"], fake.ws_url, fake.rest_url,
                               "--record", str(recording))
        try:
            published = published_trades(settings, expected=11, idle_s=20)
            letters = dead_letters(settings, expected=3, idle_s=10)
        finally:
            code, stderr = stop_ingest(process)
    assert code == 0, stderr
    assert fake.connections == 3 and fake.errors == []
    assert all(frames[:2] == ['{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}',
                              '{"type":"subscribe","channel":"heartbeats"}'] for frames in fake.received)
    # exactly the venue's trades: each once, none missing, in time order, under one key
    assert [t.trade_id for _, t in published] == [str(100 + n) for n in (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12)]
    assert {key for key, _ in published} == {"coinbase:BTC/USD"}
    for _, trade in published:
        n = int(trade.trade_id) - 100
        assert (trade.symbol, trade.price, trade.qty, trade.side, trade.ts_ms) == (
            "BTC/USD", 95000 + n + 0.25, n / 10_000, taker_side(n), ts(n))
    # the fills: from the last trade before each break, by time first, then forward by trade id
    assert fake.rest_requests[:2] == [("/products/BTC-USD/trades", {"limit": "1000"}),
                                      ("/products/BTC-USD/trades", {"limit": "1000", "after": "1109"})]
    assert ("/products/BTC-USD/trades", {"limit": "1000", "after": "1113"}) in fake.rest_requests
    assert sorted(letter.reason for letter in letters) == ["invalid_json", "invalid_price", "sequence_gap"]
    by_reason = {letter.reason: letter for letter in letters}
    assert raw_bytes(by_reason["invalid_json"]) == BAD_JSON.encode()
    assert json.loads(raw_bytes(by_reason["invalid_price"])) == BAD_PRICE_ENTRY
    assert raw_bytes(by_reason["sequence_gap"]) == gap_frame.encode()
    assert all(letter.service == "ingest" and letter.source == "coinbase" for letter in letters)
    assert len(published_trades(settings, idle_s=1)) == 11  # nothing more arrives later

    # `candleflow parse` reads the recorded frames: every websocket trade, problems on stderr
    frames = [json.loads(line)["frame"] for line in recording.read_text().splitlines()]
    assert frames.count(BAD_JSON) == 1 and len(frames) == 16  # 7 + 6 + 3 frames on the 3 connections
    parsed = subprocess.run([sys.executable, "-m", "candleflow", "parse", "--exchange", "coinbase"],
                            input="\n".join(frames).encode() + b"\n", capture_output=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    lines = [json.loads(line) for line in parsed.stdout.splitlines()]
    assert [int(t["trade_id"]) - 100 for t in lines] == [1, 2, 3, 5, 7, 8, 7, 8, 9, 11, 12]
    assert lines[0] == {**lines[0], "exchange": "coinbase", "symbol": "BTC/USD", "price": 95001.25, "qty": 0.0001,
                        "side": "sell", "ts_ms": ts(1)}
    errors = parsed.stderr.decode().splitlines()
    expected = [(frames.index(BAD_JSON) + 1, "invalid_json"), (frames.index(bad_price) + 1, "invalid_price"),
                (frames.index(gap_frame) + 1, "sequence_gap")]
    assert [line.split(":")[:2] for line in errors] == [[f"line {n}", f" {reason}"] for n, reason in expected]
