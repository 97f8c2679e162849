"""Backfill from a trade file: 10M trades -> candles -> features -> the offline Parquet dataset.

One process, the path `candleflow backfill --from-file` takes: read the file
(candleflow.tradefiles), drop repeated trade ids, aggregate candles for the
default timeframes (1m, 5m, 15m, 1h) with the vectorised core, compute the
default indicator set with TA-Lib's batch functions, append to the offline
dataset through the sink's store code. The file is generated first in a child
process, so the peak memory reported is the backfill's own.

Usage: python bench/backfill.py [--trades N] [--markets M]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

START_MS = 1_704_067_200_000  # 2024-01-01


def generate(path: Path, trades: int, markets: int) -> None:
    """A Parquet trade file: `markets` random walks, ~1 trade/s each, interleaved by time."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(7)
    per = trades // markets
    frames = []
    for m in range(markets):
        ts = START_MS + np.cumsum(rng.exponential(1000.0 / 1.0, per)).astype(np.int64)
        price = np.round(100.0 * (m + 1) * np.exp(np.cumsum(rng.normal(0, 2e-4, per))), 4)
        frames.append(pl.DataFrame({
            "exchange": "binance", "symbol": f"C{m}/USDT",
            "trade_id": pl.int_range(m * per, (m + 1) * per, eager=True).cast(pl.String),
            "price": price, "qty": np.round(rng.exponential(0.5, per) + 1e-6, 6),
            "side": np.where(rng.random(per) < 0.5, "buy", "sell"), "ts_ms": ts}))
    pl.concat(frames).sort("ts_ms", maintain_order=True).write_parquet(path, statistics=False)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--markets", type=int, default=4)
    parser.add_argument("--via-kafka-trades", type=int, default=1_000_000,
                        help="Trades (the file's first) also replayed with --via-kafka on a private broker (0: skip).")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.trades, args.markets)
        return

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        source = root / "trades.parquet"
        begin = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--generate", str(source), "--trades", str(args.trades),
                        "--markets", str(args.markets)], check=True)
        print(f"generated {args.trades:,} trades in {time.perf_counter() - begin:.1f} s "
              f"({source.stat().st_size / 2**20:.0f} MiB Parquet)")
        figures = run(source, root, args.trades)
        figures["markets"] = args.markets
        figures["file_mib"] = round(source.stat().st_size / 2**20, 1)
        if args.via_kafka_trades:
            figures.update(run_via_kafka(source, root, args.via_kafka_trades))
    n = figures["trades"]
    summary = (
        f"Backfill of {n:,} trades ({args.markets} markets, ~{figures['days']:.0f} days each) from one Parquet "
        f"file into the offline dataset, timeframes {', '.join(figures['timeframes'])}, default indicator set: "
        f"**{figures['end_to_end_trades_per_s']:,.0f} trades/s end to end** ({figures['end_to_end_s']:.1f} s: "
        f"read {figures['read_s']:.1f} s, de-duplicate {figures['dedup_s']:.1f} s, candles {figures['candles_s']:.1f} s, "
        f"features {figures['features_s']:.1f} s, Parquet {figures['offline_s']:.1f} s), "
        f"**{figures['candle_stage_trades_per_s']:,.0f} trades/s in the candle stage** for the four timeframes "
        f"({figures['candles']:,} candles; {figures['candle_stage_1m_only_trades_per_s']:,.0f} trades/s for 1m "
        f"alone), {figures['trades_per_s_after_read']:,.0f} trades/s from the frame in "
        f"memory to Parquet; peak memory {figures['peak_rss_mib']:,.0f} MiB. Targets: >= 2M trades/s end to end, "
        f">= 5M trades/s for candles. Reading the file (candleflow.tradefiles) and appending dict rows through the "
        f"offline store are the two largest stages."
    )
    if "via_kafka_trades" in figures:
        summary += (
            f" Through `--via-kafka` (the candles, features and sink services on a private local broker), the "
            f"file's first {figures['via_kafka_trades']:,} trades took {figures['via_kafka_s']:.1f} s: "
            f"**{figures['via_kafka_trades_per_s']:,.0f} trades/s**, against "
            f"{figures['end_to_end_trades_per_s']:,.0f} trades/s for the batch path above.")
    write_results("backfill", figures, summary)


