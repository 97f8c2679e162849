"""`candleflow compute candles`: trade files -> candle file, through the vectorised candle core."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from candleflow.cli import common

# Bad rows printed one per line on stderr; the rest are only counted in the summary.
_MAX_REPORTED_ROWS = 1000


def register(app: typer.Typer) -> None:
    compute = common.group(app, "compute", help="Batch computations over files (same core as the services).")

    @compute.command("candles")
    def compute_candles(
        ctx: typer.Context,
        input: list[str] = typer.Option(
            ..., "--input", "-i", metavar="FILE",
            help="Trade file, directory or glob (repeatable): .jsonl, .csv, .parquet, or --format."),
        output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Candles: .jsonl, .csv or .parquet."),
        timeframes: Optional[str] = typer.Option(
            None, "--timeframes", "-t", metavar="LIST",
            help="Comma-separated, e.g. 1m,5m (default: candles.timeframes)."),
        format: str = typer.Option(
            "auto", "--format", "-f",
            help="Input format: auto (by extension), jsonl, csv, parquet, kraken-csv, binance-csv."),
        output_format: str = typer.Option("auto", "--output-format", help="auto (by extension), jsonl, csv, parquet."),
        exchange: Optional[str] = typer.Option(None, "--exchange", help="Exchange of rows that do not name one."),
        symbol: Optional[str] = typer.Option(
            None, "--symbol", help="Symbol (BASE/QUOTE) of rows that do not name one."),
        no_gap_fill: bool = typer.Option(False, "--no-gap-fill", help="Leave out the gap-fill candles."),
    ) -> None:
        """Compute Candle records for every (exchange, symbol) and timeframe of trade files.

        Gap fills are included between a key's first and last trade; rows are
        ordered by key (exchange:symbol:timeframe) then start. Bad input rows are
        reported with their line number and skipped; the command fails (exit 1)
        only when no valid trade remains.
        """
        from candleflow.config import timeframe_ms

        settings = common.settings(ctx)
        chosen = common.split_csv(timeframes) if timeframes is not None else list(settings.candles.timeframes)
        if not chosen:
            common.fail("--timeframes is empty", common.EXIT_USAGE)
        if len(set(chosen)) != len(chosen):
            common.fail(f"duplicate timeframe in --timeframes {timeframes}", common.EXIT_USAGE)
        for timeframe in chosen:
            try:
                timeframe_ms(timeframe)
            except ValueError as exc:
                common.fail(str(exc), common.EXIT_USAGE)

        from candleflow.core.candles_batch import aggregate_frame
        from candleflow.tradefiles import TradeFileError, output_format as resolve_output_format, read_trades, \
            write_candles

        try:
            out_format = resolve_output_format(output, output_format)
            result = read_trades(input, format=format, exchange=exchange.lower() if exchange else None,
                                 symbol=symbol, max_errors=_MAX_REPORTED_ROWS)
        except TradeFileError as exc:
            common.fail(str(exc), common.EXIT_USAGE)

        for error in result.errors:
            typer.echo(f"bad row: {error}", err=True)
        if result.bad_rows > len(result.errors):
            typer.echo(f"... and {result.bad_rows - len(result.errors)} more bad row(s)", err=True)
        skipped = f"{result.bad_rows} bad row(s) skipped" + (
            f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(result.bad_by_reason.items()))})"
            if result.bad_rows else "")
        if result.rows == 0:
            typer.echo(f"read {result.rows_read} row(s) from {len(result.files)} file(s); {skipped}", err=True)
            common.fail("no valid trade in the input; nothing written")

        candles = aggregate_frame(result.trades, chosen, fill_gaps=not no_gap_fill)
        try:
            write_candles(candles, output, out_format)
        except OSError as exc:
            common.fail(f"cannot write {output}: {exc}")
        keys = candles.select("exchange", "symbol", "timeframe").n_unique()
        gap_fills = int(candles["gap_fill"].sum())
        typer.echo(
            f"read {result.rows_read} row(s) from {len(result.files)} file(s): {result.rows} trade(s), {skipped}; "
            f"wrote {candles.height} candle(s) ({gap_fills} gap fill(s)) for {keys} key(s) to {output}"
        )
