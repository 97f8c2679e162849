"""Running the real `candleflow ingest` against a FakeExchange and reading what it published.

Shared by the per-venue end-to-end tests (tests/services/test_ingest*.py and the venue
test modules): start the CLI as a subprocess pointed at the fake server, wait for
the expected trades in the real `trades` topic, stop it with SIGTERM, and decode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from candleflow.config import Settings
from candleflow.dlq import decode_dead_letter
from candleflow.records import decode_trade
from tests.fixtures.kafka import consume_all


def start_ingest(config_file: Path, exchange: str, symbols: list[str], ws_url: str, rest_url: str | None = None,
                 *extra: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "candleflow", "--config", str(config_file), "ingest", "--exchange", exchange,
            "--symbols", ",".join(symbols), "--ws-url", ws_url]
    if rest_url:
        args += ["--rest-url", rest_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
    return subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def stop_ingest(process: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    """SIGTERM, wait; returns (exit code, stderr text)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err.decode("utf-8", "replace")


def published_trades(settings: Settings, expected: int | None = None, idle_s: float = 3.0) -> list[Any]:
    messages = consume_all(settings.kafka, settings.topics.trades.name, expected=expected, idle_s=idle_s)
    return [(m.key().decode(), decode_trade(m.value())) for m in messages]


def dead_letters(settings: Settings, expected: int | None = None, idle_s: float = 3.0) -> list[Any]:
    messages = consume_all(settings.kafka, settings.topics.dlq.name, expected=expected, idle_s=idle_s)
    return [decode_dead_letter(m.value()) for m in messages]


def frame(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