def run_via_kafka(source: Path, root: Path, n: int) -> dict:
    """The same computation through Kafka and the streaming services (`backfill --via-kafka`)."""
    import polars as pl
    import yaml

    from _common import private_broker
    from candleflow.backfill.replay import replay
    from candleflow.config import load_config

    trades = pl.read_parquet(source, n_rows=n)
    with private_broker(root / "kafka") as bootstrap:
        config = root / "via-kafka.yaml"
        data = root / "via-kafka"
        config.write_text(yaml.safe_dump({
            "data_dir": str(data), "kafka": {"bootstrap_servers": bootstrap},
            "store": {"offline_dir": str(data / "offline"), "repo_dir": str(data / "repo"),
                      "online": {"type": "sqlite", "path": str(data / "online.db")}},
            "log": {"format": "json", "level": "WARNING"}}))
        settings = load_config(config)
        result = replay(trades, settings, str(config), timeframes=list(settings.candles.timeframes))
    print(f"via Kafka: {result.trades:,} trades -> {result.features_rows:,} features rows in {result.seconds:.1f} s")
    return {"via_kafka_trades": result.trades, "via_kafka_features_rows": result.features_rows,
            "via_kafka_s": round(result.seconds, 3), "via_kafka_trades_per_s": round(result.trades / result.seconds)}


def run(source: Path, root: Path, expected: int) -> dict:
    import polars as pl

    from candleflow.backfill import pipeline
    from candleflow.config import Settings
    from candleflow.core.candles_batch import aggregate_frame
    from candleflow.services.features import compute_features_table
    from candleflow.tradefiles import read_trades

    settings = Settings(data_dir=root / "data", store={"offline_dir": str(root / "data" / "offline"),
                                                       "repo_dir": str(root / "data" / "repo")})
    timeframes = list(settings.candles.timeframes)
    rss_before = peak_rss_mib()
    times = {}
    begin = time.perf_counter()
    loaded = read_trades(source)
    times["read_s"] = time.perf_counter() - begin
    trades = loaded.trades
    assert trades.height == expected and loaded.bad_rows == 0, (trades.height, loaded.bad_rows)

    mark = time.perf_counter()
    trades, duplicates, _ = pipeline.prepare_trades(trades)
    times["dedup_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    candles = aggregate_frame(trades, timeframes)
    times["candles_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    rows, rejected = compute_features_table(candles, settings.features)
    times["features_s"] = time.perf_counter() - mark
    assert rejected.height == 0
    result = pipeline.ComputeResult()
    mark = time.perf_counter()
    pipeline.write_store(rows, settings, result, online=False)
    times["offline_s"] = time.perf_counter() - mark
    end_to_end = time.perf_counter() - begin
    n = trades.height
    # The candle stage for one timeframe alone (the unit of issue 5's batch target); not part of the run above.
    mark = time.perf_counter()
    aggregate_frame(trades, ["1m"])
    one_timeframe_s = time.perf_counter() - mark
    span_days = (int(trades["ts_ms"].max()) - int(trades["ts_ms"].min())) / 86_400_000
    written = pl.scan_parquet(str(root / "data" / "offline" / "**" / "*.parquet")).select(pl.len()).collect().item()
    assert written == rows.height
    figures = {
        "trades": n, "duplicates": duplicates, "candles": candles.height, "feature_rows": rows.height,
        "offline_files": result.offline_files, "timeframes": timeframes, "days": round(span_days, 1),
        **{k: round(v, 3) for k, v in times.items()},
        "end_to_end_s": round(end_to_end, 3),
        "end_to_end_trades_per_s": round(n / end_to_end),
        "trades_per_s_after_read": round(n / (end_to_end - times["read_s"])),
        "candle_stage_trades_per_s": round(n / times["candles_s"]),
        "candle_stage_1m_only_s": round(one_timeframe_s, 3),
        "candle_stage_1m_only_trades_per_s": round(n / one_timeframe_s),
        "peak_rss_mib": round(peak_rss_mib()),
        "peak_rss_before_mib": round(rss_before),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    return figures


if __name__ == "__main__":
    main()
