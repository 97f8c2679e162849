"""Point-in-time training sets: Feast historical retrieval over the sink's Parquet dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from candleflow.config import load_config
from candleflow.store import repo
from candleflow.store.dataset import DatasetError, training_set
from candleflow.store.offline import OfflineDataset
from tests.store.rows import features_row, store_overrides


@pytest.fixture
def settings(tmp_path: Path):
    return load_config(None, {**store_overrides(tmp_path, "sqlite"), "candles": {"timeframes": ["1m", "5m"]}})


def _fill(settings, markets, count: int) -> dict:
    dataset = OfflineDataset(settings.store.offline_dir)
    columns = {tf: list(s.feature_columns) for tf, s in repo.view_schemas(settings).items()}
    rows = {m: [features_row(settings, m[0], m[1], "1m", i, seed=n) for i in range(count)]
            for n, m in enumerate(markets)}
    # Several appends, like successive sink batches; one batch replayed (a crash before the commit).
    for m in markets:
        dataset.append(rows[m][: count // 2], columns)
        dataset.append(rows[m][count // 2:], columns)
        dataset.append(rows[m][count // 2: count // 2 + 5], columns)
    return rows


def test_no_value_from_after_the_entity_timestamp_leaks_in(settings) -> None:
    markets = [("kraken", "BTC/USD"), ("binance", "ETH/USDT")]
    rows = _fill(settings, markets, 60)
    entities = []
    for m in markets:
        for i in (5, 20, 31, 59):
            end = rows[m][i]["end_ms"]
            # At a candle's end the candle is known; one millisecond earlier it is not.
            entities.append({"exchange": m[0], "symbol": m[1], "ts_ms": end, "expect": i})
            entities.append({"exchange": m[0], "symbol": m[1], "ts_ms": end - 1, "expect": i - 1})
            entities.append({"exchange": m[0], "symbol": m[1], "ts_ms": end + 59_999, "expect": i})
    frame = training_set(settings, pd.DataFrame(entities), ["1m:close", "1m:rsi_14", "1m:end_ms"])
    assert len(frame) == len(entities)
    for record in frame.to_dict("records"):
        market = (record["exchange"], record["symbol"])
        expected = rows[market][record["expect"]]
        assert record["end_ms"] == expected["end_ms"] <= record["ts_ms"]
        assert record["close"] == expected["close"]
        if expected["rsi_14"] is None:  # warm-up null stays missing
            assert pd.isna(record["rsi_14"])
        else:
            assert record["rsi_14"] == expected["rsi_14"]


def test_before_the_first_candle_there_is_nothing(settings) -> None:
    rows = _fill(settings, [("kraken", "BTC/USD")], 10)
    first_end = rows[("kraken", "BTC/USD")][0]["end_ms"]
    frame = training_set(settings, pd.DataFrame([{"market": "kraken:BTC/USD", "ts_ms": first_end - 1}]), ["1m:close"])
    assert frame["close"].isna().all()


def test_bad_feature_references_name_the_problem(settings) -> None:
    with pytest.raises(DatasetError, match="no timeframe '3m'"):
        training_set(settings, pd.DataFrame([{"market": "kraken:BTC/USD", "ts_ms": 0}]), ["3m:close"])
    with pytest.raises(DatasetError, match="has no column 'nope'"):
        training_set(settings, pd.DataFrame([{"market": "kraken:BTC/USD", "ts_ms": 0}]), ["1m:nope"])


def test_dataset_command_writes_the_training_set(settings, tmp_path: Path) -> None:
    rows = _fill(settings, [("kraken", "BTC/USD")], 30)
    config_file = tmp_path / "candleflow.yaml"
    config_file.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    entities = tmp_path / "entities.csv"
    ends = [rows[("kraken", "BTC/USD")][i]["end_ms"] for i in (10, 20)]
    pd.DataFrame({"exchange": "kraken", "symbol": "BTC/USD", "ts_ms": ends}).to_csv(entities, index=False)
    output = tmp_path / "train.parquet"
    result = subprocess.run([sys.executable, "-m", "candleflow", "--config", str(config_file), "dataset",
                             "--entities", str(entities), "--features", "1m:close,1m:sma_20", "--output", str(output)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(output)
    assert list(frame["close"]) == [rows[("kraken", "BTC/USD")][i]["close"] for i in (10, 20)]
