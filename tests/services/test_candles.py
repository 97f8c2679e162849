"""The candles service against the real broker: correct candles, closed by ticks, exactly once through SIGKILLs.

The service runs as a real `candleflow candles` subprocess with its own ticker
turned off: the tests write the ticks into `trades` themselves (header
``candleflow-tick``, value = a chosen epoch ms), so the input log, and with it
the expected output, is fixed. Each partition's log is produced in a fixed
order with explicit partitions; the "uninterrupted run" is the same
:class:`CandlesProcessor` fed that log in this process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from candleflow.config import KafkaConfig, Settings
from candleflow.dlq import decode_dead_letter
from candleflow.records import Candle, Trade, decode_candle, encode
from candleflow.services.candles import TICK_HEADER, TICK_KEY, CandlesProcessor, is_tick, tick_value
from tests.core.test_candles import reference
from tests.fixtures.kafka import consume_all
from tests.fixtures.processes import start_service, stop_process

MINUTE = 60_000
T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000  # an hour boundary, November 2023

Message = tuple[bytes | None, bytes, list | None]  # key, value, headers


class DictState:
    """The partition state the service keeps in Quix's store, as a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get_bytes(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set_bytes(self, key: str, value: bytes) -> None:
        self.data[key] = bytes(value)


def trade_msg(t: Trade) -> Message:
    return t.key.encode(), encode(t), None


def tick_msg(ms: int) -> Message:
    return TICK_KEY, tick_value(ms), [(TICK_HEADER, b"1")]


def market_trades(exchange: str, symbol: str, start_ms: int, end_ms: int, rng: random.Random,
                  mean_gap_ms: int = 4_000, idle_every: int = 0) -> list[Trade]:
    """A random walk of trades in time order; with `idle_every`, now and then a silence of a few minutes."""
    out, ts, price, n = [], start_ms + rng.randrange(1_000), rng.uniform(10, 50_000), 0
    while ts < end_ms:
        price = max(0.01, price * (1 + rng.gauss(0, 0.001)))
        out.append(Trade(exchange=exchange, symbol=symbol, trade_id=str(n), price=price,
                         qty=round(rng.uniform(0.0001, 3.0), 6), side=rng.choice(["buy", "sell"]), ts_ms=ts,
                         recv_ms=ts))
        n += 1
        ts += rng.randrange(0, 2 * mean_gap_ms)
        if idle_every and rng.randrange(idle_every) == 0:
            ts += rng.randrange(2, 6) * MINUTE
    return out


def interleave(streams: list[list[Trade]]) -> list[Trade]:
    """Markets merged by event time (stable), as ingest would publish them."""
    return sorted((t for s in streams for t in s), key=lambda t: t.ts_ms)


