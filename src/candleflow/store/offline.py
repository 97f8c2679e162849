"""The offline dataset: append-only Parquet files, partitioned by market, timeframe and day.

Layout (one directory level per partition; the values are also columns inside
every file, so readers need no partition discovery)::

    <offline_dir>/<exchange>/<BASE-QUOTE>/<timeframe>/<YYYY-MM-DD>/part-<created_ns>-<rand>.parquet

The symbol's ``/`` becomes ``-`` in the path (``BTC/USD`` -> ``BTC-USD``); the
date is the UTC day of the candle start.

Each sink batch adds new files; nothing is rewritten per batch. A file is
written under a temporary name, fsynced, renamed into place and its directory
fsynced, so after :meth:`OfflineDataset.append` returns the rows survive a
crash, and a crash mid-write leaves only a ``.tmp`` file that readers ignore.
Replays after a crash can append the same identity twice; readers and
:meth:`OfflineDataset.compact` keep the newest copy of each identity
(exchange, symbol, timeframe, start_ms), by ``created_timestamp``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from candleflow.store.repo import CANDLE_VALUE_COLUMNS, CREATED_TIMESTAMP, EVENT_TIMESTAMP, JOIN_KEY, market_key

_ARROW_TYPES = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}
_POLARS_TYPES = {"float64": pl.Float64(), "int64": pl.Int64(), "bool": pl.Boolean()}
IDENTITY_COLUMNS = ("exchange", "symbol", "timeframe")
_DICTIONARY_COLUMNS = [JOIN_KEY, *IDENTITY_COLUMNS]
# Min/max statistics only where readers filter: the time columns (point-in-time joins, time ranges).
# Statistics on the ~40 feature columns doubled the cost of writing a file and are never used to prune.
_STATISTICS_COLUMNS = ["start_ms", "end_ms", EVENT_TIMESTAMP, CREATED_TIMESTAMP]
_DAY_MS = 86_400_000
_DAY = pl.col("start_ms").cast(pl.Int64) // _DAY_MS  # the partition day of a row, as days since the epoch
_POOL: ThreadPoolExecutor | None = None


def _writer_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        # Encoding and fsync overlap with 4 threads; more (8, 16) cost CPU and wall time on 2 cores.
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parquet-append")
    return _POOL


def path_symbol(symbol: str) -> str:
    return symbol.replace("/", "-")


def _utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _polars(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)  # a Table always converts to a DataFrame
    return frame


def _write_durably(path: Path, data: pa.Buffer) -> None:
    """Create ``path`` holding ``data``, on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class CompactionStats:
    partitions: int = 0  # leaf directories rewritten
    files_in: int = 0
    files_out: int = 0
    rows_in: int = 0
    rows_out: int = 0  # after dropping duplicate identities


