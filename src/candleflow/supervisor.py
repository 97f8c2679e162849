"""Run a set of child processes as one unit: ordered start, restarts with back-off, ordered stop.

Used by ``candleflow up`` to run the pipeline's services on one machine, but it
knows nothing about candleflow: a child is a name, a command line, extra
environment variables and the names of the children it must start after.

- **Start** in dependency order: a child starts once every child it names in
  ``after`` has started or, for a one-shot task (``oneshot``, e.g. a schema
  migration), has finished with status 0. Each child runs in its own session
  (process group), so a Ctrl-C in the terminal reaches only the supervisor,
  which then stops the children in the right order.
- **Logs**: the child's stdout and stderr are merged and every line is
  written to the supervisor's output prefixed with the child's name.
- **Restart** a child that exits while the supervisor runs, after an
  exponential back-off with jitter (:func:`backoff_delay`). A run longer than
  ``RestartPolicy.stable_s`` resets the back-off. Exit status 2 means invalid
  configuration or arguments, which a restart cannot fix: such a child is
  marked failed and left alone (and children waiting for it never start).
  A one-shot task that finishes with status 0 is done, not restarted.
- **Stop** in reverse start order: SIGTERM, then SIGKILL to the child's process
  group after ``stop_timeout_s``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

EXIT_USAGE = 2  # candleflow's status for invalid configuration or arguments: restarting cannot help

_COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93")  # ANSI foreground colours for the name prefixes


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    after: tuple[str, ...] = ()  # children that start (one-shot tasks: finish) before this one
    oneshot: bool = False  # a task that runs to completion, not a service


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 1.0  # delay before the first restart
    max_s: float = 30.0  # the delay doubles per consecutive failure up to this
    jitter: float = 0.5  # the delay is scaled by a random factor in [1 - jitter, 1]
    stable_s: float = 30.0  # a run at least this long resets the back-off


def backoff_delay(failures: int, policy: RestartPolicy, rng: random.Random) -> float:
    """Seconds to wait before restart number `failures` (1, 2, ...) of a row of quick failures.

    Jitter keeps several children that died together (e.g. when the broker
    went away) from hammering it again in lockstep.
    """
    base = min(policy.max_s, policy.initial_s * 2 ** max(0, failures - 1))
    return base * rng.uniform(1.0 - policy.jitter, 1.0)


def start_order(specs: Sequence[ChildSpec]) -> list[ChildSpec]:
    """The specs sorted so that every child comes after those it names in `after` (stable otherwise)."""
    by_name = {spec.name: spec for spec in specs}
    if len(by_name) != len(specs):
        raise ValueError("child names must be unique")
    for spec in specs:
        unknown = [name for name in spec.after if name not in by_name]
        if unknown:
            raise ValueError(f"{spec.name} starts after unknown child(ren): {', '.join(unknown)}")
    ordered: list[ChildSpec] = []
    placed: set[str] = set()
    pending = list(specs)
    while pending:
        ready = [spec for spec in pending if set(spec.after) <= placed]
        if not ready:
            raise ValueError(f"dependency cycle among: {', '.join(spec.name for spec in pending)}")
        for spec in ready:
            ordered.append(spec)
            placed.add(spec.name)
        pending = [spec for spec in pending if spec.name not in placed]
    return ordered


@dataclass
class ChildStatus:
    name: str
    state: str  # waiting | running | restarting | done | failed | stopped
    pid: int | None
    restarts: int
    uptime_s: float | None
    last_exit: int | None  # exit status of the previous run; negative: killed by that signal


class _Child:
    def __init__(self, spec: ChildSpec, colour: str | None) -> None:
        self.spec = spec
        self.colour = colour
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.failures = 0  # consecutive quick exits
        self.restart_at: float | None = None
        self.last_exit: int | None = None
        self.failed = False
        self.done = False  # a one-shot task that finished with status 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Supervisor:
    """Children started by :meth:`start`, kept alive by :meth:`poll` (or :meth:`run`), ended by :meth:`stop`."""

    def __init__(self, specs: Sequence[ChildSpec], *, out: IO[str] | None = None,
                 policy: RestartPolicy = RestartPolicy(), stop_timeout_s: float = 15.0,
                 on_change: Callable[[Supervisor], None] | None = None, rng: random.Random | None = None,
                 colour: bool | None = None, name: str = "up", width: int = 0) -> None:
        self.out = out or sys.stdout
        self.policy = policy
        self.stop_timeout_s = stop_timeout_s
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.name = name
        if colour is None:
            colour = hasattr(self.out, "isatty") and self.out.isatty()
        ordered = start_order(specs)
        self.children = [_Child(spec, _COLOURS[i % len(_COLOURS)] if colour else None)
                         for i, spec in enumerate(ordered)]
        self.width = max([width, len(name), *(len(spec.name) for spec in ordered)])  # of the name prefixes
        self._lock = threading.Lock()
        self._stopping = False
        self._hurry = threading.Event()  # a second stop request: skip the grace period

    # -- output --------------------------------------------------------------------

    def say(self, message: str) -> None:
        """One line of the supervisor's own, prefixed like the children's."""
        self._write(self.name, None, message)

    def _write(self, name: str, colour: str | None, line: str) -> None:
        prefix = f"{name:<{self.width}} | "
        if colour:
            prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
        with self._lock:
            try:
                self.out.write(prefix + line + "\n")
                self.out.flush()
            except (OSError, ValueError):  # output closed (e.g. a broken pipe): keep supervising
                pass

    def _pump(self, child: _Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._write(child.spec.name, child.colour, raw.decode("utf-8", "replace").rstrip("\r\n"))
        stream.close()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start every child whose dependencies allow it; :meth:`poll` starts the rest when they do."""
        self._start_ready()
        self._changed()

    def _start_ready(self) -> bool:
        by_name = {child.spec.name: child for child in self.children}

        def satisfied(name: str) -> bool:
            dep = by_name[name]
            return dep.done if dep.spec.oneshot else dep.proc is not None or dep.restarts > 0

        started = False
        for child in self.children:  # in dependency order, so a chain starts in one pass
            if child.proc is None and child.restart_at is None and not child.failed and not child.done \
                    and child.restarts == 0 and all(satisfied(name) for name in child.spec.after):
                self._spawn(child)
                started = True
        return started

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.spec.env}
        try:
            child.proc = subprocess.Popen(
                list(child.spec.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # e.g. the program does not exist: treat like a failed run
            child.proc = None
            child.last_exit = 127
            self.say(f"cannot start {child.spec.name}: {exc}")
            self._schedule_restart(child, ran_s=0.0)
            return
        child.started_at = time.monotonic()
        child.restart_at = None
        assert child.proc.stdout is not None
        child.reader = threading.Thread(target=self._pump, args=(child, child.proc.stdout),
                                        name=f"log-{child.spec.name}", daemon=True)
        child.reader.start()
        self.say(f"started {child.spec.name} (pid {child.proc.pid})")

    def _schedule_restart(self, child: _Child, ran_s: float) -> None:
        if ran_s >= self.policy.stable_s:
            child.failures = 0
        child.failures += 1
        delay = backoff_delay(child.failures, self.policy, self.rng)
        child.restart_at = time.monotonic() + delay
        self.say(f"restarting {child.spec.name} in {delay:.1f}s")

    def poll(self) -> None:
        """Notice exited children and restart those whose back-off has passed."""
        if self._stopping:
            return
        changed = False
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.restart_at is None and not child.failed and not child.done:
                status = child.proc.poll()
                if status is not None:
                    changed = True
                    child.last_exit = status
                    ran_s = now - child.started_at
                    if child.reader is not None:
                        child.reader.join(timeout=1.0)  # its last lines first
                    if status == 0 and child.spec.oneshot:
                        child.done = True
                        self.say(f"{child.spec.name} finished")
                        continue
                    if status == EXIT_USAGE:
                        child.failed = True
                        waiting = [c.spec.name for c in self.children if child.spec.name in c.spec.after]
                        self.say(f"{child.spec.name} exited with status {EXIT_USAGE} (invalid configuration "
                                 f"or arguments); not restarting it"
                                 + (f" ({', '.join(waiting)} will not start)" if waiting else ""))
                        continue
                    self.say(f"{child.spec.name} stopped unexpectedly ({describe_exit(status)}, "
                             f"after {ran_s:.1f}s)")
                    self._schedule_restart(child, ran_s)
            if child.restart_at is not None and now >= child.restart_at and not child.failed:
                child.restarts += 1
                self._spawn(child)
                changed = True
        if self._start_ready():
            changed = True
        if changed:
            self._changed()

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None, tick_s: float = 10.0,
            poll_s: float = 0.2) -> None:
        """Supervise until `stop` is set; call `on_tick` every `tick_s` seconds (e.g. a health summary)."""
        next_tick = time.monotonic() + tick_s
        while not stop.is_set():
            self.poll()
            if on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_s
                try:
                    on_tick()
                except Exception as exc:  # noqa: BLE001 - a summary must never take the pipeline down
                    self.say(f"health summary failed: {exc!r}")
            stop.wait(poll_s)

    def hurry(self) -> None:
        """Make a running or coming :meth:`stop` kill at once instead of waiting for clean exits."""
        self._hurry.set()

    def stop(self) -> None:
        """Stop every child in reverse start order: SIGTERM, then SIGKILL after the timeout."""
        self._stopping = True
        for child in reversed(self.children):
            child.restart_at = None
            proc = child.proc
            if proc is None or proc.poll() is not None:
                continue
            self.say(f"stopping {child.spec.name} (pid {proc.pid})")
            _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            while proc.poll() is None and time.monotonic() < deadline and not self._hurry.is_set():
                time.sleep(0.05)
            if proc.poll() is None:
                self.say(f"{child.spec.name} did not stop in time; killing it")
            # The whole group, also when the child itself exited: it may have left children behind.
            _signal_group(proc, signal.SIGKILL)
            status = proc.wait()
            child.last_exit = status
            if child.reader is not None:
                child.reader.join(timeout=2.0)
            self.say(f"{child.spec.name} stopped ({describe_exit(status)})")
        self._changed()

    # -- state ---------------------------------------------------------------------

    def status(self) -> list[ChildStatus]:
        now = time.monotonic()
        out = []
        for child in self.children:
            running = child.running
            if running:
                state = "running"
            elif child.failed:
                state = "failed"
            elif child.done:
                state = "done"
            elif child.restart_at is not None:
                state = "restarting"
            elif child.proc is None and not self._stopping:
                state = "waiting"
            else:
                state = "stopped"
            out.append(ChildStatus(
                name=child.spec.name, state=state, pid=child.proc.pid if running and child.proc else None,
                restarts=child.restarts, uptime_s=now - child.started_at if running else None,
                last_exit=child.last_exit))
        return out

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception as exc:  # noqa: BLE001 - reporting must not stop supervision
                self.say(f"state update failed: {exc!r}")


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
