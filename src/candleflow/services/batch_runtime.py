"""The features service's Kafka loop: batches in, one transaction per batch out.

Why not Quix Streams here: Quix handles one message at a time, and a stateful
Quix pass-through that does no maths at all already tops out well below the
features target on our machines (see bench/results/features_stream.md). The
per-message work Quix adds (message contexts, a state-store transaction per
message, a produce per output through its topic objects, offset tracking) is
bigger than the indicator maths it carries. This loop does the same job with
the work per candle cut to the processor call and one ``produce()``:

- one confluent-kafka Consumer (the service's consumer group,
  ``read_committed``, no auto-commit, the ``range`` assignor so that
  same-numbered partitions of `candles` and `candles.partial` land on the same
  process) and one Producer, transactional under exactly-once;
- messages are taken ``MAX_BATCH`` at a time; :class:`FeaturesProcessor` runs
  on each, in partition order, and every output row is produced as it comes;
- the state of every message key lives in memory, one plain dict per key and
  partition (what the processor reads and writes through ``get``/``set``). At
  the end of a batch the state of every key the batch touched is written ONCE
  to the state topic (compacted; same partition number as the input
  partition; record key = the message key, value = that key's state as
  MessagePack via :func:`encode_state`), however many candles of the key the
  batch held. The processor runs with ``live_engines``: it keeps the engine
  object itself in the key's state, and the engine's state is snapshotted and
  encoded here, once per key per batch, instead of after every candle;
- exactly-once: outputs, state records and the consumed offsets
  (``send_offsets_to_transaction`` with the consumer's group metadata) commit
  in one transaction per batch, so a process killed at any instant leaves
  `features` with no duplicate and no gap, and the state topic in step with
  the committed offsets. The transactional id is unique per process; zombie
  processes are fenced by the consumer group generation (KIP-447), and a
  transaction left open by a killed process is aborted by the broker after
  ``TRANSACTION_TIMEOUT_MS``. If a transaction fails, it is aborted and the
  process goes back to what is committed: the state of its partitions is
  reloaded and the consumer rewinds to the committed offsets (the processor's
  in-memory engines are checked against the reloaded state, so none that ran
  ahead is reused);
- at-least-once: no transaction; after a batch the outputs and state records
  are flushed, then the offsets are committed;
- a partition assigned to this process gets its state by reading that
  partition of the state topic from the beginning to its high watermark
  (``read_committed``, so an open transaction is waited for, never half
  read); a revoked partition's state is dropped. Rebalance callbacks only run
  inside ``consume()``, when no transaction is open;
- SIGTERM/SIGINT: the batch in hand is finished and committed, then the
  consumer leaves the group.

Measured (bench/features_stream.py, same machine and broker): with a
processor that does no maths this loop costs ~5-8 us CPU per message and
passes ~90-100k msg/s exactly-once, where the same pass-through on Quix
Streams passes ~13k msg/s; with the default indicators the service costs
less than a fifth of the CPU per candle of the Quix version (~40 against 224 us).

Choices: ``MAX_BATCH`` = 5,000 keeps the per-transaction cost (a few broker
round trips) near 1% under backlog while a batch stays well inside the
transaction timeout; ``TRANSACTION_TIMEOUT_MS`` = 10 s (as Kafka Streams
uses under exactly-once) bounds how long a killed process's open transaction
holds back read_committed readers and the next owner's state loading;
``SESSION_TIMEOUT_MS`` = 10 s lets the group notice a killed replica soon.
A transactional id per process (not per partition) suffices since KIP-447:
fencing comes from the group generation sent with the offsets.

The state topic belongs to the consumer group, like its committed offsets:
``<consumer_group>.<candles topic>.state`` (so a backfill replay, which runs the
service under its own group and topics, never shares it). It is created with
``cleanup.policy=compact`` and the partition count of `candles` when missing.
"""

from __future__ import annotations

import gc
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from prometheus_client import Counter, Histogram

from candleflow.config import Settings
from candleflow.log import get_logger
from candleflow.services.features import (DLQ, FEATURES, PARTIAL, FeaturesProcessor, decode_state, encode_state,
                                          snapshot)

log = get_logger(__name__)

