"""`candleflow kafka start | stop | status | logs` against a real broker process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from candleflow.broker import local
from candleflow.broker.local import LocalBroker, metadata_ready
from candleflow.config import LocalBrokerConfig
from tests.fixtures.kafka import SessionBroker


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "candleflow", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def broker_env(tmp_path: Path) -> dict[str, str]:
    from candleflow.broker.local import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLEFLOW_")}
    env.update({
        "CANDLEFLOW_KAFKA__LOCAL__PORT": str(free_port()),
        "CANDLEFLOW_KAFKA__LOCAL__CONTROLLER_PORT": str(free_port()),
        "CANDLEFLOW_KAFKA__LOCAL__DATA_DIR": str(tmp_path / "kafka"),
    })
    return env


def test_start_status_start_stop_lifecycle(broker_env: dict[str, str], tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{broker_env['CANDLEFLOW_KAFKA__LOCAL__PORT']}"
    try:
        started = _cli(broker_env, "kafka", "start")
        assert started.returncode == 0, started.stderr
        assert f"bootstrap servers: {bootstrap}" in started.stdout
        assert metadata_ready(bootstrap)

        status = _cli(broker_env, "kafka", "status")
        assert status.returncode == 0 and "running" in status.stdout and "answering" in status.stdout
        pid = int((tmp_path / "kafka" / "broker.pid").read_text())

        again = _cli(broker_env, "kafka", "start")
        assert again.returncode == 0 and "already running" in again.stdout
        assert int((tmp_path / "kafka" / "broker.pid").read_text()) == pid  # no second broker

        logs = _cli(broker_env, "kafka", "logs", "-n", "500")
        assert logs.returncode == 0 and "Kafka Server started" in logs.stdout

        stopped = _cli(broker_env, "kafka", "stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert not metadata_ready(bootstrap, timeout=1)

        down = _cli(broker_env, "kafka", "status")
        assert down.returncode == 1 and "not running" in down.stdout
        assert _cli(broker_env, "kafka", "stop").stdout.strip() == "Kafka broker is not running."

        # The data survives a restart (storage is formatted only once).
        assert _cli(broker_env, "kafka", "start").returncode == 0
        assert metadata_ready(bootstrap)
    finally:
        _cli(broker_env, "kafka", "stop")


def test_stale_pid_file_is_handled(broker_env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    data.mkdir()
    (data / "broker.pid").write_text("999999\n")  # no such process
    status = _cli(broker_env, "kafka", "status")
    assert status.returncode == 1 and "stale pid file" in status.stdout
    stop = _cli(broker_env, "kafka", "stop")
    assert "removed a stale pid file" in stop.stdout
    assert not (data / "broker.pid").exists()


def test_pid_of_an_unrelated_process_is_not_mistaken_for_the_broker(tmp_path: Path) -> None:
    broker = LocalBroker(LocalBrokerConfig(data_dir=tmp_path))
    (tmp_path / "broker.pid").write_text(f"{os.getpid()}\n")  # alive, but not kafka.Kafka
    state = broker.status()
    assert not state.running and state.stale_pid_file


def test_without_java_the_message_says_what_to_do(broker_env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    env = {**broker_env, "PATH": str(bin_dir)}  # no java, no mvn
    result = _cli(env, "kafka", "start")
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "`java` was not found" in message
    assert "CANDLEFLOW_KAFKA__BOOTSTRAP_SERVERS" in message


def test_port_in_use_is_a_clear_error(kafka_broker: SessionBroker, broker_env: dict[str, str]) -> None:
    taken = kafka_broker.bootstrap.rsplit(":", 1)[1]
    result = _cli({**broker_env, "CANDLEFLOW_KAFKA__LOCAL__PORT": taken}, "kafka", "start")
    assert result.returncode == 1
    assert "already in use" in result.stderr


def test_external_cluster_starts_nothing(kafka_broker: SessionBroker, broker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**broker_env, "CANDLEFLOW_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap}
    result = _cli(env, "kafka", "start")
    assert result.returncode == 0
    assert "nothing is started locally (reachable)" in result.stdout
    assert not (tmp_path / "kafka").exists()
    assert _cli(env, "kafka", "status").returncode == 0


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8... encodes to "-..." in URL-safe base64: StorageTool would take it for an option.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(local.uuid, "uuid4", lambda: next(draws))
    cluster_id = local._kafka_cluster_id()
    assert cluster_id == "AQEBAQEBAQEBAQEBAQEBAQ" and len(cluster_id) == 22
