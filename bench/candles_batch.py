"""Batch candles (`compute candles` core): trades/s and peak memory on 10,000,000 synthetic trades.

Stages, each in its own process so its peak memory (max RSS) is its own:

- core_1tf: core.candles_batch.aggregate_candles on numpy arrays, one market, 1m;
- frame_1tf / frame_4tf: aggregate_frame on a polars trades frame (one market), 1m and 1m,5m,15m,1h;
- markets_4tf: aggregate_frame over 8 markets, each a block of rows (as read from one file per market), 4 timeframes;
- interleaved_4tf: the same with the 8 markets interleaved row by row (grouped by hashing), 4 timeframes;
- one_exchange_4tf: 4 markets of one exchange interleaved row by row (a backfill file), 4 timeframes;
- shuffled_1tf: aggregate_candles on the same trades in random order (worst case: a full sort);
- read_kraken_csv: tradefiles.read_trades of the trades as a Kraken time-and-sales CSV (the I/O layer).

Each timing is the best of --repeat runs (data generation and file writing excluded).

Usage: python -m bench candles_batch   or   python bench/candles_batch.py [--trades N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

TIMEFRAMES_4 = ["1m", "5m", "15m", "1h"]
STAGES = ("core_1tf", "frame_1tf", "frame_4tf", "markets_4tf", "interleaved_4tf", "one_exchange_4tf", "shuffled_1tf",
          "read_kraken_csv")


def synthetic_trades(n: int, seed: int = 1):
    """Time-ordered trades of a busy market: ~17 trades/s for a week, ties included."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(0, 120, n))
    price = np.round(30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-5, n))), 1)
    qty = np.round(rng.lognormal(-4.0, 1.5, n), 8) + 1e-8
    is_buy = rng.random(n) < 0.5
    return ts, price, qty, is_buy


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stage(stage: str, n: int, repeat: int) -> dict:
    import numpy as np
    import polars as pl

    from candleflow.core.candles_batch import aggregate_candles, aggregate_frame
    from candleflow.tradefiles import read_trades

    ts, price, qty, is_buy = synthetic_trades(n)
    if stage in ("frame_1tf", "frame_4tf", "markets_4tf", "interleaved_4tf", "one_exchange_4tf"):
        frame = pl.DataFrame({"ts_ms": ts, "price": price, "qty": qty, "is_buy": is_buy})
        del ts, price, qty, is_buy
        if stage == "markets_4tf":  # 8 blocks of rows, as read from one file per market
            market = pl.int_range(0, n, eager=True) * 8 // n
        elif stage == "interleaved_4tf":
            market = pl.int_range(0, n, eager=True) % 8
        elif stage == "one_exchange_4tf":  # markets 4..7 are the binance ones: 4 symbols of one exchange
            market = 4 + pl.int_range(0, n, eager=True) % 4
        else:
            market = pl.zeros(n, pl.Int64, eager=True)
        frame = frame.with_columns(market.alias("market")).with_columns(
            exchange=pl.when(pl.col("market") < 4).then(pl.lit("kraken")).otherwise(pl.lit("binance")),
            symbol=(pl.col("market") % 4).replace_strict({0: "BTC/USD", 1: "ETH/USD", 2: "SOL/USD", 3: "XRP/USD"}),
        ).drop("market")
        del market
        timeframes = ["1m"] if stage == "frame_1tf" else TIMEFRAMES_4

        def work():
            return aggregate_frame(frame, timeframes).height
    elif stage in ("core_1tf", "shuffled_1tf"):
        if stage == "shuffled_1tf":
            order = np.random.default_rng(2).permutation(n)
            ts, price, qty, is_buy = ts[order], price[order], qty[order], is_buy[order]
            del order

        def work():
            return aggregate_candles(ts, price, qty, is_buy, exchange="kraken", symbol="BTC/USD", timeframe="1m").height
    elif stage == "read_kraken_csv":
        tmp = Path(tempfile.mkdtemp(prefix="candles-bench-"))
        path = tmp / "XBTUSD.csv"
        seconds = pl.Series(ts // 1000).cast(pl.String) + "." + pl.Series(ts % 1000).cast(pl.String).str.zfill(3)
        pl.DataFrame({"t": seconds, "p": price, "q": qty}).write_csv(path, include_header=False)
        del seconds

        def work():
            return read_trades(path, format="kraken-csv").rows
    else:
        raise SystemExit(f"unknown stage {stage}")

    rss_data = max_rss_mib()  # the input (and whatever building it took)
    # Wall time, and this process's CPU time (user + system, all threads): on a shared
    # machine the CPU time shows the cost of the work itself, the wall time what a user waits.
    best = best_cpu = float("inf")
    rows = 0
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        rows = work()
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
    if stage == "read_kraken_csv":
        path.unlink()
        tmp.rmdir()
    return {"stage": stage, "trades": n, "output_rows": rows, "seconds": round(best, 3),
            "trades_per_s": round(n / best), "cpu_seconds": round(best_cpu, 3),
            "trades_per_cpu_s": round(n / best_cpu), "peak_rss_mib": round(max_rss_mib()),
            "rss_after_setup_mib": round(rss_data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stage", choices=STAGES, help="run one stage in this process and print JSON")
    args, _ = parser.parse_known_args()  # `python -m bench candles_batch` leaves its own arguments in argv
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.trades, args.repeat)))
        return

    figures: dict[str, dict] = {}
    for stage in STAGES:
        proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--trades", str(args.trades),
                               "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        figures[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
        f = figures[stage]
        print(f"{stage:16s} {f['trades_per_s'] / 1e6:7.2f} M trades/s  ({f['seconds']} s; "
              f"{f['trades_per_cpu_s'] / 1e6:.2f} M trades per CPU-s, "
              f"{f['output_rows']} rows, peak RSS {f['peak_rss_mib']} MiB, after setup {f['rss_after_setup_mib']} MiB)",
              flush=True)
    n = args.trades
    core, four = figures["core_1tf"], figures["frame_4tf"]
    summary = (
        f"Batch candles on {n:,} synthetic time-ordered trades of one market (about 17 trades/s, so 10M "
        f"trades span a week), best of {args.repeat}: "
        f"the core alone (aggregate_candles, numpy arrays) does {core['trades_per_s'] / 1e6:.1f} M trades/s "
        f"for one timeframe (target 5 M/s); aggregate_frame on a polars frame does "
        f"{figures['frame_1tf']['trades_per_s'] / 1e6:.1f} M trades/s for 1m and {four['trades_per_s'] / 1e6:.1f} M "
        f"trades/s for 1m,5m,15m,1h together (each timeframe from the trades), "
        f"{figures['markets_4tf']['trades_per_s'] / 1e6:.1f} M trades/s over 8 markets x 4 timeframes "
        f"(one block of rows per market, as from one file each; "
        f"{figures['interleaved_4tf']['trades_per_s'] / 1e6:.1f} M trades/s with the markets interleaved row by row, "
        f"{figures['one_exchange_4tf']['trades_per_s'] / 1e6:.1f} M trades/s for 4 markets of one exchange "
        f"interleaved, as in a backfill file). "
        f"The same trades in random order need a full stable sort: {figures['shuffled_1tf']['trades_per_s'] / 1e6:.1f} "
        f"M trades/s. Peak RSS {core['peak_rss_mib']} MiB for the core with {core['rss_after_setup_mib']} MiB of it "
        f"the input, {four['peak_rss_mib']} MiB for the frame path with 4 timeframes. Reading the trades as a "
        f"Kraken time-and-sales CSV (tradefiles.read_trades, exact decimal seconds -> ms, validation) runs at "
        f"{figures['read_kraken_csv']['trades_per_s'] / 1e6:.1f} M trades/s. Wall-clock rates; per CPU-second "
        f"(this process, all threads): core {core['trades_per_cpu_s'] / 1e6:.1f} M, frame 4 timeframes "
        f"{four['trades_per_cpu_s'] / 1e6:.1f} M, 8 markets interleaved "
        f"{figures['interleaved_4tf']['trades_per_cpu_s'] / 1e6:.1f} M, 4 markets of one exchange interleaved "
        f"{figures['one_exchange_4tf']['trades_per_cpu_s'] / 1e6:.1f} M, "
        f"Kraken CSV {figures['read_kraken_csv']['trades_per_cpu_s'] / 1e6:.1f} M."
    )
    write_results("candles_batch", {"trades": n, "repeat": args.repeat, "timeframes_4": TIMEFRAMES_4,
                                    "stages": figures}, summary)


if __name__ == "__main__":
    main()