def with_ticks(trades: list[Trade], every_ms: int, until_ms: int) -> list[Message]:
    """The trades, with a tick (lagging event time by 1 s, like a wall clock behind the exchange) every `every_ms`."""
    log: list[Message] = []
    next_tick = (trades[0].ts_ms // every_ms + 1) * every_ms if trades else until_ms
    for t in trades:
        while t.ts_ms >= next_tick + 1_000:
            log.append(tick_msg(next_tick))
            next_tick += every_ms
        log.append(trade_msg(t))
    while next_tick <= until_ms:
        log.append(tick_msg(next_tick))
        next_tick += every_ms
    return log


def produce_logs(kafka: KafkaConfig, topic: str, logs: dict[int, list[Message]]) -> None:
    producer = Producer({**kafka.client_config(), "enable.idempotence": True, "linger.ms": 5})
    errors: list[Any] = []
    for partition, log in logs.items():
        for i, (key, value, headers) in enumerate(log):
            producer.produce(topic, value=value, key=key, partition=partition, headers=headers,
                             on_delivery=lambda err, _m: err and errors.append(err))
            if i % 5_000 == 0:
                producer.poll(0)
    producer.flush(60)
    assert not errors, errors


def uninterrupted(settings: Settings, logs: dict[int, list[Message]]) -> tuple[dict[str, list[Candle]], list]:
    """What one uninterrupted process outputs for these partition logs: candles per key, dead letters."""
    processor = CandlesProcessor(settings)
    candles: dict[str, list[Candle]] = defaultdict(list)
    letters = []
    for partition, log in logs.items():
        state = DictState()
        for offset, (key, value, headers) in enumerate(log):
            for destination, out_key, out_value in processor.process(value, key, headers, state, partition, offset):
                if destination == "candles":
                    candles[out_key.decode()].append(decode_candle(out_value))
                elif destination == "dlq":
                    letters.append(decode_dead_letter(out_value))
    return dict(candles), letters


def read_candles(kafka: KafkaConfig, topic: str, expected: int, timeout_s: float = 120) -> dict[str, list[Candle]]:
    """The read_committed candles topic per key; waits for `expected`, then a little longer for any extra."""
    messages = consume_all(kafka, topic, expected=expected, timeout_s=timeout_s)
    if len(messages) >= expected:
        messages = consume_all(kafka, topic, idle_s=3, timeout_s=timeout_s)  # duplicates would show up here
    got: dict[str, list[Candle]] = defaultdict(list)
    for msg in messages:
        candle = decode_candle(msg.value())
        assert msg.key().decode() == candle.key
        assert not is_tick(msg.headers())  # the tick header stays on `trades`
        got[candle.key].append(candle)
    return dict(got)


def service_settings(settings_factory, partitions: int, timeframes: list[str], **candles: Any) -> Settings:
    return settings_factory(partitions=partitions, candles={
        "timeframes": timeframes, "grace_ms": 2_000, "ticks": False,
        "consumer_group": f"candles-test-{uuid.uuid4().hex[:8]}", **candles})


def total(candles: dict[str, list[Candle]]) -> int:
    return sum(len(v) for v in candles.values())


# --- in process: the processor on its own -----------------------------------------------


def test_processor_ticks_close_idle_markets_and_late_trades_are_dead_lettered(settings_factory):
    settings = service_settings(settings_factory, 1, ["1m"])
    processor, state = CandlesProcessor(settings), DictState()
    t = market_trades("kraken", "BTC/USD", T0, T0 + MINUTE, random.Random(1))

    offsets = iter(range(1_000_000))

    def feed(msg: Message) -> list:
        key, value, headers = msg
        return processor.process(value, key, headers, state, 0, next(offsets))

    assert [item for msg in map(trade_msg, t) for item in feed(msg)] == []  # nothing closed yet
    out = feed(tick_msg(T0 + 3 * MINUTE + 2_000))
    assert [(d, decode_candle(v).start_ms - T0, decode_candle(v).gap_fill) for d, _, v in out] == [
        ("candles", 0, False), ("candles", MINUTE, True), ("candles", 2 * MINUTE, True)]
    late = t[-1]
    [(destination, key, value)] = feed(trade_msg(late))
    letter = decode_dead_letter(value)
    assert (destination, letter.reason, letter.service, key) == ("dlq", "late", "candles", late.key.encode())
    [(destination, _, value)] = feed((b"kraken:BTC/USD", b"{not json", None))
    assert (destination, decode_dead_letter(value).reason) == ("dlq", "invalid_trade")
    [(destination, _, value)] = feed((TICK_KEY, b"soon", [(TICK_HEADER, b"1")]))
    assert (destination, decode_dead_letter(value).reason) == ("dlq", "invalid_tick")
    [(destination, _, value)] = feed((b"kraken:ETH/USD", encode(t[0]), None))
    assert (destination, decode_dead_letter(value).reason) == ("dlq", "key_mismatch")


def test_processor_follows_the_store_after_a_rollback(settings_factory):
    """An aborted transaction rolls the store back: the in-memory aggregators must not run ahead of it."""
    settings = service_settings(settings_factory, 1, ["1m", "5m"])
    trades = market_trades("kraken", "BTC/USD", T0, T0 + 20 * MINUTE, random.Random(2), idle_every=30)
    log = with_ticks(trades, 30_000, T0 + 25 * MINUTE)
    expected, _ = uninterrupted(settings, {0: log})
    processor, state, got = CandlesProcessor(settings), DictState(), defaultdict(list)

    def feed(start, stop, target):
        for offset in range(start, stop):
            key, value, headers = log[offset]
            for destination, out_key, out_value in processor.process(value, key, headers, state, 0, offset):
                if destination == "candles":
                    target[out_key.decode()].append(decode_candle(out_value))
            if offset % 50 == 0:  # a commit now and then
                processor.store_changes(lambda _partition: state)

    third = len(log) // 3
    feed(0, third, got)
    processor.store_changes(lambda _partition: state)
    committed = dict(state.data)  # the last commit ...
    feed(third, 2 * third, defaultdict(list))  # ... then more processed, and the transaction aborted
    state.data = committed
    feed(third, len(log), got)
    assert dict(got) == expected


def test_partial_updates_show_the_open_candle_without_changing_the_output(settings_factory):
    settings = service_settings(settings_factory, 1, ["1m"], partial_updates=True, partial_interval_ms=50)
    clock = [0]
    processor, state = CandlesProcessor(settings, now_ms=lambda: clock[0]), DictState()
    t = market_trades("kraken", "BTC/USD", T0, T0 + MINUTE, random.Random(3))
    partials = []
    for i, msg in enumerate(map(trade_msg, t)):
        clock[0] = i * 20  # throttled: at most one update per 50 ms
        partials += [decode_candle(v) for d, _, v in processor.process(msg[1], msg[0], msg[2], state, 0, i)
                     if d == "candles.partial"]
    assert 0 < len(partials) < len(t)
    assert partials[-1].start_ms == T0 and partials[-1].trades <= len(t)
    final = [decode_candle(v) for d, _, v in processor.process(tick_value(T0 + 2 * MINUTE), TICK_KEY,
                                                               [(TICK_HEADER, b"1")], state, 0, len(t))]
    assert final[0].trades == len(t)


# --- the real service ------------------------------------------------------------------


@pytest.mark.slow
def test_service_candles_per_key_with_gap_fills_ticks_late_and_malformed(settings_factory, kafka_config, tmp_path):
    timeframes = ["1m", "5m"]
    settings = service_settings(settings_factory, 2, timeframes, partial_updates=True, partial_interval_ms=50)
    rng = random.Random(11)
    busy = market_trades("kraken", "BTC/USD", T0, T0 + 12 * MINUTE, rng, idle_every=40)
    short = market_trades("binance", "ETH/USDT", T0, T0 + 3 * MINUTE, rng)  # then idle, next to a busy market
    lonely = market_trades("okx", "SOL/USDT", T0 + 30_000, T0 + 2 * MINUTE, rng)  # alone on its partition
    final_tick = T0 + 16 * MINUTE
    log0 = with_ticks(interleave([busy, short]), 20_000, final_tick)
    late = Trade(exchange="kraken", symbol="BTC/USD", trade_id="late", price=1.0, qty=1.0, side="buy",
                 ts_ms=T0 + MINUTE + 5, recv_ms=T0)
    cut = next(i for i, (k, v, h) in enumerate(log0) if h and int(v) >= T0 + 6 * MINUTE) + 1
    log0[cut:cut] = [trade_msg(late), (b"kraken:BTC/USD", b"{not json", None)]
    # Partition 1: a few trades, then only ticks: its candles must close (and gap-fill) without trades.
    log1 = [trade_msg(t) for t in lonely] + [tick_msg(ms) for ms in range(T0 + 3 * MINUTE, final_tick + 1, 30_000)]
    logs = {0: log0, 1: log1}

    proc = start_service("candles", tmp_path / "candleflow.yaml", tmp_path / "service.log")
    try:
        produce_logs(kafka_config, settings.topics.trades.name, logs)
        expected, letters = uninterrupted(settings, logs)
        got = read_candles(kafka_config, settings.topics.candles.name, total(expected))
    finally:
        stop_process(proc)
    tail = (tmp_path / "service.log").read_text(errors="replace")[-3000:]
    assert got == expected, tail

    # Independently of the service code: the reference candles of every market.
    watermark = final_tick
    for trades in (busy, short, lonely):
        exchange, symbol = trades[0].exchange, trades[0].symbol
        for tf in timeframes:
            want = reference(trades, [tf], settings.candles.grace_ms, watermark, exchange, symbol)
            assert got[f"{exchange}:{symbol}:{tf}"] == want, (exchange, symbol, tf)
    lonely_1m = got["okx:SOL/USDT:1m"]
    assert lonely_1m[-1].end_ms + 2_000 <= final_tick and lonely_1m[-1].gap_fill
    assert sum(c.gap_fill for c in got["kraken:BTC/USD:1m"]) > 0  # idle stretches inside the busy market too
    assert (T0 + MINUTE + 5) not in {c.start_ms for c in got["kraken:BTC/USD:1m"]}
    assert all(c.low > 1.0 for c in got["kraken:BTC/USD:1m"])  # the late trade (price 1.0) was not merged

    dead = [decode_dead_letter(m.value()) for m in consume_all(kafka_config, settings.topics.dlq.name, idle_s=2)]
    assert sorted(d.reason for d in dead) == sorted(d.reason for d in letters) == ["invalid_trade", "late"]

    # The live view: still-open candles, a separate topic that leaves `candles` as it is.
    partial = [decode_candle(m.value()) for m in consume_all(kafka_config, settings.topics.candles_partial.name,
                                                             idle_s=2)]
    assert partial and {c.key for c in partial} <= set(got)
    for c in partial:
        final = next(f for f in got[c.key] if f.start_ms == c.start_ms)
        assert c.trades <= final.trades and c.low >= final.low and c.high <= final.high


@pytest.mark.slow
def test_sigkilled_service_equals_uninterrupted_run(settings_factory, kafka_config, tmp_path):
    timeframes = ["1m", "5m", "15m", "1h"]
    # Static membership: a restarted process takes its partitions back at once.
    settings = service_settings(settings_factory, 2, timeframes, instance_id="candles-0", session_timeout_ms=6_000)
    rng = random.Random(23)
    markets = [("kraken", "BTC/USD"), ("kraken", "ETH/USD"), ("binance", "BTC/USDT"), ("binance", "SOL/USDT"),
               ("okx", "ETH/USDT"), ("coinbase", "BTC/USD")]
    end = T0 + 100 * MINUTE
    streams = [market_trades(e, s, T0, end, rng, mean_gap_ms=3_000, idle_every=200) for e, s in markets]
    logs = {p: with_ticks(interleave(streams[p::2]), 15_000, end + 10 * MINUTE) for p in (0, 1)}
    expected, _ = uninterrupted(settings, logs)
    chunks = 4
    pieces = {p: [log[i * len(log) // chunks:(i + 1) * len(log) // chunks] for i in range(chunks)]
              for p, log in logs.items()}
    service_log = tmp_path / "service.log"
    trades_topic, group = settings.topics.trades.name, settings.candles.consumer_group
    proc = None
    killed_at: list[int] = []
    try:
        for n in range(chunks):
            before = committed(kafka_config, group, trades_topic, 2)
            proc = start_service("candles", tmp_path / "candleflow.yaml", service_log)
            produce_logs(kafka_config, trades_topic, {p: pieces[p][n] for p in logs})
            # Kill while it works: once it has committed progress, at a random moment soon after.
            wait_until(lambda: committed(kafka_config, group, trades_topic, 2) > before, proc, service_log)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            killed_at.append(committed(kafka_config, group, trades_topic, 2))
        proc = start_service("candles", tmp_path / "candleflow.yaml", service_log)
        got = read_candles(kafka_config, settings.topics.candles.name, total(expected), timeout_s=180)
    finally:
        stop_process(proc)
    tail = service_log.read_text(errors="replace")[-3000:]
    assert len(killed_at) == chunks and killed_at == sorted(killed_at)
    assert total(got) == total(expected), f"{total(got)} candles for {total(expected)} expected; log tail:\n{tail}"
    assert got == expected  # same keys, same order, same floats: none lost, none duplicated


def committed(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on `topic` (0 where nothing is committed yet)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka.client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "no progress; log tail:\n" + log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_two_processes_in_one_group_produce_what_one_produces(settings_factory, kafka_config, tmp_path):
    timeframes = ["1m", "5m"]
    settings = service_settings(settings_factory, 4, timeframes)
    rng = random.Random(31)
    markets = [("kraken", f"M{i}/USD") for i in range(8)]
    end = T0 + 40 * MINUTE
    streams = [market_trades(e, s, T0, end, rng, mean_gap_ms=3_000, idle_every=100) for e, s in markets]
    logs = {p: with_ticks(interleave(streams[p::4]), 20_000, end + 5 * MINUTE) for p in range(4)}
    expected, _ = uninterrupted(settings, logs)
    procs = [start_service("candles", tmp_path / "candleflow.yaml", tmp_path / f"service{i}.log", tmp_path / f"data{i}")
             for i in range(2)]
    try:
        members = wait_for_members(kafka_config, settings.candles.consumer_group, settings.topics.trades.name, 2)
        produce_logs(kafka_config, settings.topics.trades.name, logs)
        got = read_candles(kafka_config, settings.topics.candles.name, total(expected))
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop_process(p)
    assert sorted(len(m) for m in members) == [2, 2]  # each process had half of the partitions
    assert got == expected


def wait_for_members(kafka: KafkaConfig, group: str, topic: str, count: int,
                     timeout_s: float = 90) -> list[list[int]]:
    """The partitions of `topic` of each member once the group has `count` members that all hold some."""
    admin = AdminClient(kafka.client_config())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group])[group].result(10)
        except Exception:  # the group does not exist yet
            time.sleep(0.5)
            continue
        members = [[tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic]
                   for m in description.members]
        if len(members) == count and all(members) and str(description.state).endswith("STABLE"):
            return members
        time.sleep(0.5)
    raise AssertionError(f"consumer group {group} did not reach {count} members with partitions")


@pytest.mark.slow
def test_streaming_equals_compute_candles_float_for_float(settings_factory, kafka_config, tmp_path):
    """Issue 5, item 9: the same trades through the service and through `candleflow compute candles`."""
    timeframes = ["1m", "5m", "15m", "1h"]
    settings = service_settings(settings_factory, 2, timeframes)
    rng = random.Random(41)
    markets = [("kraken", "BTC/USD"), ("binance", "ETH/USDT"), ("okx", "SOL/USDT"), ("bybit", "XRP/USDT")]
    end = T0 + 75 * MINUTE
    streams = [market_trades(e, s, T0 + rng.randrange(0, 20 * MINUTE), end - rng.randrange(0, 20 * MINUTE), rng,
                             mean_gap_ms=2_500, idle_every=60) for e, s in markets]
    for stream in streams[:2]:  # same-millisecond trades: the order of arrival decides open and close
        for i in range(0, len(stream) - 1, 7):
            stream[i + 1] = Trade(**{**{f: getattr(stream[i + 1], f) for f in stream[i + 1].__struct_fields__},
                                     "ts_ms": stream[i].ts_ms})
    # Ticks close every window, the last hour included (nothing is late: ticks lag the trades).
    logs = {p: with_ticks(interleave(streams[p::2]), 30_000, end + 65 * MINUTE) for p in (0, 1)}
    trades_file = tmp_path / "trades.jsonl"
    trades_file.write_bytes(b"".join(value + b"\n" for log in logs.values() for _, value, headers in log
                                     if headers is None))
    batch_file = tmp_path / "batch.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
    batch = subprocess.run([sys.executable, "-m", "candleflow", "--config", str(tmp_path / "candleflow.yaml"),
                            "compute", "candles", "--input", str(trades_file), "--output", str(batch_file),
                            "--timeframes", ",".join(timeframes)], capture_output=True, text=True, env=env,
                           timeout=120)
    assert batch.returncode == 0, batch.stderr
    from_batch: dict[str, list[Candle]] = defaultdict(list)
    for line in batch_file.read_bytes().splitlines():
        candle = decode_candle(line)
        from_batch[candle.key].append(candle)

    expected, letters = uninterrupted(settings, logs)
    assert letters == []
    proc = start_service("candles", tmp_path / "candleflow.yaml", tmp_path / "service.log")
    try:
        produce_logs(kafka_config, settings.topics.trades.name, logs)
        streamed = read_candles(kafka_config, settings.topics.candles.name, total(expected))
    finally:
        stop_process(proc)
    assert streamed == expected, (tmp_path / "service.log").read_text(errors="replace")[-3000:]

    assert set(streamed) == set(from_batch) and len(from_batch) == len(markets) * len(timeframes)
    for key, rows in from_batch.items():
        # The stream goes on gap-filling after a market's last trade, up to the watermark;
        # the batch stops at the last traded window.
        last_start = rows[-1].start_ms
        assert [c for c in streamed[key] if c.start_ms <= last_start] == rows, key  # float for float
        assert all(c.gap_fill for c in streamed[key] if c.start_ms > last_start)
