"""`candleflow store init|apply|compact` and `candleflow features get`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from candleflow.config import load_config
from candleflow.core.features import feature_columns
from candleflow.store import repo
from candleflow.store.base import online_writer
from candleflow.store.offline import OfflineDataset
from tests.store.rows import features_row, store_overrides


def _cli(config_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "candleflow", "--config", str(config_file), *args],
                          capture_output=True, text=True, timeout=120)


def _setup(tmp_path: Path, **extra):
    data = {**store_overrides(tmp_path, "sqlite"), "candles": {"timeframes": ["1m", "1h"]}, **extra}
    config_file = tmp_path / "candleflow.yaml"
    config_file.write_text(yaml.safe_dump(data))
    return load_config(config_file), config_file


def test_init_and_apply_derive_the_schema_from_the_indicator_config(tmp_path: Path) -> None:
    indicators = [{"function": "RSI", "params": {"timeperiod": 14}},
                  {"function": "EMA", "params": {"timeperiod": 50}, "timeframes": ["1h"]}]
    settings, config_file = _setup(tmp_path, features={"indicators": indicators, "candle_features": ["range_pct"]})
    result = _cli(config_file, "store", "init")
    assert result.returncode == 0, result.stderr
    feature_store = yaml.safe_load((tmp_path / "repo" / "feature_store.yaml").read_text())
    assert feature_store["online_store"]["type"] == "candleflow.store.sqlite.GuardedSqliteOnlineStore"

    result = _cli(config_file, "store", "apply")
    assert result.returncode == 0, result.stderr
    store = repo.open_store(settings)
    for tf in ("1m", "1h"):
        view = store.get_feature_view(f"features_{tf}")
        names = [f.name for f in view.features]
        assert names == [*repo.CANDLE_VALUE_COLUMNS, *feature_columns(settings.features, tf)]
    assert "ema_50" not in [f.name for f in store.get_feature_view("features_1m").features]
    assert "ema_50" in [f.name for f in store.get_feature_view("features_1h").features]
    assert {s.name for s in store.list_data_sources()} >= {"features_1m_push", "features_1h_offline"}


def test_features_get_prints_the_latest_online_row(tmp_path: Path) -> None:
    settings, config_file = _setup(tmp_path)
    rows = [features_row(settings, "kraken", "BTC/USD", "1m", i) for i in range(5)]
    with online_writer(settings) as writer:
        writer.write(rows)
    result = _cli(config_file, "features", "get", "--exchange", "kraken", "--symbol", "BTC/USD", "--timeframe", "1m")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == rows[-1]

    missing = _cli(config_file, "features", "get", "--exchange", "kraken", "--symbol", "ETH/USD")
    assert missing.returncode == 1 and "kraken:ETH/USD" in missing.stderr
    bad = _cli(config_file, "features", "get", "--exchange", "kraken", "--symbol", "BTC/USD", "--timeframe", "2m")
    assert bad.returncode == 2


def test_compact_merges_files_and_keeps_one_row_per_identity(tmp_path: Path) -> None:
    settings, config_file = _setup(tmp_path)
    dataset = OfflineDataset(settings.store.offline_dir)
    columns = {tf: list(s.feature_columns) for tf, s in repo.view_schemas(settings).items()}
    rows = [features_row(settings, "kraken", "BTC/USD", "1m", i) for i in range(50)]
    dataset.append(rows[:30], columns)
    dataset.append(rows[20:], columns)  # overlap: a replayed batch
    replayed = {**rows[25], "close": 1.0}  # a newer write of one identity wins
    dataset.append([replayed], columns)
    result = _cli(config_file, "store", "compact")
    assert result.returncode == 0, result.stderr
    assert "3 files -> 1" in result.stdout and "61 rows -> 50" in result.stdout
    (folder,) = dataset.partitions()
    assert len(list(folder.glob("*.parquet"))) == 1
    table = dataset.read_partition(folder)
    got = table.to_pylist()
    assert [r["start_ms"] for r in got] == [r["start_ms"] for r in rows]
    assert got[25]["close"] == 1.0 and got[24]["close"] == rows[24]["close"]
