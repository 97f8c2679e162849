"""`candleflow features` (the streaming service) and `candleflow compute features` (the batch path)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from candleflow.cli import common


def register(app: typer.Typer) -> None:
    features = common.group(
        app, "features", invoke_without_command=True,
        help="Run the features service (candles -> TA-Lib features); subcommands query features.",
    )

    @features.callback()
    def _features(
        ctx: typer.Context,
        indicators: Optional[Path] = typer.Option(
            None, "--indicators", metavar="FILE", help="YAML file with `indicators:` (default: the configured set)."),
    ) -> None:
        """Run the features service until interrupted (when no subcommand is given)."""
        if ctx.invoked_subcommand is not None:
            return
        overrides = {"features": {"indicators_file": str(indicators)}} if indicators else None
        settings = common.settings(ctx, overrides)
        from candleflow.log import configure_logging
        from candleflow.services import features as service

        configure_logging(settings.log, service="features")
        if settings.kafka.uses_local_broker:
            from candleflow.broker.local import BrokerError, LocalBroker

            try:
                LocalBroker(settings.kafka.local).start(out=lambda msg: typer.echo(msg, err=True))
            except BrokerError as exc:
                common.fail(str(exc))
        from candleflow.broker.topics import create_topics

        create_topics(settings.kafka, [*settings.topics.all(), settings.topics.features_partial])
        service.run(settings)

    compute = common.group(app, "compute", help="Batch computations over files (same core as the services).")

    @compute.command("features")
    def compute_features(
        ctx: typer.Context,
        input: Path = typer.Option(..., "--input", "-i", metavar="FILE", help="Candles: .csv, .jsonl or .parquet."),
        output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Features rows: .csv, .jsonl or .parquet."),
        indicators: Optional[Path] = typer.Option(
            None, "--indicators", metavar="FILE", help="YAML file with `indicators:` (default: the configured set)."),
    ) -> None:
        """Compute Features rows for every candle of a file, grouped by key and ordered by start_ms."""
        overrides = {"features": {"indicators_file": str(indicators), "indicators": None}} if indicators else None
        settings = common.settings(ctx, overrides)
        from candleflow.services.features import BatchInputError, compute_features_file

        try:
            result = compute_features_file(input, output, settings.features)
        except BatchInputError as exc:
            common.fail(str(exc), common.EXIT_USAGE)
        message = f"wrote {result.rows} features rows for {result.keys} key(s) to {output}"
        if result.rejected:
            message += f"; {result.rejected} invalid row(s) skipped, listed in {result.rejects_path}"
        typer.echo(message)
