"""`candleflow config show | check`."""

from __future__ import annotations

import json

import typer

from candleflow.cli.common import settings
from candleflow.config import config_path, dump_yaml

app = typer.Typer(help="Show or check the effective configuration (YAML file + CANDLEFLOW_* environment).",
                  no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML.")) -> None:
    """Print the effective configuration, secrets masked."""
    cfg = settings(ctx)
    if as_json:
        typer.echo(json.dumps(cfg.redacted(), indent=2))
    else:
        source = config_path((ctx.find_root().obj or {}).get("config_file"))
        typer.echo(f"# source: {source or 'defaults'} + CANDLEFLOW_* environment")
        typer.echo(dump_yaml(cfg), nl=False)


@app.command("check")
def check(ctx: typer.Context) -> None:
    """Validate the configuration; exit 2 with the problems if it is invalid."""
    settings(ctx)
    typer.echo("configuration is valid")
