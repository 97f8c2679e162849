"""``GET /v1/pipeline``: what each service is doing, read from Kafka alone.

The services need not expose anything for this: their topics and consumer
groups tell the story. Offsets and lags come from :mod:`candleflow.health`
(shared with ``candleflow status``); this module adds what the page shows
besides:

- throughput: how fast each topic's end offsets and each group's committed
  offsets move between two snapshots (records per second; with exactly-once
  producers the transaction markers count too, one per partition and commit);
- consumer lag: end offset minus the group's committed offset (see
  :meth:`candleflow.health.Snapshot.lag`);
- running: the group's member count (a service in the group is alive);
- age of the last candle: now minus ``end_ms`` of the newest record on the
  ``candles`` and ``features`` topics (read from the last few offsets of each
  partition, re-read only when a partition grew);
- dead letters: the end offsets of the dead-letter topic, summed.

A snapshot costs a handful of admin requests; it is cached for a second so any
number of open dashboards cost the cluster the same.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec

from candleflow.config import Settings
from candleflow.health import KafkaProbe, Snapshot, consumer_stages, output_topics, rate

CACHE_S = 1.0
UNREACHABLE_CACHE_S = 5.0
TIMEOUT_S = 3.0
TAIL = 5  # offsets read back from each partition's end to find its newest record
SERVICES = ("ingest", "candles", "features", "sink")


class PipelineMonitor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._probe: KafkaProbe | None = None
        self._tail_consumer: Any = None
        self._cached: tuple[float, dict[str, Any], float] | None = None  # at, result, kept for
        self._previous: Snapshot | None = None
        # (topic, partition) -> (end offset when read, newest record's summary)
        self._tails: dict[tuple[str, int], tuple[int, dict[str, Any] | None]] = {}

    def snapshot(self) -> dict[str, Any]:
        from confluent_kafka import KafkaException

        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self._cached[2]:
                return self._cached[1]
            bootstrap = self.settings.kafka.bootstrap()
            try:
                result, keep_s = self._read(), CACHE_S
            except KafkaException as exc:
                # Asking an absent cluster blocks for the whole timeout: ask less often.
                result, keep_s = {"kafka": {"bootstrap": bootstrap, "reachable": False,
                                            "error": f"Kafka at {bootstrap} is unreachable ({exc.args[0].str()})"}}, \
                    UNREACHABLE_CACHE_S
                self._previous = None
            self._cached = (now, result, keep_s)
            return result

    def close(self) -> None:
        with self._lock:
            for client in (self._probe, self._tail_consumer):
                if client is not None:
                    client.close()
            self._probe = self._tail_consumer = None

    # -- reading ------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if self._probe is None:
            self._probe = KafkaProbe(self.settings.kafka, timeout=TIMEOUT_S)
        topics = self.settings.topics
        names = [topics.trades.name, topics.candles.name, topics.features.name, topics.dlq.name]
        stages = {stage.service: stage for stage in consumer_stages(self.settings)}
        outputs = output_topics(self.settings)
        # Fails fast (KafkaException) when the cluster does not answer.
        self._probe.consumer.list_topics(timeout=TIMEOUT_S)
        snapshot = self._probe.snapshot(names, list(stages.values()))
        members = self._group_members([stage.group for stage in stages.values()])
        previous, self._previous = self._previous, snapshot
        seconds = snapshot.taken - previous.taken if previous else 0.0

        def produced_per_s(topic: str | None) -> float | None:
            return rate(previous.end(topic), snapshot.end(topic), seconds) if previous and topic else None

        now_ms = int(time.time() * 1000)
        newest = {t: self._newest(t, snapshot.ends[t] or {}, now_ms) for t in (topics.candles.name, topics.features.name)}
        rows = []
        for name in SERVICES:
            stage, output = stages.get(name), outputs.get(name)
            rows.append({
                "name": name,
                "input_topic": stage.topic if stage else None,
                "output_topic": output,
                "group": stage.group if stage else None,
                "members": members.get(stage.group) if stage else None,
                "consumed_per_s": rate(previous.consumed(stage), snapshot.consumed(stage), seconds)
                if stage and previous else None,
                "produced_per_s": produced_per_s(output),
                "produced_total": snapshot.end(output) if output else None,
                "lag": snapshot.lag(stage) if stage else None,
                "last_record": newest.get(output) if output else None,
            })
        return {
            "kafka": {"bootstrap": self.settings.kafka.bootstrap(), "reachable": True, "error": None},
            "services": rows,
            "topics": [{"name": t, "partitions": len(ends), "end_offsets": snapshot.end(t), "per_s": produced_per_s(t)}
                       for t, ends in snapshot.ends.items() if ends is not None],
            "missing_topics": [t for t, ends in snapshot.ends.items() if ends is None],
            "last_candle": newest[topics.candles.name] or newest[topics.features.name],
            "dead_letters": {"topic": topics.dlq.name, "total": snapshot.end(topics.dlq.name),
                             "per_s": produced_per_s(topics.dlq.name)},
        }

    def _group_members(self, groups: list[str]) -> dict[str, int]:
        """Members per consumer group: a service in its group is alive."""
        futures = self._probe.admin.describe_consumer_groups(groups, request_timeout=TIMEOUT_S)
        return {group: len(future.result().members) for group, future in futures.items()}

    def _newest(self, topic: str, ends: dict[int, int], now_ms: int) -> dict[str, Any] | None:
        """The record with the latest ``end_ms`` on `topic`, with its age in seconds."""
        grown = [p for p, end in ends.items() if end > 0 and self._tails.get((topic, p), (None,))[0] != end]
        if grown:
            self._read_tails(topic, {p: ends[p] for p in grown})
        summaries = [self._tails[(topic, p)][1] for p in ends if (topic, p) in self._tails]
        summaries = [s for s in summaries if s is not None]
        if not summaries:
            return None
        newest = max(summaries, key=lambda s: s["end_ms"])
        return {**newest, "age_s": max(0.0, (now_ms - newest["end_ms"]) / 1000)}

    def _read_tails(self, topic: str, ends: dict[int, int]) -> None:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        if self._tail_consumer is None:
            self._tail_consumer = Consumer({
                **self.settings.kafka.client_config(),
                "group.id": "candleflow-serve-pipeline",  # required; never joined, never committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # the tail was deleted by retention: read what is left
                "isolation.level": "read_committed",
            })
        consumer = self._tail_consumer
        consumer.assign([TopicPartition(topic, p, max(0, end - TAIL)) for p, end in ends.items()])
        pending = set(ends)
        found: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while pending and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                    continue
                summary = _summary(message.value())
                if summary and summary["end_ms"] >= found.get(message.partition(), {"end_ms": -1})["end_ms"]:
                    found[message.partition()] = summary
        finally:
            consumer.unassign()
        for partition, end in ends.items():
            if partition not in pending:  # read to its end: the result holds until it grows again
                previous = self._tails.get((topic, partition), (None, None))[1]
                self._tails[(topic, partition)] = (end, found.get(partition) or previous)


def _summary(raw: bytes | None) -> dict[str, Any] | None:
    try:
        row = msgspec.json.decode(raw or b"")
        return {"exchange": row["exchange"], "symbol": row["symbol"], "timeframe": row["timeframe"],
                "end_ms": int(row["end_ms"])}
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return None
