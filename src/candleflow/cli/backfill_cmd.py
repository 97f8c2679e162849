"""`candleflow backfill`: history from an exchange's REST API or from trade files into the feature store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from candleflow.cli import common

FILE_FORMATS = ("auto", "jsonl", "csv", "parquet", "kraken-csv", "binance-csv")


@dataclass
class _Output:
    """Where the computed history goes, as the options asked."""

    online: bool  # also the newest row per key into the online store
    handover_state: bool  # also save the features engine state per key
    via_kafka: bool  # through the streaming services instead of the batch core
    config_file: str | None  # the configuration file (the services of --via-kafka read it too)


def parse_time_ms(text: str, option: str) -> int:
    """``2024-01-01``, ``2024-01-01T12:30:00Z`` (UTC unless an offset is given) or epoch ms -> epoch ms."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        common.fail(f"{option}: {text!r} is not a date (2024-01-01), a UTC time (2024-01-01T12:00:00Z) "
                    f"or epoch milliseconds", common.EXIT_USAGE)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _timeframes(settings: Any, option: str | None) -> list[str]:
    from candleflow.config import timeframe_ms

    chosen = common.split_csv(option) or list(settings.candles.timeframes)
    for tf in chosen:
        try:
            timeframe_ms(tf)
        except ValueError as exc:
            common.fail(f"--timeframes: {exc}", common.EXIT_USAGE)
    unknown = [tf for tf in chosen if tf not in settings.candles.timeframes]
    if unknown:
        common.fail(f"--timeframes: {', '.join(unknown)} not in candles.timeframes "
                    f"({', '.join(settings.candles.timeframes)}); the feature store has one view per configured "
                    f"timeframe, so add it there first", common.EXIT_USAGE)
    return chosen


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill(
        ctx: typer.Context,
        exchange: Optional[str] = typer.Option(None, "--exchange", "-e",
            help="Venue for a REST backfill (kraken, binance, ...)."),
        symbols: Optional[str] = typer.Option(None, "--symbols", "-s",
            help="Canonical symbols, comma separated: BTC/USD,ETH/USD."),
        since: Optional[str] = typer.Option(None, "--since",
            help="Start (inclusive): 2024-01-01, 2024-01-01T12:00:00Z or epoch ms."),
        until: Optional[str] = typer.Option(None, "--until",
            help="End (exclusive); default: now (REST), the whole file (files)."),
        timeframes: Optional[str] = typer.Option(None, "--timeframes", "-t",
            help="Subset of candles.timeframes (default: all of them)."),
        from_file: Optional[str] = typer.Option(None, "--from-file", "-f", metavar="FILE|DIR|GLOB",
            help="Trade file(s) instead of REST."),
        file_format: str = typer.Option("auto", "--format", help=f"File layout: {', '.join(FILE_FORMATS)}."),
        symbol: Optional[str] = typer.Option(None, "--symbol",
            help="Symbol of files that carry none (kraken-csv, binance-csv)."),
        rest_url: Optional[str] = typer.Option(None, "--rest-url",
            help="REST endpoint override (default: ingest config, else the venue's)."),
        min_interval: Optional[float] = typer.Option(None, "--min-interval", min=0.0,
            help="Seconds between REST requests (default: the venue's documented limit)."),
        fetch_only: bool = typer.Option(False, "--fetch-only",
            help="Only page the REST history into the cache; compute nothing."),
        no_online: bool = typer.Option(False, "--no-online",
            help="Write the offline dataset only, not the newest rows online."),
        via_kafka: bool = typer.Option(False, "--via-kafka",
            help="Compute through the streaming services: replay the trades into the run's own topics "
                 "(writes online too)."),
        handover_state: bool = typer.Option(False, "--handover-state",
            help="Also save each key's features engine state at the end (for the live hand-over)."),
    ) -> None:
        """Backfill history: REST trade history (resumable) or trade files -> candles -> features -> feature store.

        Exit status: 0 when something valid was written (bad rows and pages are
        reported and skipped), 1 when nothing valid remains, 2 for bad usage.
        """
        settings = common.settings(ctx)
        if via_kafka and handover_state:
            common.fail("--handover-state needs the batch computation; --via-kafka leaves the engine state in "
                        "the replay's own features service", common.EXIT_USAGE)
        output = _Output(online=not no_online, handover_state=handover_state, via_kafka=via_kafka,
                         config_file=(ctx.find_root().obj or {}).get("config_file"))
        chosen = _timeframes(settings, timeframes)
        since_ms = parse_time_ms(since, "--since") if since else None
        until_ms = parse_time_ms(until, "--until") if until else None
        if since_ms is not None and until_ms is not None and until_ms <= since_ms:
            common.fail("--until must be after --since", common.EXIT_USAGE)
        from candleflow.log import configure_logging

        configure_logging(settings.log, service="backfill")
        if from_file:
            _from_files(settings, from_file, file_format, exchange, symbol, since_ms, until_ms, chosen, output)
            return
        if not exchange or not symbols or since_ms is None:
            common.fail("give --exchange, --symbols and --since for a REST backfill, or --from-file", common.EXIT_USAGE)
        unique_symbols = list(dict.fromkeys(common.split_csv(symbols) or []))
        _from_rest(settings, exchange, unique_symbols, since_ms, until_ms, chosen, rest_url,
                   min_interval, fetch_only, output)