# Messages per batch: big enough that the transaction commit (a few broker round trips) is
# a small share of a batch under backlog; under live load consume() returns what arrived
# within BATCH_WAIT_S, so a candle waits at most that long.
MAX_BATCH = 5_000
BATCH_WAIT_S = 0.1
# A killed process's open transaction blocks read_committed readers of its partitions
# (features, state) until the broker aborts it; a batch takes well under a second.
TRANSACTION_TIMEOUT_MS = 10_000
SESSION_TIMEOUT_MS = 10_000
# Every batch ends with a commit (or a flush under at-least-once), which sends what is queued at
# once whatever the linger: a long linger costs no latency here, and within a batch it lets the
# producer send full 1 MB batches instead of a request per partition every few ms (measured: the
# kernel's share of the service's CPU fell from ~16% to ~3.5%; less work for the broker too).
LINGER_MS = 100
# The loop's garbage is acyclic (messages, rows, tuples): reference counting frees it. Python's
# cyclic collector, left automatic, would still scan the young objects every few hundred
# allocations and, every few batches, everything that survived a batch (~3 us per candle,
# measured). It runs here once per interval instead, between batches.
GC_INTERVAL_S = 30.0

# The state topic is read from the beginning whenever a partition is assigned: small segments,
# rolled at least every 10 minutes, so the log cleaner keeps it close to one record per key.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": str(16 << 20), "segment.ms": "600000"}

BATCHES = Histogram("candleflow_features_batch_messages", "Messages per processed batch",
                    buckets=(1, 10, 100, 500, 1_000, 2_000, 5_000))
ABORTS = Counter("candleflow_features_aborted_batches_total", "Batches whose transaction was aborted and replayed")
RESTORED = Counter("candleflow_features_state_restored_total", "Key states loaded from the state topic")


def state_topic_name(settings: Settings) -> str:
    return f"{settings.features.consumer_group}.{settings.topics.candles.name}.state"


def ensure_state_topic(settings: Settings, timeout: float = 30.0) -> str:
    """Create the compacted state topic if missing (as many partitions as `candles`); return its name.

    A state topic with fewer partitions than `candles` cannot hold every input
    partition's state: that is an error, not something to repair silently.
    """
    from candleflow.broker.topics import admin_client

    name, candles = state_topic_name(settings), settings.topics.candles.name
    admin = admin_client(settings.kafka)
    topics = admin.list_topics(timeout=timeout).topics
    if candles not in topics:
        raise RuntimeError(f"topic {candles} does not exist (create it with `candleflow topics create`)")
    partitions = len(topics[candles].partitions)
    if name in topics:
        if len(topics[name].partitions) < partitions:
            raise RuntimeError(f"state topic {name} has {len(topics[name].partitions)} partitions but {candles} has "
                               f"{partitions}; delete it (the service rebuilds state from the start of {candles})")
        return name
    new = NewTopic(name, num_partitions=partitions, replication_factor=settings.kafka.replication_factor,
                   config=STATE_TOPIC_CONFIG)
    try:
        admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[name].result()
        log.info("state topic created", topic=name, partitions=partitions)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another replica was first
            raise
    return name


class KeyState(dict):
    """One message key's state: what the processor reads with ``get`` and writes with ``set``."""

    set = dict.__setitem__


