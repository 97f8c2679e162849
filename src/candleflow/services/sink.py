"""``candleflow sink``: Features rows from Kafka into the online store and the offline dataset.

A plain confluent-kafka consumer loop rather than a Quix ``BatchingSink``:
the sink's whole job is the ordering "write online, write offline, then commit
exactly the offsets of what was written", with batches cut by size *and* by
time. Owning the loop makes that ordering explicit in a dozen lines (Quix
would flush at its own checkpoint cadence and hide the commit), and there is
no stateful processing for Quix to help with.

Per batch (``sink.batch_size`` rows, ``sink.batch_interval_ms`` since its
first row, or ``sink.flush_when_idle_ms`` without new input, whichever comes
first):

1. append the rows to the offline dataset as new Parquet files (fsynced);
2. upsert the newest row per key into the online store (synchronous);
3. flush dead letters, then commit the offsets of every message in the batch.

A crash anywhere before 3 replays the batch: the online upsert is idempotent
and refuses older rows, and the offline duplicates are dropped by readers and
by ``candleflow store compact``. Nothing is lost because nothing is committed
before it is durable.

Steps 1-2 run in one writer thread while the loop decodes the next batch
(two stages, at most one batch in flight, commits in batch order). While the
store is unavailable the writer retries the same batch with back-off and the
loop waits at the next batch boundary, so memory stays bounded to two
batches; an outage longer than the consumer's ``max.poll.interval.ms``
(5 minutes) costs a rebalance and a replay of the uncommitted batches, not data.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from candleflow.config import Settings
from candleflow.dlq import dead_letter, encode_dead_letter
from candleflow.log import get_logger
from candleflow.metrics import DEAD_LETTERS, serve_metrics
from candleflow.records import FEATURES_META_FIELDS, RecordError, decode_features

SERVICE = "sink"
log = get_logger(__name__)

ROWS_IN = Counter("candleflow_sink_rows_total", "Features rows consumed and written", ["timeframe"])
ONLINE_WRITTEN = Counter("candleflow_sink_online_written_total", "Rows upserted into the online store")
ONLINE_STALE = Counter("candleflow_sink_online_stale_total",
                       "Rows the online store refused because it held a newer one")
OFFLINE_FILES = Counter("candleflow_sink_offline_files_total", "Parquet files appended to the offline dataset")
BATCH_SECONDS = Histogram("candleflow_sink_batch_seconds", "Time to write and commit one batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


@dataclass
class Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to commit
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.rows)


class RowChecker:
    """Validates a decoded Features row against the store schema; bad rows become dead letters."""

    def __init__(self, columns: dict[str, Sequence[str]]) -> None:
        self.columns = columns

    def check(self, raw: bytes) -> tuple[dict[str, Any] | None, str, str]:
        """(row, reason, detail): row is None when it must be dead-lettered."""
        try:
            row = decode_features(raw)
        except RecordError as exc:
            return None, "invalid_features", str(exc)
        timeframe = row["timeframe"]
        expected = self.columns.get(timeframe)
        if expected is None:
            return None, "unknown_timeframe", (f"timeframe {timeframe!r} is not configured "
                                               f"(candles.timeframes: {', '.join(self.columns)})")
        if row.get("provisional"):
            return None, "provisional_row", "provisional rows belong on features.partial, not features"
        missing = [name for name in expected if name not in row]
        if missing:
            return None, "schema_mismatch", f"missing configured feature columns: {', '.join(missing[:10])}"
        for name in FEATURES_META_FIELDS:
            row.pop(name, None)
        return row, "", ""


class Sink:
    def __init__(self, settings: Settings) -> None:
        from candleflow.store import repo
        from candleflow.store.base import online_writer
        from candleflow.store.offline import OfflineDataset

        self.settings = settings
        schemas = repo.view_schemas(settings)
        self.columns = {tf: list(s.feature_columns) for tf, s in schemas.items()}
        self.checker = RowChecker(self.columns)
        self.online = online_writer(settings)
        self.offline = OfflineDataset(settings.store.offline_dir)
        self._stop = False
        self.consumer: Any = None
        self.producer: Any = None
        self.batch = Batch()
        self._assigned = False
        self._last_activity = time.monotonic()
        # One writer thread: the batch in flight (see _flush).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self._in_flight: tuple[Future[None], Batch, float] | None = None

    def stop(self, *_: object) -> None:
        self._stop = True

    # -- Kafka ---------------------------------------------------------------------

    def _connect(self) -> None:
        from confluent_kafka import Consumer, Producer

        kafka = self.settings.kafka.client_config()
        self.consumer = Consumer({
            **kafka,
            "group.id": self.settings.sink.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": self.settings.sink.session_timeout_ms,
            **({"group.instance.id": self.settings.sink.instance_id} if self.settings.sink.instance_id else {}),
        })
        self.producer = Producer({**kafka, "enable.idempotence": True, "linger.ms": 20})
        self.consumer.subscribe([self.settings.topics.features.name], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        self._last_activity = time.monotonic()
        self._assigned = True

    def _on_revoke(self, consumer: Any, partitions: Any) -> None:
        # Write and commit what we hold before the partitions move elsewhere.
        if self.batch.offsets:
            self._flush()
        self._settle()

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        key = message.key()
        letter = dead_letter(SERVICE, reason, message.value(), detail=detail,
                             source=f"{message.topic()}[{message.partition()}]@{message.offset()}",
                             key=key.decode("utf-8", "replace") if key else "")
        self.producer.produce(self.settings.topics.dlq.name, encode_dead_letter(letter), key=key)
        self.producer.poll(0)
        DEAD_LETTERS.labels(SERVICE, reason).inc()

    # -- the loop ------------------------------------------------------------------

    def run(self, max_idle_s: float | None = None) -> None:
        """Consume until stopped (SIGTERM/SIGINT), or until idle for ``max_idle_s`` seconds."""
        self.online.setup()
        self._connect()
        interval = self.settings.sink.batch_interval_ms / 1000
        linger = self.settings.sink.flush_when_idle_ms / 1000 if self.settings.sink.flush_when_idle_ms else None
        size = self.settings.sink.batch_size
        log.info("sink started", topic=self.settings.topics.features.name, online=self.online.name,
                 offline=str(self.offline.root), batch_size=size, batch_interval_ms=self.settings.sink.batch_interval_ms)
        try:
            while not self._stop:
                now = time.monotonic()
                wait = interval if not self.batch.offsets else max(0.0, self.batch.started + interval - now)
                if linger is not None:
                    # consume() waits for a full batch or its timeout, whichever is first: keep the
                    # timeout short so a burst is collected within `linger` of its end.
                    wait = min(wait, linger)
                messages = self.consumer.consume(num_messages=max(1, min(size - len(self.batch), 10_000)),
                                                 timeout=min(wait, 1.0))
                for message in messages:
                    if message.error():
                        log.warning("consumer error", error=str(message.error()))
                        continue
                    self._add(message)
                if messages:
                    self._last_activity = time.monotonic()
                # Cut the batch when full, when its oldest row has waited batch_interval_ms, or when the
                # input paused (candles close together, so a burst followed by silence is the common case).
                if self.batch.offsets and (
                        len(self.batch) >= size
                        or time.monotonic() - self.batch.started >= interval
                        or (linger is not None and not messages
                            and time.monotonic() - self._last_activity >= linger)):
                    self._flush()
                # Idle is counted from the partition assignment on, so a slow group join is not "no input".
                if self._in_flight is not None and self._in_flight[0].done() and not self.batch.offsets:
                    self._settle()  # nothing new arrived: commit the finished batch now
                if (max_idle_s is not None and self._assigned and not self.batch.offsets
                        and time.monotonic() - self._last_activity > max_idle_s):
                    break
            if self.batch.offsets:
                self._flush()
            self._settle()
        finally:
            self._writer.shutdown(wait=True)
            self.consumer.close()
            self.producer.flush(10)
            self.online.close()
            log.info("sink stopped")

    def _add(self, message: Any) -> None:
        if not self.batch.offsets:
            self.batch.started = time.monotonic()
        self.batch.offsets[(message.topic(), message.partition())] = message.offset() + 1
        row, reason, detail = self.checker.check(message.value())
        if row is None:
            self._dead_letter(message, reason, detail)
            return
        self.batch.rows.append(row)

    def _flush(self) -> None:
        """Hand the current batch to the writer thread; first settle the one before it.

        Two stages overlap: while batch k is written (Parquet encoding and
        fsync, the online upsert) the loop decodes batch k+1. Batch k+1 is only
        handed over once batch k is durable and committed, so writes and
        commits stay in order and at most one batch is in flight.
        """
        batch, self.batch = self.batch, Batch()
        self._settle()
        self._in_flight = (self._writer.submit(self._write, batch), batch, time.perf_counter())

    def _settle(self) -> None:
        """Wait for the batch in flight to be durable, then commit its offsets."""
        from confluent_kafka import TopicPartition

        if self._in_flight is None:
            return
        future, batch, started = self._in_flight
        self._in_flight = None
        future.result()
        if self.producer.flush(30) > 0:
            raise RuntimeError("dead letters could not be delivered; not committing")
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                             asynchronous=False)
        per_timeframe: dict[str, int] = {}
        for row in batch.rows:
            per_timeframe[row["timeframe"]] = per_timeframe.get(row["timeframe"], 0) + 1
        for timeframe, count in per_timeframe.items():
            ROWS_IN.labels(timeframe).inc(count)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        if batch.rows:
            log.debug("batch committed", rows=len(batch.rows), seconds=round(time.perf_counter() - started, 4))

    def _write(self, batch: Batch) -> None:
        """Offline then online, retried with back-off while the store is down (runs in the writer thread)."""
        delay = 0.2
        while batch.rows:
            try:
                files = self.offline.append(batch.rows, self.columns)
                stats = self.online.write(batch.rows)
                OFFLINE_FILES.inc(len(files))
                ONLINE_WRITTEN.inc(stats.written)
                ONLINE_STALE.inc(stats.stale)
                return
            except Exception as exc:  # noqa: BLE001 - the store is down: keep the batch, retry
                if self._stop:
                    raise
                log.error("store write failed; retrying the batch", error=repr(exc), retry_in_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


def run(settings: Settings, max_idle_s: float | None = None) -> None:
    serve_metrics(settings.sink.metrics_port, settings.metrics_host)
    sink = Sink(settings)
    signal.signal(signal.SIGTERM, sink.stop)
    signal.signal(signal.SIGINT, sink.stop)
    sink.run(max_idle_s=max_idle_s)
