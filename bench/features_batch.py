"""Batch features: 1,000,000 one-minute candles of one key, the default indicator set.

Times the TA-Lib batch engine alone (core.features.compute_batch on arrays)
and the whole batch path (`compute features`: read Parquet, validate, compute,
write Parquet).

Usage: python bench/features_batch.py [--candles N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402


def main() -> None:
    import numpy as np
    import polars as pl

    from candleflow.config import FeaturesConfig
    from candleflow.core.features import compute_batch, indicators_for
    from candleflow.services.features import compute_features_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.candles
    rng = np.random.default_rng(1)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    volume = rng.exponential(5.0, n)
    columns = {"open": open_, "high": np.maximum(open_, close) * 1.0005, "low": np.minimum(open_, close) * 0.9995,
               "close": close, "volume": volume, "quote_volume": volume * close, "vwap": close,
               "buy_volume": volume / 2, "trades": np.full(n, 5.0)}
    config = FeaturesConfig()
    indicators = indicators_for(config, "1m")
    begin = time.perf_counter()
    compute_batch(indicators, columns, config.candle_features)
    engine_s = time.perf_counter() - begin
    print(f"batch engine: {n:,} candles in {engine_s:.2f} s")

    frame = pl.DataFrame({"exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m",
                          "start_ms": 1_600_000_000_000 + np.arange(n, dtype=np.int64) * 60_000,
                          **{k: v for k, v in columns.items() if k != "trades"}, "trades": np.full(n, 5)})
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "candles.parquet", Path(tmp) / "features.parquet"
        frame.write_parquet(source)
        begin = time.perf_counter()
        result = compute_features_file(source, target, config)
        file_s = time.perf_counter() - begin
    print(f"compute features (parquet -> parquet): {result.rows:,} rows in {file_s:.2f} s")
    load = os.getloadavg()[0]
    figures = {"candles": n, "engine_seconds": round(engine_s, 3), "file_to_file_seconds": round(file_s, 3),
               "load_avg_1m_at_end": load}
    write_results("features_batch", figures,
                  f"Batch features, default set, {n:,} candles of one key: TA-Lib engine {engine_s:.2f} s, "
                  f"Parquet to Parquet {file_s:.2f} s. Machine shared with other work while measured "
                  f"(load {load:.1f}); figures are noisy.")


if __name__ == "__main__":
    main()
