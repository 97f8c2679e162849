"""Indicator configuration: the default set, the naming rule, and errors that name the entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from candleflow.config import ConfigError, FeaturesConfig, IndicatorSpec, load_config
from candleflow.core.features import (
    FeatureConfigError,
    all_feature_columns,
    check_specs,
    feature_columns,
    short_output_name,
)

DEFAULT_NAMES = (
    "sma_20 sma_50 ema_9 ema_21 ema_50 wma_20 dema_20 tema_20 kama_10 macd_12_26_9 macd_signal_12_26_9 "
    "macd_hist_12_26_9 adx_14 aroon_up_14 aroon_down_14 rsi_7 rsi_14 rsi_21 stoch_k_14_3_3 stoch_d_14_3_3 cci_20 "
    "mfi_14 roc_10 willr_14 mom_10 atr_14 natr_14 bbands_upper_20_2 bbands_middle_20_2 bbands_lower_20_2 "
    "stddev_20 obv ad adosc_3_10 log_return_1 range_pct body_pct vwap_dist buy_ratio"
).split()


def names(*entries: dict) -> list[str]:
    return [c for ind in check_specs([IndicatorSpec.model_validate(e) for e in entries], []) for c in ind.columns]


def test_default_set_has_the_documented_names_in_order():
    assert feature_columns(FeaturesConfig(), "1m") == DEFAULT_NAMES
    assert feature_columns(FeaturesConfig(), "4h") == DEFAULT_NAMES


@pytest.mark.parametrize("entry, expected", [
    ({"function": "RSI", "params": {"timeperiod": 14}}, ["rsi_14"]),
    ({"function": "rsi"}, ["rsi"]),  # TA-Lib defaults, nothing named
    ({"function": "MACD", "params": {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}},
     ["macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9"]),
    ({"function": "BBANDS", "params": {"timeperiod": 20, "nbdevup": 2, "nbdevdn": 2}},
     ["bbands_upper_20_2", "bbands_middle_20_2", "bbands_lower_20_2"]),
    ({"function": "BBANDS", "params": {"timeperiod": 20, "nbdevup": 1.5, "nbdevdn": 2}},
     ["bbands_upper_20_1p5_2", "bbands_middle_20_1p5_2", "bbands_lower_20_1p5_2"]),
    ({"function": "STOCH", "params": {"fastk_period": 14, "slowk_period": 3, "slowd_period": 3}},
     ["stoch_k_14_3_3", "stoch_d_14_3_3"]),
    ({"function": "AROON", "params": {"timeperiod": 25}}, ["aroon_down_25", "aroon_up_25"]),
    ({"function": "AROON", "params": {"timeperiod": 25}, "outputs": {"aroonup": "up"}}, ["aroon_up_25"]),
    ({"function": "SMA", "params": {"timeperiod": 5}, "name": "volume_sma", "inputs": {"price": "volume"}},
     ["volume_sma_5"]),
    ({"function": "MAMA", "params": {"fastlimit": 0.5}}, ["mama_0p5", "mama_fama_0p5"]),
    ({"function": "EMA", "params": {"timeperiod": 10}, "label": "fast"}, ["ema_fast"]),
    ({"function": "MA", "params": {"timeperiod": 10, "matype": "EMA"}}, ["ma_10_1"]),
])
def test_naming_rule(entry, expected):
    assert names(entry) == expected


def test_short_output_names():
    assert short_output_name("MACD", "macd") == ""
    assert short_output_name("MACD", "macdsignal") == "signal"
    assert short_output_name("BBANDS", "upperband") == "upper"
    assert short_output_name("STOCHF", "fastd") == "d"
    assert short_output_name("MINMAXINDEX", "minidx") == "minidx"


@pytest.mark.parametrize("entries, message", [
    ([{"function": "RSX"}], r"indicators\[0\] \(RSX\): unknown TA-Lib function 'RSX'"),
    ([{"function": "RSI"}, {"function": "EMA", "params": {"period": 3}}],
     r"indicators\[1\] \(EMA\): unknown parameter 'period' for EMA \(parameters: timeperiod\)"),
    ([{"function": "RSI", "params": {"timeperiod": 0.5}}], r"indicators\[0\] \(RSI\): parameter timeperiod=0.5 "
                                                          r"must be an integer"),
    ([{"function": "RSI", "params": {"timeperiod": -4}}], r"indicators\[0\] \(RSI\): TA-Lib rejects the parameters"),
    ([{"function": "BBANDS", "params": {"matype": "FOO"}}], r"indicators\[0\] \(BBANDS\): parameter matype: unknown"),
    ([{"function": "RSI", "params": {"timeperiod": 14}}, {"function": "RSI", "params": {"timeperiod": 14}}],
     r"indicators\[1\] \(RSI\): output name 'rsi_14' clashes with indicators\[0\] \(RSI\)"),
    ([{"function": "SMA", "name": "close"}], r"indicators\[0\] \(SMA\): output name 'close' clashes with the candle"),
    ([{"function": "SMA", "name": "log_return", "label": "1"}], r"clashes with the candle feature 'log_return_1'"),
    ([{"function": "MACD", "outputs": {"signal": "s"}}], r"unknown output 'signal' for MACD"),
    ([{"function": "SMA", "inputs": {"price": "bid"}}], r"input price reads 'bid', which is not a candle column"),
    ([{"function": "SMA", "timeframes": ["1x"]}], r"indicators\[0\] \(SMA\): invalid timeframe '1x'"),
    ([{"function": "SMA", "name": "Bad-Name"}], r"name 'Bad-Name' must be lower case"),
])
def test_invalid_entries_are_named(entries, message):
    with pytest.raises(ValueError, match=message):
        FeaturesConfig(indicators=entries)


def test_same_name_allowed_on_disjoint_timeframes():
    config = FeaturesConfig(indicators=[
        {"function": "RSI", "params": {"timeperiod": 14}, "timeframes": ["1m"]},
        {"function": "RSI", "params": {"timeperiod": 14}, "timeframes": ["1h"]},
        {"function": "EMA", "params": {"timeperiod": 5}, "timeframes": ["1h"]},
    ])
    assert feature_columns(config, "1m") == ["rsi_14", *FeaturesConfig().candle_features]
    assert feature_columns(config, "1h")[:2] == ["rsi_14", "ema_5"]
    assert all_feature_columns(config)[:2] == ["rsi_14", "ema_5"]
    with pytest.raises(FeatureConfigError, match="clashes"):
        check_specs([IndicatorSpec(function="RSI", timeframes=["1m", "5m"]), IndicatorSpec(function="RSI",
                                                                                           timeframes=["5m"])])


def test_indicators_file_and_its_errors(tmp_path: Path):
    good = tmp_path / "ind.yaml"
    good.write_text("indicators:\n  - {function: RSI, params: {timeperiod: 9}}\n  - {function: OBV}\n")
    config = FeaturesConfig(indicators_file=good, candle_features=["buy_ratio"])
    assert feature_columns(config, "5m") == ["rsi_9", "obv", "buy_ratio"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("indicators:\n  - {function: RSI}\n  - {function: ADX, params: {timeperod: 3}}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: indicators\[1\] \(ADX\): unknown parameter 'timeperod'"):
        FeaturesConfig(indicators_file=bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("indicators:\n  - {function: RSI, param: {timeperiod: 3}}\n")
    with pytest.raises(ValueError, match=r"indicators\[0\]: param: unknown key"):
        FeaturesConfig(indicators_file=typo)
    with pytest.raises(ValueError, match="either indicators or indicators_file"):
        FeaturesConfig(indicators=[{"function": "RSI"}], indicators_file=good)


def test_load_config_reports_the_entry(tmp_path: Path):
    path = tmp_path / "candleflow.yaml"
    path.write_text("features:\n  indicators:\n    - {function: EMA, params: {timeperiod: 9}}\n"
                    "    - {function: NOPE}\n")
    with pytest.raises(ConfigError, match=r"indicators\[1\] \(NOPE\): unknown TA-Lib function 'NOPE'"):
        load_config(path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "candleflow", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}, timeout=120)


def test_cli_exits_2_naming_the_entry(tmp_path: Path):
    (tmp_path / "candles.csv").write_text("exchange,symbol,timeframe,start_ms,open,high,low,close,volume\n")
    (tmp_path / "bad.yaml").write_text("indicators:\n  - {function: SMA, params: {timeperiod: 5}}\n"
                                       "  - {function: SMA, params: {timeperiod: 5}}\n")
    result = run_cli("compute", "features", "--input", "candles.csv", "--output", "out.csv",
                     "--indicators", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "indicators[1] (SMA): output name 'sma_5' clashes with" in result.stderr.replace("\n", " ")
    (tmp_path / "candleflow.yaml").write_text("features:\n  indicators:\n    - {function: WHAT}\n")
    result = run_cli("features", cwd=tmp_path)
    assert result.returncode == 2 and "unknown TA-Lib function 'WHAT'" in result.stderr


def test_compute_features_files(tmp_path: Path):
    from tests.core.test_indicators import make_candles

    rows = []
    for symbol, seed in (("BTC/USD", 1), ("ETH/USD", 2)):
        for i, c in enumerate(make_candles(120, seed=seed)):
            rows.append({"exchange": "kraken", "symbol": symbol, "timeframe": "1m", "start_ms": 1_700_000_040_000
                         + 60_000 * i, **{k: c[k] for k in ("open", "high", "low", "close", "volume")}})
    rows = rows[::-1]  # out of order: the batch path groups by key and sorts by start_ms
    rows.append({**rows[0], "close": -1.0})  # invalid
    rows.append(dict(rows[5]))  # duplicate of an earlier row
    pl.DataFrame(rows).write_parquet(tmp_path / "candles.parquet")
    (tmp_path / "ind.yaml").write_text("indicators:\n  - {function: RSI, params: {timeperiod: 5}}\n")
    result = run_cli("compute", "features", "-i", "candles.parquet", "-o", "features.jsonl",
                     "--indicators", "ind.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 240 features rows for 2 key(s)" in result.stdout and "2 invalid row(s)" in result.stdout
    out = pl.read_ndjson(tmp_path / "features.jsonl")
    assert out.columns[:15] == ["exchange", "symbol", "timeframe", "start_ms", "end_ms", "open", "high", "low",
                                "close", "volume", "quote_volume", "vwap", "trades", "buy_volume", "gap_fill"]
    assert out.columns[15:] == ["rsi_5", "log_return_1", "range_pct", "body_pct", "vwap_dist", "buy_ratio"]
    assert out["symbol"].to_list() == ["ETH/USD"] * 120 + ["BTC/USD"] * 120
    btc = out.filter(pl.col("symbol") == "BTC/USD")
    assert btc["start_ms"].is_sorted() and (btc["end_ms"] - btc["start_ms"] == 60_000).all()
    assert btc["rsi_5"].null_count() == 5 and btc["buy_ratio"].null_count() == 120  # buy volume unknown
    rejected = pl.read_ndjson(tmp_path / "features.jsonl.rejected.jsonl")
    assert sorted(rejected["reason"].to_list()) == [
        "close must be a finite number > 0", "duplicate candle (same key and start_ms as an earlier row)"]
    for suffix in ("csv", "parquet"):
        result = run_cli("compute", "features", "-i", "candles.parquet", "-o", f"f.{suffix}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert pl.read_csv(tmp_path / "f.csv").shape == pl.read_parquet(tmp_path / "f.parquet").shape == (240, 15 + 39)
    result = run_cli("compute", "features", "-i", "candles.txt", "-o", "f.csv", cwd=tmp_path)
    assert result.returncode == 2 and "unknown file type" in result.stderr


def test_core_features_imports_no_io_libraries():
    code = ("import sys, candleflow.core.features as f, candleflow.core.indicators\n"
            "from candleflow.config import FeaturesConfig\n"
            "f.FeatureEngine.for_timeframe(FeaturesConfig(), '1m')\n"
            "print(sorted(m for m in ('quixstreams', 'confluent_kafka', 'feast', 'redis', 'websockets', 'httpx')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
