"""One computation for history: trades -> candles -> features -> the feature store.

The same pure core as streaming, in its vectorised form:
:func:`candleflow.core.candles_batch.aggregate_frame` for candles (the
candle contract: identical floats to the streaming aggregator) and
:func:`candleflow.core.features.compute_batch` on each key's numpy columns
(TA-Lib's batch functions, equal to the streaming engine candle by candle).
Everything stays columnar: no Python loop runs per trade or per row. The rows
are written through the sink's own store code: appended to the offline Parquet
dataset as typed columns (:meth:`candleflow.store.offline.OfflineDataset.append_frame`)
and, for the newest row of each key, upserted into the online store, which
refuses a row older than the one it holds (so a backfill never overwrites
fresher live rows).

Which candles are written: only complete windows. A window that starts
before ``since`` lacks its first trades and one that ends after ``until``
(or after the newest trade fetched, for a REST backfill "up to now") is still
open; both are left out, and the live pipeline (or a later backfill) produces
them whole. Trades are de-duplicated by (exchange, symbol, trade_id), keeping
the first copy; trades without an id (Kraken's time-and-sales files have none)
cannot be told apart and are all kept (``ComputeResult.without_id`` counts them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from candleflow.config import Settings, timeframe_ms
from candleflow.core.candles_batch import (MapFunction, MarketRows, aggregate_markets, market_rows,
                                          market_values, sorted_markets)
from candleflow.log import get_logger
from candleflow.records import candle_key

log = get_logger("candleflow.backfill.pipeline")

# The candle columns the indicators read, as float64 arrays.
_INDICATOR_INPUTS = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "buy_volume", "trades")


@dataclass
class StageTimes:
    """Wall-clock seconds per stage. In :func:`run` the offline writes overlap the computation, so
    ``offline_s`` is only the wait for them once everything is computed."""

    dedup_s: float = 0.0
    candles_s: float = 0.0
    features_s: float = 0.0
    offline_s: float = 0.0
    online_s: float = 0.0


@dataclass
class ComputeResult:
    trades: int = 0  # unique trades inside the range
    duplicates: int = 0  # repeated trade ids dropped
    without_id: int = 0  # trades with no trade id: kept, not de-duplicated
    out_of_range: int = 0  # trades before since / at or after until
    candles: int = 0
    partial_windows: int = 0  # incomplete first/last windows left out
    keys: int = 0  # (exchange, symbol, timeframe) written
    offline_files: int = 0
    online_written: int = 0
    online_stale: int = 0  # refused: the online store holds a newer row
    times: StageTimes = field(default_factory=StageTimes)
    features: pl.DataFrame | None = None  # the rows written (kept for the hand-over and tests)


def prepare_trades(trades: pl.DataFrame, since_ms: int | None = None,
                   until_ms: int | None = None) -> tuple[pl.DataFrame, int, int]:
    """Trades inside ``[since_ms, until_ms)``, first copy of each trade id; (frame, duplicates, out_of_range)."""
    kept, duplicates, out_of_range, _ = prepare_trades_and_markets(trades, since_ms, until_ms)
    return kept, duplicates, out_of_range


def prepare_trades_and_markets(trades: pl.DataFrame, since_ms: int | None = None, until_ms: int | None = None, *,
                               map_markets: MapFunction = map) -> tuple[pl.DataFrame, int, int, MarketRows | None]:
    """prepare_trades, plus the rows of each market of the result when they were found on the way;
    ``map_markets`` runs the work of each market (see ``candles_batch.MapFunction``)."""
    total = trades.height
    if since_ms is not None or until_ms is not None:
        inside = pl.lit(True)
        if since_ms is not None:
            inside = inside & (pl.col("ts_ms") >= since_ms)
        if until_ms is not None:
            inside = inside & (pl.col("ts_ms") < until_ms)
        trades = trades.filter(inside)
    out_of_range = total - trades.height
    if "trade_id" not in trades.columns or trades.height == 0:
        return trades, 0, out_of_range, None
    kept, markets = _first_copies(trades, map_markets)
    return kept, trades.height - kept.height, out_of_range, markets


def _first_copies(trades: pl.DataFrame, map_markets: MapFunction = map) -> tuple[pl.DataFrame, MarketRows | None]:
    """The first row of each (exchange, symbol, trade_id), in input order; and the rows of each market
    (``market_rows``) when no row was dropped, so the candle stage need not find them again.

    Venues number their trades, and a file or a REST history lists them in
    increasing order per market, so the usual case is settled by one pass per
    market over the ids as integers; hashing millions of strings is the
    fallback. Rows without an id (Kraken's time-and-sales files have none)
    are all kept.

    Measured on 10M trades of 4 interleaved markets: ~0.2 CPU s with no repeat
    (the market rows are shared with the candle stage), against ~4 s for
    polars' hashing of (exchange, symbol, trade_id) (``unique``/``is_first_distinct``).
    """
    ids = trades["trade_id"]
    if ids.null_count() == trades.height:
        return trades, None
    numeric = ids.cast(pl.Int64, strict=False)
    if numeric.null_count() > 0:  # text ids, or some rows without one
        return trades.filter(pl.col("trade_id").is_null()
                             | pl.struct("exchange", "symbol", "trade_id").is_first_distinct()), None
    markets = market_rows(trades)

    def repeats(rows: slice | np.ndarray) -> np.ndarray | None:
        """The market's rows (of the frame) holding an id seen before in it; None when there is none."""
        market_ids = market_values(numeric, rows)
        if len(market_ids) < 2 or bool(np.all(market_ids[1:] > market_ids[:-1])):
            return None
        _, first = np.unique(market_ids, return_index=True)  # index of each id's first occurrence
        repeated = np.ones(len(market_ids), dtype=bool)
        repeated[first] = False
        return (np.arange(trades.height)[rows] if isinstance(rows, slice) else rows)[repeated]

    found = [dropped for dropped in map_markets(repeats, [rows for _, rows in markets]) if dropped is not None]
    if not found:
        return trades, markets
    keep = np.ones(trades.height, dtype=bool)
    for dropped in found:
        keep[dropped] = False
    return trades.filter(pl.Series(keep)), None


def complete_windows(candles: pl.DataFrame, since_ms: int | None, until_ms: int | None,
                     market_until: dict[tuple[str, str], int] | None = None) -> pl.DataFrame:
    """Drop the windows a backfill cannot have whole: starting before since, ending after until.

    ``market_until`` sets an earlier end for some markets (exchange, symbol): a
    REST job that stopped early has all trades only up to its newest one.
    """
    keep = pl.lit(True)
    if since_ms is not None:
        keep = keep & (pl.col("start_ms") >= since_ms)
    if until_ms is not None:
        keep = keep & (pl.col("end_ms") <= until_ms)
    candles = candles.filter(keep)
    if market_until:
        limits = pl.DataFrame([(e, s, u) for (e, s), u in market_until.items()],
                              schema={"exchange": pl.String, "symbol": pl.String, "_until": pl.Int64}, orient="row")
        candles = (candles.join(limits, on=["exchange", "symbol"], how="left", maintain_order="left")
                   .filter(pl.col("_until").is_null() | (pl.col("end_ms") <= pl.col("_until"))).drop("_until"))
    return candles


def compute(trades: pl.DataFrame, timeframes: list[str], settings: Settings, *, since_ms: int | None = None,
            until_ms: int | None = None,
            market_until: dict[tuple[str, str], int] | None = None) -> tuple[pl.DataFrame, ComputeResult]:
    """Trades -> Features rows (candle fields + every configured output), ordered by key then start."""
    result = ComputeResult()
    frames = list(_rows_per_timeframe(trades, timeframes, settings, result, since_ms, until_ms, market_until))
    rows = _by_key(frames, result)
    return rows, result


def _rows_per_timeframe(trades: pl.DataFrame, timeframes: list[str], settings: Settings, result: ComputeResult,
                        since_ms: int | None, until_ms: int | None,
                        market_until: dict[tuple[str, str], int] | None) -> Iterator[pl.DataFrame]:
    """The Features rows of each timeframe in turn (ordered by key then start), counted into ``result``.

    The work of each market (de-duplication, sorting, candles) runs on a thread per core: numpy and
    polars release the GIL for it (on 2 cores, a file of several markets goes through those stages
    in little more than half the time).
    """
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="backfill-markets") as pool:
        yield from _rows_per_timeframe_on(pool.map, trades, timeframes, settings, result, since_ms, until_ms,
                                          market_until)


