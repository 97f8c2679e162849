"""`candleflow status`: the services that `candleflow up` runs, topic offsets, consumer lags, throughput.

Services come from the state file `up` keeps under ``data_dir`` (pids,
restarts, health URLs); each is probed over HTTP. Topics and lags come from
Kafka. Throughput is the growth of each service's output topic (the sink's:
of its committed offsets) between two samples ``--interval`` seconds apart.
Exit status 0 when `up` runs and every service answers, else 1.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import typer

from candleflow import health
from candleflow.cli.common import settings as load_settings
from candleflow.config import Settings


def collect(settings: Settings, meter: health.FlowMeter) -> dict[str, Any]:
    """One status report as plain data; rates are measured since the meter's previous sample."""
    report: dict[str, Any] = {"up": None, "services": [], "topics": [], "groups": [], "kafka_error": None}
    flow = None
    try:
        flow = meter.read()
    except Exception as exc:  # noqa: BLE001 - shown in the report
        report["kafka_error"] = f"cannot read offsets from {settings.kafka.bootstrap()}: {exc}"

    path = health.state_path(settings)
    state = health.read_state(path)
    if state is None:
        report["up"] = {"running": False, "detail": f"`candleflow up` is not running (no {path})"}
    else:
        running = health.pid_alive(state.get("pid"))
        report["up"] = {"running": running, "pid": state.get("pid"), "source": state.get("source"),
                        "bootstrap": state.get("bootstrap"), "started_at": state.get("started_at"),
                        "detail": None if running else f"`candleflow up` (pid {state.get('pid')}) is not running; "
                                                       f"{path} is left over from it"}
        for child in state.get("children", []):
            name = child.get("name")
            alive = running and health.pid_alive(child.get("pid"))
            answering = alive and health.http_ok(child.get("health_url") or "", timeout=1.0)
            status = "up" if answering else ("starting" if alive else (child.get("state") if running else "down"))
            service = flow.services.get(name) if flow is not None else None
            report["services"].append({
                "name": name, "status": status, "pid": child.get("pid") if alive else None,
                "restarts": child.get("restarts", 0), "endpoint": child.get("health_url"),
                "throughput_per_s": service.throughput_per_s if service is not None else None})
    if flow is not None:
        for topic in flow.topics.values():
            report["topics"].append({"topic": topic.name, "partitions": topic.partitions,
                                     "end_offset": topic.end_offset, "rate_per_s": topic.per_s})
        for service in flow.services.values():
            if service.group is not None:
                report["groups"].append({"service": service.name, "group": service.group,
                                         "topic": service.input_topic, "committed": service.committed,
                                         "lag": service.lag})
    return report


def healthy(report: dict[str, Any]) -> bool:
    up = report["up"] or {}
    return bool(up.get("running")) and all(s["status"] == "up" for s in report["services"]) \
        and report["kafka_error"] is None


def render(report: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:,}"

    def per_s(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}/s"

    parts: list[Any] = []
    up = report["up"] or {}
    if up.get("detail"):
        parts.append(Text(up["detail"], style="yellow"))
    else:
        parts.append(Text(f"candleflow up: pid {up.get('pid')}, source {up.get('source')}, "
                          f"kafka {up.get('bootstrap')}"))
    if report["services"]:
        services = Table(title="services", title_justify="left")
        for column in ("service", "status", "pid", "restarts", "throughput", "endpoint"):
            services.add_column(column, justify="right" if column in ("pid", "restarts", "throughput") else "left")
        colours = {"up": "green", "starting": "yellow"}
        for s in report["services"]:
            endpoint = urlsplit(s["endpoint"]).netloc if s["endpoint"] else "-"
            services.add_row(s["name"], Text(s["status"], style=colours.get(s["status"], "red")),
                             str(s["pid"] or "-"), str(s["restarts"]), per_s(s["throughput_per_s"]), endpoint)
        parts.append(services)
    if report["kafka_error"]:
        parts.append(Text(report["kafka_error"], style="red"))
    else:
        topics = Table(title="topics", title_justify="left")
        for column in ("topic", "partitions", "end offset", "rate"):
            topics.add_column(column, justify="left" if column == "topic" else "right")
        for t in report["topics"]:
            topics.add_row(t["topic"], num(t["partitions"]) if t["partitions"] is not None else "missing",
                           num(t["end_offset"]), per_s(t["rate_per_s"]))
        groups = Table(title="consumer groups", title_justify="left")
        for column in ("service", "group", "topic", "committed", "lag"):
            groups.add_column(column, justify="right" if column in ("committed", "lag") else "left")
        for g in report["groups"]:
            groups.add_row(g["service"], g["group"], g["topic"], num(g["committed"]), num(g["lag"]))
        parts += [topics, groups]
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        ctx: typer.Context,
        watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
        interval: float = typer.Option(2.0, "--interval", min=0.2, metavar="SECONDS",
                                       help="Time between the two samples that give the throughput "
                                            "(with --watch: between refreshes)."),
        as_json: bool = typer.Option(False, "--json", help="Print one report as JSON."),
    ) -> None:
        """Show the services of `candleflow up`, topic offsets, consumer-group lags and throughput."""
        from rich.console import Console
        from rich.live import Live

        settings = load_settings(ctx)
        topics = settings.topics
        meter = health.FlowMeter(settings, topics=[topics.trades.name, topics.candles.name, topics.features.name,
                                                   topics.candles_partial.name, topics.dlq.name])
        try:
            collect(settings, meter)  # the first sample, for the rates of the second
            time.sleep(interval)
            report = collect(settings, meter)
            if as_json:
                typer.echo(json.dumps(report, indent=1))
            elif not watch:
                Console().print(render(report))
            else:
                with Live(render(report), auto_refresh=False) as live:
                    try:
                        while True:
                            time.sleep(interval)
                            report = collect(settings, meter)
                            live.update(render(report), refresh=True)
                    except KeyboardInterrupt:
                        pass
        finally:
            meter.close()
        raise typer.Exit(0 if healthy(report) else 1)
