"""How the running pipeline is doing: service probes, topic offsets, throughput, lags, last candles.

The one place that reads these figures, shared by ``candleflow up`` (its
periodic health summary), ``candleflow status`` and the dashboard's
``/v1/pipeline`` (:mod:`candleflow.serve.pipeline`). ``up`` records what it
runs in a state file under ``data_dir`` (:func:`write_state`): each service's
pid, restarts and the URL that answers while it is healthy (``/healthz`` for
serve, the Prometheus ``/metrics`` port for the others). Kafka gives the rest,
without the services having to expose anything (:class:`FlowMeter`):

- throughput: how fast each topic's end offsets and each group's committed
  offsets move between two samples (records per second; with exactly-once
  producers the transaction markers count too, one per partition and commit);
- consumer lag: end offset minus the group's committed offset;
- members: how many consumers are in a service's group (a service in its group
  is alive);
- the newest record of the ``candles`` and ``features`` topics and its age
  (:class:`LatestRecords`), and the last candle of each market
  (:class:`CandleTail`);
- dead letters: the end offsets of the dead-letter topic, summed.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from candleflow.broker.local import pid_alive  # noqa: F401 - part of this module's API (up, status)
from candleflow.config import KafkaConfig, Settings, timeframe_ms

STATE_FILE = "up.json"


# --- the state file written by `candleflow up` ------------------------------------------


def state_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / STATE_FILE


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- HTTP probes ------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs from our state
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- Kafka: end offsets, committed offsets, lags, members ------------------------------------


@dataclass(frozen=True)
class ConsumerStage:
    service: str
    group: str
    topic: str  # the topic the group consumes


def consumer_stages(settings: Settings) -> list[ConsumerStage]:
    """Which consumer group reads which topic, in pipeline order."""
    topics = settings.topics
    return [
        ConsumerStage("candles", settings.candles.consumer_group, topics.trades.name),
        ConsumerStage("features", settings.features.consumer_group, topics.candles.name),
        ConsumerStage("sink", settings.sink.consumer_group, topics.features.name),
    ]


def output_topics(settings: Settings) -> dict[str, str]:
    """The topic each producing service writes (its growth is the service's throughput)."""
    topics = settings.topics
    return {"ingest": topics.trades.name, "candles": topics.candles.name, "features": topics.features.name}


def rate(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return max(0, after - before) / seconds


@dataclass
class Snapshot:
    taken: float  # time.monotonic()
    ends: dict[str, dict[int, int] | None]  # topic -> partition -> end offset; None: no such topic
    committed: dict[str, dict[int, int] | None]  # group -> partition of its topic -> committed offset
    members: dict[str, int] = field(default_factory=dict)  # group -> consumers in it (when asked for)

    def end(self, topic: str) -> int | None:
        ends = self.ends.get(topic)
        return None if ends is None else sum(ends.values())

    def lag(self, stage: ConsumerStage) -> int | None:
        """Messages of the stage's topic not yet committed by its group (None: unknown)."""
        ends = self.ends.get(stage.topic)
        committed = self.committed.get(stage.group)
        if ends is None or committed is None:
            return None
        return sum(max(0, end - committed.get(partition, 0)) for partition, end in ends.items())

    def consumed(self, stage: ConsumerStage) -> int | None:
        committed = self.committed.get(stage.group)
        return None if committed is None else sum(committed.values())

    def produced_per_s(self, topic: str, since: Snapshot | None) -> float | None:
        """How fast `topic` grew since an earlier snapshot (None: no earlier one, or no such topic)."""
        return None if since is None else rate(since.end(topic), self.end(topic), self.taken - since.taken)

    def consumed_per_s(self, stage: ConsumerStage, since: Snapshot | None) -> float | None:
        """How fast the stage's group committed since an earlier snapshot."""
        return None if since is None else rate(since.consumed(stage), self.consumed(stage), self.taken - since.taken)


def _reader(kafka: KafkaConfig, group_id: str, **extra: Any) -> Any:
    """A consumer that only assigns partitions and never commits: it joins no group and holds none back.

    `group_id` is required by the client and never used; `extra` is added to the configuration.
    """
    from confluent_kafka import Consumer

    return Consumer({**kafka.client_config(), "log_level": 0, "group.id": group_id, "enable.auto.commit": False,
                     "isolation.level": "read_committed", **extra})


class KafkaProbe:
    """End offsets, committed group offsets and group members, with one consumer and one admin client kept open."""

    def __init__(self, kafka: KafkaConfig, timeout: float = 5.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.timeout = timeout
        self.consumer = _reader(kafka, f"candleflow-probe-{uuid.uuid4().hex}")
        self.admin = AdminClient({**kafka.client_config(), "log_level": 0})

    def end_offsets(self, topic: str, metadata: Any = None) -> dict[int, int] | None:
        """End offset per partition of `topic`; None when there is no such topic.

        `metadata`: the cluster's metadata when already at hand (else it is asked for this topic).
        """
        from confluent_kafka import TopicPartition

        if metadata is None:
            metadata = self.consumer.list_topics(topic, timeout=self.timeout)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return {p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout)[1]
                for p in sorted(meta.partitions)}

    def committed(self, group: str, topic: str) -> dict[int, int] | None:
        """Committed offsets of `group` on `topic`; None when the group never committed there."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                         request_timeout=self.timeout)
        result = futures[group].result()
        offsets = {tp.partition: tp.offset for tp in result.topic_partitions or []
                   if tp.topic == topic and tp.offset >= 0}
        return offsets or None

    def members(self, groups: Sequence[str]) -> dict[str, int]:
        """Consumers per group."""
        futures = self.admin.describe_consumer_groups(list(groups), request_timeout=self.timeout)
        return {group: len(future.result().members) for group, future in futures.items()}

    def snapshot(self, topics: Sequence[str], stages: Sequence[ConsumerStage], *, members: bool = False) -> Snapshot:
        """Raises KafkaException at once, on its first request, when the cluster does not answer."""
        metadata = self.consumer.list_topics(timeout=self.timeout)  # one request for every topic
        ends = {topic: self.end_offsets(topic, metadata) for topic in dict.fromkeys(topics)}
        committed = {stage.group: self.committed(stage.group, stage.topic) for stage in stages}
        groups = self.members([stage.group for stage in stages]) if members else {}
        return Snapshot(time.monotonic(), ends, committed, groups)

    def close(self) -> None:
        self.consumer.close()


# --- the figures: one sample, measured against the one before ---------------------------------


@dataclass(frozen=True)
class ServiceFlow:
    """One pipeline service as Kafka sees it; rates are None until a second sample."""

    name: str
    input_topic: str | None
    output_topic: str | None
    group: str | None
    committed: int | None  # records its group has committed (None: nothing yet)
    lag: int | None
    members: int | None  # None: not asked for
    consumed_per_s: float | None
    produced_per_s: float | None
    produced_total: int | None
    last_record: dict[str, Any] | None  # the newest record of its output topic (see LatestRecords)

    @property
    def throughput_per_s(self) -> float | None:
        """The records it writes per second, or for the sink (which writes no topic) those it stores."""
        return self.produced_per_s if self.output_topic else self.consumed_per_s


@dataclass(frozen=True)
class TopicFlow:
    name: str
    partitions: int | None  # None: no such topic
    end_offset: int | None
    per_s: float | None


@dataclass(frozen=True)
class Flow:
    services: dict[str, ServiceFlow]  # ingest, candles, features, sink
    topics: dict[str, TopicFlow]  # in the order asked for
    latest: dict[str, dict[str, Any] | None]  # topic -> its newest record, for the topics asked for
    measured: bool  # there was an earlier sample, so the rates are known


class FlowMeter:
    """Samples the pipeline's topics and consumer groups; each sample's rates are measured since the last one.

    `topics`: those to report, in order (the output and dead-letter topics are
    always read). `members`: also count each group's consumers. `latest`:
    topics whose newest record to find, with its age.
    """

    def __init__(self, settings: Settings, *, topics: Sequence[str] = (), members: bool = False,
                 latest: Sequence[str] = (), timeout: float = 3.0) -> None:
        self.settings = settings
        self.stages = consumer_stages(settings)
        self.outputs = output_topics(settings)
        self.topics = list(dict.fromkeys([*topics, *self.outputs.values(), settings.topics.dlq.name]))
        self.count_members = members
        self.latest_topics = list(latest)
        self.timeout = timeout
        self.previous: Snapshot | None = None
        self._probe: KafkaProbe | None = None
        self._latest: LatestRecords | None = None

    def read(self) -> Flow:
        """Raises KafkaException when the cluster does not answer."""
        if self._probe is None:
            self._probe = KafkaProbe(self.settings.kafka, timeout=self.timeout)
        snapshot = self._probe.snapshot(self.topics, self.stages, members=self.count_members)
        since, self.previous = self.previous, snapshot
        latest: dict[str, dict[str, Any] | None] = {}
        if self.latest_topics:
            if self._latest is None:
                self._latest = LatestRecords(self.settings.kafka, timeout=self.timeout)
            now_ms = int(time.time() * 1000)
            latest = {topic: self._latest.newest(topic, snapshot.ends.get(topic) or {}, now_ms)
                      for topic in self.latest_topics}
        stages = {stage.service: stage for stage in self.stages}
        services = {}
        for name in dict.fromkeys([*self.outputs, *stages]):
            stage, output = stages.get(name), self.outputs.get(name)
            services[name] = ServiceFlow(
                name=name,
                input_topic=stage.topic if stage else None,
                output_topic=output,
                group=stage.group if stage else None,
                committed=snapshot.consumed(stage) if stage else None,
                lag=snapshot.lag(stage) if stage else None,
                members=snapshot.members.get(stage.group) if stage and self.count_members else None,
                consumed_per_s=snapshot.consumed_per_s(stage, since) if stage else None,
                produced_per_s=snapshot.produced_per_s(output, since) if output else None,
                produced_total=snapshot.end(output) if output else None,
                last_record=latest.get(output) if output else None,
            )
        topics = {}
        for topic, ends in snapshot.ends.items():
            topics[topic] = TopicFlow(topic, None if ends is None else len(ends), snapshot.end(topic),
                                      snapshot.produced_per_s(topic, since))
        return Flow(services, topics, latest, measured=since is not None)

    def close(self) -> None:
        for client in (self._probe, self._latest):
            if client is not None:
                client.close()
        self._probe = self._latest = None


def age_s(end_ms: int, now_ms: float) -> float:
    """Seconds since `end_ms`, never negative (clocks differ a little)."""
    return max(0.0, (now_ms - end_ms) / 1000)


class LatestRecords:
    """The record with the latest ``end_ms`` on a topic of candles or features rows, and its age.

    It reads the last few offsets of each partition, and reads a partition again
    only when it grew, so asking every second costs little.
    """

    def __init__(self, kafka: KafkaConfig, timeout: float = 3.0, tail: int = 5) -> None:
        self.kafka = kafka
        self.timeout = timeout
        self.tail = tail  # offsets read back from a partition's end
        self._consumer: Any = None
        # (topic, partition) -> (end offset when read, its newest record's summary)
        self._read: dict[tuple[str, int], tuple[int, dict[str, Any] | None]] = {}

    def newest(self, topic: str, ends: dict[int, int], now_ms: int) -> dict[str, Any] | None:
        """The newest record's exchange, symbol, timeframe, ``end_ms`` and ``age_s``; None when there is none.

        `ends`: the topic's end offset per partition.
        """
        grown = [p for p, end in ends.items() if end > 0 and self._read.get((topic, p), (None,))[0] != end]
        if grown:
            self._read_tails(topic, {p: ends[p] for p in grown})
        read = [self._read.get((topic, p), (0, None))[1] for p in ends]
        summaries = [summary for summary in read if summary is not None]
        if not summaries:
            return None
        newest = max(summaries, key=lambda s: s["end_ms"])
        return {**newest, "age_s": age_s(newest["end_ms"], now_ms)}

    def _read_tails(self, topic: str, ends: dict[int, int]) -> None:
        from confluent_kafka import KafkaError, TopicPartition

        if self._consumer is None:
            self._consumer = _reader(self.kafka, "candleflow-latest-records", **{
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # the tail was deleted by retention: read what is left
            })
        consumer = self._consumer
        consumer.assign([TopicPartition(topic, p, max(0, end - self.tail)) for p, end in ends.items()])
        pending = set(ends)
        found: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + self.timeout
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
                previous = self._read.get((topic, partition), (None, None))[1]
                self._read[(topic, partition)] = (end, found.get(partition) or previous)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _summary(raw: bytes | None) -> dict[str, Any] | None:
    """The identity of a candles or features row; lenient, as any record with these fields will do."""
    try:
        row = msgspec.json.decode(raw or b"")
        return {"exchange": row["exchange"], "symbol": row["symbol"], "timeframe": row["timeframe"],
                "end_ms": int(row["end_ms"])}
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return None


# --- the last candle of each market --------------------------------------------------------


@dataclass
class LastCandle:
    exchange: str
    symbol: str
    timeframe: str
    end_ms: int
    close: float
    gap_fill: bool


@dataclass
class CandleTail:
    """Follows the candles topic in a background thread and keeps the newest candle per key.

    It starts a little before the end of each partition, so a summary right
    after start-up already shows the last candles of a previous run.
    """

    kafka: KafkaConfig
    topic: str
    lookback: int = 200  # messages per partition read back at start
    last: dict[str, LastCandle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="candle-tail", daemon=True)

    def start(self) -> CandleTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def per_market(self) -> list[LastCandle]:
        """Per exchange:symbol, the newest candle of its shortest timeframe."""
        with self._lock:
            candles = list(self.last.values())
        best: dict[tuple[str, str], LastCandle] = {}
        for candle in candles:
            market = (candle.exchange, candle.symbol)
            current = best.get(market)
            if current is None or _tf_ms(candle.timeframe) < _tf_ms(current.timeframe):
                best[market] = candle
        return [best[market] for market in sorted(best)]

    def _follow(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        from candleflow.records import RecordError, decode_candle

        consumer = _reader(self.kafka, f"candleflow-tail-{uuid.uuid4().hex}")
        try:
            assigned = False
            while not self._stop.is_set():
                if not assigned:
                    # The topic may not exist yet (or the broker may be restarting): retry quietly.
                    try:
                        meta = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
                        if meta is None or meta.error is not None or not meta.partitions:
                            self._stop.wait(2)
                            continue
                        starts = []
                        for p in meta.partitions:
                            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
                            starts.append(TopicPartition(self.topic, p, max(low, high - self.lookback)))
                        consumer.assign(starts)
                        assigned = True
                    except KafkaException:
                        self._stop.wait(2)
                        continue
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                try:
                    candle = decode_candle(message.value())
                except (RecordError, ValueError):
                    continue  # not ours to judge: the features service dead-letters it
                with self._lock:
                    current = self.last.get(candle.key)
                    if current is None or candle.end_ms >= current.end_ms:
                        self.last[candle.key] = LastCandle(candle.exchange, candle.symbol, candle.timeframe,
                                                           candle.end_ms, candle.close, candle.gap_fill)
        finally:
            consumer.close()


def _tf_ms(timeframe: str) -> int:
    try:
        return timeframe_ms(timeframe)
    except ValueError:
        return 1 << 62
