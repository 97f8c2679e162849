"""Realistic Features rows for dashboard tests: a seeded random walk through the real feature engine."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

from candleflow.config import Settings, timeframe_ms
from candleflow.core.features import FeatureEngine
from candleflow.store import repo
from candleflow.store.offline import OfflineDataset


class MarketSeries:
    """Consecutive candles of one market, ending at the current minute, with their indicator values."""

    def __init__(self, settings: Settings, exchange: str, symbol: str, timeframe: str, *, history: int,
                 price: float = 64_000.0, seed: int = 7) -> None:
        self.exchange, self.symbol, self.timeframe = exchange, symbol, timeframe
        self.step = timeframe_ms(timeframe)
        self.engine = FeatureEngine.for_timeframe(settings.features, timeframe)
        self.random = random.Random(seed)
        self.price = price
        # The history ends with the last closed window, so the next candle is "now".
        self.next_start = (int(time.time() * 1000) // self.step - history) * self.step

    def _candle(self) -> dict[str, Any]:
        rng = self.random
        open_ = self.price
        close = open_ * math.exp(rng.gauss(0, 0.0025))
        high = max(open_, close) * (1 + abs(rng.gauss(0, 0.0012)))
        low = min(open_, close) * (1 - abs(rng.gauss(0, 0.0012)))
        volume = round(rng.uniform(0.5, 12.0), 6)
        vwap = min(high, max(low, (high + low + close) / 3))
        return {
            "exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe,
            "start_ms": self.next_start, "end_ms": self.next_start + self.step,
            "open": open_, "high": high, "low": low, "close": close,
            "volume": volume, "quote_volume": volume * vwap, "vwap": vwap,
            "trades": rng.randint(5, 80), "buy_volume": volume * rng.uniform(0.3, 0.7), "gap_fill": False,
        }

    def close_next(self) -> dict[str, Any]:
        """The next closed candle's Features row (the engine moves on)."""
        candle = self._candle()
        row = {**candle, **self.engine.update(candle)}
        self.price = candle["close"]
        self.next_start += self.step
        return row

    def preview_next(self) -> dict[str, Any]:
        """A provisional row of the still-open next candle (the engine does not move)."""
        state = self.random.getstate()
        candle = self._candle()
        self.random.setstate(state)
        return {**candle, **self.engine.preview(candle), "provisional": True}


def write_history(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Append rows to the offline dataset, as the sink does."""
    columns = {tf: list(schema.feature_columns) for tf, schema in repo.view_schemas(settings).items()}
    OfflineDataset(Path(settings.store.offline_dir)).append(rows, columns)
