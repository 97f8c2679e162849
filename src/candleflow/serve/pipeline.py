"""``GET /v1/pipeline``: what each service is doing, read from Kafka alone.

The figures (throughput, consumer lag, group members, the newest record and
its age, dead letters) come from :class:`candleflow.health.FlowMeter`, shared
with ``candleflow up`` and ``candleflow status``; this module shapes them for
the page. A sample costs a handful of admin requests; it is cached for a
second so any number of open dashboards cost the cluster the same.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from candleflow.config import Settings
from candleflow.health import Flow, FlowMeter

CACHE_S = 1.0
UNREACHABLE_CACHE_S = 5.0
TIMEOUT_S = 3.0


class PipelineMonitor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        topics = settings.topics
        self._meter = FlowMeter(settings, topics=[topics.trades.name, topics.candles.name, topics.features.name,
                                                  topics.dlq.name],
                                members=True, latest=[topics.candles.name, topics.features.name], timeout=TIMEOUT_S)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any], float] | None = None  # at, result, kept for

    def snapshot(self) -> dict[str, Any]:
        from confluent_kafka import KafkaException

        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self._cached[2]:
                return self._cached[1]
            bootstrap = self.settings.kafka.bootstrap()
            try:
                result, keep_s = self._report(self._meter.read()), CACHE_S
            except KafkaException as exc:
                # Asking an absent cluster blocks for the whole timeout: ask less often.
                result, keep_s = {"kafka": {"bootstrap": bootstrap, "reachable": False,
                                            "error": f"Kafka at {bootstrap} is unreachable ({exc.args[0].str()})"}}, \
                    UNREACHABLE_CACHE_S
            self._cached = (now, result, keep_s)
            return result

    def close(self) -> None:
        with self._lock:
            self._meter.close()

    def _report(self, flow: Flow) -> dict[str, Any]:
        topics = self.settings.topics
        return {
            "kafka": {"bootstrap": self.settings.kafka.bootstrap(), "reachable": True, "error": None},
            "services": [{
                "name": s.name,
                "input_topic": s.input_topic,
                "output_topic": s.output_topic,
                "group": s.group,
                "members": s.members,
                "consumed_per_s": s.consumed_per_s,
                "produced_per_s": s.produced_per_s,
                "produced_total": s.produced_total,
                "lag": s.lag,
                "last_record": s.last_record,
            } for s in flow.services.values()],
            "topics": [{"name": t.name, "partitions": t.partitions, "end_offsets": t.end_offset, "per_s": t.per_s}
                       for t in flow.topics.values() if t.partitions is not None],
            "missing_topics": [t.name for t in flow.topics.values() if t.partitions is None],
            "last_candle": flow.latest[topics.candles.name] or flow.latest[topics.features.name],
            "dead_letters": {"topic": topics.dlq.name, "total": flow.topics[topics.dlq.name].end_offset,
                             "per_s": flow.topics[topics.dlq.name].per_s},
        }
