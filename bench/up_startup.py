"""`candleflow up` from cold: how long until a newcomer sees data, restarts and shutdown.

Runs `candleflow up --source live` with the default configuration (Kraken
BTC/USD, ETH/USD, SOL/USD; 1m, 5m, 15m, 1h candles; default indicators) in a
fresh data directory, with the local broker that `up` starts itself (jars from
the shared cache), on free ports. Where Kraken cannot be reached, this
includes the reachability check and the fallback to the simulated market —
exactly what `make run` does on such a machine. Records, from the launch:

- broker ready; every service running; first trade in Kafka;
- first 1m candle in Kafka, and first 1m features row served over HTTP
  (both depend on where in the minute the run started, which is recorded);
- after a SIGKILL of ingest: until it runs again, and until new trades arrive;
- after SIGTERM: until `up` has stopped every service and the broker.

Usage: python bench/up_startup.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402


def main() -> None:
    from candleflow.broker.local import free_port
    from candleflow.config import KafkaConfig
    from candleflow.health import KafkaProbe

    workdir = Path(tempfile.mkdtemp(prefix="bench-up-"))
    data = workdir / "data"
    serve_port = free_port()
    kafka_port = free_port()
    config = workdir / "candleflow.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(data),
        "kafka": {"local": {"port": kafka_port, "controller_port": free_port(), "data_dir": str(data / "kafka")}},
        "serve": {"port": serve_port},
        "store": {"repo_dir": str(data / "feature_repo"), "offline_dir": str(data / "offline"),
                  "online": {"type": "sqlite", "path": str(data / "online.db")}},
    }))
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{kafka_port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    wall_start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config), "up", "--source", "live"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.monotonic() - started, raw.decode("utf-8", "replace").rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def when(condition, timeout: float = 240.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return round(time.monotonic() - started, 1)
            if proc.poll() is not None:
                raise SystemExit("candleflow up exited early:\n" + "\n".join(line for _, line in lines[-40:]))
            time.sleep(0.2)
        raise SystemExit("timed out:\n" + "\n".join(line for _, line in lines[-40:]))

    def logged(text: str) -> float | None:
        return next((round(t, 1) for t, line in lines if text in line), None)

    def state() -> dict:
        try:
            return json.loads((data / "up.json").read_text())
        except (OSError, ValueError):
            return {}

    probe: list[KafkaProbe] = []  # made once the broker runs

    def total(topic: str) -> int:
        try:
            if not probe:
                probe.append(KafkaProbe(kafka, timeout=3.0))
            return sum((probe[0].end_offsets(topic) or {}).values())
        except Exception:  # noqa: BLE001 - the broker or topic may not be there yet
            return 0

    def served() -> bool:
        url = f"http://127.0.0.1:{serve_port}/v1/features/{exchange}/BTC-USD?timeframe=1m"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    figures: dict = {"seconds_into_minute_at_launch": round(wall_start % 60, 1)}
    try:
        # Each milestone is recorded when first seen; they are watched together, since they overlap.
        milestones = {
            "all_services_running_s": lambda: len(state().get("children", [])) == 5
            and all(c["state"] == "running" for c in state()["children"]),
            "first_trade_s": lambda: total("trades") > 0,
            "first_1m_candle_s": lambda: total("candles") > 0,
            "first_1m_features_row_served_s": served,
        }
        exchange = "sim"

        def all_seen() -> bool:
            nonlocal exchange
            if state().get("source") == "live":
                exchange = "kraken"
            for name, seen in milestones.items():
                if name not in figures and seen():
                    figures[name] = round(time.monotonic() - started, 1)
            return all(name in figures for name in milestones)

        when(all_seen, timeout=300)
        figures["broker_ready_s"] = logged("local Kafka broker at")
        figures["store_applied_s"] = logged("store finished")
        figures["source"] = state().get("source")

        ingest = next(c for c in state()["children"] if c["name"] == "ingest")
        killed_at = time.monotonic()
        os.kill(ingest["pid"], signal.SIGKILL)
        when(lambda: next(c for c in state()["children"] if c["name"] == "ingest")["restarts"] == 1
             and next(c for c in state()["children"] if c["name"] == "ingest")["state"] == "running")
        figures["restart_after_sigkill_s"] = round(time.monotonic() - killed_at, 1)
        before = total("trades")
        when(lambda: total("trades") > before)
        figures["trades_again_after_sigkill_s"] = round(time.monotonic() - killed_at, 1)

        stop_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        figures["shutdown_s"] = round(time.monotonic() - stop_at, 1)
        figures["exit_status"] = proc.returncode
    finally:
        for p in probe:
            p.close()
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=5)
        from candleflow.broker.local import LocalBroker
        from candleflow.config import LocalBrokerConfig

        LocalBroker(LocalBrokerConfig(port=kafka_port, controller_port=kafka_port + 1,
                                      data_dir=data / "kafka")).stop(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = (
        f"`candleflow up --source live` from cold (default configuration, fresh data dir, local broker; "
        f"source used: {figures['source']}): broker ready after {figures['broker_ready_s']} s, first trade in "
        f"Kafka after {figures['first_trade_s']} s, feature store applied after {figures['store_applied_s']} s, "
        f"all five services running after {figures['all_services_running_s']} s, "
        f"first 1m candle after {figures['first_1m_candle_s']} s and first 1m "
        f"features row served over HTTP after {figures['first_1m_features_row_served_s']} s (launched "
        f"{figures['seconds_into_minute_at_launch']} s into the minute; a 1m candle closes at the next minute "
        f"plus the 2 s grace). A SIGKILLed ingest ran again after {figures['restart_after_sigkill_s']} s and "
        f"trades flowed again after {figures['trades_again_after_sigkill_s']} s; SIGTERM stopped every service "
        f"and the broker in {figures['shutdown_s']} s (exit status {figures['exit_status']})."
    )
    write_results("up_startup", figures, summary)


if __name__ == "__main__":
    main()
