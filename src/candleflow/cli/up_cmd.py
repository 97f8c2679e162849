"""`candleflow up`: the whole pipeline on one machine, supervised, with a periodic health summary.

Order of work: choose the source (live exchanges, or the simulated market when
none can be reached), start the local Kafka broker unless
``kafka.bootstrap_servers`` names a cluster, create the topics, then run
ingest, candles, features, sink and serve as child processes under
:class:`candleflow.supervisor.Supervisor`. When the Feast repository is
missing or out of date, a one-shot ``store apply`` runs beside the first three
and sink and serve start once it has finished. Each service gets a Prometheus
port (its configured ``metrics_port``, else a free one); the ports, pids and
restarts go to ``<data_dir>/up.json`` for ``candleflow status``.

The reachability check of the exchanges lives here, not in ingest: ingest
keeps reconnecting to a live feed with back-off, which is right for a service
whose exchange is down for a while, while the one-command start wants to
decide once, up front, whether live data can come at all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import typer

from candleflow.cli.common import EXIT_USAGE, fail, split_csv
from candleflow.cli.common import settings as load_settings
from candleflow import health
from candleflow.config import Settings, config_path

SERVICES = ("ingest", "candles", "features", "sink", "serve")
STORE_TASK = "store"  # the one-shot `candleflow store apply` before sink and serve
PREFIX_WIDTH = 8  # the longest service name, so the supervisor's lines align with the children's
REACH_TIMEOUT_S = 4.0


def say(message: str) -> None:
    typer.echo(f"{'up':<{PREFIX_WIDTH}} | {message}")


# --- can live data come at all? ---------------------------------------------------------------


def endpoint_problem(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the URL's host and port opens within `timeout`, else why not."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return f"{url!r} names no host"
    try:
        port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    except ValueError:
        return f"{url!r} has an invalid port"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g}s"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return None


def exchange_problems(settings: Settings, timeout: float = REACH_TIMEOUT_S) -> dict[str, str | None]:
    """For each configured exchange, None when its websocket endpoint can be reached, else the reason.

    The checks run in parallel in daemon threads, and the whole check takes at
    most about `timeout` seconds, even when name resolution hangs.
    """
    from candleflow.exchanges import get_adapter

    results: dict[str, str | None] = {}
    threads = []
    for exchange in settings.ingest.exchanges:
        url = exchange.ws_url
        if url is None:
            try:
                url = get_adapter(exchange.name).WS_URL
            except (ValueError, ModuleNotFoundError):
                results[exchange.name] = f"no {exchange.name} adapter in this build"
                continue

        def check(name: str = exchange.name, url: str = url) -> None:
            results[name] = endpoint_problem(url, timeout)

        thread = threading.Thread(target=check, daemon=True)
        thread.start()
        threads.append((exchange.name, thread))
    deadline = time.monotonic() + timeout + 0.5
    for name, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            results[name] = f"no answer within {timeout:g}s"
    return {exchange.name: results.get(exchange.name) for exchange in settings.ingest.exchanges}


def fallback_message(problems: dict[str, str | None]) -> str:
    names = ", ".join(f"{name.capitalize()} ({problem})" for name, problem in problems.items())
    return (f"cannot reach {names}; falling back to the simulated market — "
            f"make run SOURCE=simulate to choose it directly")


def simulated_symbols(settings: Settings) -> list[str]:
    """The configured symbols of every exchange, in order, each once."""
    return list(dict.fromkeys(symbol for exchange in settings.ingest.exchanges for symbol in exchange.symbols))


# --- the children ----------------------------------------------------------------------------


@dataclass
class ServicePlan:
    name: str
    args: list[str]
    env: dict[str, str]
    health_url: str
    metrics_url: str | None


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def serve_url(settings: Settings) -> str:
    """Where this machine reaches the serve app (also when it listens on every interface)."""
    return f"http://{_loopback(settings.serve.host)}:{settings.serve.port}"


def plan_services(settings: Settings, *, simulate: bool, services: list[str],
                  free_port: Callable[[], int]) -> list[ServicePlan]:
    """Command line, environment and health URL of each service to run."""
    metrics_ports = {"ingest": settings.ingest.metrics_port, "candles": settings.candles.metrics_port,
                     "features": settings.features.metrics_port, "sink": settings.sink.metrics_port}
    plans = []
    for name in services:
        env: dict[str, str] = {}
        args = [name]
        if name == "serve":
            url = serve_url(settings)
            plans.append(ServicePlan(name, args, env, f"{url}/healthz", f"{url}/metrics"))
            continue
        port = metrics_ports[name] or free_port()
        env[f"CANDLEFLOW_{name.upper()}__METRICS_PORT"] = str(port)
        if name == "ingest" and simulate:
            args += ["--simulate", "--symbols", ",".join(simulated_symbols(settings))]
        url = f"http://127.0.0.1:{port}/metrics"
        plans.append(ServicePlan(name, args, env, url, url))
    return plans


def _port_in_use(host: str, port: int) -> bool:
    from candleflow.broker.local import port_open

    return port_open(_loopback(host), port)


def _free_port() -> int:
    from candleflow.broker.local import free_port

    return free_port()


def _is_candleflow_process(pid: int) -> bool:
    """A live pid that still runs `python -m candleflow ...` as `up` starts it (pids are reused)."""
    if not health.pid_alive(pid):
        return False
    try:
        return b"\0-m\0candleflow\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # no /proc, or gone meanwhile: leave it alone


def stop_leftovers(state: dict[str, Any], timeout: float = 10.0) -> list[str]:
    """Stop the services of a state file whose `up` died without stopping them (e.g. SIGKILLed).

    Each service was started in a process group of its own, so the group is
    signalled: SIGTERM, then SIGKILL after `timeout`. Returns their names.
    """
    leftovers = [(child["name"], child["pid"]) for child in state.get("children", [])
                 if child.get("pid") and _is_candleflow_process(child["pid"])]
    for _name, pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(health.pid_alive(pid) for _name, pid in leftovers):
        time.sleep(0.1)
    for _name, pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return [name for name, _pid in leftovers]


# --- preparing Kafka and the store ---------------------------------------------------------------


def _store_needs_apply(settings: Settings) -> bool:
    import json

    from candleflow.store import repo

    state = Path(settings.store.repo_dir) / repo.STATE_FILE
    try:
        applied = json.loads(state.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return True
    return applied != repo.fingerprint(settings)


# --- the health summary ----------------------------------------------------------------------------


def _fmt_rate(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}/s"


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


class HealthSummary:
    """A few lines every tick: what runs, restarts, throughput and lags, the last candle per market."""

    def __init__(self, settings: Settings, supervisor: Any, plans: list[ServicePlan]) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.plans = {plan.name: plan for plan in plans}
        self.meter = health.FlowMeter(settings)
        self.tail = health.CandleTail(settings.kafka, settings.topics.candles.name).start()

    def __call__(self) -> None:
        lines = [self._services_line()]
        try:
            lines.append(self._flow_line(self.meter.read()))
        except Exception as exc:  # noqa: BLE001 - the broker may be away for a moment
            lines.append(f"kafka: cannot read offsets ({exc})")
        lines.append(self._candles_line())
        for line in lines:
            self.supervisor.say(line)

    def _services_line(self) -> str:
        parts, restarts = [], []
        for child in self.supervisor.status():
            mark = {"running": "up", "restarting": "RESTARTING", "failed": "FAILED", "stopped": "down",
                    "waiting": "waiting", "done": "done"}[child.state]
            if child.name == STORE_TASK and child.state == "running":
                mark = "applying"
            parts.append(f"{child.name} {mark}")
            if child.restarts:
                restarts.append(f"{child.name} {child.restarts}")
        line = "services: " + ", ".join(parts)
        line += "; restarts: " + (", ".join(restarts) if restarts else "none")
        if "serve" in self.plans:
            line += f"; dashboard {serve_url(self.settings)}/"
        return line

    def _flow_line(self, flow: health.Flow) -> str:
        planned = [service for name, service in flow.services.items() if name in self.plans]
        # What each service writes, and for the sink what it stores.
        parts = [f"{service.output_topic or 'stored'} {_fmt_rate(service.throughput_per_s)}" for service in planned]
        lags = ", ".join(f"{service.name} {'?' if service.lag is None else service.lag}"
                         for service in planned if service.group is not None)
        dead = flow.topics[self.settings.topics.dlq.name].end_offset
        line = "throughput: " + (", ".join(parts) if flow.measured else "measuring")
        return f"{line}; lag: {lags or 'n/a'}; dead letters: {'?' if dead is None else dead}"

    def _candles_line(self) -> str:
        now_ms = time.time() * 1000
        markets = self.tail.per_market()
        if not markets:
            return "last candles: none yet"
        parts = []
        for c in markets[:8]:
            at = datetime.fromtimestamp(c.end_ms / 1000, timezone.utc).strftime("%H:%M:%S")
            parts.append(f"{c.exchange}:{c.symbol} {c.timeframe} close {c.close:g} at {at} UTC "
                         f"({_fmt_age(health.age_s(c.end_ms, now_ms))}){' gap' if c.gap_fill else ''}")
        more = f" (+{len(markets) - 8} more)" if len(markets) > 8 else ""
        return "last candles: " + "; ".join(parts) + more

    def close(self) -> None:
        self.tail.stop()
        self.meter.close()


# --- the command ----------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        ctx: typer.Context,
        source: str = typer.Option("live", "--source", help="live: the configured exchanges (falls back to the "
                                                             "simulated market when none can be reached); simulate."),
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Also run the HTTP API and dashboard."),
        skip: Optional[str] = typer.Option(None, "--skip", metavar="LIST",
                                           help=f"Services not to run, e.g. sink,serve (of {', '.join(SERVICES)})."),
        summary_interval: float = typer.Option(15.0, "--summary-interval", min=1.0, metavar="SECONDS",
                                               help="How often to print the health summary."),
        stop_timeout: float = typer.Option(15.0, "--stop-timeout", min=0.0, metavar="SECONDS",
                                           help="Grace period per service on shutdown before it is killed."),
        reach_timeout: float = typer.Option(REACH_TIMEOUT_S, "--reach-timeout", min=0.1, metavar="SECONDS",
                                            help="How long to try reaching the exchanges (source live)."),
    ) -> None:
        """Run the whole pipeline: broker, topics, ingest, candles, features, sink and serve."""
        if source not in ("live", "simulate"):
            fail(f"--source must be live or simulate, got {source!r}", EXIT_USAGE)
        skipped = set(split_csv(skip) or [])
        unknown = skipped - set(SERVICES)
        if unknown:
            fail(f"--skip: unknown service(s) {', '.join(sorted(unknown))}; known: {', '.join(SERVICES)}", EXIT_USAGE)
        if not serve:
            skipped.add("serve")
        services = [name for name in SERVICES if name not in skipped]
        settings = load_settings(ctx)
        previous = health.read_state(health.state_path(settings))
        if previous and health.pid_alive(previous.get("pid")):
            fail(f"`candleflow up` already runs with this data_dir (pid {previous['pid']}, "
                 f"{health.state_path(settings)}); see `candleflow status`")
        if previous:
            stopped = stop_leftovers(previous)
            if stopped:
                say(f"stopped {', '.join(stopped)}, left running by a `candleflow up` (pid {previous.get('pid')}) "
                    f"that did not exit cleanly")
        root = ctx.find_root()
        config_file = config_path((root.obj or {}).get("config_file"))
        base_argv = [sys.executable, "-m", "candleflow"]
        if config_file is not None:
            base_argv += ["--config", str(Path(config_file).resolve())]

        # 1. The source.
        simulate = source == "simulate"
        if not simulate and "ingest" in services:
            names = ", ".join(e.name for e in settings.ingest.exchanges)
            say(f"checking that {names} can be reached ...")
            problems = exchange_problems(settings, reach_timeout)
            if all(problems.values()):
                say(fallback_message(problems))
                simulate = True
            else:
                for name, problem in problems.items():
                    if problem:
                        say(f"warning: cannot reach {name} ({problem}); ingest keeps retrying it")

        # 2. Kafka.
        broker = None
        if settings.kafka.uses_local_broker:
            from candleflow.broker.local import BrokerError, LocalBroker

            local = LocalBroker(settings.kafka.local)
            try:
                if local.start(out=say):
                    broker = local  # ours: stopped again on the way out
                    say(f"started the local Kafka broker at {local.bootstrap}")
                else:
                    say(f"using the running local Kafka broker at {local.bootstrap}")
            except BrokerError as exc:
                fail(str(exc))
        else:
            from candleflow.broker.local import metadata_ready

            if not metadata_ready(settings.kafka.bootstrap(), timeout=10):
                fail(f"cannot reach the Kafka cluster at {settings.kafka.bootstrap()} (kafka.bootstrap_servers)")
            say(f"using the Kafka cluster at {settings.kafka.bootstrap()}")
        try:
            _run(settings, services, simulate, base_argv, summary_interval, stop_timeout)
        finally:
            if broker is not None:
                say("stopping the local Kafka broker")
                broker.stop()


def _run(settings: Settings, services: list[str], simulate: bool, base_argv: list[str], summary_interval: float,
         stop_timeout: float) -> None:
    """Topics, store, then the supervised services until SIGINT/SIGTERM."""
    from confluent_kafka import KafkaException

    from candleflow.broker.topics import create_topics
    from candleflow.supervisor import ChildSpec, RestartPolicy, Supervisor

    # 3. Topics.
    topics = list(settings.topics.all())
    if settings.features.partial_updates:
        topics.append(settings.topics.features_partial)
    try:
        created = [name for name, outcome in create_topics(settings.kafka, topics).items() if outcome == "created"]
    except KafkaException as exc:
        fail(f"cannot create topics on {settings.kafka.bootstrap()}: {exc}")
    say(f"topics ready ({'created ' + ', '.join(created) if created else 'all existed'})")

    # 4. The services. The feature store definitions are applied by a one-shot task that
    # runs beside ingest, candles and features (it takes a while), and before sink and
    # serve, which would otherwise both try to apply them at once.
    apply_store = settings.store.online.type != "hopsworks" and bool({"sink", "serve"} & set(services)) \
        and _store_needs_apply(settings)
    if "serve" in services and _port_in_use(settings.serve.host, settings.serve.port):
        fail(f"port {settings.serve.port} is already in use (another `candleflow serve`?); "
             f"choose another with serve.port or CANDLEFLOW_SERVE__PORT, or run with --no-serve")
    plans = plan_services(settings, simulate=simulate, services=services, free_port=_free_port)
    env_all: dict[str, str] = {}
    if settings.log.format == "auto" and sys.stdout.isatty():
        env_all["CANDLEFLOW_LOG__FORMAT"] = "console"  # the children write to a pipe, people read the terminal
    specs = []
    for i, plan in enumerate(plans):
        after = (plans[i - 1].name,) if i else ()
        if apply_store and plan.name in ("sink", "serve"):
            after += (STORE_TASK,)
        specs.append(ChildSpec(name=plan.name, argv=[*base_argv, *plan.args], env={**env_all, **plan.env},
                               after=after))
    if apply_store:  # first: it is the slowest to finish
        specs.insert(0, ChildSpec(name=STORE_TASK, argv=[*base_argv, "store", "apply"], oneshot=True))

    state_file = health.state_path(settings)
    started_at = time.time()

    def record(supervisor: Any) -> None:
        children = []
        for child in supervisor.status():
            plan = next((p for p in plans if p.name == child.name), None)
            if plan is None:  # a one-shot task, not a service
                continue
            children.append({"name": child.name, "state": child.state, "pid": child.pid,
                             "restarts": child.restarts, "last_exit": child.last_exit,
                             "health_url": plan.health_url, "metrics_url": plan.metrics_url})
        health.write_state(state_file, {
            "pid": os.getpid(), "started_at": started_at, "updated_at": time.time(),
            "source": "simulate" if simulate else "live", "bootstrap": settings.kafka.bootstrap(),
            "children": children,
        })

    supervisor = Supervisor(specs, policy=RestartPolicy(), stop_timeout_s=stop_timeout, on_change=record,
                            name="up", width=PREFIX_WIDTH)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            supervisor.hurry()  # a second Ctrl-C: do not wait for clean exits
            return
        supervisor.say(f"{signal.Signals(signum).name} received: stopping (again to kill at once)")
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    summary = None
    try:
        supervisor.start()
        if "serve" in services:
            supervisor.say(f"dashboard and API (once serve is up): {serve_url(settings)}/")
        summary = HealthSummary(settings, supervisor, plans)
        supervisor.run(stop, on_tick=summary, tick_s=summary_interval)
    finally:
        supervisor.stop()
        if summary is not None:
            summary.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state_file.unlink(missing_ok=True)
        supervisor.say("all services stopped")
