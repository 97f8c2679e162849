"""Trade files in, candle files out: the I/O layer of the batch path (not core).

Reads trade files into one polars frame with the columns of :data:`TRADE_FRAME_SCHEMA`
(``exchange, symbol, trade_id, price, qty, side, ts_ms, is_buy``), in file
order (the arrival order that breaks ties on ``ts_ms``). Formats:

- ``jsonl``: one Trade record per line (DESIGN.md), validated like the ``trades`` topic;
- ``csv``: a header with at least ``ts_ms,price,qty``; optional ``side``, ``trade_id``,
  ``exchange``, ``symbol`` (the last two default to the ``exchange``/``symbol`` arguments);
- ``parquet``: the same columns as ``csv``;
- ``kraken-csv``: Kraken's downloadable time and sales, no header: unix seconds
  (with or without a fraction), price, volume;
- ``binance-csv``: Binance's public data dump trades, with or without header:
  ``id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]``; ``time`` in ms,
  or µs as in the newer spot dumps (told apart per row by magnitude);
  ``is_buyer_maker`` true means the taker sold.

``auto`` picks ``jsonl`` / ``csv`` / ``parquet`` by extension (``.ndjson`` is
jsonl). CSV inputs may be gzip (``.gz``) or a zip holding one file (``.zip``,
as Binance publishes them). A source is a file, a directory (its trade files,
by name) or a glob.

Timestamps become integer ms by exact decimal/integer arithmetic on the text,
never through a float of seconds (the sub-millisecond part is truncated,
DESIGN.md). Cells are taken as written: a number with spaces around it is not
a number. For Parquet, the "line" of a row is its 1-based row number.
Sources without a taker side (Kraken files, CSVs without ``side``) get a null
``side`` and ``is_buy = False``, so their candles have ``buy_volume = 0``;
sources without trade ids get a null ``trade_id``.

Bad rows (a missing field, a non-numeric or non-positive/NaN/infinite price or
quantity, a bad timestamp or side) are skipped, counted and reported with file
and line number. The fast path is vectorised; only the bad rows are looked at
one by one to say what is wrong with them. Blank lines are skipped silently.
Line numbers assume one record per line (no newlines inside quoted fields).
"""

from __future__ import annotations

import glob as globbing
import gzip
import io
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
import polars as pl

from candleflow.exchanges.symbols import SymbolError, canonical, from_concatenated, split_canonical
from candleflow.records import CANDLE_FIELDS, RecordError, decode_trade

FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "parquet", "kraken-csv", "binance-csv")
OUTPUT_FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "parquet")

TRADE_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "exchange": pl.String(),
    "symbol": pl.String(),
    "trade_id": pl.String(),
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "side": pl.String(),
    "ts_ms": pl.Int64(),
    "is_buy": pl.Boolean(),
}

_EXTENSION_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_TRADE_FILE_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".pq", ".gz", ".zip")
_MS_PER_US, _MS_PER_NS = 1_000, 1_000_000
_FIRST_US_VALUE, _FIRST_NS_VALUE = 10**14, 10**17  # ms values this large would be after the year 5000
# Kraken's quote assets, longest first: the generic list would split XBTUSD as XB/TUSD.
_KRAKEN_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP", "JPY", "CAD", "CHF", "AUD", "XBT", "ETH", "DAI")


class TradeFileError(ValueError):
    """The files cannot be read at all (unknown format, no file, missing columns or defaults)."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One skipped row: where it is and why (``reason`` is a short code, ``detail`` says what)."""

    file: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.detail}"


@dataclass
class TradeFileResult:
    """The valid trades of one read, and what was skipped."""

    trades: pl.DataFrame
    files: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)  # the first `max_errors` bad rows
    rows_read: int = 0  # data rows seen (header and blank lines not counted)
    bad_rows: int = 0
    bad_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        """Valid trades read."""
        return self.trades.height

    @property
    def counts(self) -> dict[str, int]:
        return {"files": len(self.files), "read": self.rows_read, "valid": self.rows, "bad": self.bad_rows,
                **{f"bad_{reason}": n for reason, n in sorted(self.bad_by_reason.items())}}


