"""Bulk history from trade files: the readers of :mod:`candleflow.tradefiles`, reported for a backfill.

A source is a file, a directory (its trade files, by name) or a glob; the
formats are those of ``candleflow compute candles`` (JSON lines of Trade
records, CSV or Parquet with ``ts_ms,price,qty[,side,trade_id,exchange,symbol]``,
Kraken's downloadable time-and-sales CSV, Binance's public data dump CSV).
Bad rows are skipped and reported with file and line; the backfill fails only
when no valid trade remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from candleflow.tradefiles import TradeFileError, TradeFileResult, read_trades

FileInputError = TradeFileError


@dataclass
class LoadedTrades:
    trades: pl.DataFrame
    files: int
    bad_rows: int
    result: TradeFileResult

    def report_lines(self, limit: int = 20) -> list[str]:
        """One line per bad row (the first `limit`), then the counts by reason."""
        lines = [f"bad row: {error}" for error in self.result.errors[:limit]]
        if self.bad_rows > limit:
            lines.append(f"... {self.bad_rows - limit} more bad row(s)")
        if self.bad_rows:
            lines.append("bad rows by reason: " + ", ".join(
                f"{reason.split('#')[0]} {count}" for reason, count in sorted(self.result.bad_by_reason.items())))
        return lines


def read_trade_files(source: str, file_format: str = "auto", *, exchange: str | None = None,
                     symbol: str | None = None) -> LoadedTrades:
    """Every valid trade of `source`, in file order (raises FileInputError when nothing can be read)."""
    result = read_trades(source, format=file_format, exchange=exchange, symbol=symbol)
    return LoadedTrades(trades=result.trades, files=len(result.files), bad_rows=result.bad_rows, result=result)