class OfflineDataset:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def partition_dir(self, exchange: str, symbol: str, timeframe: str, day: str) -> Path:
        return self.root / exchange / path_symbol(symbol) / timeframe / day

    # -- writing -------------------------------------------------------------------

    def schema(self, feature_columns: Sequence[str]) -> pa.Schema:
        fields = [pa.field(JOIN_KEY, pa.string()), *(pa.field(c, pa.string()) for c in IDENTITY_COLUMNS)]
        fields += [pa.field(name, _ARROW_TYPES[kind]) for name, kind in CANDLE_VALUE_COLUMNS.items()]
        fields += [pa.field(name, pa.float64()) for name in feature_columns]
        fields += [pa.field(EVENT_TIMESTAMP, pa.timestamp("ms", tz="UTC")),
                   pa.field(CREATED_TIMESTAMP, pa.timestamp("us", tz="UTC"))]
        return pa.schema(fields)

    def append(self, rows: Iterable[dict[str, Any]], feature_columns: dict[str, Sequence[str]],
               on_written: Callable[[int], None] | None = None) -> list[Path]:
        """Write Features rows given as dicts (the sink's batches); see :meth:`append_frame`.

        Each timeframe's rows become typed columns once (pyarrow reads the
        dicts in C; keys outside the schema are ignored, missing ones are null),
        then go through the same columnar writer as a backfill's frames.
        """
        by_timeframe: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_timeframe.setdefault(row["timeframe"], []).append(row)
        if not by_timeframe:
            return []
        frames = [_polars(pa.Table.from_pylist(group, schema=self._input_schema(feature_columns[timeframe])))
                  for timeframe, group in by_timeframe.items()]
        return self.append_frame(pl.concat(frames, how="diagonal"), feature_columns, on_written)

    def append_frame(self, frame: pl.DataFrame | pa.Table, feature_columns: dict[str, Sequence[str]],
                     on_written: Callable[[int], None] | None = None) -> list[Path]:
        """Write Features rows as new files, one per partition; durable when it returns.

        ``frame`` holds the candle columns and the feature columns (extra
        columns are ignored, missing feature columns are written as nulls);
        ``feature_columns`` maps each timeframe to its ordered output columns.
        Rows keep their order inside each file. Partitions are written in
        parallel (Parquet encoding and fsync release the GIL); appends use
        snappy, which is ~3x faster to write than zstd, and compaction rewrites
        with zstd. Only the text columns (one value per file) are dictionary
        encoded: for the float columns a dictionary costs time and saves
        nothing. ``on_written`` gets the row count of each file once it is
        durable.
        """
        if isinstance(frame, pa.Table):
            frame = _polars(frame)
        if frame.height == 0:
            return []
        created_us = time.time_ns() // 1000
        parts: list[tuple[Path, pa.Table]] = []
        timeframes = frame.get_column("timeframe").unique(maintain_order=True)
        by_timeframe = (frame.partition_by("timeframe", maintain_order=True, as_dict=True).items()
                        if len(timeframes) > 1 else [(tuple(timeframes), frame)])  # a backfill's: no copy
        for (timeframe,), rows in by_timeframe:
            parts += self._partitions(rows, str(timeframe), feature_columns[str(timeframe)], created_us)

        def write(item: tuple[Path, pa.Table]) -> Path:
            folder, table = item
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{created_us * 1000:020d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = final.with_suffix(".parquet.tmp")
            # Encoded into an Arrow buffer, then one write: a Python file object would make the
            # encoder take the GIL for each of its writes.
            encoded = pa.BufferOutputStream()
            pq.write_table(table, encoded, compression="snappy", use_dictionary=_DICTIONARY_COLUMNS,
                           write_statistics=_STATISTICS_COLUMNS)
            _write_durably(tmp, encoded.getvalue())
            os.replace(tmp, final)
            _fsync_dir(folder)  # one file per partition and call: each folder is synced once
            return final

        written = []
        results = _writer_pool().map(write, parts) if len(parts) > 1 else map(write, parts)
        for path, (_, table) in zip(results, parts):
            written.append(path)
            if on_written is not None:
                on_written(table.num_rows)
        return written

    def _partitions(self, rows: pl.DataFrame, timeframe: str, feature_columns: Sequence[str],
                    created_us: int) -> list[tuple[Path, pa.Table]]:
        """One timeframe's rows as (partition folder, table in the stored schema), rows in input order.

        The rows are typed and converted to Arrow once, grouped by a stable
        sort on (exchange, symbol, day); each partition is then a zero-copy
        slice of that table.
        """
        schema = self.schema(feature_columns)
        typed = (rows.select(*self._typed_columns(rows, feature_columns, created_us), _DAY.alias("__day"))
                 .sort("exchange", "symbol", "__day", maintain_order=True))
        key = ("exchange", "symbol", "__day")
        changed = pl.any_horizontal([pl.col(c) != pl.col(c).shift() for c in key]).fill_null(True)
        starts = typed.select(pl.arg_where(changed)).to_series().to_list()
        heads = typed.select(key)[starts].rows()
        table = typed.drop("__day").to_arrow().cast(pa.schema(list(schema)[1:]))  # all but the join key
        parts = []
        for (exchange, symbol, day), start, end in zip(heads, starts, [*starts[1:], typed.height]):
            piece = table.slice(start, end - start)
            market = pa.array([market_key(exchange, symbol)] * piece.num_rows, pa.string())
            folder = self.partition_dir(exchange, symbol, timeframe, _utc_day(day * _DAY_MS))
            parts.append((folder, piece.add_column(0, schema.field(JOIN_KEY), market)))
        return parts

    def _input_schema(self, feature_columns: Sequence[str]) -> pa.Schema:
        """The columns a row dict brings (the stored schema less the ones derived on write)."""
        derived = (JOIN_KEY, EVENT_TIMESTAMP, CREATED_TIMESTAMP)
        return pa.schema([f for f in self.schema(feature_columns) if f.name not in derived])

    @staticmethod
    def _typed_columns(rows: pl.DataFrame, feature_columns: Sequence[str], created_us: int) -> list[pl.Expr]:
        """Expressions for the stored columns after the join key, in schema order, typed as :meth:`schema` says."""
        exprs = [pl.col(name).cast(pl.String) for name in IDENTITY_COLUMNS]  # the join key comes per partition
        wanted = [*((name, _POLARS_TYPES[kind]) for name, kind in CANDLE_VALUE_COLUMNS.items()),
                  *((name, pl.Float64()) for name in feature_columns)]
        exprs += [pl.col(name).cast(dtype) if name in rows.columns else pl.lit(None, dtype).alias(name)
                  for name, dtype in wanted]
        exprs += [pl.col("end_ms").cast(pl.Int64).cast(pl.Datetime("ms", "UTC")).alias(EVENT_TIMESTAMP),
                  pl.lit(created_us, pl.Int64).cast(pl.Datetime("us", "UTC")).alias(CREATED_TIMESTAMP)]
        return exprs

    # -- reading -------------------------------------------------------------------

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        return sorted(folder.glob("part-*.parquet"))

    def partitions(self) -> list[Path]:
        """Every leaf directory (exchange/symbol/timeframe/day) holding data files."""
        return sorted({p.parent for p in self.root.glob("*/*/*/*/part-*.parquet")})

    def read_partition(self, folder: Path) -> pa.Table | None:
        files = self._files(folder)
        if not files:
            return None
        return _newest_per_identity(pa.concat_tables([pq.read_table(f) for f in files], promote_options="default"))

    def recent(self, exchange: str, symbol: str, timeframe: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` rows of a market and timeframe, oldest first, one per identity."""
        base = self.root / exchange / path_symbol(symbol) / timeframe
        if not base.is_dir():
            return []
        tables = []
        count = 0
        for day in sorted((d for d in base.iterdir() if d.is_dir()), reverse=True):
            table = self.read_partition(day)
            if table is None:
                continue
            tables.append(table)
            count += table.num_rows
            if count >= limit:
                break
        if not tables:
            return []
        table = pa.concat_tables(tables, promote_options="default")
        table = table.sort_by("start_ms")
        table = table.slice(max(0, table.num_rows - limit))
        return table.drop_columns([JOIN_KEY, EVENT_TIMESTAMP, CREATED_TIMESTAMP]).to_pylist()

    def has_market(self, exchange: str, symbol: str, timeframe: str | None = None) -> bool:
        base = self.root / exchange / path_symbol(symbol)
        return (base / timeframe).is_dir() if timeframe else base.is_dir()

    def read_all(self, timeframe: str | None = None) -> pa.Table | None:
        """Every row (deduplicated), optionally of one timeframe: for tests and tools."""
        tables = [t for folder in self.partitions() if timeframe is None or folder.parent.name == timeframe
                  if (t := self.read_partition(folder)) is not None]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    # -- compaction ----------------------------------------------------------------

    def compact(self, min_files: int = 2) -> CompactionStats:
        """Merge each partition's files into one, keeping the newest copy of each identity.

        The merged file is made durable before the files it replaces are
        deleted, so a crash at any point loses nothing (at worst the next run
        finds duplicates again and drops them). Files that appear while a
        partition is compacted (the sink keeps running) are left for next time.
        """
        stats = CompactionStats()
        for folder in self.partitions():
            files = self._files(folder)
            if len(files) < min_files:
                continue
            tables = [pq.read_table(f) for f in files]
            merged = pa.concat_tables(tables, promote_options="default")
            kept = _newest_per_identity(merged).sort_by("start_ms")
            # Named after the newest input so it sorts among the files it replaces.
            final = folder / (files[-1].stem + "-c.parquet")
            tmp = final.with_suffix(".parquet.tmp")
            with open(tmp, "wb") as handle:
                pq.write_table(kept, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            _fsync_dir(folder)
            for f in files:
                if f != final:
                    f.unlink()
            _fsync_dir(folder)
            stats.partitions += 1
            stats.files_in += len(files)
            stats.files_out += 1
            stats.rows_in += merged.num_rows
            stats.rows_out += kept.num_rows
        return stats


def _newest_per_identity(table: pa.Table) -> pa.Table:
    """One row per (exchange, symbol, timeframe, start_ms): the latest created (then the last read)."""
    if table.num_rows == 0:
        return table
    order = pa.array(range(table.num_rows), pa.int64())
    indexed = table.append_column("__order", order)
    ranked = indexed.sort_by([(CREATED_TIMESTAMP, "descending"), ("__order", "descending")])
    grouped = ranked.group_by([*IDENTITY_COLUMNS, "start_ms"], use_threads=False).aggregate([("__order", "first")])
    keep = pc.sort_indices(grouped["__order_first"])
    return table.take(pc.take(grouped["__order_first"], keep))
