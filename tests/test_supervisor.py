"""The supervisor with real child processes: order, log prefixes, restarts with back-off, ordered stop."""

from __future__ import annotations

import io
import os
import random
import sys
import textwrap
from pathlib import Path

import pytest

from candleflow.supervisor import ChildSpec, RestartPolicy, Supervisor, backoff_delay, start_order
from tests.fixtures.processes import pid_gone, wait_for

QUICK = RestartPolicy(initial_s=0.05, max_s=0.2, jitter=0.5, stable_s=60.0)


def child_script(tmp_path: Path, body: str) -> str:
    path = tmp_path / f"child_{abs(hash(body))}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


# A well-behaved service: says hello, records the order of SIGTERMs, exits cleanly.
POLITE = """
    import os, signal, sys, time
    name, stops = sys.argv[1], sys.argv[2]
    def on_term(*_):
        with open(stops, "a") as fh:
            fh.write(name + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print(f"hello from {name} pid {os.getpid()}", flush=True)
    print(f"warning on stderr from {name}", file=sys.stderr, flush=True)
    while True:
        time.sleep(0.1)
"""


def test_start_order_follows_dependencies_and_rejects_bad_graphs() -> None:
    specs = [ChildSpec("serve", ["x"], after=("sink",)), ChildSpec("ingest", ["x"]),
             ChildSpec("sink", ["x"], after=("features",)), ChildSpec("features", ["x"], after=("ingest",))]
    assert [s.name for s in start_order(specs)] == ["ingest", "features", "sink", "serve"]
    with pytest.raises(ValueError, match="unknown"):
        start_order([ChildSpec("a", ["x"], after=("nope",))])
    with pytest.raises(ValueError, match="cycle"):
        start_order([ChildSpec("a", ["x"], after=("b",)), ChildSpec("b", ["x"], after=("a",))])
    with pytest.raises(ValueError, match="unique"):
        start_order([ChildSpec("a", ["x"]), ChildSpec("a", ["y"])])


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    exact = RestartPolicy(initial_s=0.5, max_s=8.0, jitter=0.0)
    assert [backoff_delay(n, exact, random.Random(1)) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    jittered = RestartPolicy(initial_s=0.5, max_s=8.0, jitter=0.5)
    rng = random.Random(7)
    for failures in range(1, 10):
        base = min(8.0, 0.5 * 2 ** (failures - 1))
        delays = {backoff_delay(failures, jittered, rng) for _ in range(50)}
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(delays) > 1  # jitter: children that died together do not return in lockstep


def test_prefixed_logs_restart_after_kill_and_stop_in_reverse_order(tmp_path: Path) -> None:
    script = child_script(tmp_path, POLITE)
    stops = tmp_path / "stops.txt"
    specs = [ChildSpec(name, [sys.executable, script, name, str(stops)], after=after)
             for name, after in (("candles", ("ingest",)), ("ingest", ()), ("features", ("candles",)))]
    out = io.StringIO()
    changes: list[list[str]] = []
    sup = Supervisor(specs, out=out, policy=QUICK, stop_timeout_s=20,
                     on_change=lambda s: changes.append([c.state for c in s.status()]))
    try:
        sup.start()
        for name in ("ingest", "candles", "features"):
            wait_for(lambda: f"{name:<8} | hello from {name}" in out.getvalue(), what=f"{name}'s first line")
            assert f"{name:<8} | warning on stderr from {name}" in out.getvalue()
        started = [line.split("started ")[1].split()[0] for line in out.getvalue().splitlines() if "| started " in line]
        assert started == ["ingest", "candles", "features"]

        candles = next(c for c in sup.status() if c.name == "candles")
        os.kill(candles.pid, 9)
        wait_for(lambda: (sup.poll() or True) and next(c for c in sup.status() if c.name == "candles").state == "running"
                 and next(c for c in sup.status() if c.name == "candles").restarts == 1, what="candles restarted")
        restarted = next(c for c in sup.status() if c.name == "candles")
        assert restarted.pid != candles.pid and restarted.last_exit == -9
        assert "candles stopped unexpectedly (killed by SIGKILL" in out.getvalue()
        wait_for(lambda: out.getvalue().count("hello from candles") == 2, what="the new candles' first line")
        assert all(c.restarts == 0 for c in sup.status() if c.name != "candles")
    finally:
        pids = [c.pid for c in sup.status() if c.pid]
        sup.stop()
    assert stops.read_text().split() == ["features", "candles", "ingest"]
    assert all(pid_gone(pid) for pid in pids)
    assert [c.state for c in sup.status()] == ["stopped"] * 3
    assert changes[-1] == ["stopped"] * 3 and ["running", "restarting", "running"] in changes


def test_child_that_ignores_sigterm_is_killed_with_its_own_children(tmp_path: Path) -> None:
    script = child_script(tmp_path, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"grandchild {grandchild.pid}", flush=True)
        while True:
            time.sleep(0.1)
    """)
    out = io.StringIO()
    sup = Supervisor([ChildSpec("stubborn", [sys.executable, script])], out=out, policy=QUICK, stop_timeout_s=0.5)
    sup.start()
    wait_for(lambda: "grandchild " in out.getvalue(), what="the grandchild's pid")
    grandchild = int(out.getvalue().split("grandchild ")[1].split()[0])
    child = sup.status()[0].pid
    sup.stop()
    assert "stubborn did not stop in time; killing it" in out.getvalue()
    assert sup.status()[0].last_exit == -9
    wait_for(lambda: pid_gone(child) and pid_gone(grandchild), timeout=10, what="the process group to be gone")


def test_failing_child_backs_off_and_a_usage_error_is_not_retried(tmp_path: Path) -> None:
    flaky = child_script(tmp_path, "import sys; print('boom', flush=True); sys.exit(1)")
    misconfigured = child_script(tmp_path, "import sys; print('bad config', flush=True); sys.exit(2)")
    out = io.StringIO()
    sup = Supervisor([ChildSpec("flaky", [sys.executable, flaky]), ChildSpec("config", [sys.executable, misconfigured])],
                     out=out, policy=QUICK, stop_timeout_s=5, rng=random.Random(3))
    try:
        sup.start()
        wait_for(lambda: (sup.poll() or True) and sup.status()[0].restarts >= 3, what="three restarts of flaky")
        wait_for(lambda: (sup.poll() or True) and sup.status()[1].state == "failed", what="config to be marked failed")
    finally:
        sup.stop()
    config_status = sup.status()[1]
    assert config_status.restarts == 0 and config_status.state == "failed" and config_status.last_exit == 2
    text = out.getvalue()
    assert "config exited with status 2 (invalid configuration or arguments); not restarting it" in text
    assert text.count("flaky  | boom") >= 3  # padded to the longest name, "config"
    assert text.count("flaky stopped unexpectedly (exit status 1") >= 3
    # Consecutive quick failures: each announced delay is within its doubled, capped band.
    delays = [float(line.rsplit(" in ", 1)[1].rstrip("s")) for line in text.splitlines() if "restarting flaky in" in line]
    for failures, delay in enumerate(delays[:3], start=1):
        base = min(QUICK.max_s, QUICK.initial_s * 2 ** (failures - 1))
        assert round(base * (1 - QUICK.jitter), 1) <= delay <= round(base, 1) + 0.05


def test_one_shot_task_runs_before_its_dependents_and_is_not_restarted(tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    task = child_script(tmp_path, f"""
        import pathlib, time
        time.sleep(0.5)
        pathlib.Path({str(marker)!r}).write_text("done")
        print("migrated", flush=True)
    """)
    user = child_script(tmp_path, f"""
        import pathlib, time
        print("marker there" if pathlib.Path({str(marker)!r}).exists() else "marker MISSING", flush=True)
        while True:
            time.sleep(0.1)
    """)
    broken = child_script(tmp_path, "import sys; sys.exit(2)")
    out = io.StringIO()
    sup = Supervisor([ChildSpec("user", [sys.executable, user], after=("migrate",)),
                      ChildSpec("migrate", [sys.executable, task], oneshot=True),
                      ChildSpec("never", [sys.executable, user], after=("broken",)),
                      ChildSpec("broken", [sys.executable, broken], oneshot=True)],
                     out=out, policy=QUICK, stop_timeout_s=10)
    try:
        sup.start()
        assert {c.name: c.state for c in sup.status()}["user"] == "waiting"
        wait_for(lambda: (sup.poll() or True) and "marker" in out.getvalue(), what="user to start")
        wait_for(lambda: (sup.poll() or True) and {c.name: c.state for c in sup.status()}["broken"] == "failed",
                 what="broken to fail")
        states = {c.name: (c.state, c.restarts) for c in sup.status()}
    finally:
        sup.stop()
    text = out.getvalue()
    assert "user    | marker there" in text and text.count("migrate finished") == 1
    assert states == {"migrate": ("done", 0), "user": ("running", 0), "broken": ("failed", 0),
                      "never": ("waiting", 0)}
    assert "(never will not start)" in text and "started never" not in text
