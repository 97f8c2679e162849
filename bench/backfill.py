"""Backfill from a trade file: 10M trades -> candles -> features -> the offline Parquet dataset.

One process, the path `candleflow backfill --from-file` takes: read the file
(candleflow.tradefiles), drop repeated trade ids, aggregate candles for the
default timeframes (1m, 5m, 15m, 1h) with the vectorised core, compute the
default indicator set with TA-Lib's batch functions on each key's numpy
columns, append typed columns to the offline dataset through the store code
the sink uses (``candleflow.backfill.pipeline.run``: each timeframe's files are
written while the next timeframe is computed). The file is generated first in a
child process, so the peak memory reported is the backfill's own. Wall-clock
and CPU time (all threads) are reported: on a shared, loaded machine the CPU
figure is the one that compares between runs.

Usage: python bench/backfill.py [--trades N] [--markets M]
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs, each in a fresh process; the run with the median end-to-end rate is reported.")
    parser.add_argument("--via-kafka-trades", type=int, default=1_000_000,
                        help="Trades (the file's first) also replayed with --via-kafka on a private broker (0: skip).")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, nargs=2, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # `python -m bench backfill` leaves its own arguments in argv
    if args.generate:
        generate(args.generate, args.trades, args.markets)
        return
    if args.measure:  # one run in this fresh process: its figures as the last line of stdout
        print(json.dumps(run(args.measure[0], args.measure[1], args.trades)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        source = root / "trades.parquet"
        begin = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--generate", str(source), "--trades", str(args.trades),
                        "--markets", str(args.markets)], check=True)
        print(f"generated {args.trades:,} trades in {time.perf_counter() - begin:.1f} s "
              f"({source.stat().st_size / 2**20:.0f} MiB Parquet)")
        runs = []
        for number in range(args.repeat):
            workdir = root / f"run-{number}"
            out = subprocess.run([sys.executable, __file__, "--measure", str(source), str(workdir),
                                  "--trades", str(args.trades)], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {number + 1}: {runs[-1]['end_to_end_trades_per_s']:,} trades/s end to end", flush=True)
        runs.sort(key=lambda figures: figures["end_to_end_trades_per_s"])
        figures = runs[len(runs) // 2]
        figures["runs_end_to_end_trades_per_s"] = [r["end_to_end_trades_per_s"] for r in runs]
        figures["runs_end_to_end_cpu_s"] = [r["end_to_end_cpu_s"] for r in runs]
        figures["runs_load_avg_1m_at_start"] = [r["load_avg_1m_at_run_start"] for r in runs]
        figures["markets"] = args.markets
        figures["file_mib"] = round(source.stat().st_size / 2**20, 1)
        if args.via_kafka_trades:
            figures.update(run_via_kafka(source, root, args.via_kafka_trades))
    write_results("backfill", figures, summary(figures, args.markets))


# The same 10M-trade file with the previous version (commit 1fde9b4: markets grouped through categorical
# codes of every row, each timeframe's files written through a Python file object while the next one was
# computed, every market's work on the main thread), median of 3 fresh-process runs, 2026-11-25: wall s
# (CPU s, process time over every thread, where it was measured).
BEFORE = {"read": (1.063, 1.84), "dedup": (1.065, None), "candles": (2.224, None), "features": (0.482, None),
          "offline": (0.835, None), "end_to_end": (6.326, 8.834), "rate": 1_580_798}


def summary(figures: dict, markets: int) -> str:
    n = figures["trades"]

    def before(stage: str) -> str:
        wall, cpu = BEFORE[stage]
        return f"{wall:.2f}" + (f" (CPU {cpu:.2f})" if cpu is not None else "")

    text = (
        f"Backfill of {n:,} trades ({markets} markets, ~{figures['days']:.0f} days each) from one Parquet "
        f"file into the offline dataset, timeframes {', '.join(figures['timeframes'])}, default indicator set: "
        f"**{figures['end_to_end_trades_per_s']:,.0f} trades/s end to end** (median of "
        f"{len(figures['runs_end_to_end_trades_per_s'])} runs, each in a fresh process: "
        f"{', '.join(f'{rate:,}' for rate in figures['runs_end_to_end_trades_per_s'])}, with 1-minute load "
        f"averages of {', '.join(f'{load:.1f}' for load in figures['runs_load_avg_1m_at_start'])} "
        f"at their start and {', '.join(f'{cpu:.1f}' for cpu in figures['runs_end_to_end_cpu_s'])} CPU s; "
        f"{figures['end_to_end_s']:.1f} s wall, "
        f"{figures['end_to_end_cpu_s']:.1f} s CPU: {figures['end_to_end_trades_per_cpu_s']:,.0f} trades per CPU "
        f"second), **{figures['candle_stage_trades_per_s']:,.0f} trades/s in the candle stage** for the four "
        f"timeframes ({figures['candle_stage_trades_per_cpu_s']:,.0f} per CPU second, grouping by market "
        f"included, one thread, the faster of two runs: "
        f"{', '.join(f'{rate:,}' for rate in figures.get('candle_stage_runs_trades_per_s', []))}; "
        f"{figures['candles']:,} candles; "
        f"{figures['candle_stage_1m_only_trades_per_s']:,.0f} trades/s for 1m alone), "
        f"{figures['trades_per_s_after_read']:,.0f} trades/s from the frame in memory "
        f"to Parquet ({figures['offline_files']:,} files); peak memory {figures['peak_rss_mib']:,.0f} MiB. "
        f"Targets: >= 2M trades/s end to end, >= 5M trades/s for candles.\n\n"
        f"Runs vary on this virtual machine, which shares its 2 cores with other work (the 1-minute load "
        f"average at the start is below): memory it has not touched lately costs up to ~3 ms per MiB on "
        f"first touch (host-side page faults), and a backfill allocates gigabytes; hence the median of "
        f"fresh-process runs, and CPU time next to wall time.\n\n"
        f"Wall-clock seconds per stage; CPU is process time over every thread. Before: the previous version "
        f"(commit 1fde9b4, {BEFORE['rate']:,} trades/s) on the same file. The Parquet files of each timeframe "
        f"are written on a thread while the next timeframe is computed, so the write has no stage of its own: "
        f"its row is the wait for the last files once everything is computed.\n\n"
        f"| stage | before: wall s | now: wall s |\n|---|---|---|\n"
        f"| read the file (tradefiles) | {before('read')} | "
        f"{figures['read_s']:.2f} (CPU {figures['read_cpu_s']:.2f}) |\n"
        f"| de-duplicate (+ group by market, shared with candles) | {before('dedup')} | "
        f"{figures['dedup_s']:.2f} |\n"
        f"| candles, 4 timeframes | {before('candles')} | {figures['candles_s']:.2f} |\n"
        f"| features | {before('features')} | {figures['features_s']:.2f} |\n"
        f"| Parquet write (wait after compute) | {before('offline')} | {figures['offline_wait_s']:.2f} |\n"
        f"| compute and write, after the read | | {figures['compute_and_write_s']:.2f} "
        f"(CPU {figures['compute_and_write_cpu_s']:.2f}) |\n"
        f"| **end to end** | {before('end_to_end')} | "
        f"{figures['end_to_end_s']:.2f} (CPU {figures['end_to_end_cpu_s']:.2f}) |\n\n")
    text += (
        "What changed: the work of each market (checking its trade ids, gathering and sorting its trades, "
        "its candles) runs on a thread per core, numpy and polars releasing the GIL for it; markets "
        "interleaved row by row are found by one comparison pass per market seen in the first rows (a "
        "categorical cast, one hash per row, only when a market shows up later), and each market's "
        "columns are gathered by polars straight from the file's row groups instead of from whole-column "
        "numpy copies (less memory touched for the first time); the files are encoded into an Arrow buffer "
        "and written with one system call, not through a Python file object that made the encoder take the "
        "GIL for each write; the longest timeframe is computed first, so writing starts sooner; the rows "
        "are put in key order by copying each key's run once instead of sorting on a key string; the "
        "reader finds the distinct sides and venues by comparing with the values of the first rows instead "
        "of hashing every row. Unchanged: reading validates text columns once per distinct value and "
        "numbers bad rows only when there are some; the offline files keep min/max statistics only for "
        "the time columns (statistics on the ~40 feature columns doubled the cost of writing a file). "
        f"Reading costs {figures['read_cpu_s']:.1f} CPU s here, against "
        f"{figures['parquet_decode_only_cpu_s']:.1f} CPU s for `pl.read_parquet` of the same file alone.")
    if "via_kafka_trades" in figures:
        text += (
            f" Through `--via-kafka` (the candles, features and sink services on a private local broker), the "
            f"file's first {figures['via_kafka_trades']:,} trades took {figures['via_kafka_s']:.1f} s: "
            f"**{figures['via_kafka_trades_per_s']:,.0f} trades/s**, against "
            f"{figures['end_to_end_trades_per_s']:,.0f} trades/s for the batch path above.")
    return text


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


class Stages:
    """Wall-clock and process CPU time (every thread) of each named stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, work):
        wall, cpu = time.perf_counter(), time.process_time()
        out = work()
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu
        print(f"{name}: {self.wall[name]:.2f} s wall, {self.cpu[name]:.2f} s CPU", flush=True)
        return out


