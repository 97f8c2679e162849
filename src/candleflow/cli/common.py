"""What every subcommand shares: loading the configuration and failing cleanly.

Subcommand modules import heavy libraries (Quix, Feast, TA-Lib) inside their
command functions, so `candleflow --help` stays fast.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console

from candleflow.config import ConfigError, Settings, load_config

console = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2  # invalid configuration or arguments


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings(ctx: typer.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """The effective configuration; invalid configuration exits with status 2."""
    root = ctx.find_root()
    config_file = (root.obj or {}).get("config_file")
    try:
        return load_config(config_file, overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def split_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


_groups: dict[tuple[int, str], typer.Typer] = {}


def group(app: typer.Typer, name: str, help: str = "", **kwargs: Any) -> typer.Typer:
    """The sub-command group `name` of `app`, created on first use (shared by several modules)."""
    key = (id(app), name)
    if key not in _groups:
        sub = typer.Typer(help=help, no_args_is_help=not kwargs.get("invoke_without_command"), **kwargs)
        app.add_typer(sub, name=name)
        _groups[key] = sub
    return _groups[key]
