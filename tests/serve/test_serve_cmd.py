"""`candleflow serve` as a process: it starts, answers on its port, and stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.store.rows import store_overrides


def test_serve_command_answers_health_and_openapi(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config_file = tmp_path / "candleflow.yaml"
    config_file.write_text(yaml.safe_dump({**store_overrides(tmp_path, "sqlite"), "candles": {"timeframes": ["1m"]},
                                           "log": {"format": "json"}}))
    proc = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config_file), "serve",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180  # importing Feast is slow on a busy machine
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, proc.stdout.read().decode() if proc.poll() else ""
        assert health.json()["online_store"] == "sqlite"
        assert "/v1/features" in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
        missing = httpx.get(f"http://127.0.0.1:{port}/v1/features/kraken/BTC-USD")
        assert missing.status_code == 404 and "kraken:BTC/USD" in missing.json()["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status shows it.
        assert proc.wait(20) in (0, -signal.SIGTERM)
