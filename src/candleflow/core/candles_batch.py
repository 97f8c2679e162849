"""Candles from whole arrays of trades: the vectorised (batch) form of the candle core.

Pure: numpy and polars only, no files, no Kafka. ``candleflow compute candles``
and the backfill call it; the streaming service uses the incremental form in
``core/candles.py``. Both follow the same computation contract, so they give
the same floats, bit for bit:

- a trade belongs to window ``start = ts_ms - ts_ms % tf_ms`` (UTC epoch aligned);
- trades inside a window are ordered by ``ts_ms``, ties by input order (stable);
- open/close are the first/last price in that order, high/low the max/min;
- volume, quote_volume (sum of ``price * qty``) and buy_volume are plain
  left-to-right float64 sums starting from 0.0, in that order;
- vwap = quote_volume / volume;
- with ``fill_gaps``, every window with no trades strictly between a key's first
  and last traded window is a gap fill: open = high = low = close = vwap = the
  previous candle's close, volumes 0.0, trades 0, ``gap_fill`` true.

Why ``np.bincount`` for the sums: ``np.add.reduceat`` (like ``np.sum``) sums
segments longer than 8 elements pairwise, which differs from a sequential sum in
the last bits. ``np.bincount(ids, weights)`` adds ``weights[i]`` into its bin in
input order, one element at a time, starting from 0.0: exactly the sequential
sum, at memory speed. tests/core/test_candles_batch.py holds both facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from candleflow.config import timeframe_ms
from candleflow.records import CANDLE_FIELDS, candle_key

# Column types of a candles frame, in records.CANDLE_FIELDS order.
CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "exchange": pl.String(),
    "symbol": pl.String(),
    "timeframe": pl.String(),
    "start_ms": pl.Int64(),
    "end_ms": pl.Int64(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "quote_volume": pl.Float64(),
    "vwap": pl.Float64(),
    "trades": pl.Int64(),
    "buy_volume": pl.Float64(),
    "gap_fill": pl.Boolean(),
}
assert tuple(CANDLE_SCHEMA) == CANDLE_FIELDS, "CANDLE_SCHEMA must follow records.CANDLE_FIELDS"

# Columns aggregate_frame needs; the taker side comes from `is_buy` or else `side`.
TRADE_COLUMNS: tuple[str, ...] = ("exchange", "symbol", "ts_ms", "price", "qty")

# Each (exchange, symbol) with its rows of a trades frame: a slice, or row indices in input order.
MarketRows = list[tuple[tuple[str, str], slice | np.ndarray]]
# An (exchange, symbol) with its trades as time-sorted arrays (see sorted_markets).
SortedMarket = tuple[tuple[str, str], "_SortedTrades"]
# How the markets' independent pieces of work are run: the builtin map, or e.g. a thread pool's map
# (numpy and polars release the GIL for the array work; results are the same either way).
MapFunction = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


def empty_candles() -> pl.DataFrame:
    """A candles frame with no rows (the right columns and types)."""
    return pl.DataFrame(schema=CANDLE_SCHEMA)


def aggregate_candles(
    ts_ms: Any,
    price: Any,
    qty: Any,
    is_buy: Any,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    fill_gaps: bool = True,
) -> pl.DataFrame:
    """Candles of one (exchange, symbol) for one timeframe, ordered by start_ms.

    ``ts_ms`` (epoch ms), ``price``, ``qty`` and ``is_buy`` (taker side is buy)
    are equally long array-likes of valid trades, in arrival order; they need
    not be sorted. Returns columns ``records.CANDLE_FIELDS`` (types in
    ``CANDLE_SCHEMA``). Raises ValueError for an invalid timeframe or arrays of
    different lengths.
    """
    tf_ms = timeframe_ms(timeframe)
    trades = _sorted_by_time(ts_ms, price, qty, is_buy)
    return _candles_frame(trades, tf_ms, exchange, symbol, timeframe, fill_gaps)


def aggregate_frame(trades: pl.DataFrame, timeframes: Sequence[str], *, fill_gaps: bool = True,
                    markets: MarketRows | None = None) -> pl.DataFrame:
    """Candles of every (exchange, symbol) in ``trades`` for every timeframe.

    ``trades`` has columns ``exchange, symbol, ts_ms, price, qty`` and
    ``is_buy`` (bool) or ``side`` (``"buy"``/``"sell"``; anything else, null
    included, counts as not a buy). Its row order is the arrival order that
    breaks ties on ``ts_ms``. The result is ordered by ``candle_key`` (the
    string ``exchange:symbol:timeframe``) then ``start_ms``. Each timeframe is
    aggregated from the trades directly, never from another timeframe.
    ``markets`` is :func:`market_rows` of this very frame, when the caller has it.
    """
    _check_timeframes(timeframes)
    return aggregate_markets(sorted_markets(trades, markets), timeframes, fill_gaps=fill_gaps)


def sorted_markets(trades: pl.DataFrame, markets: MarketRows | None = None, *,
                   map_markets: MapFunction = map) -> list[SortedMarket]:
    """The trades of each (exchange, symbol) as time-sorted arrays, ready for :func:`aggregate_markets`.

    Made once for all timeframes; a caller that aggregates one timeframe at a
    time (the backfill, which writes each timeframe while computing the next)
    keeps this list. ``trades`` and ``markets`` are as in :func:`aggregate_frame`;
    ``map_markets`` runs the work of each market (see :data:`MapFunction`).
    Raises ValueError for missing columns or nulls.
    """
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if "is_buy" not in trades.columns and "side" not in trades.columns:
        missing.append("is_buy or side")
    if missing:
        raise ValueError(f"trades frame lacks column(s): {', '.join(missing)}")
    if trades.height == 0:
        return []
    nulls = {c: n for c, n in trades.select(pl.col(TRADE_COLUMNS).null_count()).row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"trades frame has nulls in: {', '.join(f'{c} ({n})' for c, n in nulls.items())}")

    ts_ms = trades["ts_ms"].cast(pl.Int64)
    price = trades["price"].cast(pl.Float64)
    qty = trades["qty"].cast(pl.Float64)
    is_buy = (trades["is_buy"] if "is_buy" in trades.columns else trades["side"] == "buy").fill_null(False)

    def sort(item: tuple[tuple[str, str], slice | np.ndarray]) -> SortedMarket:
        market, rows = item
        return market, _sorted_by_time(*(market_values(c, rows) for c in (ts_ms, price, qty, is_buy)))

    return list(map_markets(sort, market_rows(trades) if markets is None else markets))


def market_values(column: pl.Series, rows: slice | np.ndarray) -> np.ndarray:
    """One market's values of a column (rows as in :data:`MarketRows`) as a numpy array.

    Gathered by polars straight from the column's chunks (a file's row groups):
    a numpy copy of the whole column first would allocate as much again, and
    on this kind of virtual machine memory a process has not touched before
    costs ~3 ms per MiB. A slice of a one-chunk column stays a view.
    """
    if isinstance(rows, slice):
        return column.slice(rows.start, rows.stop - rows.start).to_numpy()
    return column.gather(rows).to_numpy()


def aggregate_markets(markets: Sequence[SortedMarket], timeframes: Sequence[str], *,
                      fill_gaps: bool = True, map_markets: MapFunction = map) -> pl.DataFrame:
    """Candles of :func:`sorted_markets` for every timeframe, in :func:`aggregate_frame`'s order;
    ``map_markets`` runs the work of each market and timeframe (see :data:`MapFunction`)."""
    tf_lengths = _check_timeframes(timeframes)
    if not markets:
        return empty_candles()
    work = sorted(((candle_key(exchange, symbol, timeframe), trades, tf_ms, exchange, symbol, timeframe)
                   for (exchange, symbol), trades in markets for timeframe, tf_ms in tf_lengths.items()),
                  key=lambda item: item[0])

    def aggregate(item: tuple[str, _SortedTrades, int, str, str, str]) -> pl.DataFrame:
        _, trades, tf_ms, exchange, symbol, timeframe = item
        return _candles_frame(trades, tf_ms, exchange, symbol, timeframe, fill_gaps)

    return pl.concat(list(map_markets(aggregate, work)), rechunk=True)


def _check_timeframes(timeframes: Sequence[str]) -> dict[str, int]:
    tf_lengths = {tf: timeframe_ms(tf) for tf in timeframes}
    if len(tf_lengths) != len(list(timeframes)):
        raise ValueError(f"duplicate timeframe in {list(timeframes)}")
    return tf_lengths


# Above this many runs of consecutive rows of one market, group the rows by market codes instead.
_MAX_RUNS = 10_000
# Up to this many markets, each market's rows are found by one comparison pass over the codes.
_MAX_SCANNED_MARKETS = 64
# The markets of this many first rows are tried as the frame's markets (see _scan_markets).
_SAMPLE_ROWS = 100_000

def market_rows(trades: pl.DataFrame) -> MarketRows:
    """Each (exchange, symbol) of a non-empty frame with its rows (a slice or indices in input order).

    A text column that holds one value throughout (the exchange, usually) is
    recognised by one comparison pass and not looked at again. A varying one
    is encoded once (a categorical cast: one hash per row, 4-byte codes). Files
    usually hold one market each, so a frame is a few runs of rows of one
    market: those become slices (views, no copy). Markets interleaved row by
    row are grouped through the codes: each market's rows are the positions of
    its code. No temporary as large as a text column is made (on this kind of
    virtual machine, memory a process has not touched before costs ~3 ms per
    MiB). The result can be passed to :func:`aggregate_frame` (``markets=``) by a
    caller that needed it first, e.g. to de-duplicate per market.
    """
    varying = [c for c in ("exchange", "symbol") if not _single_value(trades.get_column(c))]
    if not varying:
        return [((trades["exchange"][0], trades["symbol"][0]), slice(0, trades.height))]
    scanned = _scan_markets(trades, varying)
    if scanned is not None:
        return scanned
    codes = _category_codes(trades.get_column(varying[0]))
    for column in varying[1:]:  # a market is a pair of codes
        column_codes = _category_codes(trades.get_column(column))
        codes = codes.astype(np.int64) * (int(column_codes.max()) + 1) + column_codes
    run_ends = np.flatnonzero(codes[1:] != codes[:-1]) + 1 if len(codes) > 1 else np.empty(0, np.int64)
    if len(run_ends) < _MAX_RUNS:
        run_starts = [0, *run_ends.tolist()]
        runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
        heads = trades.select("exchange", "symbol")[run_starts]
        for (exchange, symbol), start, end in zip(heads.iter_rows(), run_starts, [*run_starts[1:], trades.height]):
            runs.setdefault((exchange, symbol), []).append((start, end))
        return [(market, slice(*spans[0]) if len(spans) == 1
                 else np.concatenate([np.arange(start, end) for start, end in spans]))
                for market, spans in runs.items()]
    del run_ends
    present = np.flatnonzero(np.bincount(codes)) if int(codes.max()) < 4 * trades.height else np.unique(codes)
    if len(present) <= _MAX_SCANNED_MARKETS:
        groups = [np.flatnonzero(codes == code) for code in present.tolist()]
    else:  # many markets: one stable sort (rows of a market stay in input order, the tie-break on ts_ms)
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    exchanges, symbols = trades.get_column("exchange"), trades.get_column("symbol")
    return [((exchanges[int(rows[0])], symbols[int(rows[0])]), rows) for rows in groups]


def _scan_markets(trades: pl.DataFrame, varying: list[str]) -> MarketRows | None:
    """The rows of each market by one comparison pass per market, when the markets of the first rows are
    every market of the frame (markets interleaved from the start, as in a merged file); else None.

    Comparing a text column with one value costs a tenth of hashing it (the categorical cast).
    """
    candidates = trades.head(_SAMPLE_ROWS).select("exchange", "symbol").unique(maintain_order=True)
    if candidates.height > _MAX_SCANNED_MARKETS or any(candidates.null_count().row(0)):
        return None
    masks = []
    for market in candidates.iter_rows():
        tests = [trades.get_column(c) == value for c, value in zip(("exchange", "symbol"), market) if c in varying]
        masks.append(tests[0] if len(tests) == 1 else tests[0] & tests[1])
    if sum(int(mask.sum()) for mask in masks) != trades.height:  # a market that trades only later, or nulls
        return None
    return [(market, np.flatnonzero(mask.to_numpy())) for market, mask in zip(candidates.iter_rows(), masks)]


def _single_value(column: pl.Series) -> bool:
    """Whether every row holds the first row's value (no null)."""
    return column.null_count() == 0 and bool((column == column[0]).all())


