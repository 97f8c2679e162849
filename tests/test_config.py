"""Configuration: documented defaults, YAML + environment precedence, errors that name the key (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from candleflow.cli import app
from candleflow.config import ConfigError, Settings, load_config, timeframe_ms


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CANDLEFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray ./candleflow.yaml


def test_documented_defaults() -> None:
    cfg = load_config()
    assert cfg.kafka.bootstrap_servers is None and cfg.kafka.uses_local_broker
    assert cfg.kafka.bootstrap() == "127.0.0.1:9092"
    assert cfg.kafka.local.version.startswith("4.")
    assert [t.name for t in cfg.topics.all()] == ["trades", "candles", "candles.partial", "features", "dlq"]
    assert cfg.topics.trades.partitions == 6
    assert cfg.candles.timeframes == ["1m", "5m", "15m", "1h"]
    assert cfg.candles.grace_ms == 2000
    assert cfg.candles.processing_guarantee == "exactly-once"
    assert cfg.store.online.type == "sqlite"
    assert cfg.serve.port == 8000
    assert cfg.ingest.exchanges[0].name == "kraken"
    assert cfg.ingest.exchanges[0].symbols == ["BTC/USD", "ETH/USD", "SOL/USD"]


def test_yaml_then_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cf.yaml"
    path.write_text("kafka:\n  bootstrap_servers: yaml-host:9092\ncandles:\n  grace_ms: 500\n  timeframes: [1m]\n")
    cfg = load_config(path)
    assert cfg.kafka.bootstrap_servers == "yaml-host:9092" and cfg.candles.grace_ms == 500
    monkeypatch.setenv("CANDLEFLOW_CANDLES__GRACE_MS", "750")
    monkeypatch.setenv("CANDLEFLOW_CANDLES__TIMEFRAMES", "1m,5m")
    cfg = load_config(path)
    assert cfg.candles.grace_ms == 750
    assert cfg.candles.timeframes == ["1m", "5m"]
    assert cfg.kafka.bootstrap_servers == "yaml-host:9092"  # untouched by env
    assert cfg.metrics_host == "127.0.0.1"  # /metrics on loopback unless asked (containers: 0.0.0.0)
    monkeypatch.setenv("CANDLEFLOW_METRICS_HOST", "0.0.0.0")
    assert load_config(path).metrics_host == "0.0.0.0"


def test_config_file_from_environment_and_default_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "candleflow.yaml").write_text("serve:\n  port: 8100\n")
    assert load_config().serve.port == 8100
    other = tmp_path / "other.yaml"
    other.write_text("serve:\n  port: 8200\n")
    monkeypatch.setenv("CANDLEFLOW_CONFIG", str(other))
    assert load_config().serve.port == 8200


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLEFLOW_SERVE__PORT", "8300")
    assert load_config(overrides={"serve": {"port": 8400}}).serve.port == 8400


def test_secrets_are_masked() -> None:
    cfg = load_config(overrides={"kafka": {"sasl_password": "hunter2"}})
    assert cfg.kafka.client_config()["sasl.password"] == "hunter2"
    assert "hunter2" not in str(cfg.redacted())


@pytest.mark.parametrize(
    ("yaml_text", "key", "problem"),
    [
        ("kafka:\n  local:\n    prot: 1\n", "kafka.local.prot", "unknown key"),
        ("candles:\n  grace_ms: -1\n", "candles.grace_ms", "greater than or equal"),
        ("candles:\n  timeframes: [1m, 7x]\n", "candles.timeframes", "invalid timeframe '7x'"),
        ("serve:\n  port: http\n", "serve.port", "valid integer"),
        ("ingest:\n  exchanges:\n    - name: kraken\n      symbols: [btcusd]\n", "ingest.exchanges.0.symbols",
         "not canonical"),
        ("ingest:\n  exchanges:\n    - name: ftx\n      symbols: [BTC/USD]\n", "ingest.exchanges.0.name", "kraken"),
        ("store:\n  online:\n    type: cassandra\n", "store.online", "type"),
        ("kafka:\n  local:\n    port: 9000\n    controller_port: 9000\n", "kafka.local", "must differ"),
    ],
)
def test_invalid_yaml_names_key_and_problem(tmp_path: Path, yaml_text: str, key: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    line = next(line for line in message.splitlines() if line.strip().startswith(key))
    assert problem in line


def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLEFLOW_KAFKA__BOOTSTRAP", "x:1")
    with pytest.raises(ConfigError, match="CANDLEFLOW_KAFKA__BOOTSTRAP: unknown setting"):
        load_config()


@pytest.mark.parametrize("text", ["kafka: [1, 2]\n", "just a string\n", "kafka: {port: 1\n"])
def test_malformed_yaml_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_timeframes() -> None:
    assert [timeframe_ms(t) for t in ("30s", "1m", "15m", "4h", "1d")] == [30_000, 60_000, 900_000, 14_400_000, 86_400_000]
    for bad in ("0m", "1w", "m1", "", "1.5h"):
        with pytest.raises(ValueError):
            timeframe_ms(bad)


def test_cli_exit_status_2_names_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("candles:\n  grace_ms: soon\n")
    result = CliRunner().invoke(app, ["--config", str(path), "config", "show"])
    assert result.exit_code == 2
    assert "candles.grace_ms" in result.output


def test_cli_config_show_prints_effective_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLEFLOW_KAFKA__BOOTSTRAP_SERVERS", "cluster:9092")
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert '"bootstrap_servers": "cluster:9092"' in result.output


def test_invalid_config_stops_a_real_process_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kafka:\n  local:\n    port: 99999\n")
    data_dir = tmp_path / "never-created"
    proc = subprocess.run(
        [sys.executable, "-m", "candleflow", "--config", str(path), "kafka", "start", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "kafka.local.port" in proc.stderr
    assert not data_dir.exists()


def test_settings_model_forbids_unknown_top_level_key() -> None:
    with pytest.raises(Exception):
        Settings(bogus=1)  # type: ignore[call-arg]
