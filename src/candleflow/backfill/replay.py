"""``--via-kafka``: the backfill's trades replayed through the streaming services themselves.

For users who want exactly the streaming code path rather than the batch
core. One replay run gets its own topics (``backfill.<run>.trades``,
``.candles``, ``.features``, ``.dlq``), consumer groups and state directory, so
it never mixes with the live pipeline; only the feature store is shared (the
sink's writes are idempotent and the online store keeps the newest row).

1. the trades are produced to the run's trades topic, keyed ``exchange:symbol``,
   in input order, then one *tick* record per partition at the end time (the
   candles service's own mechanism for closing windows), so every window up
   to the end closes. The services run with wall-clock ticks off: history is
   closed by its own time, not by today's clock;
2. ``candleflow candles``, ``candleflow features`` and ``candleflow sink`` run as
   subprocesses on those topics (environment overrides of the same
   configuration file);
3. the run is complete when the features topic holds, for every market and
   timeframe, the row of the last window the end tick closes; then candles and
   features are stopped, the sink drains and exits when idle, and the run's
   topics are deleted.

As in streaming, the first window of a market starts with its first trade
(it may lack earlier trades), and gap-fill candles follow a market's last
trade up to the end time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from candleflow.config import Settings, TopicConfig, timeframe_ms
from candleflow.log import get_logger
from candleflow.records import candle_key

log = get_logger("candleflow.backfill.replay")

_STAGES = ("trades", "candles", "features", "dlq")


@dataclass
class ReplayResult:
    run_id: str
    trades: int
    features_rows: int
    end_ms: int
    seconds: float


def run_topics(settings: Settings, run_id: str) -> dict[str, TopicConfig]:
    partitions = settings.topics.trades.partitions
    return {stage: TopicConfig(name=f"backfill.{run_id}.{stage}", partitions=1 if stage == "dlq" else partitions,
                               retention_ms=None) for stage in _STAGES}


def _environment(settings: Settings, run_id: str, topics: dict[str, TopicConfig]) -> dict[str, str]:
    """CANDLEFLOW_* overrides that point the services at this run (the environment beats the YAML)."""
    overrides = {
        "DATA_DIR": str(run_dir(settings, run_id)),
        "CANDLES__TICKS": "false",
        "CANDLES__PARTIAL_UPDATES": "false",
        "FEATURES__PARTIAL_UPDATES": "false",
        "CANDLES__CONSUMER_GROUP": f"backfill-{run_id}-candles",
        "FEATURES__CONSUMER_GROUP": f"backfill-{run_id}-features",
        "SINK__CONSUMER_GROUP": f"backfill-{run_id}-sink",
        "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap(),
        "LOG__FORMAT": "json",
    }
    for stage, topic in topics.items():
        overrides[f"TOPICS__{stage.upper()}__NAME"] = topic.name
        overrides[f"TOPICS__{stage.upper()}__PARTITIONS"] = str(topic.partitions)
    return {**os.environ, **{f"CANDLEFLOW_{k}": v for k, v in overrides.items()}}


def _clean_up(settings: Settings, run_id: str) -> None:
    """Delete the run's topics (Quix's changelog topics of the services included) and consumer groups."""
    from candleflow.broker.topics import admin_client

    try:
        admin = admin_client(settings.kafka)  # kept alive until the deletions complete
        names = [name for name in admin.list_topics(timeout=30).topics
                 if f"backfill.{run_id}." in name or f"backfill-{run_id}-" in name]
        for future in (admin.delete_topics(names, operation_timeout=30).values() if names else []):
            future.result()
        groups = [f"backfill-{run_id}-{service}" for service in ("candles", "features", "sink")]
        for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a group that never committed does not exist
                pass
    except Exception as exc:  # noqa: BLE001 - leftovers are reported, not fatal
        log.warning("could not delete the replay's topics or groups", run=run_id, error=str(exc))


def run_dir(settings: Settings, run_id: str) -> Path:
    """The services' state and logs of one replay run."""
    return Path(settings.data_dir) / "backfill" / "kafka" / run_id


def expected_last_windows(trades: pl.DataFrame, timeframes: list[str], end_ms: int,
                          grace_ms: int) -> dict[str, int]:
    """Per candle key, the start of the last window the end tick closes (end + grace <= end tick)."""
    out = {}
    for exchange, symbol in trades.select("exchange", "symbol").unique().iter_rows():
        for tf in timeframes:
            tf_ms = timeframe_ms(tf)
            last_end = (end_ms - grace_ms) // tf_ms * tf_ms
            out[candle_key(exchange, symbol, tf)] = last_end - tf_ms
    return out


