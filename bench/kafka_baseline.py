"""Baseline figures every later benchmark is compared with.

1. Broker start: cold (empty jar cache and empty Maven repository, so the jars
   are really downloaded) and warm (jars cached; fresh data dir, and a restart
   on existing data).
2. Raw produce and consume throughput of Trade records with confluent-kafka
   against that broker, single process: the ceiling for ingest and candles.

Usage: python bench/kafka_baseline.py [--messages N] [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

from candleflow.broker.local import LocalBroker, free_port  # noqa: E402
from candleflow.broker.topics import create_topics  # noqa: E402
from candleflow.config import KafkaConfig, LocalBrokerConfig, TopicConfig  # noqa: E402
from candleflow.records import Trade, decode_trade, encode  # noqa: E402

PRODUCER_SETTINGS = {  # what ingest uses: idempotent, acks=all, batching, compression
    "enable.idempotence": True, "acks": "all", "linger.ms": 20, "batch.size": 1_000_000,
    "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
}


def timed_start(config: LocalBrokerConfig, env: dict[str, str] | None = None) -> tuple[LocalBroker, float]:
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        broker = LocalBroker(config)
        began = time.perf_counter()
        broker.start(out=lambda _m: None)
        return broker, time.perf_counter() - began
    finally:
        os.environ.clear()
        os.environ.update(saved)


def trades(n: int) -> list[tuple[bytes, bytes]]:
    symbols = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD"]
    out = []
    base = 1_700_000_000_000
    for i in range(n):
        sym = symbols[i % len(symbols)]
        t = Trade(exchange="kraken", symbol=sym, trade_id=str(i), price=100.0 + (i % 977) * 0.01,
                  qty=0.001 + (i % 13) * 0.01, side="buy" if i % 3 else "sell", ts_ms=base + i, recv_ms=base + i + 5)
        out.append((t.key.encode(), encode(t)))
    return out


def produce_rate(bootstrap: str, topic: str, payload: list[tuple[bytes, bytes]]) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS})
    began = time.perf_counter()
    for key, value in payload:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    return len(payload) / (time.perf_counter() - began)


def consume_rate(bootstrap: str, topic: str, n: int, decode: bool) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    began = None
    while seen < n:
        batch = consumer.consume(10_000, timeout=1.0)
        if batch and began is None:
            began = time.perf_counter()
        for msg in batch:
            if msg.error():
                continue
            if decode:
                decode_trade(msg.value())
            seen += 1
    elapsed = time.perf_counter() - (began or time.perf_counter())
    consumer.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold start (no download)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    figures: dict[str, float] = {}
    try:
        if not args.skip_cold:
            cold_cfg = LocalBrokerConfig(port=free_port(), controller_port=free_port(), data_dir=work / "cold",
                                         cache_dir=work / "jars")
            broker, figures["cold_start_with_download_s"] = timed_start(
                cold_cfg, {"MAVEN_OPTS": f"-Dmaven.repo.local={work / 'm2'}"})
            broker.stop()
        warm_cfg = LocalBrokerConfig(port=free_port(), controller_port=free_port(), data_dir=work / "warm", heap="1g")
        broker, figures["warm_start_fresh_data_s"] = timed_start(warm_cfg)
        broker.stop()
        broker, figures["warm_restart_existing_data_s"] = timed_start(warm_cfg)
        try:
            kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
            topic = f"bench-trades-{uuid.uuid4().hex[:8]}"
            create_topics(kafka, [TopicConfig(name=topic, partitions=6)])
            payload = trades(args.messages)
            figures["messages"] = args.messages
            figures["avg_message_bytes"] = round(sum(len(v) for _, v in payload) / len(payload), 1)
            figures["produce_msgs_per_s"] = round(produce_rate(broker.bootstrap, topic, payload))
            figures["consume_msgs_per_s"] = round(consume_rate(broker.bootstrap, topic, args.messages, decode=False))
            figures["consume_and_decode_msgs_per_s"] = round(
                consume_rate(broker.bootstrap, topic, args.messages, decode=True))
        finally:
            broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = (
        f"Broker start: cold (download) {figures.get('cold_start_with_download_s', float('nan')):.1f} s, "
        f"warm {figures['warm_start_fresh_data_s']:.1f} s, restart {figures['warm_restart_existing_data_s']:.1f} s. "
        f"Trade records ({figures['avg_message_bytes']} B, 6 partitions, idempotent acks=all lz4): "
        f"produce {figures['produce_msgs_per_s']:,} msg/s, consume {figures['consume_msgs_per_s']:,} msg/s, "
        f"consume+decode {figures['consume_and_decode_msgs_per_s']:,} msg/s (single process)."
    )
    write_results("kafka_baseline", figures, summary)


if __name__ == "__main__":
    main()
