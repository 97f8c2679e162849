"""Candle latency: from window end + grace to the candle on the `candles` topic (read_committed).

The real service (`candleflow candles`, a subprocess, exactly-once, its ticker
on at the default 200 ms, default commit interval and grace) runs on a local
broker with 1-second and 5-second candles, so a short run gives many samples.
Busy markets trade live (ts = now) about 40 times a second each; idle markets
trade once at the start and then only get gap fills, closed by the ticks alone.
A read_committed consumer stamps each candle on arrival;
latency = arrival - (end_ms + grace_ms). The first seconds (start-up) are left out.

Usage: python bench/candles_latency.py [--seconds S] [--bootstrap HOST:PORT]
(without --bootstrap a private local broker is started).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import private_broker, write_results  # noqa: E402

BUSY, IDLE = 5, 5
TRADES_PER_S = 40  # per busy market


def now_ms() -> int:
    return int(time.time() * 1000)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time (after warm-up)")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--bootstrap", default=None, help="Use this broker instead of starting a private one.")
    args, _ = parser.parse_known_args()  # `python -m bench candles_stream` passes its own arguments on

    import yaml
    from confluent_kafka import Consumer, Producer

    from candleflow.broker.topics import create_topics
    from candleflow.config import load_config
    from candleflow.records import Trade, decode_candle, encode

    with tempfile.TemporaryDirectory() as tmp, (private_broker(Path(tmp) / "kafka") if args.bootstrap is None
                                                else nullcontext(args.bootstrap)) as bootstrap:
        workdir = Path(tmp)
        suffix = uuid.uuid4().hex[:8]
        path = workdir / "candleflow.yaml"
        path.write_text(yaml.safe_dump({
            "data_dir": str(workdir / "data"), "kafka": {"bootstrap_servers": bootstrap},
            "topics": {name: {"name": f"bench-{name.replace('_', '-')}-{suffix}",
                              "partitions": 6 if name != "dlq" else 1}
                       for name in ("trades", "candles", "candles_partial", "features", "dlq")},
            "candles": {"timeframes": ["1s", "5s"], "consumer_group": f"bench-{suffix}"},
            "log": {"format": "json", "level": "WARNING"}}))
        settings = load_config(path)
        create_topics(settings.kafka, settings.topics.all())
        grace = settings.candles.grace_ms

        samples: dict[str, list[float]] = {"busy": [], "idle": []}
        stop = threading.Event()
        measure_from = [float("inf")]

        def read() -> None:
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{suffix}",
                                 "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                                 "enable.auto.commit": False, "fetch.wait.max.ms": 10})
            consumer.subscribe([settings.topics.candles.name])
            while not stop.is_set():
                for msg in consumer.consume(1000, 0.05):
                    if msg.error():
                        continue
                    arrived = now_ms()
                    candle = decode_candle(msg.value())
                    if candle.end_ms < measure_from[0]:
                        continue
                    kind = "busy" if candle.symbol.startswith("B") else "idle"
                    samples[kind].append(arrived - (candle.end_ms + grace))
            consumer.close()

        env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
        proc = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(path), "candles"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(workdir / "service.log", "wb"))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
        rng = random.Random(1)
        prices = {f"B{i}/USD": rng.uniform(10, 1000) for i in range(BUSY)}
        n = 0
        try:
            for i in range(IDLE):  # one trade each, then silence: only ticks close their windows
                t = Trade(exchange="kraken", symbol=f"I{i}/USD", trade_id="0", price=100.0, qty=1.0, side="buy",
                          ts_ms=now_ms(), recv_ms=now_ms())
                producer.produce(settings.topics.trades.name, key=t.key, value=encode(t))
            started = time.monotonic()
            measure_from[0] = now_ms() + args.warmup * 1000
            interval = 1 / (TRADES_PER_S * BUSY)
            while time.monotonic() - started < args.warmup + args.seconds:
                symbol = rng.choice(list(prices))
                prices[symbol] *= 1 + rng.gauss(0, 1e-3)
                t = Trade(exchange="kraken", symbol=symbol, trade_id=str(n), price=prices[symbol],
                          qty=rng.uniform(0.01, 1), side=rng.choice(["buy", "sell"]), ts_ms=now_ms(), recv_ms=now_ms())
                producer.produce(settings.topics.trades.name, key=t.key, value=encode(t))
                producer.poll(0)
                n += 1
                time.sleep(interval)
            producer.flush(10)
            time.sleep(grace / 1000 + 3)  # the last windows close
        finally:
            stop.set()
            reader.join(10)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not samples["busy"] or not samples["idle"]:
            raise RuntimeError(f"no candles measured; see {workdir / 'service.log'}: "
                               + (workdir / "service.log").read_text(errors="replace")[-2000:])

    figures = {"timeframes": ["1s", "5s"], "grace_ms": grace, "tick_interval_ms": settings.candles.tick_interval_ms,
               "commit_interval_ms": settings.candles.commit_interval_ms, "seconds": args.seconds,
               "trades_produced": n}
    for kind, values in samples.items():
        figures[kind] = {"candles": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                         "max_ms": max(values), "min_ms": min(values)}
    busy, idle = figures["busy"], figures["idle"]
    summary = (f"Latency from window end + grace to the candle on the topic (read_committed, exactly-once, tick "
               f"{figures['tick_interval_ms']} ms, commit {figures['commit_interval_ms']} ms): busy markets p50 "
               f"{busy['p50_ms']} ms, p99 {busy['p99_ms']} ms ({busy['candles']} candles); idle markets (closed by "
               f"ticks, gap fills) p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms ({idle['candles']} candles). "
               f"Target: idle p99 <= 1000 ms: {'met' if idle['p99_ms'] <= 1000 else 'NOT met'}.")
    write_results("candles_latency", figures, summary)


if __name__ == "__main__":
    main()
