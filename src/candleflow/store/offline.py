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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from candleflow.store.repo import CANDLE_VALUE_COLUMNS, CREATED_TIMESTAMP, EVENT_TIMESTAMP, JOIN_KEY, market_key

_ARROW_TYPES = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}
IDENTITY_COLUMNS = ("exchange", "symbol", "timeframe")
_DAY_MS = 86_400_000
_POOL: ThreadPoolExecutor | None = None


def _writer_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parquet-append")
    return _POOL


def path_symbol(symbol: str) -> str:
    return symbol.replace("/", "-")


def _utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


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

    def append(self, rows: Iterable[dict[str, Any]], feature_columns: dict[str, Sequence[str]]) -> list[Path]:
        """Write rows as new files, one per partition; durable when it returns.

        ``feature_columns`` maps each timeframe to its ordered output columns.
        Partitions are written in parallel (Parquet encoding and fsync release
        the GIL); appends use snappy, which is ~3x faster to write than zstd,
        and compaction rewrites with zstd.
        """
        groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
        for row in rows:
            key = (row["exchange"], row["symbol"], row["timeframe"], row["start_ms"] // _DAY_MS)
            groups.setdefault(key, []).append(row)
        created_us = time.time_ns() // 1000

        def write(item: tuple[tuple[str, str, str, int], list[dict[str, Any]]]) -> Path:
            (exchange, symbol, timeframe, day), group = item
            table = self._table(group, feature_columns[timeframe], created_us)
            folder = self.partition_dir(exchange, symbol, timeframe, _utc_day(day * _DAY_MS))
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{created_us * 1000:020d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = final.with_suffix(".parquet.tmp")
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle, compression="snappy")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            return final

        if len(groups) > 1:
            written = list(_writer_pool().map(write, groups.items()))
        else:
            written = [write(item) for item in groups.items()]
        for folder in {path.parent for path in written}:
            _fsync_dir(folder)
        return written

    def _table(self, rows: list[dict[str, Any]], feature_columns: Sequence[str], created_us: int) -> pa.Table:
        schema = self.schema(feature_columns)
        derived = (JOIN_KEY, EVENT_TIMESTAMP, CREATED_TIMESTAMP)
        # pyarrow reads the dicts in C; keys outside the schema are ignored.
        table = pa.Table.from_pylist(rows, schema=pa.schema([f for f in schema if f.name not in derived]))
        market = pa.array([market_key(r["exchange"], r["symbol"]) for r in rows], pa.string())
        table = table.add_column(0, schema.field(JOIN_KEY), market)
        table = table.append_column(schema.field(EVENT_TIMESTAMP),
                                    table["end_ms"].cast(pa.timestamp("ms", tz="UTC")))
        created = pa.array([created_us] * len(rows), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        return table.append_column(schema.field(CREATED_TIMESTAMP), created)

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
