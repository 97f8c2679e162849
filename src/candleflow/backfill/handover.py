"""Hand-over to live: the features engine state at the end of a backfill, as streaming would hold it.

Indicators with infinite memory (EMA, RSI, MACD, ATR, ADX, KAMA...) cannot be
restarted from the last N candles: the live features service must continue
from the exact state that streaming the whole history would have left. After
the vectorised computation, :func:`engine_states` replays each key's candles
through the streaming :class:`~candleflow.core.features.FeatureEngine` (the
service's own engine) and keeps its final state.

The states are saved as JSON files under ``<data_dir>/backfill/handover/``
(one per key) by :func:`save_states`; the features service reads a key's file
with :func:`load_state` the first time it sees that key.

How live takes over (per market):

1. start live ingest and the candles service; the first window they produce
   whole starts at W0 (the first window boundary after ingest's first trade);
2. backfill with ``--until`` W0 (or later: windows covered twice are the same
   identity; the offline readers and ``store compact`` keep one copy and the
   online store refuses older rows) and ``--handover-state``;
3. the features service (same ``data_dir``) continues each key it has no state
   for from the saved state: a replayed candle at or before ``last_start_ms`` is
   refused as stale (no duplicate), the next one continues the indicators
   exactly. A state saved for another indicator configuration is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from candleflow.config import Settings
from candleflow.records import CANDLE_FIELDS, candle_key
from candleflow.store.offline import path_symbol


@dataclass
class HandoverState:
    exchange: str
    symbol: str
    timeframe: str
    last_start_ms: int  # the last candle the engine has seen; live continues with the next window
    count: int  # candles seen
    fingerprint: str  # the indicator configuration the state belongs to
    engine: dict[str, Any]  # FeatureEngine.to_state()

    @property
    def key(self) -> str:
        return candle_key(self.exchange, self.symbol, self.timeframe)


def engine_states(rows: pl.DataFrame, settings: Settings) -> list[HandoverState]:
    """The streaming engine's state after the last candle of each key of `rows` (candles or Features rows)."""
    from candleflow.core.features import FeatureEngine, indicators_for

    states = []
    engines: dict[str, Any] = {}
    for (exchange, symbol, timeframe), group in rows.select(CANDLE_FIELDS).partition_by(
            ["exchange", "symbol", "timeframe"], as_dict=True, maintain_order=True).items():
        if timeframe not in engines:
            engines[timeframe] = indicators_for(settings.features, str(timeframe))
        engine = FeatureEngine(engines[timeframe], settings.features.candle_features)
        group = group.sort("start_ms")
        for candle in group.iter_rows(named=True):
            engine.update_values(candle)  # only the state is kept: no row dict
        states.append(HandoverState(str(exchange), str(symbol), str(timeframe), int(group["start_ms"][-1]),
                                    engine.count, engine.fingerprint, engine.to_state()))
    return states


def state_path(data_dir: str | os.PathLike[str], exchange: str, symbol: str, timeframe: str) -> Path:
    return Path(data_dir) / "backfill" / "handover" / exchange / path_symbol(symbol) / f"{timeframe}.json"


def save_states(states: list[HandoverState], data_dir: str | os.PathLike[str]) -> list[Path]:
    paths = []
    for state in states:
        path = state_path(data_dir, state.exchange, state.symbol, state.timeframe)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def load_state(data_dir: str | os.PathLike[str], exchange: str, symbol: str, timeframe: str) -> HandoverState | None:
    path = state_path(data_dir, exchange, symbol, timeframe)
    try:
        return msgspec.json.decode(path.read_bytes(), type=HandoverState)
    except FileNotFoundError:
        return None
