"""The offline files a backfill writes: the rows it computed, partitioned and typed as the store reads them,
encoded as the sink's Parquet writer has always encoded them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from candleflow.backfill import pipeline
from candleflow.store import repo
from candleflow.store.offline import (
    _DICTIONARY_COLUMNS,
    _STATISTICS_COLUMNS,
    OfflineDataset,
    path_symbol,
)
from tests.backfill.test_pipeline import SINCE_MS, synthetic_trades

TIMEFRAMES = ["1m", "5m", "1h"]


def test_each_file_holds_its_partition_rows_in_order_encoded_as_before(backfill_config, tmp_path: Path) -> None:
    settings, _ = backfill_config(candles={"timeframes": TIMEFRAMES})
    trades = synthetic_trades(4_000, [("kraken", "BTC/USD"), ("binance", "ETH/USDT")])
    result = pipeline.run(trades, TIMEFRAMES, settings, since_ms=SINCE_MS, online=False)
    rows = result.features
    assert rows is not None and rows.height == result.candles

    # The rows: every configured timeframe, ordered by candle key then start.
    key = pl.concat_str(["exchange", "symbol", "timeframe"], separator=":")
    assert rows.equals(rows.sort(key, "start_ms", maintain_order=True))
    assert set(rows["timeframe"]) == set(TIMEFRAMES)

    # The files: one per (market, timeframe, UTC day of the start), its rows in the computed order.
    dataset = OfflineDataset(settings.store.offline_dir)
    columns = {tf: list(schema.feature_columns) for tf, schema in repo.view_schemas(settings).items()}
    day = pl.from_epoch(pl.col("start_ms"), time_unit="ms").dt.strftime("%Y-%m-%d")
    expected = rows.with_columns(day.alias("_day")).partition_by("exchange", "symbol", "timeframe", "_day",
                                                                 as_dict=True, maintain_order=True)
    files = sorted(Path(settings.store.offline_dir).glob("*/*/*/*/part-*.parquet"))
    assert len(files) == len(expected) == result.offline_files
    for (exchange, symbol, timeframe, utc_day), part in expected.items():
        [path] = list(dataset.partition_dir(exchange, symbol, timeframe, utc_day).glob("part-*.parquet"))
        stored = pl.read_parquet(path)
        schema = dataset.schema(columns[timeframe])
        assert pq.read_schema(path).remove_metadata().equals(schema)
        assert stored["market"].to_list() == [f"{exchange}:{symbol}"] * part.height
        assert stored.select(part.drop("_day").columns).equals(part.drop("_day"))
        assert stored["event_timestamp"].to_list() == [
            datetime.fromtimestamp(end / 1000, tz=UTC) for end in part["end_ms"]]
        assert stored["created_timestamp"].n_unique() == 1
        assert path.parent == Path(settings.store.offline_dir) / exchange / path_symbol(symbol) / timeframe / utc_day

        # Encoded as the writer did through a Python file object: same schema (and its Arrow metadata),
        # one row group, snappy, dictionaries only for the text columns, statistics only for the time ones.
        before = tmp_path / "before.parquet"
        with open(before, "wb") as handle:
            pq.write_table(pq.read_table(path), handle, compression="snappy", use_dictionary=_DICTIONARY_COLUMNS,
                           write_statistics=_STATISTICS_COLUMNS)
        now_meta, before_meta = pq.ParquetFile(path).metadata, pq.ParquetFile(before).metadata
        assert pq.read_schema(path).equals(pq.read_schema(before), check_metadata=True)
        assert (now_meta.num_row_groups, now_meta.num_rows) == (before_meta.num_row_groups, before_meta.num_rows) \
            == (1, part.height)
        for index in range(now_meta.num_columns):
            now_column, before_column = now_meta.row_group(0).column(index), before_meta.row_group(0).column(index)
            assert (now_column.path_in_schema, now_column.compression, now_column.encodings,
                    now_column.is_stats_set, now_column.has_dictionary_page) == \
                   (before_column.path_in_schema, before_column.compression, before_column.encodings,
                    before_column.is_stats_set, before_column.has_dictionary_page)
            if now_column.is_stats_set:
                assert now_column.statistics.equals(before_column.statistics)
    assert not list(Path(settings.store.offline_dir).rglob("*.tmp"))