def run(source: Path, root: Path, expected: int) -> dict:
    import polars as pl

    from candleflow.backfill import pipeline
    from candleflow.config import Settings
    from candleflow.core.candles_batch import aggregate_frame
    from candleflow.tradefiles import read_trades

    settings = Settings(data_dir=root / "data", store={"offline_dir": str(root / "data" / "offline"),
                                                       "repo_dir": str(root / "data" / "repo")})
    timeframes = list(settings.candles.timeframes)
    rss_before = peak_rss_mib()
    load_at_start = os.getloadavg()[0]
    stages = Stages()
    begin, begin_cpu = time.perf_counter(), time.process_time()
    loaded = stages.run("read", lambda: read_trades(source))
    trades = loaded.trades
    assert trades.height == expected and loaded.bad_rows == 0, (trades.height, loaded.bad_rows)
    # What `backfill --from-file` runs after reading: de-duplicate, then per timeframe candles and
    # features, each timeframe's Parquet files written on a thread while the next one is computed.
    result = stages.run("compute_and_write", lambda: pipeline.run(trades, timeframes, settings, online=False))
    end_to_end = time.perf_counter() - begin
    end_to_end_cpu = time.process_time() - begin_cpu
    n = trades.height
    rows = result.features
    # The candle stage on its own, from the trades in memory to the candles of the four timeframes
    # (grouping by market included); and for one timeframe (the unit of issue 5's batch target).
    # The faster of two runs: a single one varies by up to ~1.5x with what this VM charges for the
    # memory the stage allocates (see the results); the end-to-end figure above includes that cost.
    candle_stage = Stages()
    candles = candle_stage.run("candles", lambda: aggregate_frame(trades, timeframes))
    candle_stage.run("candles_again", lambda: aggregate_frame(trades, timeframes))
    candle_runs = [candle_stage.wall["candles"], candle_stage.wall["candles_again"]]
    fastest = "candles" if candle_runs[0] <= candle_runs[1] else "candles_again"
    candle_stage.run("candles_1m", lambda: aggregate_frame(trades, ["1m"]))
    # What reading costs without validation (not part of the run above).
    mark = time.process_time()
    pl.read_parquet(source)
    decode_only_cpu = time.process_time() - mark
    span_days = (int(trades["ts_ms"].max()) - int(trades["ts_ms"].min())) / 86_400_000
    written = pl.scan_parquet(str(root / "data" / "offline" / "**" / "*.parquet")).select(pl.len()).collect().item()
    assert written == rows.height == candles.height
    times = result.times
    figures = {
        "trades": n, "duplicates": result.duplicates, "candles": result.candles, "feature_rows": rows.height,
        "offline_files": result.offline_files, "timeframes": timeframes, "days": round(span_days, 1),
        "read_s": round(stages.wall["read"], 3), "read_cpu_s": round(stages.cpu["read"], 3),
        "compute_and_write_s": round(stages.wall["compute_and_write"], 3),
        "compute_and_write_cpu_s": round(stages.cpu["compute_and_write"], 3),
        "dedup_s": round(times.dedup_s, 3), "candles_s": round(times.candles_s, 3),
        "features_s": round(times.features_s, 3), "offline_wait_s": round(times.offline_s, 3),
        "end_to_end_s": round(end_to_end, 3),
        "end_to_end_cpu_s": round(end_to_end_cpu, 3),
        "end_to_end_trades_per_s": round(n / end_to_end),
        "end_to_end_trades_per_cpu_s": round(n / end_to_end_cpu),
        "trades_per_s_after_read": round(n / stages.wall["compute_and_write"]),
        "candle_stage_s": round(candle_stage.wall[fastest], 3),
        "candle_stage_trades_per_s": round(n / candle_stage.wall[fastest]),
        "candle_stage_trades_per_cpu_s": round(n / candle_stage.cpu[fastest]),
        "candle_stage_runs_trades_per_s": [round(n / seconds) for seconds in candle_runs],
        "candle_stage_1m_only_s": round(candle_stage.wall["candles_1m"], 3),
        "candle_stage_1m_only_trades_per_s": round(n / candle_stage.wall["candles_1m"]),
        "parquet_decode_only_cpu_s": round(decode_only_cpu, 3),
        "peak_rss_mib": round(peak_rss_mib()),
        "peak_rss_before_mib": round(rss_before),
        "load_avg_1m_at_run_start": round(load_at_start, 2),
    }
    for key, value in figures.items():
        print(f"{key}: {value}")
    return figures


if __name__ == "__main__":
    main()