def _rows_per_timeframe_on(map_markets: MapFunction, trades: pl.DataFrame, timeframes: list[str], settings: Settings,
                           result: ComputeResult, since_ms: int | None, until_ms: int | None,
                           market_until: dict[tuple[str, str], int] | None) -> Iterator[pl.DataFrame]:
    started = time.perf_counter()
    trades, result.duplicates, result.out_of_range, markets = prepare_trades_and_markets(
        trades, since_ms, until_ms, map_markets=map_markets)
    result.trades = trades.height
    result.without_id = trades["trade_id"].null_count() if "trade_id" in trades.columns else trades.height
    if result.without_id:
        log.warning("trades without a trade id cannot be de-duplicated; all of them are kept",
                    without_id=result.without_id, trades=result.trades)
    result.times.dedup_s = time.perf_counter() - started
    started = time.perf_counter()
    arrays = sorted_markets(trades, markets, map_markets=map_markets)  # made once, aggregated for each timeframe
    del markets
    result.times.candles_s += time.perf_counter() - started
    for timeframe in timeframes:
        started = time.perf_counter()
        candles = aggregate_markets(arrays, [timeframe], map_markets=map_markets)
        complete = complete_windows(candles, since_ms, until_ms, market_until)
        result.partial_windows += candles.height - complete.height
        result.candles += complete.height
        result.times.candles_s += time.perf_counter() - started
        started = time.perf_counter()
        rows = features_frame(complete, settings)
        result.times.features_s += time.perf_counter() - started
        yield rows


