"""`candleflow store init|apply|compact`, `candleflow sink`, `candleflow dataset`, `candleflow features get`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from candleflow.cli.common import EXIT_USAGE, fail, group, settings as load_settings, split_csv


def register(app: typer.Typer) -> None:
    store = group(app, "store", help="The Feast feature repository and the offline dataset.")
    features = group(app, "features", help="Technical-indicator features.")

    def feast_settings(ctx: typer.Context):  # noqa: ANN202
        settings = load_settings(ctx)
        if settings.store.online.type == "hopsworks":
            fail("store init/apply manage the Feast repository; store.online.type is hopsworks "
                 "(feature groups are created by the sink)", EXIT_USAGE)
        return settings

    @store.command("init")
    def store_init(ctx: typer.Context) -> None:
        """Write the Feast repository (feature_store.yaml) from the configuration."""
        from candleflow.store import repo

        settings = feast_settings(ctx)
        path = repo.write_repo(settings)
        typer.echo(f"wrote {path}")

    @store.command("apply")
    def store_apply(ctx: typer.Context) -> None:
        """Register the entity, feature views and sources with Feast and create the online tables."""
        from candleflow.store import repo

        settings = feast_settings(ctx)
        repo.write_repo(settings)
        repo.apply(settings)
        for tf, schema in repo.view_schemas(settings).items():
            typer.echo(f"{repo.view_name(tf)}: {len(schema.columns)} columns "
                       f"({len(schema.feature_columns)} features), push source {repo.push_source_name(tf)}")

    @store.command("compact")
    def store_compact(ctx: typer.Context) -> None:
        """Merge the offline dataset's small files and drop duplicate identities (newest kept)."""
        from candleflow.store.offline import OfflineDataset

        settings = load_settings(ctx)
        stats = OfflineDataset(settings.store.offline_dir).compact()
        typer.echo(f"compacted {stats.partitions} partitions: {stats.files_in} files -> {stats.files_out}, "
                   f"{stats.rows_in} rows -> {stats.rows_out}")

    @app.command("sink")
    def sink(
        ctx: typer.Context,
        max_idle: Optional[float] = typer.Option(None, "--max-idle", metavar="SECONDS",
                                                 help="Exit after this long without input (default: run until stopped)."),
    ) -> None:
        """Consume `features` into the online store and the offline Parquet dataset."""
        from candleflow.log import configure_logging
        from candleflow.services import sink as sink_service

        settings = load_settings(ctx)
        configure_logging(settings.log, service="sink")
        if settings.kafka.uses_local_broker:
            from candleflow.broker.local import BrokerError, LocalBroker

            try:
                LocalBroker(settings.kafka.local).start(out=lambda msg: typer.echo(msg, err=True))
            except BrokerError as exc:
                fail(str(exc))
        from candleflow.broker.topics import create_topics

        create_topics(settings.kafka, settings.topics.all())
        sink_service.run(settings, max_idle_s=max_idle)

    @app.command("dataset")
    def dataset(
        ctx: typer.Context,
        entities: Path = typer.Option(..., "--entities", metavar="FILE",
                                      help="exchange,symbol (or market) and event_timestamp (or ts_ms) per row."),
        features_list: str = typer.Option(..., "--features", metavar="LIST",
                                          help="Comma-separated <timeframe>:<column>, e.g. 1m:rsi_14,1m:close."),
        output: Path = typer.Option(..., "--output", metavar="FILE", help=".csv, .parquet or .jsonl"),
    ) -> None:
        """Build a point-in-time correct training set from the offline dataset."""
        from candleflow.store.dataset import DatasetError, read_table, training_set, write_table

        settings = load_settings(ctx)
        try:
            frame = training_set(settings, read_table(entities), split_csv(features_list) or [])
            write_table(frame, output)
        except DatasetError as exc:
            fail(str(exc), EXIT_USAGE)
        typer.echo(f"wrote {len(frame)} rows to {output}")

    @features.command("get")
    def features_get(
        ctx: typer.Context,
        exchange: str = typer.Option(..., "--exchange"),
        symbol: str = typer.Option(..., "--symbol", help="BASE/QUOTE, e.g. BTC/USD"),
        timeframe: str = typer.Option("1m", "--timeframe"),
    ) -> None:
        """Print the latest online Features row of a market as JSON."""
        from candleflow.store.base import MarketKey, online_writer

        settings = load_settings(ctx)
        if timeframe not in settings.candles.timeframes:
            fail(f"timeframe {timeframe!r} is not configured (candles.timeframes: "
                 f"{', '.join(settings.candles.timeframes)})", EXIT_USAGE)
        with online_writer(settings) as writer:
            row = writer.read([MarketKey(exchange, symbol, timeframe)])[0]
        if row is None:
            fail(f"no online features for {exchange}:{symbol} at {timeframe}")
        typer.echo(json.dumps(row))
