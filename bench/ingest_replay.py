"""Ingest throughput: normalise-and-publish from a replay file, one process.

A recording of Kraken v2 and Binance trade frames (as ``--record`` writes them,
synthesised from the seeded simulator) is replayed at full speed through the
same pipeline as live ingest: parse each frame from its text, validate, count,
de-duplicate, encode and produce with the ingest producer (idempotent, acks=all,
lz4, batching) to a private local broker, then flush.

The yardstick is the raw produce ceiling: the very messages ingest publishes,
already encoded, produced in a bare loop by a producer with the same settings
(and, when they differ, with the Foundation baseline's settings of
bench/kafka_baseline.py; the faster of the two counts). The machine may be
shared, so ceiling and ingest are measured in the same run, alternately, for
several repetitions; the figure is the median of the per-repetition ratios.
When the Rust frame parser (native/) is built, each repetition also replays
through the adapters' Python fast paths, for reference.

Usage: python bench/ingest_replay.py [--trades N] [--per-frame K] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, private_broker, write_results  # noqa: E402

from candleflow.config import load_config  # noqa: E402
from candleflow.exchanges.fastpath import COMPILED  # noqa: E402
from candleflow.exchanges.native import NATIVE  # noqa: E402
from candleflow.exchanges.simulate import SimulatedMarket  # noqa: E402
from candleflow.records import encode  # noqa: E402


def kraken_frame(trades) -> str:
    data = [{"symbol": t.symbol, "side": t.side, "price": t.price, "qty": t.qty, "ord_type": "limit",
             "trade_id": int(t.trade_id), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t.ts_ms // 1000))
             + f".{t.ts_ms % 1000:03d}123Z"} for t in trades]
    return json.dumps({"channel": "trade", "type": "update", "data": data}, separators=(",", ":"))


def binance_frame(t) -> str:
    return json.dumps({"e": "trade", "E": t.ts_ms, "s": t.symbol.replace("/", ""), "t": int(t.trade_id),
                       "p": f"{t.price:.8f}", "q": f"{t.qty:.8f}", "T": t.ts_ms, "m": t.side == "sell", "M": True},
                      separators=(",", ":"))


def write_recording(path: Path, n: int, per_frame: int) -> dict[str, int]:
    counts = {"kraken": 0, "binance": 0}
    kraken = SimulatedMarket(["BTC/USD", "ETH/USD", "SOL/USD"], seed=1).trades(n // 2)
    binance = SimulatedMarket(["BTC/USDT", "ETH/USDT", "SOL/USDT"], seed=2).trades(n - n // 2)
    with open(path, "w") as out:
        batch = []
        for t in kraken:
            batch.append(t)
            if len(batch) == per_frame:
                out.write(json.dumps({"exchange": "kraken", "recv_ms": t.ts_ms, "frame": kraken_frame(batch)}) + "\n")
                counts["kraken"] += len(batch)
                batch = []
        if batch:
            out.write(json.dumps({"exchange": "kraken", "recv_ms": batch[-1].ts_ms, "frame": kraken_frame(batch)}) + "\n")
            counts["kraken"] += len(batch)
        for t in binance:
            out.write(json.dumps({"exchange": "binance", "recv_ms": t.ts_ms, "frame": binance_frame(t)}) + "\n")
            counts["binance"] += 1
    return counts


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads (Python and the Kafka client's own)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_produce_rate(config: dict, topic: str, messages: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    """Messages/s of a bare produce loop (no per-message Python work) until all are acknowledged,
    and the client CPU time it took per message (µs)."""
    from confluent_kafka import Producer

    producer = Producer(config)
    produce = producer.produce
    cpu = cpu_seconds()
    began = time.perf_counter()
    for key, value in messages:
        try:
            produce(topic, value, key)
        except BufferError:
            producer.poll(0.05)
            produce(topic, value, key)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds() - cpu
    assert remaining == 0, remaining
    return len(messages) / elapsed, cpu / len(messages) * 1e6


def ingest_rate(settings, frames: list, native: bool = True) -> tuple[float, dict]:
    """Trades/s of ingest replaying `frames` until every trade is acknowledged; `native`: through the
    Rust frame parser when it is built, else through the adapters' Python fast paths."""
    from candleflow.services.ingest import IngestPipeline, Publisher, replay

    publisher = Publisher(settings)
    pipeline = IngestPipeline(publisher, settings.ingest.dedup_capacity)
    cpu = cpu_seconds()
    began = time.perf_counter()
    replay(pipeline, frames, speed=None, native=native)
    undelivered = publisher.flush(120)
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds() - cpu
    assert undelivered == 0 and publisher.failed == 0, (undelivered, publisher.failed)
    detail = {"published": pipeline.published, "delivered": publisher.delivered, "dead_letters": pipeline.dead_letters,
              "ingest_cpu_us_per_trade": round(cpu / pipeline.published * 1e6, 2)}
    del publisher, pipeline
    gc.collect()  # the producer sits in a reference cycle (its delivery callback): close it now
    return detail["published"] / elapsed, detail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=400_000)
    parser.add_argument("--per-frame", type=int, default=1, help="Kraken trades per frame (live updates: ~1)")
    parser.add_argument("--repeat", type=int, default=5, help="ceiling/ingest pairs to take the median of")
    args = parser.parse_args()

    from kafka_baseline import PRODUCER_SETTINGS

    from candleflow.broker.topics import create_topics
    from candleflow.config import TopicConfig
    from candleflow.exchanges import get_adapter
    from candleflow.services.ingest import producer_config, read_recording

    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "session.jsonl"
        counts = write_recording(recording, args.trades, args.per_frame)
        frames = list(read_recording(recording))  # file reading is not what is measured
        # The ceiling's payload: exactly the messages ingest publishes, encoded beforehand.
        adapters = {name: get_adapter(name) for name in counts}
        messages = [(trade.key.encode(), encode(trade)) for frame in frames
                    for trade in adapters[frame.exchange].parse_frame(frame.raw, frame.recv_ms).trades]
        assert len(messages) == args.trades, len(messages)
        with private_broker(Path(tmp) / "kafka") as bootstrap:
            config = Path(tmp) / "candleflow.yaml"
            config.write_text(f"kafka: {{bootstrap_servers: '{bootstrap}'}}\ndata_dir: '{tmp}/data'\n")
            settings = load_config(config)
            ceiling_topic = TopicConfig(name="bench-ceiling", partitions=settings.topics.trades.partitions)
            create_topics(settings.kafka, [settings.topics.trades, settings.topics.dlq, ceiling_topic])
            ingest_config = producer_config(settings)
            ceiling_configs = {"ingest settings": ingest_config}
            foundation = {**settings.kafka.client_config(), **PRODUCER_SETTINGS}
            if any(ingest_config.get(k) != v for k, v in PRODUCER_SETTINGS.items()):
                ceiling_configs["foundation settings"] = foundation
            raw_produce_rate(ingest_config, ceiling_topic.name, messages)  # warm-up of a fresh broker: not counted
            runs = []
            for rep in range(args.repeat):
                ceilings: dict[str, float] = {}
                ceiling_cpu: dict[str, float] = {}
                ingest: float = 0.0

                def measure_ceilings() -> None:
                    for name, cfg in ceiling_configs.items():
                        ceilings[name], ceiling_cpu[name] = raw_produce_rate(cfg, ceiling_topic.name, messages)

                if rep % 2 == 0:  # alternate the order, so neither side always runs on a warmer broker
                    measure_ceilings()
                    ingest, detail = ingest_rate(settings, frames)
                else:
                    ingest, detail = ingest_rate(settings, frames)
                    measure_ceilings()
                ceiling = max(ceilings.values())
                run = {"ingest_trades_per_s": round(ingest),
                       "ceiling_msgs_per_s": {k: round(v) for k, v in ceilings.items()},
                       "ceiling_cpu_us_per_msg": {k: round(v, 2) for k, v in ceiling_cpu.items()},
                       "ratio": round(ingest / ceiling, 3), **detail}
                if NATIVE is not None:  # for reference: the same replay through the Python fast paths
                    python_path, python_detail = ingest_rate(settings, frames, native=False)
                    run["python_path"] = {"trades_per_s": round(python_path), "ratio": round(python_path / ceiling, 3),
                                          "cpu_us_per_trade": python_detail["ingest_cpu_us_per_trade"]}
                runs.append(run)
                print(f"  repetition {rep + 1}: ingest {ingest:,.0f} trades/s, ceiling "
                      + ", ".join(f"{v:,.0f} msgs/s ({k})" for k, v in ceilings.items())
                      + f" -> {ingest / ceiling:.0%}"
                      + (f" (Python fast paths: {run['python_path']['ratio']:.0%})" if "python_path" in run else ""),
                      flush=True)
    for run in runs:
        assert run["published"] == args.trades and run["dead_letters"] == 0, run
    ratio = statistics.median(r["ratio"] for r in runs)
    rate = round(statistics.median(r["ingest_trades_per_s"] for r in runs))
    ceiling = round(statistics.median(max(r["ceiling_msgs_per_s"].values()) for r in runs))
    ingest_cpu = statistics.median(r["ingest_cpu_us_per_trade"] for r in runs)
    ceiling_cpu = statistics.median(min(r["ceiling_cpu_us_per_msg"].values()) for r in runs)
    figures = {"trades": args.trades, "frames": len(frames), "kraken_trades_per_frame": args.per_frame,
               "by_exchange": counts, "repetitions": args.repeat, "runs": runs,
               "trades_per_s": rate, "produce_ceiling_msgs_per_s": ceiling, "fraction_of_ceiling": ratio,
               "ingest_cpu_us_per_trade": ingest_cpu, "ceiling_cpu_us_per_msg": ceiling_cpu,
               "ingest_producer_settings": {k: v for k, v in ingest_config.items() if k != "bootstrap.servers"}}
    baseline_path = RESULTS / "kafka_baseline.json"
    if baseline_path.exists():
        figures["foundation_baseline_produce_msgs_per_s"] = \
            json.loads(baseline_path.read_text())["figures"].get("produce_msgs_per_s")
    figures["compiled_hot_path"] = COMPILED  # exchanges/fastpath.py built with mypyc (setup.py), or pure Python
    figures["native_parser"] = NATIVE is not None  # native/ (Rust) built: replay parses the usual frames with it
    python_note = ""
    if NATIVE is not None:
        figures["python_path_fraction_of_ceiling"] = statistics.median(r["python_path"]["ratio"] for r in runs)
        figures["python_path_cpu_us_per_trade"] = statistics.median(r["python_path"]["cpu_us_per_trade"] for r in runs)
        python_note = (f" Through the Python fast paths instead of the Rust parser, in the same repetitions: "
                       f"{figures['python_path_fraction_of_ceiling']:.0%} of the ceiling, "
                       f"{figures['python_path_cpu_us_per_trade']:.1f} µs per trade.")
    verdict = "met" if ratio >= 0.5 else "NOT met"
    write_results("ingest_replay", figures,
                  f"Ingest replay (parse + validate + dedup + encode + idempotent produce, one process, "
                  f"{'Rust frame parser, ' if NATIVE is not None else ''}"
                  f"{'compiled hot path' if COMPILED else 'pure Python: no compiled hot path'}): "
                  f"median {rate:,} trades/s over {args.trades:,} trades in {len(frames):,} frames = "
                  f"{ratio:.0%} of the raw produce ceiling measured in the same run "
                  f"(median {ceiling:,} msgs/s; median of {args.repeat} ceiling/ingest pairs); "
                  f"target >= 50%: {verdict}. Client CPU (all threads of the process): ingest "
                  f"{ingest_cpu:.1f} µs per trade, raw produce {ceiling_cpu:.1f} µs per message.{python_note}")


if __name__ == "__main__":
    main()
