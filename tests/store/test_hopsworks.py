"""The Hopsworks mapping: Features rows -> feature group frames (no live Hopsworks needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from candleflow.config import load_config
from candleflow.core.features import feature_columns
from candleflow.store.base import online_writer
from candleflow.store.hopsworks import EVENT_TIME, HopsworksWriter, feature_group_spec, to_frame
from tests.store.rows import features_row


@pytest.fixture
def settings(tmp_path: Path):
    return load_config(None, {"data_dir": str(tmp_path), "candles": {"timeframes": ["1m", "15m"]},
                              "store": {"online": {"type": "hopsworks", "project": "markets",
                                                   "feature_group_prefix": "cf", "version": 3}}})


def test_feature_group_spec_follows_the_indicator_config(settings) -> None:
    spec = feature_group_spec(settings, "15m")
    assert (spec.name, spec.version) == ("cf_15m", 3)
    assert spec.primary_key == ("exchange", "symbol", "timeframe")
    assert spec.event_time == EVENT_TIME
    names = list(spec.columns)
    assert names[:4] == ["exchange", "symbol", "timeframe", EVENT_TIME]
    assert names[-len(feature_columns(settings.features, "15m")):] == feature_columns(settings.features, "15m")
    assert spec.columns["trades"] == "bigint" and spec.columns["gap_fill"] == "boolean"
    assert spec.columns["rsi_14"] == "double"


def test_rows_map_to_the_feature_group_frame(settings) -> None:
    spec = feature_group_spec(settings, "1m")
    rows = [features_row(settings, "kraken", "BTC/USD", "1m", i) for i in (0, 7)]
    frame = to_frame(rows, spec)
    assert list(frame.columns) == list(spec.columns)
    assert frame[EVENT_TIME].tolist() == [pd.Timestamp(r["end_ms"], unit="ms", tz="UTC") for r in rows]
    assert frame["close"].tolist() == [r["close"] for r in rows]
    assert frame["trades"].tolist() == [r["trades"] for r in rows]
    # Warm-up nulls stay missing values, not NaN-as-number or 0.
    null_columns = [name for name, value in rows[0].items() if value is None]
    assert null_columns and all(pd.isna(frame.loc[0, name]) for name in null_columns)
    assert frame.loc[1, "symbol"] == "BTC/USD" and frame.loc[1, "timeframe"] == "1m"


@pytest.mark.skipif(importlib.util.find_spec("hopsworks") is not None, reason="hopsworks is installed")
def test_missing_extra_names_it(settings) -> None:
    writer = online_writer(settings)
    assert isinstance(writer, HopsworksWriter)
    with pytest.raises(ModuleNotFoundError, match=r"candleflow\[hopsworks\]"):
        writer.setup()
