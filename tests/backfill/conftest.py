"""Backfill tests need no Kafka: a Settings on a temporary data dir, written as YAML for the CLI too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from candleflow.config import Settings, load_config


@pytest.fixture
def backfill_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[Settings, Path]]:
    """backfill_config(candles={"timeframes": [...]}) -> (Settings, path of its YAML file)."""

    def make(**overrides: Any) -> tuple[Settings, Path]:
        data_dir = tmp_path / "data"
        data: dict[str, Any] = {
            "data_dir": str(data_dir),
            "store": {"repo_dir": str(data_dir / "feature_repo"), "offline_dir": str(data_dir / "offline"),
                      "online": {"type": "sqlite", "path": str(data_dir / "online.db")}},
            "candles": {"timeframes": ["1m", "5m"]},
            "log": {"format": "json", "level": "WARNING"},
        }
        data.update(overrides)
        path = tmp_path / "candleflow.yaml"
        path.write_text(yaml.safe_dump(data))
        for name in list(__import__("os").environ):
            if name.startswith("CANDLEFLOW_"):
                monkeypatch.delenv(name)
        return load_config(path), path

    return make


@pytest.fixture(autouse=True)
def _fresh_logging():
    """The command configures structlog to print to the stderr of its run; an in-process
    CliRunner closes that stream afterwards, so restore the defaults for the next test."""
    yield
    import structlog

    structlog.reset_defaults()
