"""`candleflow ingest` (exchanges -> `trades` topic) and `candleflow parse` (frames -> Trade JSON lines)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from candleflow.cli.common import EXIT_USAGE, fail, split_csv
from candleflow.cli.common import settings as load_settings


def _speed(value: str | None) -> float | None:
    if value is None or value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        fail(f"--speed must be a positive number or 'max', got {value!r}", EXIT_USAGE)
    if not speed > 0:
        fail(f"--speed must be a positive number or 'max', got {value!r}", EXIT_USAGE)
    return speed


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        ctx: typer.Context,
        exchange: Optional[str] = typer.Option(None, "--exchange", "-e",
                                               help="One exchange instead of ingest.exchanges."),
        symbols: Optional[str] = typer.Option(None, "--symbols", "-s", help="With --exchange: BTC/USD,ETH/USD."),
        ws_url: Optional[str] = typer.Option(None, "--ws-url", help="With --exchange: websocket endpoint."),
        rest_url: Optional[str] = typer.Option(None, "--rest-url", help="With --exchange: REST endpoint."),
        record: Optional[Path] = typer.Option(None, "--record", metavar="FILE",
                                              help="Also append every raw frame with its receive time."),
        replay: Optional[Path] = typer.Option(None, "--replay", metavar="FILE",
                                              help="Publish a recorded session instead of connecting."),
        speed: Optional[str] = typer.Option(None, "--speed", help="Replay/simulate pace: N x real time or 'max'."),
        simulate: bool = typer.Option(False, "--simulate", help="Publish a seeded synthetic market."),
        sim_exchange: str = typer.Option("sim", "--sim-exchange", help="Exchange name of simulated trades."),
        seed: int = typer.Option(42, "--seed", help="Simulation seed."),
        count: Optional[int] = typer.Option(None, "--count", min=1, help="Simulate: stop after N trades."),
        metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Default: ingest.metrics_port."),
    ) -> None:
        """Publish exchange trades to the `trades` topic (live, --replay or --simulate)."""
        from candleflow.log import configure_logging
        from candleflow.services import ingest as service

        if sum(bool(x) for x in (replay, simulate)) > 1:
            fail("choose one of --replay and --simulate", EXIT_USAGE)
        if symbols is not None and exchange is None and not simulate:
            fail("--symbols needs --exchange (or --simulate)", EXIT_USAGE)
        if (ws_url or rest_url) and exchange is None:
            fail("--ws-url/--rest-url need --exchange", EXIT_USAGE)
        if replay is not None and not replay.is_file():
            fail(f"replay file {replay} not found", EXIT_USAGE)
        overrides: dict = {}
        if exchange is not None:
            entry = {"name": exchange, "symbols": split_csv(symbols) or []}
            if ws_url:
                entry["ws_url"] = ws_url
            if rest_url:
                entry["rest_url"] = rest_url
            overrides["ingest"] = {"exchanges": [entry]}
        if metrics_port is not None:
            overrides.setdefault("ingest", {})["metrics_port"] = metrics_port
        settings = load_settings(ctx, overrides or None)
        configure_logging(settings.log, service="ingest")
        options = service.IngestOptions(
            record=record, replay=replay, speed=_speed(speed) if speed is not None else (None if replay else 1.0),
            simulate=simulate, sim_exchange=sim_exchange, sim_symbols=split_csv(symbols) if simulate else None,
            sim_seed=seed, count=count)
        summary = service.run(settings, options)
        if summary.undelivered:
            fail(f"{summary.undelivered} messages were not delivered to Kafka", 1)

    @app.command("parse")
    def parse(
        exchange: str = typer.Option(..., "--exchange", "-e", help="kraken, binance, coinbase, bybit or okx."),
        max_frame_bytes: int = typer.Option(1_048_576, "--max-frame-bytes", help="Longer lines are rejected."),
    ) -> None:
        """Raw websocket frames on stdin (one per line) -> Trade JSON lines on stdout.

        Acks, heartbeats and other channels are skipped; malformed lines and
        invalid trades are reported on stderr with their line number.
        """
        from candleflow.exchanges import get_adapter
        from candleflow.records import encode

        try:
            adapter = get_adapter(exchange)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        except ModuleNotFoundError:
            fail(f"the {exchange} adapter is not available in this build", EXIT_USAGE)
        out = sys.stdout.buffer
        err = sys.stderr
        try:
            for number, line in enumerate(sys.stdin.buffer, start=1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                if len(raw) > max_frame_bytes:
                    err.write(f"line {number}: oversized_frame: {len(raw)} bytes exceeds {max_frame_bytes}\n")
                    continue
                result = adapter.parse_frame(raw, time.time_ns() // 1_000_000)
                for error in result.errors:
                    err.write(f"line {number}: {error.reason}: {error.detail}\n")
                for trade in result.trades:
                    out.write(encode(trade) + b"\n")
                out.flush()
        except OSError as exc:
            fail(f"cannot read standard input: {exc}", 1)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