class FeaturesRuntime:
    """Runs :class:`FeaturesProcessor` over Kafka in batches (see the module docstring)."""

    def __init__(self, settings: Settings, processor: FeaturesProcessor | None = None) -> None:
        self.settings = settings
        # Live engines: each touched key's engine state is taken once per batch, when it is written out.
        self.processor = processor or FeaturesProcessor(settings, live_engines=True)
        self.exactly_once = settings.features.processing_guarantee == "exactly-once"
        topics = settings.topics
        self.candles_topic = topics.candles.name
        self.partial_topic = topics.candles_partial.name if settings.features.partial_updates else None
        existed = state_topic_name(settings) in self._topic_names()
        self.state_topic = ensure_state_topic(settings)
        self.routes = {FEATURES: topics.features.name, DLQ: topics.dlq.name, PARTIAL: topics.features_partial.name}
        client = settings.kafka.client_config()
        self.consumer = Consumer({
            **client,
            "group.id": settings.features.consumer_group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        })
        producer_config = {**client, "linger.ms": LINGER_MS, "batch.size": 1_000_000,
                           "queue.buffering.max.messages": 1_000_000, "delivery.report.only.error": True,
                           "enable.idempotence": True, "on_delivery": self._on_delivery_error}
        if self.exactly_once:
            producer_config["transactional.id"] = f"{settings.features.consumer_group}-{uuid.uuid4()}"
            producer_config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        self.producer = Producer(producer_config)
        if self.exactly_once:
            self.producer.init_transactions(60)
        # partition -> {message key -> KeyState}; only partitions of `candles` this process holds.
        self.states: dict[int, dict[str, KeyState]] = {}
        self.delivery_errors: list[Any] = []
        self.stopping = False
        if not existed:
            self._check_group_is_new()

    def _topic_names(self) -> set[str]:
        from candleflow.broker.topics import admin_client

        return set(admin_client(self.settings.kafka).list_topics(timeout=30).topics)

    def _check_group_is_new(self) -> None:
        """A new state topic under a group that already consumed candles (e.g. the group ran an
        earlier version, which kept its state elsewhere): its keys restart from fresh engines
        (or the backfill's hand-over state), so say so loudly."""
        partitions = self.consumer.list_topics(self.candles_topic, timeout=30).topics[self.candles_topic].partitions
        committed = self.consumer.committed([TopicPartition(self.candles_topic, p) for p in partitions], timeout=30)
        if any(tp.offset >= 0 for tp in committed):
            log.error("the state topic is new but the consumer group has already consumed candles: keys continue "
                      "from fresh engines (or the backfill's hand-over state), so long-memory indicators differ "
                      "from the batch path; for exact features reset the group's offsets to the start of the "
                      "candles topic, or run `candleflow backfill --handover-state` first",
                      group=self.settings.features.consumer_group, state_topic=self.state_topic)

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Consume, process and commit batch after batch until :meth:`stop`.

        Meant to own its process: while it runs, Python's cyclic garbage collector
        runs only between batches, every ``GC_INTERVAL_S``."""
        topics = [self.candles_topic] + ([self.partial_topic] if self.partial_topic else [])
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        # What start-up made (modules, configuration, clients) lives as long as the process:
        # frozen, the periodic collections below never scan it.
        gc.collect()
        gc.freeze()
        gc.disable()
        next_collection = time.monotonic() + GC_INTERVAL_S
        try:
            while not self.stopping:
                messages = self.consumer.consume(MAX_BATCH, BATCH_WAIT_S)
                if messages:
                    self._commit_batch(messages)
                    self.processor.sync_metrics()
                if time.monotonic() >= next_collection:
                    gc.collect()
                    next_collection = time.monotonic() + GC_INTERVAL_S
        finally:
            gc.enable()
            self.close()

    def stop(self) -> None:
        """Finish the batch in hand, then leave (safe to call from a signal handler)."""
        self.stopping = True

    def close(self) -> None:
        self.consumer.close()  # leaves the group now, so the partitions move on without a timeout
        self.producer.flush(30)

    def _commit_batch(self, messages: list[Any]) -> None:
        BATCHES.observe(len(messages))
        if not self.exactly_once:
            offsets = self._process(messages)
            self.producer.flush()
            if self.delivery_errors:
                raise KafkaException(self.delivery_errors[0])  # not committed: the batch comes again
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return
        self.producer.begin_transaction()
        try:
            offsets = self._process(messages)
            metadata = self.consumer.consumer_group_metadata()
            _retried(lambda: self.producer.send_offsets_to_transaction(offsets, metadata))
            _retried(self.producer.commit_transaction)
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise  # fatal (e.g. fenced): the process stops, its partitions move on
            log.warning("transaction aborted; going back to the committed state", error=str(error))
            ABORTS.inc()
            self.producer.abort_transaction(60)
            self._rewind()
        except BaseException:
            # Not Kafka's (a bug, an interrupt): abort now, so that read_committed readers of
            # these partitions need not wait for the transaction timeout; then stop.
            self.producer.abort_transaction(30)
            raise

    def _process(self, messages: list[Any]) -> list[TopicPartition]:
        """Run the processor on every message, produce its outputs and the touched keys' state.

        Returns the offsets to commit (the next offset of every partition in the batch)."""
        final, partial = self.processor.final, self.processor.partial
        produce, routes = self.producer.produce, self.routes
        candles_topic, states = self.candles_topic, self.states
        touched: dict[tuple[int, str], KeyState] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error():
                log.warning("consumer error", error=str(msg.error()))
                continue
            topic, partition, raw_key = msg.topic(), msg.partition(), msg.key()
            key = raw_key.decode("utf-8", "replace") if raw_key else ""
            if topic == candles_topic:
                keys = states[partition]
                state = keys.get(key)
                if state is None:
                    state = keys[key] = KeyState()
                touched[partition, key] = state
                out = final(msg.value(), key, state)
            else:
                out = partial(msg.value(), key)
            for destination, value in out:
                try:
                    produce(routes[destination], value, raw_key)
                except BufferError:  # the local queue is full (see _produce)
                    self._produce(routes[destination], value, raw_key)
            next_offsets[topic, partition] = msg.offset() + 1
        for (partition, key), state in touched.items():
            if state:
                self._produce(self.state_topic, encode_state(snapshot(state)), key.encode(), partition)
            else:  # a key that only brought undecodable candles: nothing to keep
                del states[partition][key]
        return [TopicPartition(topic, partition, offset) for (topic, partition), offset in next_offsets.items()]

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition)
                return
            except BufferError:  # the local queue is full: let librdkafka send some first
                self.producer.poll(0.1)

    def _on_delivery_error(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.delivery_errors.append(error)

    # -- partitions and state --------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions if tp.topic == self.candles_topic]
        self._load_states(mine)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.candles_topic:
                dropped = self.states.pop(tp.partition, {})
                self.processor.forget(dropped)

    def _rewind(self) -> None:
        """After an aborted transaction: the committed state and offsets of every held partition."""
        assignment = self.consumer.assignment()
        self._load_states([tp.partition for tp in assignment if tp.topic == self.candles_topic])
        for tp in self.consumer.committed(assignment, timeout=60):
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
            self.consumer.seek(tp)

    def _load_states(self, partitions: list[int]) -> None:
        if not partitions:
            return
        began = time.monotonic()
        loaded = read_states(self.settings, self.state_topic, partitions)
        for partition in partitions:
            self.processor.forget(self.states.get(partition, {}))
            self.states[partition] = loaded[partition]
        count = sum(len(keys) for keys in loaded.values())
        RESTORED.inc(count)
        log.info("partition state loaded", partitions=sorted(partitions), keys=count,
                 seconds=round(time.monotonic() - began, 3))


def _retried(call: Callable[[], None], attempts: int = 10) -> None:
    """A transaction step that may fail for a while (broker restarting, coordinator moving)."""
    for attempt in range(attempts):
        try:
            call()
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or attempt == attempts - 1:
                raise
            log.warning("transaction step failed, retrying", error=str(exc.args[0]), attempt=attempt + 1)
            time.sleep(1.0)


def read_states(settings: Settings, topic: str, partitions: list[int],
                timeout_s: float = 300.0) -> dict[int, dict[str, KeyState]]:
    """The committed state of `partitions`: each partition of the state topic read to its end."""
    states: dict[int, dict[str, KeyState]] = {p: {} for p in partitions}
    reader = Consumer({**settings.kafka.client_config(), "group.id": f"{settings.features.consumer_group}-restore",
                       "enable.auto.commit": False, "isolation.level": "read_committed",
                       "enable.partition.eof": False})
    try:
        ends = {}
        deadline = time.monotonic() + timeout_s
        for p in partitions:
            low, high = _watermarks(reader, TopicPartition(topic, p), deadline)
            if high > low:
                ends[p] = high
        if not ends:
            return states
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            for msg in reader.consume(10_000, 0.2):
                if msg.error():
                    continue
                keys = states[msg.partition()]
                value = msg.value()
                key = msg.key().decode()
                if value is None:
                    keys.pop(key, None)
                else:
                    keys[key] = KeyState(decode_state(value))
            # Position, not the last record's offset: a transaction's commit marker takes an offset too.
            for tp in reader.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
            if time.monotonic() > deadline:
                raise RuntimeError(f"state topic {topic} partitions {sorted(ends)} not read to the end "
                                   f"within {timeout_s:.0f} s (an open transaction?)")
    finally:
        reader.close()
    return states


# What a partition answers while it or its leader is not known yet (a state topic created moments
# ago): the broker's errors, and the client's own while its metadata still lacks the topic.
_NO_LEADER_YET = frozenset((KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                            KafkaError._UNKNOWN_TOPIC))


def _watermarks(reader: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """The partition's (low, high) offsets, waiting until `deadline` for a leader to be elected."""
    while True:
        try:
            return reader.get_watermark_offsets(partition, timeout=30, cached=False)
        except KafkaException as exc:
            if exc.args[0].code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run(settings: Settings, on_started: Callable[[FeaturesRuntime], None] | None = None) -> None:
    """Run the service until SIGINT/SIGTERM."""
    runtime = FeaturesRuntime(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runtime.stop())
    log.info("features service starting", candles=settings.topics.candles.name,
             features=settings.topics.features.name, state=runtime.state_topic,
             guarantee=settings.features.processing_guarantee, started_at=time.time())
    if on_started is not None:
        on_started(runtime)
    runtime.run()
