"""How the running pipeline is doing: service probes, topic offsets, consumer lags, last candles.

Shared by ``candleflow up`` (its periodic health summary) and ``candleflow
status``. ``up`` records what it runs in a state file under ``data_dir``
(:func:`write_state`): each service's pid, restarts and the URL that answers
while it is healthy (``/healthz`` for serve, the Prometheus ``/metrics`` port
for the others). Kafka gives the rest: the end offsets of the topics (their
growth is the throughput) and the committed offsets of each service's
consumer group (end minus committed is the lag).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- HTTP probes ------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs from our state
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def scrape_metrics(url: str, timeout: float = 1.0) -> dict[str, float] | None:
    """The samples of a Prometheus `/metrics` page summed over their labels; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    except ValueError:
        return None
    return totals


# --- Kafka: end offsets, committed offsets, lags -------------------------------------------


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


@dataclass
class Snapshot:
    taken: float  # time.monotonic()
    ends: dict[str, dict[int, int] | None]  # topic -> partition -> end offset; None: no such topic
    committed: dict[str, dict[int, int] | None]  # group -> partition of its topic -> committed offset

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


def rate(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return max(0, after - before) / seconds


class KafkaProbe:
    """End offsets and committed group offsets, with one consumer and one admin client kept open."""

    def __init__(self, kafka: KafkaConfig, timeout: float = 5.0) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        quiet = {"log_level": 0}
        self.timeout = timeout
        self.consumer = Consumer({**kafka.client_config(), **quiet, "group.id": f"candleflow-probe-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False})
        self.admin = AdminClient({**kafka.client_config(), **quiet})

    def end_offsets(self, topic: str) -> dict[int, int] | None:
        from confluent_kafka import TopicPartition

        meta = self.consumer.list_topics(topic, timeout=self.timeout).topics.get(topic)
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

    def snapshot(self, topics: list[str], stages: list[ConsumerStage]) -> Snapshot:
        ends = {topic: self.end_offsets(topic) for topic in dict.fromkeys(topics)}
        committed = {stage.group: self.committed(stage.group, stage.topic) for stage in stages}
        return Snapshot(time.monotonic(), ends, committed)

    def close(self) -> None:
        self.consumer.close()


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
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        from candleflow.records import RecordError, decode_candle

        consumer = Consumer({**self.kafka.client_config(), "log_level": 0,
                             "group.id": f"candleflow-tail-{uuid.uuid4().hex}", "enable.auto.commit": False,
                             "isolation.level": "read_committed"})
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