def _by_key(frames: list[pl.DataFrame], result: ComputeResult) -> pl.DataFrame:
    """Per-timeframe rows (each ordered by key then start) as one frame ordered by candle key
    (``exchange:symbol:timeframe``) then start; the number of keys counted into ``result``.

    Each key's rows are one run in its timeframe's frame, so the runs are put in
    key order and copied once (no sort of the rows, no key string per row).
    """
    if not frames:
        return pl.DataFrame()
    runs = sorted((candle_key(*key), index, start, end)
                  for index, frame in enumerate(frames) for key, start, end in _key_runs(frame))
    result.keys = len({key for key, *_ in runs})
    if len(frames) == 1 or not runs:  # one timeframe: already in key order
        return pl.concat(frames, rechunk=True)
    return pl.concat([frames[index].slice(start, end - start) for _, index, start, end in runs], rechunk=True)


def _key_runs(rows: pl.DataFrame) -> list[tuple[tuple[str, str, str], int, int]]:
    """((exchange, symbol, timeframe), first row, end row) of each run of rows of one key."""
    if not rows.height:
        return []
    key = ("exchange", "symbol", "timeframe")
    changed = pl.any_horizontal([pl.col(c) != pl.col(c).shift() for c in key]).fill_null(True)
    starts = rows.select(pl.arg_where(changed)).to_series().to_list()
    return list(zip(rows.select(key)[starts].rows(), starts, [*starts[1:], rows.height]))


