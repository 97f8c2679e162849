"""Ingest throughput: normalise-and-publish from a replay file, one process.

A recording of Kraken v2 and Binance trade frames (as ``--record`` writes them,
synthesised from the seeded simulator) is replayed at full speed through the
same pipeline as live ingest: parse each frame from its text, validate, count,
de-duplicate, encode and produce with the ingest producer settings (idempotent,
acks=all, lz4, batching) to a private local broker, then flush. Trades/s is
compared with the raw produce ceiling in bench/results/kafka_baseline.json.

Usage: python bench/ingest_replay.py [--trades N] [--per-frame K]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, private_broker, write_results  # noqa: E402

from candleflow.config import load_config  # noqa: E402
from candleflow.exchanges.simulate import SimulatedMarket  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=400_000)
    parser.add_argument("--per-frame", type=int, default=1, help="Kraken trades per frame (live updates: ~1)")
    args = parser.parse_args()

    from candleflow.broker.topics import create_topics
    from candleflow.services.ingest import IngestPipeline, Publisher, read_recording, replay

    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "session.jsonl"
        counts = write_recording(recording, args.trades, args.per_frame)
        frames = list(read_recording(recording))  # file reading is not what is measured
        with private_broker(Path(tmp) / "kafka") as bootstrap:
            config = Path(tmp) / "candleflow.yaml"
            config.write_text(f"kafka: {{bootstrap_servers: '{bootstrap}'}}\ndata_dir: '{tmp}/data'\n")
            settings = load_config(config)
            create_topics(settings.kafka, [settings.topics.trades, settings.topics.dlq])
            publisher = Publisher(settings)
            pipeline = IngestPipeline(publisher, settings.ingest.dedup_capacity)
            began = time.perf_counter()
            replay(pipeline, frames, speed=None)
            undelivered = publisher.flush(120)
            elapsed = time.perf_counter() - began
    assert undelivered == 0 and pipeline.published == args.trades, (undelivered, pipeline.published)
    rate = round(args.trades / elapsed)
    figures = {"trades": args.trades, "frames": len(frames), "kraken_trades_per_frame": args.per_frame,
               "by_exchange": counts, "seconds": round(elapsed, 3), "trades_per_s": rate,
               "delivered": publisher.delivered, "dead_letters": pipeline.dead_letters}
    baseline_path = RESULTS / "kafka_baseline.json"
    ceiling = None
    if baseline_path.exists():
        ceiling = json.loads(baseline_path.read_text())["figures"].get("produce_msgs_per_s")
    figures["produce_ceiling_msgs_per_s"] = ceiling
    figures["fraction_of_ceiling"] = round(rate / ceiling, 3) if ceiling else None
    verdict = ""
    if ceiling:
        verdict = (f" = {figures['fraction_of_ceiling']:.0%} of the raw produce ceiling ({ceiling:,} msgs/s); "
                   f"target >= 50%: {'met' if rate >= ceiling / 2 else 'NOT met'}.")
    write_results("ingest_replay", figures,
                  f"Ingest replay (parse + validate + dedup + encode + idempotent produce, one process): "
                  f"{rate:,} trades/s over {args.trades:,} trades in {len(frames):,} frames{verdict}")


if __name__ == "__main__":
    main()