def _category_codes(column: pl.Series) -> np.ndarray:
    """A non-negative integer per row, equal for equal values (nulls get one code of their own)."""
    codes = column.cast(pl.Categorical).to_physical()
    if codes.null_count():
        codes = codes.fill_null(int(codes.max() or 0) + 1)
    return codes.to_numpy()


# --- internals ----------------------------------------------------------------

class _SortedTrades:
    """One key's trades as float64/int64/bool arrays, stably sorted by ts_ms.

    Also what every timeframe needs and is the same for all of them, made once:
    ``price * qty`` per trade, and the times and quantities of the buys.
    """

    __slots__ = ("ts_ms", "price", "qty", "quote", "buy_ts_ms", "buy_qty")

    def __init__(self, ts_ms: np.ndarray, price: np.ndarray, qty: np.ndarray, is_buy: np.ndarray) -> None:
        self.ts_ms, self.price, self.qty = ts_ms, price, qty
        self.quote = price * qty
        buys = np.flatnonzero(is_buy)  # then take(): several times faster than boolean indexing twice
        self.buy_ts_ms, self.buy_qty = ts_ms.take(buys), qty.take(buys)

    def __len__(self) -> int:
        return len(self.ts_ms)


def _sorted_by_time(ts_ms: Any, price: Any, qty: Any, is_buy: Any) -> _SortedTrades:
    ts = np.asarray(ts_ms, dtype=np.int64)
    prices = np.asarray(price, dtype=np.float64)
    quantities = np.asarray(qty, dtype=np.float64)
    buys = np.asarray(is_buy, dtype=bool)
    if not (ts.ndim == prices.ndim == quantities.ndim == buys.ndim == 1):
        raise ValueError("ts_ms, price, qty and is_buy must be one-dimensional")
    if not (len(ts) == len(prices) == len(quantities) == len(buys)):
        raise ValueError(f"ts_ms, price, qty and is_buy differ in length: "
                         f"{len(ts)}, {len(prices)}, {len(quantities)}, {len(buys)}")
    # Files are nearly always in time order already: checking costs one pass, sorting far more.
    if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        order = _stable_time_order(ts)
        ts, prices, quantities, buys = ts[order], prices[order], quantities[order], buys[order]
    return _SortedTrades(ts, prices, quantities, buys)


