"""`candleflow serve`: the HTTP API (latest features, recent candles, health, metrics)."""

from __future__ import annotations

from typing import Optional

import typer

from candleflow.cli.common import settings as load_settings


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        ctx: typer.Context,
        host: Optional[str] = typer.Option(None, "--host", help="Default: serve.host (127.0.0.1)."),
        port: Optional[int] = typer.Option(None, "--port", help="Default: serve.port (8000)."),
    ) -> None:
        """Serve the feature store over HTTP (OpenAPI at /docs)."""
        import uvicorn

        from candleflow.log import configure_logging
        from candleflow.serve.app import create_app

        overrides = {"serve": {k: v for k, v in (("host", host), ("port", port)) if v is not None}}
        settings = load_settings(ctx, overrides if overrides["serve"] else None)
        configure_logging(settings.log, service="serve")
        # Open dashboard streams (server-sent events) never end by themselves: on
        # shutdown they get a short grace period, then are cancelled.
        uvicorn.run(create_app(settings), host=settings.serve.host, port=settings.serve.port,
                    log_level="warning", access_log=False, timeout_graceful_shutdown=2)
