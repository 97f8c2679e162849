"""Create and list candleflow's topics (names and partition counts from config)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from candleflow.config import KafkaConfig, TopicConfig


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int


def admin_client(kafka: KafkaConfig) -> AdminClient:
    return AdminClient(kafka.client_config())


def list_topics(kafka: KafkaConfig, timeout: float = 10.0, include_internal: bool = False) -> list[TopicInfo]:
    meta = admin_client(kafka).list_topics(timeout=timeout)
    return sorted(
        (TopicInfo(name, len(t.partitions)) for name, t in meta.topics.items()
         if include_internal or not name.startswith("__")),
        key=lambda t: t.name,
    )


def create_topics(kafka: KafkaConfig, topics: list[TopicConfig], timeout: float = 30.0) -> dict[str, str]:
    """Create the topics that are missing. Returns {name: "created" | "exists (N partitions)"}."""
    admin = admin_client(kafka)
    existing = admin.list_topics(timeout=timeout).topics
    result: dict[str, str] = {}
    new = []
    for topic in topics:
        if topic.name in existing:
            result[topic.name] = f"exists ({len(existing[topic.name].partitions)} partitions)"
            continue
        config = {} if topic.retention_ms is None else {"retention.ms": str(topic.retention_ms)}
        new.append(NewTopic(topic.name, num_partitions=topic.partitions,
                            replication_factor=kafka.replication_factor, config=config))
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                err = exc.args[0]
                if err.name() == "TOPIC_ALREADY_EXISTS":  # created concurrently by someone else
                    result[name] = "exists"
                else:
                    raise
    return result


def delete_topics(kafka: KafkaConfig, names: list[str], timeout: float = 30.0) -> None:
    admin = admin_client(kafka)  # keep a reference: a destroyed client fails its pending futures
    for future in admin.delete_topics(names, operation_timeout=timeout).values():
        future.result()
