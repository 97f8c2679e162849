"""Freshness of the sink: from a Features row entering Kafka to it being readable online.

The features service emits a candle's row right after the candle closes
(end + grace), so this is the sink's share of "candle close -> readable
online". A producer publishes one row per market every 100 ms (20 markets,
default indicator set) while `candleflow sink` runs as its own process with
the default batching (20,000 rows / 500 ms / 50 ms idle); a poller reads the online store
(candleflow's reader, SQLite) and records, per row, the time from produce to
first seen. The upstream part (candles + features services) is measured by
their own benchmarks.

Usage: python bench/store_freshness.py [--seconds S]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import shutil
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import private_broker, write_results  # noqa: E402

MARKETS = [("kraken", f"C{m}/USD") for m in range(20)]
BASE_MS = 1_767_225_600_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from confluent_kafka import Producer

    from candleflow.broker.topics import create_topics
    from candleflow.config import load_config
    from candleflow.core.features import feature_columns
    from candleflow.records import candle_key, encode
    from candleflow.store.base import MarketKey, online_writer

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-fresh-"))
    lags: list[float] = []
    try:
        with private_broker(workdir / "kafka") as bootstrap:
            topic = f"features-fresh-{uuid.uuid4().hex[:8]}"
            data = {"data_dir": str(workdir), "kafka": {"bootstrap_servers": bootstrap},
                    "topics": {"features": {"name": topic, "partitions": 3},
                               "dlq": {"name": topic + "-dlq", "partitions": 1}},
                    "candles": {"timeframes": ["1m"]},
                    "store": {"repo_dir": str(workdir / "repo"), "offline_dir": str(workdir / "offline"),
                              "online": {"type": "sqlite", "path": str(workdir / "online.db")}},
                    "log": {"level": "WARNING", "format": "json"}}
            config_file = workdir / "candleflow.yaml"
            config_file.write_text(yaml.safe_dump(data))
            settings = load_config(config_file)
            create_topics(settings.kafka, [settings.topics.features, settings.topics.dlq])
            columns = feature_columns(settings.features, "1m")
            sink = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config_file), "sink"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            producer = Producer({**settings.kafka.client_config(), "linger.ms": 1})
            try:
                with online_writer(settings) as reader:
                    keys = [MarketKey(e, s, "1m") for e, s in MARKETS]
                    # Warm-up: wait until the sink is consuming (first row visible).
                    sent: dict[tuple[str, int], float] = {}
                    index = 0
                    start = time.monotonic()
                    seen: dict[str, int] = {}
                    warm = True
                    next_send = time.monotonic()
                    while time.monotonic() - start < args.seconds + 60:
                        now = time.monotonic()
                        if now >= next_send and (warm or now - start < args.seconds):
                            for e, s in MARKETS:
                                row = {"exchange": e, "symbol": s, "timeframe": "1m",
                                       "start_ms": BASE_MS + index * 60_000, "end_ms": BASE_MS + (index + 1) * 60_000,
                                       "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
                                       "quote_volume": 1.0, "vwap": 1.0, "trades": 1, "buy_volume": 0.5,
                                       "gap_fill": False, **{c: 1.0 for c in columns}}
                                producer.produce(topic, encode(row), key=candle_key(e, s, "1m"))
                                sent[(f"{e}:{s}", row["end_ms"])] = time.monotonic()
                            producer.flush(5)
                            index += 1
                            next_send = now + 1.0
                        for key, row in zip(keys, reader.read(keys)):
                            if row is None:
                                continue
                            market = f"{key.exchange}:{key.symbol}"
                            if seen.get(market) != row["end_ms"]:
                                seen[market] = row["end_ms"]
                                t_sent = sent.get((market, row["end_ms"]))
                                if warm:
                                    warm = False
                                    start = time.monotonic()
                                elif t_sent is not None:
                                    lags.append(time.monotonic() - t_sent)
                        if not warm and time.monotonic() - start > args.seconds + 2:
                            break
                        time.sleep(0.002)
            finally:
                sink.terminate()
                sink.wait(30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    q = statistics.quantiles(sorted(lags), n=100, method="inclusive")
    figures = {"samples": len(lags), "markets": len(MARKETS), "rows_per_s": len(MARKETS),
               "batch_interval_ms": 500, "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
               "max_ms": round(max(lags) * 1000, 1)}
    print(figures)
    summary = (f"Sink freshness (Features row produced -> readable online, SQLite, default batching: 500 ms or 50 ms idle, "
               f"{len(MARKETS)} markets closing together every second, {len(lags)} rows): p50 {figures['p50_ms']} ms, p99 "
               f"{figures['p99_ms']} ms (target for close -> online p99 <= 1 s; the upstream candle grace and "
               f"features latency add to this). Shared, busy 2-core machine.")
    write_results("store_freshness", figures, summary)


if __name__ == "__main__":
    main()
