"""`candleflow topics create | list`."""

from __future__ import annotations

import typer

from candleflow.cli.common import fail, settings

app = typer.Typer(help="Create or list candleflow's Kafka topics.", no_args_is_help=True)


@app.command()
def create(ctx: typer.Context) -> None:
    """Create trades, candles, candles.partial, features and dlq if missing (names/partitions from config)."""
    from confluent_kafka import KafkaException

    from candleflow.broker.topics import create_topics

    cfg = settings(ctx)
    try:
        result = create_topics(cfg.kafka, cfg.topics.all())
    except KafkaException as exc:
        fail(f"cannot create topics on {cfg.kafka.bootstrap()}: {exc}")
    for name, outcome in result.items():
        typer.echo(f"{name}: {outcome}")


@app.command("list")
def list_(ctx: typer.Context, internal: bool = typer.Option(False, "--internal", help="Include __internal topics.")) -> None:
    """List the topics on the cluster with their partition counts."""
    from confluent_kafka import KafkaException

    from candleflow.broker.topics import list_topics

    cfg = settings(ctx)
    try:
        topics = list_topics(cfg.kafka, include_internal=internal)
    except KafkaException as exc:
        fail(f"cannot list topics on {cfg.kafka.bootstrap()}: {exc}")
    for topic in topics:
        typer.echo(f"{topic.name}\t{topic.partitions}")
