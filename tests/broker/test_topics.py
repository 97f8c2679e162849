"""Topic administration and a round trip of every record type through the real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from candleflow.broker.topics import create_topics, delete_topics, list_topics
from candleflow.config import KafkaConfig, TopicConfig
from candleflow.records import Candle, Trade, decode_candle, decode_features, decode_trade, encode
from tests.fixtures.kafka import consume_all, produce
from tests.test_records import CANDLE, TRADE


def test_create_is_idempotent_and_uses_configured_partitions(kafka_config: KafkaConfig) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = [TopicConfig(name=f"trades-{suffix}", partitions=6), TopicConfig(name=f"dlq-{suffix}", partitions=1)]
    assert create_topics(kafka_config, topics) == {f"trades-{suffix}": "created", f"dlq-{suffix}": "created"}
    again = create_topics(kafka_config, topics)
    assert again[f"trades-{suffix}"] == "exists (6 partitions)"
    listed = {t.name: t.partitions for t in list_topics(kafka_config)}
    assert listed[f"trades-{suffix}"] == 6 and listed[f"dlq-{suffix}"] == 1

    delete_topics(kafka_config, [f"trades-{suffix}", f"dlq-{suffix}"])
    remaining = {t.name for t in list_topics(kafka_config)}
    assert f"trades-{suffix}" not in remaining and f"dlq-{suffix}" not in remaining


def test_cli_topics_create_and_list(kafka_config: KafkaConfig, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = tmp_path / "cf.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: {kafka_config.bootstrap_servers}\n"
        "topics:\n"
        f"  trades: {{name: t-{suffix}, partitions: 3}}\n"
        f"  candles: {{name: c-{suffix}}}\n"
        f"  candles_partial: {{name: cp-{suffix}}}\n"
        f"  features: {{name: f-{suffix}}}\n"
        f"  dlq: {{name: d-{suffix}, partitions: 1}}\n"
    )
    run = [sys.executable, "-m", "candleflow", "--config", str(config), "topics"]
    created = subprocess.run([*run, "create"], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    assert created.stdout.count(": created") == 5
    listed = subprocess.run([*run, "list"], capture_output=True, text=True, timeout=60)
    assert f"t-{suffix}\t3" in listed.stdout.splitlines()
    assert f"c-{suffix}\t6" in listed.stdout.splitlines()


def test_records_round_trip_through_kafka(kafka_config: KafkaConfig, topic_factory) -> None:
    topic = topic_factory("roundtrip", partitions=1)
    trade = Trade(**TRADE)
    candle = Candle(**CANDLE)
    features = {**CANDLE, "rsi_14": 61.25, "macd_hist_12_26_9": None}
    produce(kafka_config, topic, [
        (trade.key, encode(trade)),
        (candle.key, encode(candle)),
        (candle.key, encode(features)),
    ])
    messages = consume_all(kafka_config, topic, expected=3)
    assert [m.key().decode() for m in messages] == ["kraken:BTC/USD", "kraken:BTC/USD:1m", "kraken:BTC/USD:1m"]
    assert decode_trade(messages[0].value()) == trade
    assert decode_candle(messages[1].value()) == candle
    assert decode_features(messages[2].value()) == features
    assert json.loads(messages[2].value())["macd_hist_12_26_9"] is None
