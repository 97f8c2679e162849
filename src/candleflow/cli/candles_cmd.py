"""`candleflow candles`: the streaming candles service (trades -> candles)."""

from __future__ import annotations

from typing import Any, Optional

import typer

from candleflow.cli import common


def register(app: typer.Typer) -> None:
    @app.command("candles")
    def candles(
        ctx: typer.Context,
        timeframes: Optional[str] = typer.Option(
            None, "--timeframes", "-t", metavar="LIST",
            help="Comma-separated, e.g. 1m,5m (default: candles.timeframes)."),
        grace_ms: Optional[int] = typer.Option(
            None, "--grace-ms", metavar="MS",
            help="How long a window waits for late trades (default: candles.grace_ms)."),
        no_ticks: bool = typer.Option(
            False, "--no-ticks", help="Do not append wall-clock ticks to `trades` (for replaying history)."),
    ) -> None:
        """Run the candles service until interrupted: OHLCV candles of every market, closed on time."""
        overrides: dict[str, Any] = {}
        if timeframes is not None:
            overrides["timeframes"] = timeframes
        if grace_ms is not None:
            overrides["grace_ms"] = grace_ms
        if no_ticks:
            overrides["ticks"] = False
        settings = common.settings(ctx, {"candles": overrides} if overrides else None)
        from candleflow.log import configure_logging
        from candleflow.services import candles as service

        configure_logging(settings.log, service="candles")
        if settings.kafka.uses_local_broker:
            from candleflow.broker.local import BrokerError, LocalBroker

            try:
                LocalBroker(settings.kafka.local).start(out=lambda msg: typer.echo(msg, err=True))
            except BrokerError as exc:
                common.fail(str(exc))
        from candleflow.broker.topics import create_topics

        create_topics(settings.kafka, settings.topics.all())
        try:
            service.run(settings)
        except KeyboardInterrupt:  # Ctrl-C: Quix has already committed what it could
            pass