# --- REST ---------------------------------------------------------------------------


def _adapter(name: str) -> Any:
    from candleflow.backfill.rest import NO_REST_HISTORY, has_rest_history
    from candleflow.exchanges import get_adapter

    try:
        adapter = get_adapter(name)
    except ValueError as exc:
        common.fail(str(exc), common.EXIT_USAGE)
    except ModuleNotFoundError:
        common.fail(f"exchange {name!r} has no adapter in this build", common.EXIT_USAGE)
    if not has_rest_history(adapter):
        why = NO_REST_HISTORY.get(name, "its adapter has no fetch_trades")
        common.fail(f"exchange {name!r} cannot be backfilled over REST: {why}; backfill it from trade files "
                    f"with --from-file", common.EXIT_USAGE)
    return adapter


def _check_symbols(symbols: list[str]) -> None:
    from candleflow.exchanges.symbols import split_canonical

    for sym in symbols:
        try:
            split_canonical(sym)
        except ValueError as exc:
            common.fail(f"--symbols: {exc}", common.EXIT_USAGE)


def _from_rest(settings: Any, exchange: str, symbols: list[str], since_ms: int, until_ms: int | None,
               timeframes: list[str], rest_url: str | None, min_interval: float | None, fetch_only: bool,
               output: _Output) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from candleflow.backfill import pipeline
    from candleflow.backfill.cache import PageCache
    from candleflow.backfill.rest import FetchOptions, run_fetch

    adapter = _adapter(exchange)
    if not symbols:
        common.fail("--symbols: give at least one symbol", common.EXIT_USAGE)
    _check_symbols(symbols)
    if rest_url is None:
        rest_url = next((e.rest_url for e in settings.ingest.exchanges if e.name == exchange and e.rest_url), None)
    until = until_ms if until_ms is not None else time.time_ns() // 1_000_000
    options = FetchOptions(until_ms=until, base_url=rest_url, min_interval_s=min_interval)

    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.fields[trades]:>10,} trades"),
        TextColumn("covered to {task.fields[covered]}"),
        TextColumn("{task.fields[rate]:>8,.0f} trades/s"),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=common.console, transient=False, disable=not common.console.is_terminal,
    )
    tasks = {s: progress.add_task(f"{exchange} {s}", total=max(1, until - since_ms), trades=0, covered="-", rate=0.0)
             for s in symbols}
    task_started: dict[str, float] = {}
    task_first_trades: dict[str, int] = {}

    def on_progress(sym: str, checkpoint: Any) -> None:
        now = time.monotonic()
        first = task_first_trades.setdefault(sym, checkpoint.trades)
        since_start = now - task_started.setdefault(sym, now)
        rate = (checkpoint.trades - first) / since_start if since_start > 0 else 0.0
        covered = (checkpoint.last_ts_ms or since_ms) - since_ms
        progress.update(tasks[sym], completed=min(covered, until - since_ms), trades=checkpoint.trades,
                        covered=_utc(checkpoint.last_ts_ms), rate=rate)

    # Resumed jobs show their cached progress at once.
    caches = [PageCache(settings.data_dir, exchange, s, since_ms) for s in symbols]
    for cache in caches:
        try:
            checkpoint = cache.load()
        except ValueError as exc:
            common.fail(str(exc))
        if checkpoint.pages:
            on_progress(cache.symbol, checkpoint)
    try:
        with progress:
            checkpoints = run_fetch(adapter, settings.data_dir, symbols, since_ms, options, on_progress)
    except KeyboardInterrupt:
        common.console.print("interrupted: the cache and checkpoint are saved; run the same command to resume")
        raise typer.Exit(130)
    for sym, checkpoint in checkpoints.items():
        progress.update(tasks[sym], completed=until - since_ms if not checkpoint.stopped else None)
    _print_fetch_summary(exchange, checkpoints, caches, time.monotonic() - started)
    if fetch_only:
        return
    trades = pipeline.rest_trades(caches)
    # A job that stopped early has every trade only up to its newest one.
    market_until = {(exchange, sym): (c.last_ts_ms if c.last_ts_ms is not None else since_ms)
                    for sym, c in checkpoints.items() if c.stopped}
    _compute_and_write(settings, trades, timeframes, since_ms, until, market_until, output,
                       bad_rows=sum(c.bad_rows for c in checkpoints.values()),
                       bad_pages=sum(len(c.bad_pages) for c in checkpoints.values()))


