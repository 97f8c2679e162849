"""`candleflow kafka start | stop | status | logs`: the local development broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from candleflow.cli.common import fail, settings

app = typer.Typer(help="Run the local single-node Kafka broker (KRaft) that candleflow downloads and starts itself.",
                  no_args_is_help=True)


def _broker(ctx: typer.Context, port: int | None = None, controller_port: int | None = None,
            data_dir: Path | None = None):
    from candleflow.broker.local import LocalBroker

    local: dict[str, Any] = {}
    if port is not None:
        local["port"] = port
    if controller_port is not None:
        local["controller_port"] = controller_port
    if data_dir is not None:
        local["data_dir"] = data_dir
    cfg = settings(ctx, {"kafka": {"local": local}} if local else None)
    return cfg, LocalBroker(cfg.kafka.local)


_PORT = typer.Option(None, "--port", help="Broker port (kafka.local.port).")
_CPORT = typer.Option(None, "--controller-port", help="KRaft controller port (kafka.local.controller_port).")
_DATA = typer.Option(None, "--data-dir", help="Broker data directory (kafka.local.data_dir).")


@app.command()
def start(ctx: typer.Context, port: Optional[int] = _PORT, controller_port: Optional[int] = _CPORT,
          data_dir: Optional[Path] = _DATA) -> None:
    """Start the broker (downloading it once from Maven Central) and wait until it answers."""
    from candleflow.broker.local import BrokerError, metadata_ready

    cfg, broker = _broker(ctx, port, controller_port, data_dir)
    if not cfg.kafka.uses_local_broker:
        ok = metadata_ready(cfg.kafka.bootstrap(), timeout=5)
        typer.echo(f"kafka.bootstrap_servers is set ({cfg.kafka.bootstrap()}): using that cluster, "
                   f"nothing is started locally ({'reachable' if ok else 'NOT reachable'}).")
        raise typer.Exit(0 if ok else 1)
    began = time.monotonic()
    try:
        started = broker.start(out=lambda msg: typer.echo(msg, err=True))
    except BrokerError as exc:
        fail(str(exc))
    if not started:
        typer.echo(f"Kafka broker already running (pid {broker.status().pid}) at {broker.bootstrap}; nothing to do.")
        return
    typer.echo(f"Kafka broker started in {time.monotonic() - began:.1f}s (pid {broker.status().pid}); "
               f"log: {broker.log_file}")
    typer.echo(f"bootstrap servers: {broker.bootstrap}")


@app.command()
def stop(ctx: typer.Context, data_dir: Optional[Path] = _DATA,
         timeout: float = typer.Option(60.0, help="Seconds to wait for a clean shutdown before killing.")) -> None:
    """Stop the broker cleanly."""
    _, broker = _broker(ctx, data_dir=data_dir)
    stale = broker.status().stale_pid_file
    if broker.stop(timeout=timeout):
        typer.echo("Kafka broker stopped.")
    else:
        typer.echo("Kafka broker is not running" + (" (removed a stale pid file)." if stale else "."))


@app.command()
def status(ctx: typer.Context, data_dir: Optional[Path] = _DATA) -> None:
    """Show whether the broker runs; exit status 1 when it does not."""
    from candleflow.broker.local import metadata_ready

    cfg, broker = _broker(ctx, data_dir=data_dir)
    if not cfg.kafka.uses_local_broker:
        ok = metadata_ready(cfg.kafka.bootstrap(), timeout=5)
        typer.echo(f"external cluster {cfg.kafka.bootstrap()}: {'reachable' if ok else 'NOT reachable'}")
        raise typer.Exit(0 if ok else 1)
    state = broker.status()
    if not state.running:
        note = " (stale pid file)" if state.stale_pid_file else ""
        typer.echo(f"Kafka broker is not running{note}; data dir {state.data_dir}")
        raise typer.Exit(1)
    answering = metadata_ready(state.bootstrap)
    typer.echo(f"Kafka broker running: pid {state.pid}, bootstrap {state.bootstrap}, "
               f"{'answering' if answering else 'NOT answering'}; data dir {state.data_dir}")
    raise typer.Exit(0 if answering else 1)


@app.command()
def logs(ctx: typer.Context, lines: int = typer.Option(50, "-n", "--lines", help="How many lines."),
         follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
         data_dir: Optional[Path] = _DATA) -> None:
    """Print the broker's log."""
    _, broker = _broker(ctx, data_dir=data_dir)
    if not broker.log_file.exists():
        fail(f"no broker log at {broker.log_file} (has the broker been started?)")
    for line in broker.tail_log(lines):
        typer.echo(line)
    if follow:
        with open(broker.log_file, "rb") as fh:
            fh.seek(0, 2)
            try:
                while True:
                    chunk = fh.readline()
                    if chunk:
                        typer.echo(chunk.decode(errors="replace"), nl=False)
                    else:
                        time.sleep(0.3)
            except KeyboardInterrupt:
                pass
