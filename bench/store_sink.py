"""Sink throughput: Features rows from Kafka into the online store (SQLite, Redis) and Parquet.

For each backend: N Features rows (default 100,000: 50 markets x 2,000 one-minute
candles, the default indicator set) are produced to a fresh topic of a private
broker, then the real sink (services.sink.Sink, default batching: 20,000 rows,
500 ms or 50 ms idle; --batch-size to compare) consumes them. Throughput is rows / (last batch committed - first row
consumed): decode + validate, Parquet append with fsync, online upsert, commit.
The store alone (no Kafka) is timed as well.

Usage: python bench/store_sink.py [--rows N] [--markets M]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import private_broker, write_results  # noqa: E402

from candleflow.broker.topics import create_topics  # noqa: E402
from candleflow.config import TopicConfig, load_config  # noqa: E402
from candleflow.core.features import feature_columns  # noqa: E402
from candleflow.records import candle_key, encode  # noqa: E402

BASE_MS = 1_767_225_600_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rows_for(settings, markets: int, per_market: int) -> list[dict]:
    columns = feature_columns(settings.features, "1m")
    out = []
    for i in range(per_market):
        for m in range(markets):
            close = 100.0 + (i % 97) * 0.1 + m
            row = {"exchange": "binance", "symbol": f"C{m}/USDT", "timeframe": "1m",
                   "start_ms": BASE_MS + i * 60_000, "end_ms": BASE_MS + (i + 1) * 60_000,
                   "open": close - 0.1, "high": close + 0.2, "low": close - 0.2, "close": close,
                   "volume": 3.0, "quote_volume": close * 3, "vwap": close, "trades": 7, "buy_volume": 1.5,
                   "gap_fill": False}
            row.update({name: close * (1 + k / 1000) for k, name in enumerate(columns)})
            out.append(row)
    return out


def settings_for(workdir: Path, bootstrap: str, backend: str, redis_address: str | None, batch_size: int):
    topic = f"features-bench-{uuid.uuid4().hex[:8]}"
    online = ({"type": "sqlite", "path": str(workdir / "online.db")} if backend == "sqlite"
              else {"type": "redis", "connection_string": redis_address})
    settings = load_config(None, {
        "data_dir": str(workdir), "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"features": {"name": topic, "partitions": 6}, "dlq": {"name": topic + "-dlq", "partitions": 1}},
        "candles": {"timeframes": ["1m"]},
        "store": {"repo_dir": str(workdir / "repo"), "offline_dir": str(workdir / "offline"), "online": online,
                  "project": f"bench_{backend}"},
        "sink": {"consumer_group": f"bench-{uuid.uuid4().hex[:8]}", "batch_size": batch_size},
        "log": {"level": "WARNING", "format": "json"},
    })
    create_topics(settings.kafka, [settings.topics.features, settings.topics.dlq])
    return settings


def produce(settings, rows: list[dict]) -> None:
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka.client_config(), "linger.ms": 20, "batch.size": 1_000_000,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    for i, row in enumerate(rows):
        producer.produce(settings.topics.features.name, encode(row),
                         key=candle_key(row["exchange"], row["symbol"], row["timeframe"]))
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def run_sink(settings) -> dict:
    from candleflow.services.sink import Sink

    marks: dict[str, float] = {}

    class TimedSink(Sink):
        def _add(self, message):  # noqa: ANN001
            marks.setdefault("first", time.perf_counter())
            super()._add(message)

        def _flush(self) -> None:
            super()._flush()
            marks["last"] = time.perf_counter()

    sink = TimedSink(settings)
    sink.run(max_idle_s=3)
    return marks


def store_only(settings, rows: list[dict], batch: int = 5_000) -> dict:
    from candleflow.store.base import online_writer
    from candleflow.store.offline import OfflineDataset

    columns = {"1m": feature_columns(settings.features, "1m")}
    dataset = OfflineDataset(Path(settings.store.offline_dir).with_name("offline-storeonly"))
    with online_writer(settings) as writer:
        t0 = time.perf_counter()
        online = offline = 0.0
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            a = time.perf_counter()
            dataset.append(chunk, columns)
            b = time.perf_counter()
            writer.write(chunk)
            c = time.perf_counter()
            offline += b - a
            online += c - b
        total = time.perf_counter() - t0
    return {"rows_per_s": round(len(rows) / total), "offline_s": round(offline, 3), "online_s": round(online, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=20_000)
    args = parser.parse_args()
    per_market = max(1, args.rows // args.markets)
    workroot = Path(tempfile.mkdtemp(prefix="cf-bench-sink-"))
    redis_port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", str(workroot)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures: dict = {"rows": per_market * args.markets, "markets": args.markets, "batch_size": args.batch_size,
                     "batch_interval_ms": 500}
    try:
        with private_broker(workroot / "kafka") as bootstrap:
            for backend in ("sqlite", "redis"):
                workdir = workroot / backend
                settings = settings_for(workdir, bootstrap, backend, f"127.0.0.1:{redis_port}", args.batch_size)
                rows = rows_for(settings, args.markets, per_market)
                produce(settings, rows)
                time.sleep(2)  # let the broker settle after the produce burst
                marks = run_sink(settings)
                elapsed = marks["last"] - marks["first"]
                figures[backend] = {"sink_rows_per_s": round(len(rows) / elapsed), "sink_seconds": round(elapsed, 2),
                                    "store_only": store_only(settings, rows, args.batch_size)}
                print(backend, figures[backend], flush=True)
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workroot, ignore_errors=True)
    s, r = figures["sqlite"], figures["redis"]
    summary = (f"Sink, {figures['rows']:,} Features rows ({args.markets} markets, default indicator set, batches of "
               f"{args.batch_size:,} rows / 500 ms), Kafka -> Parquet + online store, end to end: SQLite {s['sink_rows_per_s']:,} rows/s, "
               f"Redis {r['sink_rows_per_s']:,} rows/s (target >= 20,000). Store writes alone (Parquet append with "
               f"fsync + online upsert of the newest row per key): SQLite {s['store_only']['rows_per_s']:,} rows/s, "
               f"Redis {r['store_only']['rows_per_s']:,} rows/s. Taken on a shared 2-core machine while other test "
               f"suites ran, so figures are noisy.")
    write_results("store_sink", figures, summary)


if __name__ == "__main__":
    main()