def _stable_time_order(ts: np.ndarray) -> np.ndarray:
    """Indices that sort ``ts`` with ties kept in input order.

    Packing ``(ts - min) * n + index`` into one int64 makes every key unique, so
    numpy's fast unstable sort gives the stable order; when that would overflow,
    fall back to the (slower) stable argsort.
    """
    n = len(ts)
    low = int(ts.min())
    span = int(ts.max()) - low
    if (span + 1) * n < 2**63:
        packed = (ts - low) * n + np.arange(n, dtype=np.int64)
        packed.sort()
        return packed % n
    return np.argsort(ts, kind="stable")


def _candles_frame(trades: _SortedTrades, tf_ms: int, exchange: str, symbol: str, timeframe: str,
                   fill_gaps: bool) -> pl.DataFrame:
    if len(trades) == 0:
        return empty_candles()
    columns = _window_columns(trades, tf_ms, fill_gaps)
    frame = pl.DataFrame(columns)
    return frame.with_columns(
        pl.lit(exchange, dtype=pl.String).alias("exchange"),
        pl.lit(symbol, dtype=pl.String).alias("symbol"),
        pl.lit(timeframe, dtype=pl.String).alias("timeframe"),
    ).select(CANDLE_FIELDS)


def _sequential_sums(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """``out[r]`` = 0.0 + the values of row r, added one by one in array order."""
    # bincount of an empty array returns int64 zeros even with weights.
    return np.bincount(rows, weights=values, minlength=n_rows).astype(np.float64, copy=False)


def _window_columns(trades: _SortedTrades, tf_ms: int, fill_gaps: bool) -> dict[str, np.ndarray]:
    """The numeric candle columns of time-sorted trades for one timeframe."""
    ts, price = trades.ts_ms, trades.price
    n = len(ts)
    window = ts // tf_ms  # floor division: start_ms = window * tf_ms = ts - ts % tf_ms
    first_of_window = np.flatnonzero(window[1:] != window[:-1]) + 1
    starts = np.concatenate(([0], first_of_window))  # index of each traded window's first trade
    lasts = np.concatenate((first_of_window - 1, [n - 1]))  # ... and of its last trade
    first_window = int(window[0])
    buy_window = trades.buy_ts_ms // tf_ms

    if fill_gaps:
        # One output row per window from the first traded one to the last; a trade's
        # row is its window's offset from the first.
        row_of_trade = np.subtract(window, first_window, out=window)
        n_rows = int(row_of_trade[-1]) + 1
        start_ms = (first_window + np.arange(n_rows, dtype=np.int64)) * tf_ms
        traded_rows = row_of_trade[starts]
        row_of_buy = np.subtract(buy_window, first_window, out=buy_window)
    else:
        traded_windows = window[starts]
        row_of_trade = np.zeros(n, dtype=np.int64)
        row_of_trade[first_of_window] = 1
        np.cumsum(row_of_trade, out=row_of_trade)
        n_rows = len(starts)
        start_ms = traded_windows * tf_ms
        traded_rows = np.arange(n_rows)
        row_of_buy = np.searchsorted(traded_windows, buy_window)

    # Sequential float64 sums in trade order (see the module docstring).
    volume = _sequential_sums(row_of_trade, trades.qty, n_rows)
    quote_volume = _sequential_sums(row_of_trade, trades.quote, n_rows)
    buy_volume = _sequential_sums(row_of_buy, trades.buy_qty, n_rows)
    trade_count = np.zeros(n_rows, dtype=np.int64)
    trade_count[traded_rows] = lasts - starts + 1

    close = np.empty(n_rows, dtype=np.float64)
    close[traded_rows] = price[lasts]
    if n_rows > len(starts):
        # A gap row takes the close of the last traded row before it.
        last_traded = np.where(trade_count > 0, np.arange(n_rows), 0)
        np.maximum.accumulate(last_traded, out=last_traded)
        close = close[last_traded]
    open_, high, low, vwap = close.copy(), close.copy(), close.copy(), close.copy()
    open_[traded_rows] = price[starts]
    high[traded_rows] = np.maximum.reduceat(price, starts)
    low[traded_rows] = np.minimum.reduceat(price, starts)
    vwap[traded_rows] = quote_volume[traded_rows] / volume[traded_rows]

    return {
        "start_ms": start_ms,
        "end_ms": start_ms + tf_ms,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "quote_volume": quote_volume,
        "vwap": vwap,
        "trades": trade_count,
        "buy_volume": buy_volume,
        "gap_fill": trade_count == 0,
    }