def _print_fetch_summary(exchange: str, checkpoints: dict[str, Any], caches: list[Any], seconds: float) -> None:
    """Plain lines (they read well in a terminal and in CI logs alike)."""
    for sym, c in checkpoints.items():
        status = f"stopped: {c.stopped} (rerun resumes here)" if c.stopped else (
            "caught up" if c.caught_up else "done")
        common.console.print(
            f"{exchange} {sym}: {c.pages} page(s), {c.trades:,} trades from {_utc(c.first_ts_ms)} to "
            f"{_utc(c.last_ts_ms)} UTC; {c.repeats} repeat(s) dropped, {c.bad_rows} bad row(s), "
            f"{len(c.bad_pages)} bad page(s), rate limited {c.rate_limited} time(s); {status}",
            highlight=False, markup=False)
    for cache in caches:
        checkpoint = checkpoints[cache.symbol]
        for bad in checkpoint.bad_pages:
            where = f"skipped to {bad.skipped_to}" if bad.skipped_to else "stopped"
            common.console.print(f"bad page: {exchange} {cache.symbol} page {bad.seq} at cursor {bad.cursor}: "
                                 f"{bad.reason} ({where})", highlight=False, markup=False)
        if checkpoint.bad_rows:
            shown = 0
            for page in cache.pages(checkpoint):
                for error in page.errors:
                    if shown < 10:
                        common.console.print(f"bad row: {exchange} {cache.symbol} page {page.seq} "
                                             f"(cursor {page.cursor}): {error.reason}: {error.detail}",
                                             highlight=False, markup=False)
                    shown += 1
            if shown > 10:
                common.console.print(f"... {shown - 10} more bad rows of {cache.symbol} in {cache.pages_dir}",
                                     highlight=False, markup=False)
    common.console.print(f"fetched in {seconds:.1f}s; cache: {caches[0].root.parent.parent if caches else '-'}",
                         highlight=False)


# --- files --------------------------------------------------------------------------


def _from_files(settings: Any, source: str, file_format: str, exchange: str | None, symbol: str | None,
                since_ms: int | None, until_ms: int | None, timeframes: list[str], output: _Output) -> None:
    from candleflow.backfill.files import FileInputError, read_trade_files

    if file_format not in FILE_FORMATS:
        common.fail(f"--format: {file_format!r} is not one of {', '.join(FILE_FORMATS)}", common.EXIT_USAGE)
    try:
        loaded = read_trade_files(source, file_format, exchange=exchange, symbol=symbol)
    except FileInputError as exc:
        common.fail(str(exc), common.EXIT_USAGE)
    for line in loaded.report_lines(limit=20):
        common.console.print(line, highlight=False, markup=False)
    common.console.print(f"read {loaded.trades.height:,} valid trades from {loaded.files} file(s); "
                         f"{loaded.bad_rows} bad row(s) skipped", highlight=False)
    _compute_and_write(settings, loaded.trades, timeframes, since_ms, until_ms, None, output,
                       bad_rows=loaded.bad_rows, bad_pages=0)


# --- computation --------------------------------------------------------------------


