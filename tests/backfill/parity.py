"""What live streaming would have produced for a trade set, and checks against the stored backfill.

The streaming side is driven directly through the pure core the services use
(:class:`candleflow.core.candles.CandleAggregator`, one trade at a time, then
:class:`candleflow.core.features.FeatureEngine`, one candle at a time), so the
backfill's vectorised results are compared with the incremental ones.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from candleflow.config import Settings, timeframe_ms
from candleflow.core.candles import CandleAggregator
from candleflow.core.features import FeatureEngine, feature_columns, indicators_for
from candleflow.records import CANDLE_FIELDS, Trade, to_dict
from candleflow.store.offline import OfflineDataset

Identity = tuple[str, str, str, int]


def streamed_rows(trades: pl.DataFrame, timeframes: list[str], settings: Settings) -> dict[Identity, dict[str, Any]]:
    """Features rows by identity, as the candles and features services would compute them.

    Trades go in time order (ties in input order), like a live feed; the
    stream is closed up to the last traded window of each timeframe.
    """
    rows: dict[Identity, dict[str, Any]] = {}
    ordered = trades.with_row_index("_arrival").sort(["ts_ms", "_arrival"])
    for (exchange, symbol), group in ordered.partition_by(["exchange", "symbol"], as_dict=True,
                                                          maintain_order=True).items():
        aggregator = CandleAggregator(str(exchange), str(symbol), timeframes, grace_ms=0)
        for row in group.iter_rows(named=True):
            aggregator.add(Trade(exchange=row["exchange"], symbol=row["symbol"], trade_id=row["trade_id"] or "-",
                                 price=row["price"], qty=row["qty"], side=row["side"] or "sell",
                                 ts_ms=row["ts_ms"], recv_ms=0))
        last_ts = group["ts_ms"].max()
        last_end = {tf: last_ts - last_ts % timeframe_ms(tf) + timeframe_ms(tf) for tf in timeframes}
        candles = []
        for end in sorted(set(last_end.values())):  # the watermark only advances
            candles += aggregator.close_until(end)
        for tf in timeframes:
            engine = FeatureEngine(indicators_for(settings.features, tf), settings.features.candle_features)
            # Gap fills after the last trade are streaming's next minutes, not part of this history.
            mine = [c for c in candles if c.timeframe == tf and c.end_ms <= last_end[tf]]
            for candle in sorted(mine, key=lambda c: c.start_ms):
                row = to_dict(candle)
                row.update(engine.update(candle))
                rows[(candle.exchange, candle.symbol, candle.timeframe, candle.start_ms)] = row
    return rows


def stored_rows(settings: Settings) -> dict[Identity, dict[str, Any]]:
    table = OfflineDataset(settings.store.offline_dir).read_all()
    if table is None:
        return {}
    return {(r["exchange"], r["symbol"], r["timeframe"], r["start_ms"]): r for r in table.to_pylist()}


def assert_rows_equal(got: dict[Identity, dict[str, Any]], want: dict[Identity, dict[str, Any]],
                      settings: Settings) -> None:
    """Same identities; candle fields bit for bit; features within the parity contract (1e-9)."""
    assert set(got) == set(want), (sorted(set(got) ^ set(want))[:5], len(got), len(want))
    for identity, expected in want.items():
        actual = got[identity]
        for field in CANDLE_FIELDS:
            assert actual[field] == expected[field], (identity, field, actual[field], expected[field])
        for name in feature_columns(settings.features, identity[2]):
            a, e = actual[name], expected[name]
            if e is None or a is None:
                assert a is None and e is None, (identity, name, a, e)
            else:
                assert math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-9), (identity, name, a, e)