def _produce_trades(settings: Settings, topic: TopicConfig, trades: pl.DataFrame, end_ms: int,
                    on_produced: Callable[[int], None] | None) -> None:
    from confluent_kafka import Producer

    from candleflow.services.candles import TICK_HEADER, TICK_KEY, tick_value

    producer = Producer({**settings.kafka.client_config(), "linger.ms": 50, "enable.idempotence": True,
                         "compression.type": "lz4", "batch.size": 1_000_000})
    columns = ["exchange", "symbol", "trade_id", "price", "qty", "side", "ts_ms"]
    frame = trades.select(
        pl.col("exchange"), pl.col("symbol"),
        pl.col("trade_id").fill_null(pl.int_range(pl.len()).cast(pl.String)),
        pl.col("price"), pl.col("qty"), pl.col("side").fill_null("sell"), pl.col("ts_ms"))
    chunk = 100_000
    for offset in range(0, frame.height, chunk):
        part = frame.slice(offset, chunk)
        # One JSON Trade per row, built by polars (recv_ms 0: replayed, not received).
        values = part.select(pl.struct(*columns, pl.lit(0, pl.Int64).alias("recv_ms"))
                             .struct.json_encode().alias("v"))["v"].to_list()
        keys = part.select(pl.concat_str("exchange", "symbol", separator=":"))[:, 0].to_list()
        for key, value in zip(keys, values):
            while True:
                try:
                    producer.produce(topic.name, value=value.encode(), key=key.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        if on_produced is not None:
            on_produced(part.height)
    for partition in range(topic.partitions):
        producer.produce(topic.name, value=tick_value(end_ms), key=TICK_KEY, partition=partition,
                         headers=[(TICK_HEADER, b"1")])
    if producer.flush(60) > 0:
        raise RuntimeError("trades could not be delivered to Kafka")


def _wait_for_rows(settings: Settings, topic: str, expected: dict[str, int], processes: dict[str, subprocess.Popen],
                   timeout_s: float, on_rows: Callable[[int], None] | None) -> int:
    """Read the features topic (read_committed) until every key's last expected window is there."""
    import msgspec
    from confluent_kafka import Consumer

    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"{topic}-watch-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    missing = dict(expected)
    rows = 0
    deadline = time.monotonic() + timeout_s
    try:
        while missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay incomplete after {timeout_s:.0f}s: no final row yet for "
                                   f"{', '.join(sorted(missing)[:5])}")
            for name, process in processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} service exited with status {process.returncode}")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error():
                    continue
                rows += 1
                key = (message.key() or b"").decode()
                if key in missing:
                    start = msgspec.json.decode(message.value())["start_ms"]
                    if start >= missing[key]:
                        del missing[key]
            if on_rows is not None:
                on_rows(rows)
    finally:
        consumer.close()
    return rows


def replay(trades: pl.DataFrame, settings: Settings, config_file: str | None, *, timeframes: list[str],
           end_ms: int | None = None, timeout_s: float = 3600.0, keep_topics: bool = False,
           on_produced: Callable[[int], None] | None = None,
           on_rows: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay `trades` through the candles, features and sink services (see the module doc)."""
    from candleflow.broker.topics import create_topics

    started = time.monotonic()
    if trades.height == 0:
        raise ValueError("no trades to replay")
    run_id = uuid.uuid4().hex[:10]
    topics = run_topics(settings, run_id)
    last_ts: int = trades.select(pl.col("ts_ms").max()).item()
    grace = settings.candles.grace_ms
    if end_ms is None:  # close the window of the newest trade in the largest timeframe
        largest = max(timeframe_ms(tf) for tf in timeframes)
        end_ms = last_ts - last_ts % largest + largest + grace
    expected = expected_last_windows(trades, timeframes, end_ms, grace)
    env = _environment(settings, run_id, topics)
    env["CANDLEFLOW_CANDLES__TIMEFRAMES"] = ",".join(timeframes)
    create_topics(settings.kafka, list(topics.values()))
    command = [sys.executable, "-m", "candleflow"] + (["--config", config_file] if config_file else [])
    logs = run_dir(settings, run_id)
    logs.mkdir(parents=True, exist_ok=True)

    def start(*args: str) -> subprocess.Popen:
        log_file = open(logs / f"{args[0]}.log", "ab")  # noqa: SIM115 - owned by the child process
        return subprocess.Popen([*command, *args], env=env, stdout=log_file, stderr=subprocess.STDOUT)

    processes: list[subprocess.Popen] = []
    try:
        _produce_trades(settings, topics["trades"], trades, end_ms, on_produced)
        services = {"candles": start("candles"), "features": start("features")}
        processes = list(services.values())
        rows = _wait_for_rows(settings, topics["features"].name, expected, services, timeout_s, on_rows)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        # Every row is on the features topic now: the sink drains it and exits once idle.
        sink = start("sink", "--max-idle", "5")
        processes.append(sink)
        if sink.wait(timeout_s) != 0:
            raise RuntimeError(f"the sink exited with status {sink.returncode}; see {logs / 'sink.log'}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        if not keep_topics:
            _clean_up(settings, run_id)
    return ReplayResult(run_id=run_id, trades=trades.height, features_rows=rows, end_ms=end_ms,
                        seconds=time.monotonic() - started)
