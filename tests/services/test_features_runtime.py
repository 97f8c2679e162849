"""The features service's batch runtime against the real broker: state topic, rebalances, at-least-once.

The service runs as real `candleflow features` subprocesses; the expected rows
are :class:`FeaturesProcessor` fed the same candles in this process, one state
per key (what the service keeps per key and partition).
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from candleflow.broker.topics import create_topics
from candleflow.config import KafkaConfig, Settings, TopicConfig
from candleflow.records import Candle, decode_features, encode
from candleflow.services.batch_runtime import (FeaturesRuntime, KeyState, ensure_state_topic, read_states,
                                               state_topic_name)
from candleflow.services.features import FeaturesProcessor, decode_state, encode_state, snapshot
from tests.fixtures.kafka import commit_offsets, consume_all, end_offsets, produce
from tests.fixtures.processes import start_service, stop_process
from tests.services.test_candles import wait_for_members
from tests.services.test_features import DictState, key_candles


def runtime_settings(settings_factory, partitions: int, **features) -> Settings:
    group = f"features-{uuid.uuid4().hex[:8]}"  # a group (and so a state topic) of its own
    return settings_factory(partitions=partitions,
                            features={"consumer_group": group, "partial_updates": False, **features})


def expected_rows(settings: Settings, candles: list[Candle]) -> dict[str, list[dict]]:
    processor, states = FeaturesProcessor(settings), {}
    rows: dict[str, list[dict]] = {}
    for candle in candles:
        [(destination, value)] = processor.final(encode(candle), candle.key, states.setdefault(candle.key, DictState()))
        assert destination == "features"
        rows.setdefault(candle.key, []).append(json.loads(value))
    return rows


def read_rows(kafka: KafkaConfig, topic: str, count: int, log: Path) -> dict[str, list[dict]]:
    messages = consume_all(kafka, topic, expected=count, timeout_s=120)
    messages += consume_all(kafka, topic, idle_s=2)[len(messages):]  # anything more would be a duplicate
    assert len(messages) == count, f"{len(messages)} rows for {count} candles; log:\n" + \
        log.read_text(errors="replace")[-3000:]
    rows: dict[str, list[dict]] = {}
    for msg in messages:
        rows.setdefault(msg.key().decode(), []).append(decode_features(msg.value()))
    return rows


def committed_offsets(kafka: KafkaConfig, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({**kafka.client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    finally:
        consumer.close()


def test_live_engines_give_the_same_rows_and_reload_from_the_written_state(settings_factory):
    """The runtime's processor keeps engines in the state and snapshots them when it writes the state
    out; after a rollback (the state reloaded from what was written) it continues from that state."""
    settings = settings_factory(partitions=1)
    candles = key_candles("kraken", "BTC/USD", 80, 12)
    key = candles[0].key
    reference = expected_rows(settings, candles)[key]

    processor, state = FeaturesProcessor(settings, live_engines=True), KeyState()
    rows = [json.loads(processor.final(encode(c), key, state)[0][1]) for c in candles[:40]]
    written = encode_state(snapshot(state))  # what a committed batch leaves on the state topic
    rows += [json.loads(processor.final(encode(c), key, state)[0][1]) for c in candles[40:55]]  # then aborted
    state = KeyState(decode_state(written))  # the runtime reloads the partition's state
    rows = rows[:40] + [json.loads(processor.final(encode(c), key, state)[0][1]) for c in candles[40:]]
    assert rows == reference


def test_state_topic_is_created_compacted_with_the_partitions_of_candles(settings_factory, kafka_config):
    settings = runtime_settings(settings_factory, 3)
    name = ensure_state_topic(settings)
    assert name == state_topic_name(settings) == f"{settings.features.consumer_group}.{settings.topics.candles.name}.state"
    admin = AdminClient(kafka_config.client_config())
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 3
    [config] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)]).values()
    described = config.result(10)
    assert described["cleanup.policy"].value == "compact"
    assert described["segment.bytes"].value == str(16 << 20)  # small segments: compacted soon, loaded fast
    assert ensure_state_topic(settings) == name  # already there: used as it is
    assert read_states(settings, name, [0, 1, 2]) == {0: {}, 1: {}, 2: {}}


def test_state_loading_waits_for_a_state_topic_still_without_leaders(settings_factory, kafka_config):
    """Right after the state topic is created its partitions may have no leader yet: loading waits."""
    settings = runtime_settings(settings_factory, 2)
    name = state_topic_name(settings)
    creator = threading.Timer(1.0, lambda: ensure_state_topic(settings))  # the topic appears a moment later
    creator.start()
    try:
        assert read_states(settings, name, [0, 1], timeout_s=60) == {0: {}, 1: {}}
    finally:
        creator.join()
    with pytest.raises(KafkaException):  # and it does not wait forever
        read_states(settings, f"{name}-missing", [0], timeout_s=1)


def test_a_state_topic_with_fewer_partitions_than_candles_is_refused(settings_factory, kafka_config):
    settings = runtime_settings(settings_factory, 2)
    create_topics(kafka_config, [TopicConfig(name=state_topic_name(settings), partitions=1)])
    with pytest.raises(RuntimeError, match="has 1 partitions but"):
        ensure_state_topic(settings)


@pytest.mark.slow
def test_replicas_joining_and_leaving_continue_from_the_state_topic(settings_factory, kafka_config, tmp_path):
    """One process, then two in the group (partitions move, their state is loaded from the state
    topic), then one again: the rows are those of one uninterrupted run."""
    settings = runtime_settings(settings_factory, 4)
    series = [key_candles("kraken", f"M{i}/USD", 150, 40 + i) for i in range(8)]
    stream = sorted((c for candles in series for c in candles), key=lambda c: (c.start_ms, c.key))
    parts = [stream[:400], stream[400:800], stream[800:]]
    candles_topic, features_topic = settings.topics.candles.name, settings.topics.features.name
    group = settings.features.consumer_group
    config, logs = tmp_path / "candleflow.yaml", [tmp_path / "first.log", tmp_path / "second.log"]
    first = second = None
    try:
        first = start_service("features", config, logs[0])
        produce(kafka_config, candles_topic, [(c.key, encode(c)) for c in parts[0]])
        read_rows(kafka_config, features_topic, len(parts[0]), logs[0])

        second = start_service("features", config, logs[1])  # scale out: half of the partitions move to it
        members = wait_for_members(kafka_config, group, candles_topic, 2)
        assert sorted(len(m) for m in members) == [2, 2]
        produce(kafka_config, candles_topic, [(c.key, encode(c)) for c in parts[1]])
        read_rows(kafka_config, features_topic, len(parts[0]) + len(parts[1]), logs[1])

        stop_process(first)  # scale in: the second process takes every partition back from the state topic
        assert first.returncode == 0, logs[0].read_text(errors="replace")[-3000:]
        wait_for_members(kafka_config, group, candles_topic, 1)
        produce(kafka_config, candles_topic, [(c.key, encode(c)) for c in parts[2]])
        got = read_rows(kafka_config, features_topic, len(stream), logs[1])
        assert second.poll() is None
    finally:
        stop_process(first)
        stop_process(second)
    assert got == expected_rows(settings, stream)  # bit for bit, none lost, none twice
    assert consume_all(kafka_config, settings.topics.dlq.name, idle_s=1) == []
    assert "partition state loaded" in logs[1].read_text()


@pytest.mark.slow
def test_at_least_once_commits_after_the_outputs_and_restarts_where_it_stopped(settings_factory, kafka_config,
                                                                               tmp_path):
    settings = runtime_settings(settings_factory, 2, processing_guarantee="at-least-once")
    series = [key_candles("binance", f"S{i}/USDT", 120, 60 + i) for i in range(3)]
    stream = sorted((c for candles in series for c in candles), key=lambda c: (c.start_ms, c.key))
    half = len(stream) // 2
    candles_topic, features_topic = settings.topics.candles.name, settings.topics.features.name
    log = tmp_path / "service.log"
    proc = start_service("features", tmp_path / "candleflow.yaml", log)
    try:
        produce(kafka_config, candles_topic, [(c.key, encode(c)) for c in stream[:half]])
        read_rows(kafka_config, features_topic, half, log)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    # Stopped cleanly: every consumed candle is committed, its row and its state written.
    assert committed_offsets(kafka_config, settings.features.consumer_group, candles_topic, 2) == \
        end_offsets(kafka_config, candles_topic)
    states = read_states(settings, state_topic_name(settings), [0, 1])
    assert sorted(key for keys in states.values() for key in keys) == sorted(c.key for c in (s[0] for s in series))

    proc = start_service("features", tmp_path / "candleflow.yaml", log)
    try:
        produce(kafka_config, candles_topic, [(c.key, encode(c)) for c in stream[half:]])
        got = read_rows(kafka_config, features_topic, len(stream), log)
    finally:
        stop_process(proc)
    assert got == expected_rows(settings, stream)
    assert consume_all(kafka_config, settings.topics.dlq.name, idle_s=1) == []


def test_a_new_state_topic_under_a_group_that_consumed_candles_is_reported(settings_factory, kafka_config):
    """E.g. a group that ran an earlier version, which kept its state elsewhere: its keys restart."""
    from structlog.testing import capture_logs

    settings = runtime_settings(settings_factory, 2)
    commit_offsets(kafka_config, settings.features.consumer_group, settings.topics.candles.name, {0: 0, 1: 0})
    with capture_logs() as logs:
        runtime = FeaturesRuntime(settings)
        runtime.close()
        FeaturesRuntime(settings).close()  # the state topic exists now: nothing to report
    assert [entry["log_level"] for entry in logs if "state topic is new" in entry["event"]] == ["error"]