def _compute_and_write(settings: Any, trades: Any, timeframes: list[str], since_ms: int | None,
                       until_ms: int | None, market_until: dict[tuple[str, str], int] | None, output: _Output, *,
                       bad_rows: int, bad_pages: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from candleflow.backfill import pipeline

    if output.via_kafka:
        _replay(settings, trades, timeframes, since_ms, until_ms, output, bad_rows=bad_rows, bad_pages=bad_pages)
        return
    started = time.perf_counter()
    with Progress(TextColumn("computing and writing feature rows"), BarColumn(), MofNCompleteColumn(),
                  console=common.console, disable=not common.console.is_terminal) as progress:
        # The total grows as each timeframe is computed; files are written while the next one is.
        task = progress.add_task("write", total=0)
        computed = [0]

        def add_computed(rows: int) -> None:
            computed[0] += rows
            progress.update(task, total=computed[0])

        result = pipeline.run(trades, timeframes, settings, since_ms=since_ms, until_ms=until_ms,
                              market_until=market_until, online=output.online, on_rows=add_computed,
                              on_written=lambda n: progress.advance(task, n))
    if result.trades == 0:
        common.fail(f"nothing valid to backfill: no valid trade in the range "
                    f"({bad_rows} bad row(s), {bad_pages} bad page(s) skipped)")
    rows = result.features
    seconds = time.perf_counter() - started
    t = result.times
    common.console.print(
        f"backfill: {result.trades:,} trades ({result.duplicates:,} duplicate(s) dropped, "
        f"{result.out_of_range:,} outside the range"
        f"{f', {result.without_id:,} without trade id kept (not de-duplicated)' if result.without_id else ''}) -> {result.candles:,} candles "
        f"({result.partial_windows:,} incomplete window(s) left out) for {result.keys} key(s) -> "
        f"{result.offline_files} offline file(s) in {settings.store.offline_dir}; online: "
        f"{result.online_written} written, {result.online_stale} refused as older than stored; "
        f"{bad_rows} bad row(s), {bad_pages} bad page(s) skipped. "
        f"{seconds:.1f}s (candles {t.candles_s:.1f}s, features {t.features_s:.1f}s, offline {t.offline_s:.1f}s, "
        f"online {t.online_s:.1f}s)", highlight=False)
    if output.handover_state:
        from candleflow.backfill.handover import engine_states, save_states

        paths = save_states(engine_states(rows, settings), settings.data_dir)
        common.console.print(f"features engine state at the end of the backfill saved for {len(paths)} key(s) in "
                             f"{paths[0].parents[2] if paths else '-'}", highlight=False)


def _replay(settings: Any, trades: Any, timeframes: list[str], since_ms: int | None, until_ms: int | None,
            output: _Output, *, bad_rows: int, bad_pages: int) -> None:
    """--via-kafka: the trades through the candles, features and sink services on the run's own topics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from candleflow.backfill import pipeline
    from candleflow.backfill.replay import replay

    trades, duplicates, out_of_range = pipeline.prepare_trades(trades, since_ms, until_ms)
    if trades.height == 0:
        common.fail(f"nothing valid to backfill: no valid trade in the range "
                    f"({bad_rows} bad row(s), {bad_pages} bad page(s) skipped)")
    if settings.kafka.uses_local_broker:
        from candleflow.broker.local import BrokerError, LocalBroker

        try:
            LocalBroker(settings.kafka.local).start(out=lambda msg: common.console.print(msg, highlight=False))
        except BrokerError as exc:
            common.fail(str(exc))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=common.console,
                  disable=not common.console.is_terminal) as progress:
        produced = progress.add_task("trades to Kafka", total=trades.height)
        rows = progress.add_task("features rows", total=None)
        try:
            result = replay(trades, settings, output.config_file, timeframes=timeframes, end_ms=until_ms,
                            on_produced=lambda n: progress.advance(produced, n),
                            on_rows=lambda n: progress.update(rows, completed=n))
        except (RuntimeError, TimeoutError) as exc:
            common.fail(f"replay through Kafka failed: {exc}")
    common.console.print(
        f"backfill via Kafka (run {result.run_id}): {result.trades:,} trades ({duplicates:,} duplicate(s) dropped, "
        f"{out_of_range:,} outside the range) -> {result.features_rows:,} features rows through the candles, "
        f"features and sink services into {settings.store.offline_dir} and the online store; {bad_rows} bad row(s), "
        f"{bad_pages} bad page(s) skipped. {result.seconds:.1f}s", highlight=False)
