"""`candleflow status` on the real broker: services from up's state file, topic offsets, lags, throughput."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from candleflow.cli import app
from candleflow.health import state_path, write_state
from tests.fixtures.kafka import commit_offsets, produce

runner = CliRunner()


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"# TYPE candleflow_up gauge\ncandleflow_up 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def status(config: Path, *args: str):
    return runner.invoke(app, ["--config", str(config), "status", "--interval", "1", *args])


def test_offsets_and_lags_without_a_running_up(settings_factory, kafka_config, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = settings_factory(partitions=2, candles={"consumer_group": f"st-candles-{run_id}"},
                                features={"consumer_group": f"st-features-{run_id}"},
                                sink={"consumer_group": f"st-sink-{run_id}"})
    trades = settings.topics.trades.name
    produce(kafka_config, trades, [(b"k", b"{}")] * 7, partition=0)
    produce(kafka_config, trades, [(b"k", b"{}")] * 5, partition=1)
    commit_offsets(kafka_config, f"st-candles-{run_id}", trades, {0: 4, 1: 5})

    result = status(tmp_path / "candleflow.yaml", "--json")
    assert result.exit_code == 1, result.output  # `up` does not run here
    report = json.loads(result.output)
    assert report["up"]["running"] is False and "is not running" in report["up"]["detail"]
    assert report["services"] == [] and report["kafka_error"] is None
    topics = {t["topic"]: t for t in report["topics"]}
    assert topics[trades]["end_offset"] == 12 and topics[trades]["partitions"] == 2
    assert topics[settings.topics.features.name]["end_offset"] == 0
    groups = {g["service"]: g for g in report["groups"]}
    assert groups["candles"] == {"service": "candles", "group": f"st-candles-{run_id}", "topic": trades,
                                 "committed": 9, "lag": 3}
    assert groups["features"]["committed"] is None and groups["features"]["lag"] is None  # never committed

    table = status(tmp_path / "candleflow.yaml")
    assert table.exit_code == 1
    assert "`candleflow up` is not running" in table.output
    for text in ("topics", trades, "consumer groups", f"st-candles-{run_id}"):
        assert text in table.output


def test_services_from_the_state_file_and_throughput(settings_factory, kafka_config, tmp_path: Path,
                                                     answering_url: str) -> None:
    settings = settings_factory(partitions=1, candles={"consumer_group": f"st-candles-{uuid.uuid4().hex[:8]}"})
    config = tmp_path / "candleflow.yaml"
    me = os.getpid()  # stands in for `up` and its living children
    state = {"pid": me, "started_at": 0, "source": "simulate", "bootstrap": kafka_config.bootstrap_servers,
             "children": [
                 {"name": "ingest", "state": "running", "pid": me, "restarts": 2,
                  "health_url": f"{answering_url}/metrics", "metrics_url": f"{answering_url}/metrics"},
                 {"name": "serve", "state": "running", "pid": me, "restarts": 0,
                  "health_url": f"{answering_url}/healthz", "metrics_url": f"{answering_url}/metrics"},
             ]}
    write_state(state_path(settings), state)

    # Trades arrive while status samples twice: the ingest throughput is their rate.
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            produce(kafka_config, settings.topics.trades.name, [(b"k", b"{}")] * 20)
            stop.wait(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        result = status(config, "--json")
    finally:
        stop.set()
        feeder.join()
    assert result.exit_code == 0, result.output  # every recorded service answers
    report = json.loads(result.output)
    assert report["up"] == {"running": True, "pid": me, "source": "simulate",
                            "bootstrap": kafka_config.bootstrap_servers, "started_at": 0, "detail": None}
    ingest, serve = report["services"]
    assert (ingest["name"], ingest["status"], ingest["restarts"]) == ("ingest", "up", 2)
    assert ingest["throughput_per_s"] > 0
    assert (serve["name"], serve["status"], serve["throughput_per_s"]) == ("serve", "up", None)

    # A service whose process is gone is down (with up's own view of it), and the exit status says so.
    state["children"][1].update(pid=dead_pid(), state="restarting")
    write_state(state_path(settings), state)
    result = status(config, "--json")
    assert result.exit_code == 1
    assert [s["status"] for s in json.loads(result.output)["services"]] == ["up", "restarting"]

    # `up` itself gone: a leftover state file, every service down.
    state["pid"] = dead_pid()
    write_state(state_path(settings), state)
    result = status(config)
    assert result.exit_code == 1
    assert "is not running" in result.output and "left over" in result.output
    assert "down" in result.output
