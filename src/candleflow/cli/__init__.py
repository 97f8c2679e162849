"""The `candleflow` command: one console script, one subcommand per service or tool."""

from __future__ import annotations

import importlib
from typing import Optional

import typer

from candleflow import __version__
from candleflow.cli import config_cmd, kafka_cmd, topics_cmd

app = typer.Typer(
    name="candleflow",
    help="Real-time crypto feature pipeline: exchange trades -> candles -> TA-Lib features -> Feast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"candleflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Optional[str] = typer.Option(
        None, "--config", "-c", envvar="CANDLEFLOW_CONFIG", metavar="FILE",
        help="YAML configuration file (default: ./candleflow.yaml if present).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = {"config_file": config}


app.add_typer(config_cmd.app, name="config")
app.add_typer(kafka_cmd.app, name="kafka")
app.add_typer(topics_cmd.app, name="topics")

# Each module below defines `register(app)`; `common.group()` lets two modules
# share a group (e.g. `compute candles` and `compute features`).
_COMMAND_MODULES = (
    "ingest_cmd",     # ingest, parse
    "candles_cmd",    # candles
    "compute_cmd",    # compute candles
    "features_cmd",   # features, compute features
    "store_cmd",      # store, sink, dataset, features get
    "serve_cmd",      # serve
    "up_cmd",         # up
    "status_cmd",     # status
    "backfill_cmd",   # backfill
)
for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"candleflow.cli.{_name}")
    except ModuleNotFoundError as exc:  # not built yet in this checkout
        if exc.name != f"candleflow.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