def empty_trades() -> pl.DataFrame:
    return pl.DataFrame(schema=TRADE_FRAME_SCHEMA)


# --- sources ----------------------------------------------------------------------


def expand_sources(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files named by a file, a directory (its trade files, sorted by name) or a glob, in order."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(_TRADE_FILE_SUFFIXES))
            if not found:
                raise TradeFileError(f"no trade files ({', '.join(_TRADE_FILE_SUFFIXES)}) in directory {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(p) for p in globbing.glob(str(item), recursive=True) if Path(p).is_file())
            if not matches:
                raise TradeFileError(f"no file matches {item}")
            files.extend(matches)
        else:
            raise TradeFileError(f"no such file or directory: {item}")
    return files


def detect_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from the extension (``.gz``/``.zip`` looked through)."""
    name = path.name.lower()
    for wrapper in (".gz", ".zip"):
        if name.endswith(wrapper):
            name = name[: -len(wrapper)]
    suffix = Path(name).suffix
    if suffix not in _EXTENSION_FORMATS:
        raise TradeFileError(f"cannot tell the format of {path} from its extension; "
                             f"name one with --format ({', '.join(FORMATS[1:])})")
    return _EXTENSION_FORMATS[suffix]


def _file_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed for ``.gz`` and unpacked for a one-member ``.zip``."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise TradeFileError(f"{path}: a zip must hold exactly one file, it holds {len(members)}")
                return archive.read(members[0])
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise TradeFileError(f"cannot read {path}: {exc}") from exc


def _csv_source(path: Path) -> Path | io.BytesIO | None:
    """What polars should read for a CSV: the path itself (memory-mapped), or the unpacked bytes; None if empty."""
    if path.name.lower().endswith((".gz", ".zip")):
        data = _file_bytes(path)
        return None if not data or data.isspace() else io.BytesIO(data)
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise TradeFileError(f"cannot read {path}: {exc}") from exc
    if not head or (head.isspace() and path.stat().st_size <= len(head)):
        return None
    return path


# --- reading ------------------------------------------------------------------------


def read_trades(
    sources: str | Path | Iterable[str | Path],
    *,
    format: str = "auto",
    exchange: str | None = None,
    symbol: str | None = None,
    max_errors: int = 1000,
) -> TradeFileResult:
    """Read every trade file of ``sources`` into one frame (files in order, rows in file order).

    ``exchange``/``symbol`` are the defaults for files that do not name them
    (CSV/Parquet without those columns, Kraken and Binance files; for those two
    the exchange defaults to ``kraken``/``binance`` and the symbol to the one in
    the file name, e.g. ``XBTUSD.csv`` or ``BTCUSDT-trades-2024-01.zip``).
    Raises :class:`TradeFileError` when a file cannot be read at all; bad rows
    are skipped and reported in the result instead.
    """
    if format not in FORMATS:
        raise TradeFileError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if symbol is not None:
        symbol = normalise_symbol(symbol, exchange or ("kraken" if format == "kraken-csv" else None))
    result = TradeFileResult(trades=empty_trades())
    frames: list[pl.DataFrame] = []
    for path in expand_sources(sources):
        file_format = detect_format(path) if format == "auto" else format
        reader = _READERS[file_format]
        frame = reader(path, exchange, symbol, result, max_errors)
        result.files.append(str(path))
        if frame.height:
            frames.append(frame)
    if frames:
        result.trades = pl.concat(frames, rechunk=True)
    return result


def normalise_symbol(symbol: str, exchange: str | None = None) -> str:
    """``BTC/USD`` stays; ``XBT/USD``, ``xbtusd``, ``BTCUSDT`` become canonical ``BASE/QUOTE``."""
    try:
        if "/" in symbol:
            return canonical(*split_canonical(symbol.strip().upper()))
        if exchange == "kraken":
            return from_concatenated(symbol, _KRAKEN_QUOTES)
        return from_concatenated(symbol)
    except SymbolError as exc:
        raise TradeFileError(f"invalid symbol {symbol!r}: {exc}") from None


def _symbol_from_file_name(path: Path, file_format: str) -> str:
    # Kraken: XBTUSD.csv; Binance: BTCUSDT-trades-2024-01.csv(.zip)
    head = path.name.split(".")[0].split("-")[0].split("_")[0]
    try:
        return from_concatenated(head, _KRAKEN_QUOTES) if file_format == "kraken-csv" else from_concatenated(head)
    except SymbolError:
        raise TradeFileError(f"{path}: cannot tell the symbol from the file name; give --symbol "
                             f"(needed for {file_format} files)") from None


def _read_header_table(path: Path) -> pl.DataFrame:
    """A CSV with a header, all cells as strings (null where missing), plus ``__blank``.

    Polars keeps a blank line as an all-null row, so data row i is line i + 2.
    """
    data = _csv_source(path)
    if data is None:
        return pl.DataFrame()
    try:
        table = pl.read_csv(data, has_header=True, infer_schema=False, truncate_ragged_lines=True,
                            raise_if_empty=False)
    except pl.exceptions.PolarsError as exc:
        raise TradeFileError(f"cannot parse {path} as CSV: {exc}") from exc
    table = table.rename({c: c.strip().lower() for c in table.columns})
    return table.with_columns(pl.all_horizontal(pl.all().is_null()).alias("__blank"))


def _read_plain_table(path: Path, names: list[str]) -> pl.DataFrame:
    """A headerless, unquoted CSV as string columns ``names`` plus ``__blank``; row i is line i + 1.

    A short line gets nulls (then reported as a missing field), a long one is
    cut to ``names``: one bad row, never a parse error for the whole file.
    """
    data = _csv_source(path)
    if data is None:
        return pl.DataFrame()
    try:
        table = pl.read_csv(data, has_header=False, schema={name: pl.String for name in names},
                            quote_char=None, truncate_ragged_lines=True, extra_columns="ignore",
                            raise_if_empty=False)
    except pl.exceptions.PolarsError as exc:
        raise TradeFileError(f"cannot parse {path} as CSV: {exc}") from exc
    return table.with_columns(pl.all_horizontal(pl.all().is_null()).alias("__blank"))


# Cell parsers (string column -> typed value, null when invalid) and checks (true when bad).
# Numbers are taken as written: " 1.5" with spaces is not a number here.

def _float(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64, strict=False)


def _missing(col: str, dtype: pl.DataType | type[pl.DataType] = pl.String) -> pl.Expr:
    """Null, or an empty text cell (a typed column, e.g. from Parquet, has only nulls)."""
    if dtype != pl.String:
        return pl.col(col).is_null()
    return pl.col(col).is_null() | (pl.col(col).str.len_bytes() == 0)


def _not_positive_finite(parsed: str) -> pl.Expr:
    value = pl.col(parsed)
    return ~((value > 0) & value.is_finite()).fill_null(False)  # polars orders NaN above every number


_SIDES = {"buy": "buy", "b": "buy", "sell": "sell", "s": "sell"}
_DISTINCT_SAMPLE = 10_000  # rows whose distinct values _per_distinct tries first ...
_MAX_CANDIDATES = 8  # ... when they are this few


def _side_of(text: str) -> str | None:
    return _SIDES.get(text.strip().lower())


def _per_distinct(table: pl.DataFrame, expr: pl.Expr, normalise: Callable[[str], str | None]) -> pl.Expr:
    """``expr`` (a text column) with ``normalise`` applied to every non-null cell, computed once per distinct value.

    Trade files repeat a handful of texts (a venue, two sides) millions of times:
    a string operation per cell costs ~0.5 CPU s per 10M rows, finding the
    distinct values ~0.02 s per value, and a column whose values are already
    normal needs no per-cell work at all. ``normalise`` returning None makes the cell null.
    """
    values = table.select(expr.alias("__value")).to_series()
    # The values of the first rows are usually all there are (one venue, two sides): counting the
    # rows equal to each is a few comparison passes, against a hash of every row for unique().
    candidates = values.head(_DISTINCT_SAMPLE).drop_nulls().unique(maintain_order=True).to_list()
    if len(candidates) <= _MAX_CANDIDATES and (
            values.null_count() + sum(int((values == value).sum()) for value in candidates) == values.len()):
        distinct = candidates
    else:
        distinct = values.drop_nulls().unique().to_list()
    mapping = {value: normalise(value) for value in distinct}
    if all(value == normal for value, normal in mapping.items()):
        return expr
    return expr.replace_strict(mapping, default=None, return_dtype=pl.String)


def _integer_ms(col: str) -> pl.Expr:
    value = pl.col(col).cast(pl.Int64, strict=False)  # "1.0" and "1e3" do not cast: not integer ms
    return pl.when(value >= 0).then(value)


def _seconds_text_ms(col: str) -> pl.Expr:
    """Decimal seconds text (at most 9 fraction digits, see _cut_fraction) -> ms, truncated.

    Exact: the text becomes a decimal with 9 fraction digits (no float of
    seconds on the way), times 1000, truncated to an integer.
    """
    millis = (pl.col(col).cast(pl.Decimal(38, 9), strict=False) * 1000).cast(pl.Int64, strict=False)
    return pl.when(millis >= 0).then(millis)


def _cut_fraction(table: pl.DataFrame, col: str, digits: int = 9) -> pl.Expr:
    """``col`` with fraction digits beyond ``digits`` dropped (the decimal cast would round them).

    Dropping digits past the third never changes the truncated millisecond.
    """
    text = pl.col(col)
    dot = text.str.find(".", literal=True)
    too_long = (text.str.len_bytes() - dot - 1 > digits).fill_null(False)
    if not table.select(too_long.any()).item():
        return text
    return pl.when(too_long).then(text.str.head(dot + 1 + digits)).otherwise(text)


def _binance_time_ms(col: str) -> pl.Expr:
    value = _integer_ms(col)
    return (pl.when(value >= _FIRST_NS_VALUE).then(value // _MS_PER_NS)
            .when(value >= _FIRST_US_VALUE).then(value // _MS_PER_US)
            .otherwise(value))


def _finish(
    path: Path,
    table: pl.DataFrame,
    first_line: int,
    parsed: dict[str, pl.Expr],
    checks: list[tuple[str, pl.Expr, str]],
    output: dict[str, pl.Expr],
    result: TradeFileResult,
    max_errors: int,
) -> pl.DataFrame:
    """Keep the rows that pass every check; explain and count the others.

    ``table`` holds the raw cells (as strings, or typed from Parquet) plus ``__blank`` (blank lines,
    skipped without a report). ``parsed`` adds typed columns (named ``__*``)
    once; ``checks`` are (reason, is-bad expression, message) triples over raw
    and parsed columns, the first that applies naming a bad row's reason;
    ``output`` builds the trade columns (except ``is_buy``) from the good rows.
    """
    if table.height == 0:
        return empty_trades()
    raw_columns = [c for c in table.columns if not c.startswith("__")]
    line = pl.int_range(first_line, first_line + pl.len(), dtype=pl.Int64).alias("__line")
    work = table
    if work["__blank"].any():
        work = work.with_columns(line).filter(~pl.col("__blank"))
    work = work.with_columns(**parsed)
    work = work.with_columns(pl.any_horizontal([bad.fill_null(True) for _, bad, _ in checks]).alias("__bad"))
    result.rows_read += work.height
    good = work
    if work["__bad"].any():
        if "__line" not in work.columns:
            # Numbered only now: a new single-chunk column next to a many-chunk table (a Parquet
            # file's row groups) makes polars rechunk every column, ~0.5 s per 10M rows.
            work = work.with_columns(line)
        good = work.filter(~pl.col("__bad"))
        bad = work.filter(pl.col("__bad"))
        first_check = pl.lit(None, dtype=pl.Int32)
        for index in reversed(range(len(checks))):
            first_check = pl.when(checks[index][1].fill_null(True)).then(pl.lit(index, pl.Int32)).otherwise(first_check)
        bad = bad.with_columns(first_check.alias("__check"))
        result.bad_rows += bad.height
        for index, count in bad["__check"].value_counts().iter_rows():
            result.bad_by_reason[checks[index][0]] += count
        room = max(0, max_errors - len(result.errors))
        for row in bad.head(room).iter_rows(named=True):
            reason, _, message = checks[row["__check"]]
            shown = ",".join("" if row[c] is None else str(row[c]) for c in raw_columns)
            result.errors.append(RowError(str(path), row["__line"], reason, f"{message}: {shown[:200]!r}"))
    frame = good.select(**output)
    return frame.with_columns((pl.col("side") == "buy").fill_null(False).alias("is_buy")) \
        .select(list(TRADE_FRAME_SCHEMA)).cast(pl.Schema(TRADE_FRAME_SCHEMA))


def _default_or_column(table: pl.DataFrame, name: str, default: str | None, path: Path) -> pl.Expr:
    if name in table.columns:
        if default is None:
            return pl.col(name)
        return pl.when(_missing(name)).then(pl.lit(default, pl.String)).otherwise(pl.col(name))
    if default is None:
        raise TradeFileError(f"{path}: no {name!r} column; give a default with --{name}")
    return pl.lit(default, dtype=pl.String)


def _read_csv(path: Path, exchange: str | None, symbol: str | None, result: TradeFileResult,
              max_errors: int) -> pl.DataFrame:
    table = _read_header_table(path)
    if table.width == 0:
        return empty_trades()
    missing = [c for c in ("ts_ms", "price", "qty") if c not in table.columns]
    if missing:
        raise TradeFileError(f"{path}: the header lacks {', '.join(missing)} (need at least ts_ms,price,qty)")
    return _from_named_columns(path, table, 2, exchange, symbol, result, max_errors)


def _read_parquet(path: Path, exchange: str | None, symbol: str | None, result: TradeFileResult,
                  max_errors: int) -> pl.DataFrame:
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise TradeFileError(f"cannot read {path} as Parquet: {exc}") from exc
    table = table.rename({c: c.strip().lower() for c in table.columns})
    missing = [c for c in ("ts_ms", "price", "qty") if c not in table.columns]
    if missing:
        raise TradeFileError(f"{path}: no column(s) {', '.join(missing)} (need at least ts_ms,price,qty)")
    # The same checks as CSV; the "line" of a row is its 1-based row number. Integer ts_ms and
    # numeric price/qty columns stay typed (no text round trip); anything else is checked as text,
    # so e.g. a float ts_ms is rejected exactly as "1.5" in a CSV would be.
    known = [c for c in ("exchange", "symbol", "trade_id", "price", "qty", "side", "ts_ms") if c in table.columns]
    typed = {c for c in ("ts_ms", "price", "qty")
             if (table.schema[c].is_integer() if c == "ts_ms" else table.schema[c].is_numeric())}
    table = table.select([pl.col(c) if c in typed else pl.col(c).cast(pl.String) for c in known]) \
        .with_columns(pl.lit(False).alias("__blank"))
    return _from_named_columns(path, table, 1, exchange, symbol, result, max_errors)


def _from_named_columns(path: Path, table: pl.DataFrame, first_line: int, exchange: str | None,
                        symbol: str | None, result: TradeFileResult, max_errors: int) -> pl.DataFrame:
    has_side = "side" in table.columns
    parsed = {
        "__ts": _integer_ms("ts_ms"),
        "__price": _float("price"),
        "__qty": _float("qty"),
        "__exchange": _per_distinct(table, _default_or_column(table, "exchange", exchange, path), str.lower),
        "__symbol": _default_or_column(table, "symbol", symbol, path),
        "__side": _per_distinct(table, pl.col("side"), _side_of) if has_side else pl.lit(None, pl.String),
    }
    checks = [
        ("missing_field", pl.any_horizontal([_missing(c, table.schema[c]) for c in ("ts_ms", "price", "qty")]),
         "missing ts_ms, price or qty"),
        ("invalid_timestamp", pl.col("__ts").is_null(), "ts_ms is not an integer number of ms >= 0"),
        ("invalid_price", _not_positive_finite("__price"), "price is not a finite number > 0"),
        ("invalid_qty", _not_positive_finite("__qty"), "qty is not a finite number > 0"),
        ("missing_field", _missing("__exchange"), "missing exchange"),
        ("missing_field", _missing("__symbol"), "missing symbol"),
    ]
    if has_side:
        checks.append(("invalid_side", pl.col("__side").is_null(), "side is not buy or sell"))
    output = {
        "exchange": pl.col("__exchange"),
        "symbol": pl.col("__symbol"),
        "trade_id": pl.col("trade_id") if "trade_id" in table.columns else pl.lit(None, pl.String),
        "price": pl.col("__price"),
        "qty": pl.col("__qty"),
        "side": pl.col("__side"),
        "ts_ms": pl.col("__ts"),
    }
    return _finish(path, table, first_line, parsed, checks, output, result, max_errors)


def _read_kraken_csv(path: Path, exchange: str | None, symbol: str | None, result: TradeFileResult,
                     max_errors: int) -> pl.DataFrame:
    table = _read_plain_table(path, ["time", "price", "volume"])
    if table.width == 0:
        return empty_trades()
    table = table.with_columns(_cut_fraction(table, "time").alias("__time"))
    parsed = {"__ts": _seconds_text_ms("__time"), "__price": _float("price"), "__qty": _float("volume")}
    checks = [
        ("missing_field", pl.any_horizontal([_missing(c) for c in ("time", "price", "volume")]),
         "missing time, price or volume"),
        ("invalid_timestamp", pl.col("__ts").is_null(), "time is not decimal unix seconds"),
        ("invalid_price", _not_positive_finite("__price"), "price is not a finite number > 0"),
        ("invalid_qty", _not_positive_finite("__qty"), "volume is not a finite number > 0"),
    ]
    output = {
        "exchange": pl.lit(exchange or "kraken", pl.String),
        "symbol": pl.lit(symbol or _symbol_from_file_name(path, "kraken-csv"), pl.String),
        "trade_id": pl.lit(None, pl.String),
        "price": pl.col("__price"),
        "qty": pl.col("__qty"),
        "side": pl.lit(None, pl.String),
        "ts_ms": pl.col("__ts"),
    }
    return _finish(path, table, 1, parsed, checks, output, result, max_errors)


def _read_binance_csv(path: Path, exchange: str | None, symbol: str | None, result: TradeFileResult,
                      max_errors: int) -> pl.DataFrame:
    names = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker"]
    table = _read_plain_table(path, names)
    if table.width == 0:
        return empty_trades()
    first_line = 1
    first_id = table["id"][0]
    if first_id is not None and not first_id.strip().isdigit():  # a header row
        table = table.slice(1)
        first_line = 2
    parsed = {
        "__ts": _binance_time_ms("time"),
        "__price": _float("price"),
        "__qty": _float("qty"),
        "__maker": _per_distinct(table, pl.col("is_buyer_maker"), str.lower),
    }
    checks = [
        ("missing_field", pl.any_horizontal([_missing(c) for c in ("id", "price", "qty", "time", "is_buyer_maker")]),
         "missing id, price, qty, time or is_buyer_maker"),
        ("invalid_timestamp", pl.col("__ts").is_null(), "time is not integer epoch ms or µs"),
        ("invalid_price", _not_positive_finite("__price"), "price is not a finite number > 0"),
        ("invalid_qty", _not_positive_finite("__qty"), "qty is not a finite number > 0"),
        ("invalid_side", ~pl.col("__maker").is_in(["true", "false"]), "is_buyer_maker is not true or false"),
    ]
    output = {
        "exchange": pl.lit(exchange or "binance", pl.String),
        "symbol": pl.lit(symbol or _symbol_from_file_name(path, "binance-csv"), pl.String),
        "trade_id": pl.col("id"),
        "price": pl.col("__price"),
        "qty": pl.col("__qty"),
        # the buyer was the maker, so the taker sold
        "side": pl.when(pl.col("__maker") == "true").then(pl.lit("sell")).otherwise(pl.lit("buy")),
        "ts_ms": pl.col("__ts"),
    }
    return _finish(path, table, first_line, parsed, checks, output, result, max_errors)


def _read_jsonl(path: Path, exchange: str | None, symbol: str | None, result: TradeFileResult,
                max_errors: int) -> pl.DataFrame:
    # Trade records carry their own exchange and symbol; the defaults do not apply.
    data = _file_bytes(path)
    exchanges: list[str] = []
    symbols: list[str] = []
    trade_ids: list[str] = []
    prices: list[float] = []
    qtys: list[float] = []
    sides: list[str] = []
    times: list[int] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        result.rows_read += 1
        try:
            trade = decode_trade(line)
        except RecordError as exc:
            result.bad_rows += 1
            reason = _json_reason(str(exc))
            result.bad_by_reason[reason] += 1
            if len(result.errors) < max_errors:
                result.errors.append(RowError(str(path), number, reason, str(exc)))
            continue
        exchanges.append(trade.exchange)
        symbols.append(trade.symbol)
        trade_ids.append(trade.trade_id)
        prices.append(trade.price)
        qtys.append(trade.qty)
        sides.append(trade.side)
        times.append(trade.ts_ms)
    frame = pl.DataFrame(
        {"exchange": exchanges, "symbol": symbols, "trade_id": trade_ids, "price": prices, "qty": qtys,
         "side": sides, "ts_ms": times},
        schema={k: v for k, v in TRADE_FRAME_SCHEMA.items() if k != "is_buy"},
    )
    return frame.with_columns((pl.col("side") == "buy").alias("is_buy"))


def _json_reason(message: str) -> str:
    for field_name, code in (("price", "invalid_price"), ("qty", "invalid_qty"), ("side", "invalid_side"),
                             ("ts_ms", "invalid_timestamp")):
        if f"$.{field_name}`" in message:
            return code
    if "missing required field" in message.lower():
        return "missing_field"
    if "not valid json" in message.lower():
        return "invalid_json"
    return "invalid_record"


_READERS = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "kraken-csv": _read_kraken_csv,
    "binance-csv": _read_binance_csv,
}


# --- writing --------------------------------------------------------------------------


def output_format(path: str | Path, format: str = "auto") -> str:
    if format not in OUTPUT_FORMATS:
        raise TradeFileError(f"unknown output format {format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    if format != "auto":
        return format
    suffix = Path(path).suffix.lower()
    found = _EXTENSION_FORMATS.get(suffix)
    if found is None:
        raise TradeFileError(f"cannot tell the output format of {path} from its extension (.jsonl, .csv, .parquet)")
    return found


def write_candles(candles: pl.DataFrame, path: str | Path, format: str = "auto") -> Path:
    """Write a candles frame (columns records.CANDLE_FIELDS, in that order) as JSON lines, CSV or Parquet.

    Floats are written in their shortest round-trip form, so reading the file
    back gives the same float64 values bit for bit.
    """
    path = Path(path)
    file_format = output_format(path, format)
    frame = candles.select(CANDLE_FIELDS)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "jsonl":
        frame.write_ndjson(path)
    elif file_format == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def read_candles(path: str | Path, format: str = "auto") -> pl.DataFrame:
    """Read back a file written by :func:`write_candles`."""
    from candleflow.core.candles_batch import CANDLE_SCHEMA

    path = Path(path)
    file_format = output_format(path, format)
    if file_format == "jsonl":
        frame = pl.read_ndjson(path, schema=CANDLE_SCHEMA)
    elif file_format == "csv":
        frame = pl.read_csv(path, schema=CANDLE_SCHEMA)
    else:
        frame = pl.read_parquet(path)
    return frame.select(CANDLE_FIELDS).cast(pl.Schema(CANDLE_SCHEMA))