def features_frame(candles: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """Features rows (candle fields + every configured output, null in warm-up) of candles ordered by key then start.

    The candles come from ``aggregate_frame`` (in that order), valid and
    complete by construction, so the batch engine runs straight on each key's
    numpy columns (views of one contiguous frame); the outputs are stitched
    into whole columns once. Gives the same rows as
    ``candleflow.services.features.compute_features_table``, without its
    validation of arbitrary candle files.
    """
    from candleflow.core.features import all_feature_columns, compute_batch, indicators_for

    config = settings.features
    columns = all_feature_columns(config)
    candles = candles.rechunk()
    inputs = {name: candles[name].cast(pl.Float64).to_numpy() for name in _INDICATOR_INPUTS}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    for timeframe, start, end in _key_spans(candles):
        values = compute_batch(indicators_for(config, timeframe), {k: v[start:end] for k, v in inputs.items()},
                               config.candle_features)
        for name in columns:
            outputs[name].append(np.asarray(values[name], dtype=np.float64) if name in values
                                 else np.full(end - start, np.nan))
    return candles.with_columns([
        pl.Series(name, np.concatenate(parts) if parts else np.empty(0), dtype=pl.Float64, nan_to_null=True)
        for name, parts in outputs.items()])


def _key_spans(candles: pl.DataFrame) -> list[tuple[str, int, int]]:
    """(timeframe, first row, end row) of each (exchange, symbol, timeframe) of candles ordered by key then start."""
    if not candles.height:
        return []
    key = ("exchange", "symbol", "timeframe")
    changed = pl.any_horizontal([pl.col(c) != pl.col(c).shift() for c in key]).fill_null(True)
    starts = candles.select(pl.arg_where(changed)).to_series().to_list()
    # Each key must be one run in start order, or a key's history would be computed in pieces.
    ordered = candles.select((changed | (pl.col("start_ms") > pl.col("start_ms").shift())).all()).item()
    if not ordered or len(starts) != candles.select(key).n_unique():
        raise ValueError("candles must be ordered by (exchange, symbol, timeframe) then start_ms")
    ends = [*starts[1:], candles.height]
    timeframes = candles["timeframe"].gather(starts).to_list()
    return list(zip(timeframes, starts, ends))


def latest_per_key(rows: pl.DataFrame) -> list[dict[str, Any]]:
    """The newest row of each (exchange, symbol, timeframe)."""
    if not rows.height:
        return []
    return (rows.sort("start_ms").group_by(["exchange", "symbol", "timeframe"], maintain_order=True).last()
            .select(rows.columns).to_dicts())


def _write_online(rows: pl.DataFrame, settings: Settings, result: ComputeResult) -> None:
    if not rows.height:
        return
    from candleflow.store.base import online_writer

    started = time.perf_counter()
    writer = online_writer(settings)
    writer.setup()
    try:
        stats = writer.write(latest_per_key(rows))
    finally:
        writer.close()
    result.online_written, result.online_stale = stats.written, stats.stale
    result.times.online_s = time.perf_counter() - started


def run(trades: pl.DataFrame, timeframes: list[str], settings: Settings, *, since_ms: int | None = None,
        until_ms: int | None = None, market_until: dict[tuple[str, str], int] | None = None, online: bool = True,
        on_written: Callable[[int], None] | None = None,
        on_rows: Callable[[int], None] | None = None) -> ComputeResult:
    """compute(), then every row into the offline dataset and the newest row of each key online (the
    sink's store code), the writes overlapped with the computation; durable when it returns.

    Each timeframe's rows go to the offline dataset on a writer thread while
    the next timeframe is computed: Parquet encoding and fsync release the GIL,
    so on a multi-core machine the writes (~40% of the CPU of a file backfill)
    mostly hide behind the computation. ``on_rows`` gets each timeframe's row
    count once computed (for a progress total), ``on_written`` each file's row
    count once durable. If the computation fails, the timeframes already
    computed are still written (appends are idempotent for readers: the
    newest copy of a row wins), and the error propagates.
    """
    from candleflow.store import repo
    from candleflow.store.offline import OfflineDataset

    result = ComputeResult()
    dataset = OfflineDataset(settings.store.offline_dir)
    # Resolving the feature columns loads TA-Lib (which imports pandas): ~0.5 s of Python holding the
    # GIL, done before the markets are processed on several threads rather than alongside them.
    columns = {tf: list(schema.feature_columns) for tf, schema in repo.view_schemas(settings).items()}
    frames: list[pl.DataFrame] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill-offline") as writer:
        pending = []
        for rows in _rows_per_timeframe(trades, _longest_first(timeframes), settings, result, since_ms, until_ms,
                                        market_until):
            frames.append(rows)
            if on_rows is not None:
                on_rows(rows.height)
            if rows.height:
                pending.append(writer.submit(dataset.append_frame, rows, columns, on_written))
        started = time.perf_counter()
        for written in pending:
            result.offline_files += len(written.result())
        result.times.offline_s = time.perf_counter() - started  # the part of the writes not hidden
    rows = _by_key(frames, result)
    if online:
        _write_online(rows, settings, result)
    result.features = rows
    log.info("backfill written", trades=result.trades, candles=result.candles, keys=result.keys,
             offline_files=result.offline_files, online_written=result.online_written,
             online_stale=result.online_stale)
    return result


def _longest_first(timeframes: list[str]) -> list[str]:
    """Timeframes by decreasing length: the long ones have few candles and are computed soonest, so their
    files start being written early (each timeframe has as many files; a file costs the same whatever
    its rows)."""
    return sorted(timeframes, key=timeframe_ms, reverse=True)


def rest_trades(caches: list[Any]) -> pl.DataFrame:
    """Every cached REST trade of these jobs (PageCache), in page order, as a trades frame."""
    frames = []
    for cache in caches:
        checkpoint = cache.load()
        for page in cache.pages(checkpoint):
            if not page.trade_id:
                continue
            frames.append(pl.DataFrame({
                "trade_id": page.trade_id, "price": page.price, "qty": page.qty, "side": page.side,
                "ts_ms": page.ts_ms, "recv_ms": page.recv_ms,
            }, schema={"trade_id": pl.String, "price": pl.Float64, "qty": pl.Float64, "side": pl.String,
                       "ts_ms": pl.Int64, "recv_ms": pl.Int64}).with_columns(
                pl.lit(cache.exchange).alias("exchange"), pl.lit(cache.symbol).alias("symbol")))
    if not frames:
        return pl.DataFrame(schema={"trade_id": pl.String, "price": pl.Float64, "qty": pl.Float64,
                                    "side": pl.String, "ts_ms": pl.Int64, "recv_ms": pl.Int64,
                                    "exchange": pl.String, "symbol": pl.String})
    return pl.concat(frames, rechunk=True)
