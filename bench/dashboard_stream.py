"""Dashboard live updates: a closed candle on the `features` topic -> the browser's SSE stream.

`candleflow serve` runs as its own process. N clients watch one market over
`GET /v1/stream/...` (server-sent events, read with httpx in threads); this
process produces Features rows for that market at a steady rate, each carrying
the wall-clock time it was produced, and every client records how long each
row took to reach it (producer -> Kafka -> serve's reader -> fan-out -> HTTP).
Then `GET /v1/pipeline` is timed with its one-second cache expired each time
(the cost of one snapshot read from Kafka).

Usage: python bench/dashboard_stream.py [--clients N] [--rows N] [--rate R] [--bootstrap HOST:PORT]
(without --bootstrap a private local broker is started).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import private_broker, write_results  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def watch(url: str, expected: int, latencies: list[float], live: threading.Event, done: threading.Event) -> None:
    received = 0
    with httpx.Client(timeout=httpx.Timeout(10, read=None)) as client, client.stream("GET", url) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                data = json.loads(line[6:])
                if kind == "status" and data["state"] == "live":
                    live.set()
                elif kind == "candle":
                    latencies.append(time.time() - data["bench_sent_s"])
                    received += 1
                    if received >= expected:
                        break
                kind = None
    done.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="rows per second")
    parser.add_argument("--bootstrap", default=None, help="Use this broker instead of starting a private one.")
    args = parser.parse_args()

    from confluent_kafka import Producer

    from candleflow.broker.topics import create_topics
    from candleflow.config import load_config
    from candleflow.records import encode

    with tempfile.TemporaryDirectory() as tmp, (private_broker(Path(tmp) / "kafka") if args.bootstrap is None
                                                else nullcontext(args.bootstrap)) as bootstrap:
        workdir = Path(tmp)
        suffix = uuid.uuid4().hex[:8]
        config = {
            "data_dir": str(workdir / "data"), "kafka": {"bootstrap_servers": bootstrap},
            "topics": {t: {"name": f"bench-{t}-{suffix}", "partitions": 6 if t != "dlq" else 1}
                       for t in ("trades", "candles", "candles_partial", "features", "dlq")},
            "store": {"repo_dir": str(workdir / "repo"), "offline_dir": str(workdir / "offline"),
                      "online": {"type": "sqlite", "path": str(workdir / "online.db")}},
            "candles": {"timeframes": ["1m"]}, "log": {"format": "json"},
        }
        config_file = workdir / "candleflow.yaml"
        config_file.write_text(yaml.safe_dump(config))
        settings = load_config(config_file)
        create_topics(settings.kafka, settings.topics.all())

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config_file), "serve",
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise SystemExit("serve did not start")
                time.sleep(0.3)

            latencies: list[list[float]] = [[] for _ in range(args.clients)]
            live = [threading.Event() for _ in range(args.clients)]
            done = [threading.Event() for _ in range(args.clients)]
            for i in range(args.clients):
                threading.Thread(target=watch, args=(f"{url}/v1/stream/kraken/BTC-USD?timeframe=1m", args.rows,
                                                     latencies[i], live[i], done[i]), daemon=True).start()
            for event in live:
                event.wait(60)

            producer = Producer({**settings.kafka.client_config(), "linger.ms": 0})
            start_ms = 1_767_225_600_000
            interval = 1.0 / args.rate
            next_at = time.monotonic()
            for i in range(args.rows):
                row = {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "start_ms": start_ms + i * 60_000,
                       "end_ms": start_ms + (i + 1) * 60_000, "open": 100.0, "high": 101.0, "low": 99.0,
                       "close": 100.5, "volume": 1.0, "quote_volume": 100.5, "vwap": 100.5, "trades": 3,
                       "buy_volume": 0.5, "gap_fill": False, "rsi_14": 50.0, "bench_sent_s": time.time()}
                producer.produce(settings.topics.features.name, key=b"kraken:BTC/USD:1m", value=encode(row))
                producer.poll(0)
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            producer.flush(30)
            for event in done:
                event.wait(60)

            snapshot_ms = []
            for _ in range(6):
                time.sleep(1.1)  # past the cache
                started = time.perf_counter()
                httpx.get(f"{url}/v1/pipeline", timeout=30).raise_for_status()
                snapshot_ms.append((time.perf_counter() - started) * 1000)
        finally:
            serve.terminate()
            serve.wait(30)

    delivered = [value for client in latencies for value in client]
    figures = {
        "clients": args.clients, "rows": args.rows, "rate_per_s": args.rate,
        "delivered": len(delivered), "expected": args.clients * args.rows,
        "latency_ms_p50": round(statistics.median(delivered) * 1000, 2),
        "latency_ms_p99": round(percentile(delivered, 0.99) * 1000, 2),
        "latency_ms_max": round(max(delivered) * 1000, 2),
        "pipeline_snapshot_ms_p50": round(statistics.median(snapshot_ms), 1),
        "pipeline_snapshot_ms_max": round(max(snapshot_ms), 1),
    }
    summary = (f"Dashboard stream: {figures['delivered']}/{figures['expected']} closed candles delivered to "
               f"{args.clients} SSE clients at {args.rate:g} rows/s; produce -> browser stream latency "
               f"p50 {figures['latency_ms_p50']} ms, p99 {figures['latency_ms_p99']} ms, "
               f"max {figures['latency_ms_max']} ms. GET /v1/pipeline (one Kafka snapshot, cache expired): "
               f"p50 {figures['pipeline_snapshot_ms_p50']} ms, max {figures['pipeline_snapshot_ms_max']} ms.")
    write_results("dashboard_stream", figures, summary)


if __name__ == "__main__":
    main()
