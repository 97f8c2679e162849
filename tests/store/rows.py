"""Store test helpers: Features rows (candle fields + the configured columns) and store settings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from candleflow.config import Settings, timeframe_ms
from candleflow.core.features import feature_columns

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def features_row(settings: Settings, exchange: str, symbol: str, timeframe: str, index: int,
                 *, seed: float = 0.0) -> dict[str, Any]:
    """The index-th candle of a market; every value is a deterministic function of (index, seed)."""
    step = timeframe_ms(timeframe)
    start = BASE_MS + index * step
    close = 100.0 + 10 * math.sin(index / 7 + seed) + seed
    row: dict[str, Any] = {
        "exchange": exchange, "symbol": symbol, "timeframe": timeframe,
        "start_ms": start, "end_ms": start + step,
        "open": close - 0.5, "high": close + 1.0, "low": close - 1.0, "close": close,
        "volume": 2.0 + index % 3, "quote_volume": close * (2.0 + index % 3), "vwap": close,
        "trades": 5 + index % 4, "buy_volume": 1.0, "gap_fill": False,
    }
    for position, name in enumerate(feature_columns(settings.features, timeframe)):
        # Warm-up nulls for the first candles, like real indicators.
        row[name] = None if index < position % 5 else index * 1000.0 + position + seed
    return row


def store_overrides(tmp_path: Path, backend: str, redis_address: str | None = None) -> dict:
    online = ({"type": "sqlite", "path": str(tmp_path / "online.db")} if backend == "sqlite"
              else {"type": "redis", "connection_string": redis_address})
    return {
        "data_dir": str(tmp_path),
        "store": {"repo_dir": str(tmp_path / "repo"), "offline_dir": str(tmp_path / "offline"),
                  "project": f"t{abs(hash(str(tmp_path))) % 10**8}", "online": online},
    }
