"""Paging an exchange's public REST trade history into the page cache, resumably.

For each symbol, :func:`fetch_history` asks the adapter's ``fetch_trades`` for
one page after another (Kraken: the ``since`` nanosecond cursor and ``last``;
Binance: ``aggTrades`` by start time for the first trade id, then
``historicalTrades`` by ``fromId``; any other adapter with ``fetch_trades``
works the same way) and commits every page to :class:`PageCache` before asking
for the next, so an interrupted run resumes where it stopped.

Pacing and errors:

- requests of one venue are spaced at the adapter's ``REST_MIN_INTERVAL_S``
  (its documented public limit) by one shared :class:`Pacer`;
- a rate-limit answer (HTTP 429/418, Kraken's ``EAPI:Rate limit exceeded``)
  waits the venue's ``Retry-After`` (else a doubling back-off) and asks for
  the same page again; it is counted, never skipped;
- any other failure (malformed body, HTTP error, connection error) is retried
  with back-off; a page that stays bad is recorded with its position
  (:class:`BadPage`) and skipped where the cursor says what the page held
  (Binance: the next ``REST_LIMIT`` ids); otherwise that symbol stops there
  and a rerun retries from the same cursor;
- single malformed rows inside a good page are reported and skipped (the
  adapter's ``RestPage.errors``).

The job stops when a page reaches ``until_ms`` or the venue has nothing newer.
Every trade of a page is cached, also those at or after ``until_ms``, so a
later run with a later ``until`` continues from the cursor without a hole;
the computation filters by time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from candleflow.backfill.cache import BadPage, CachedPage, Checkpoint, PageCache, PageError
from candleflow.exchanges.base import RateLimited, RestPage
from candleflow.exchanges.gapfill import Pacer
from candleflow.log import get_logger

log = get_logger("candleflow.backfill.rest")


def _skip_ids(venue: str) -> Callable[[str], str]:
    """The cursor after a page of `REST_LIMIT` consecutive trade ids starting at the cursor."""
    def skip(cursor: str) -> str:
        from candleflow.exchanges import get_adapter

        return str(int(cursor) + get_adapter(venue).REST_LIMIT)

    return skip


# Where a venue's cursor tells what a page holds (consecutive trade ids), a page
# that stays bad can be skipped exactly and the hole is reported; elsewhere the
# symbol stops there and a rerun retries it.
SKIP_PAGE: dict[str, Callable[[str], str]] = {"binance": _skip_ids("binance"), "coinbase": _skip_ids("coinbase")}

# Venues whose public REST API cannot page through history: their fetch_trades
# serves gap fill after a reconnect only.
NO_REST_HISTORY: dict[str, str] = {
    "bybit": "Bybit's public REST API returns only the most recent trades (no history paging)",
    "okx": "OKX pages its trade history backwards from the newest trade, a few thousand trades per call",
}


@dataclass
class FetchOptions:
    until_ms: int
    base_url: str | None = None  # the venue's REST endpoint (tests: a local fake)
    min_interval_s: float | None = None  # None: the adapter's REST_MIN_INTERVAL_S
    retries: int = 3  # attempts after the first for a page that fails (not rate limiting)
    retry_wait_s: float = 1.0  # first back-off; doubles
    max_rate_limit_wait_s: float = 60.0  # cap on one rate-limit wait
    max_rate_limited: int = 30  # rate-limit answers in a row before the symbol stops
    timeout_s: float = 30.0
    max_pages: int | None = None  # stop after this many new pages (None: until done)


ProgressCallback = Callable[[str, Checkpoint], None]


def has_rest_history(adapter: ModuleType) -> bool:
    return callable(getattr(adapter, "fetch_trades", None)) and adapter.NAME not in NO_REST_HISTORY


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Recorder:
    """Keeps the raw bodies of the responses of one page request (an httpx response hook)."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    async def __call__(self, response: Any) -> None:
        await response.aread()
        self.bodies.append(response.content.decode("utf-8", "replace"))


def _page_record(seq: int, cursor: str | None, page: RestPage, bodies: list[str], seen: set[str],
                 since_ms: int) -> CachedPage:
    record = CachedPage(seq=seq, cursor=cursor, next_cursor=page.next_cursor, fetched_ms=_now_ms(),
                        responses=bodies, trade_id=[], price=[], qty=[], side=[], ts_ms=[], recv_ms=[],
                        errors=[PageError(e.reason, e.detail, e.raw.decode("utf-8", "replace"))
                                for e in page.errors])
    for trade in page.trades:
        if trade.trade_id in seen:
            record.repeats += 1
            continue
        if trade.ts_ms < since_ms:
            continue
        seen.add(trade.trade_id)
        record.trade_id.append(trade.trade_id)
        record.price.append(trade.price)
        record.qty.append(trade.qty)
        record.side.append(trade.side)
        record.ts_ms.append(trade.ts_ms)
        record.recv_ms.append(trade.recv_ms)
    return record


async def fetch_symbol(adapter: ModuleType, client: Any, recorder: _Recorder, cache: PageCache,
                       options: FetchOptions, pacer: Pacer,
                       on_progress: ProgressCallback | None = None) -> Checkpoint:
    """Fetch one symbol's pages from its checkpoint on; returns the final checkpoint."""
    checkpoint = cache.load()
    checkpoint.caught_up = False
    checkpoint.stopped = ""
    if checkpoint.last_ts_ms is not None and checkpoint.last_ts_ms >= options.until_ms:
        return checkpoint  # an earlier run already reached `until`
    symbol = cache.symbol
    failures = 0
    rate_limited_in_row = 0
    rate_wait = options.retry_wait_s
    new_pages = 0
    while options.max_pages is None or new_pages < options.max_pages:
        await pacer.wait()
        cursor = checkpoint.cursor
        recorder.bodies = []
        try:
            page: RestPage = await adapter.fetch_trades(
                client, symbol, since_ms=None if cursor is not None else checkpoint.since_ms, cursor=cursor,
                recv_ms=_now_ms(), base_url=options.base_url)
        except RateLimited as exc:
            checkpoint.rate_limited += 1
            rate_limited_in_row += 1
            if rate_limited_in_row > options.max_rate_limited:
                checkpoint.stopped = f"rate limited {rate_limited_in_row} times in a row at cursor {cursor}"
                break
            wait = exc.retry_after_s if exc.retry_after_s > 0 else rate_wait
            wait = min(wait, options.max_rate_limit_wait_s)
            rate_wait = min(rate_wait * 2, options.max_rate_limit_wait_s)
            log.warning("rate limited; waiting", exchange=cache.exchange, symbol=symbol, wait_s=wait,
                        detail=str(exc))
            pacer.push_back(wait)
            continue
        except Exception as exc:  # noqa: BLE001 - a bad page is reported, never a crash
            failures += 1
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if failures <= options.retries:
                wait = options.retry_wait_s * 2 ** (failures - 1)
                log.warning("page failed; retrying", exchange=cache.exchange, symbol=symbol, cursor=cursor,
                            attempt=failures, error=reason, wait_s=wait)
                pacer.push_back(wait)
                continue
            skip = SKIP_PAGE.get(cache.exchange)
            skipped_to = skip(cursor) if skip is not None and cursor is not None else None
            checkpoint.bad_pages.append(BadPage(seq=checkpoint.pages, cursor=cursor, reason=reason,
                                                skipped_to=skipped_to))
            log.error("bad page", exchange=cache.exchange, symbol=symbol, cursor=cursor, error=reason,
                      skipped_to=skipped_to)
            failures = 0
            if skipped_to is None:
                checkpoint.stopped = f"page at cursor {cursor} failed {options.retries + 1} times: {reason}"
                cache.save(checkpoint)
                break
            checkpoint.cursor = skipped_to
            cache.save(checkpoint)
            continue
        failures = 0
        rate_limited_in_row = 0
        rate_wait = options.retry_wait_s
        record = _page_record(checkpoint.pages, cursor, page, recorder.bodies, set(checkpoint.last_page_ids),
                              checkpoint.since_ms)
        checkpoint.pages += 1
        checkpoint.trades += len(record.trade_id)
        checkpoint.bad_rows += len(record.errors)
        checkpoint.repeats += record.repeats
        if record.ts_ms:
            first, last = min(record.ts_ms), max(record.ts_ms)
            checkpoint.first_ts_ms = first if checkpoint.first_ts_ms is None else min(checkpoint.first_ts_ms, first)
            checkpoint.last_ts_ms = last if checkpoint.last_ts_ms is None else max(checkpoint.last_ts_ms, last)
        if page.trades:
            checkpoint.last_page_ids = [t.trade_id for t in page.trades]
        # No next cursor means "nothing newer yet": ask from the same place next time.
        progressed = page.next_cursor is not None and page.next_cursor != cursor
        if progressed:
            checkpoint.cursor = page.next_cursor
        cache.commit(record, checkpoint)
        new_pages += 1
        if on_progress is not None:
            on_progress(symbol, checkpoint)
        if checkpoint.last_ts_ms is not None and checkpoint.last_ts_ms >= options.until_ms:
            break
        if not progressed:
            checkpoint.caught_up = True
            cache.save(checkpoint)
            break
    return checkpoint


async def fetch_history(adapter: ModuleType, data_dir: Any, symbols: list[str], since_ms: int,
                        options: FetchOptions, on_progress: ProgressCallback | None = None) -> dict[str, Checkpoint]:
    """Fetch every symbol in turn (one pacer: the venue's limit is per client); checkpoints by symbol."""
    import httpx

    interval = adapter.REST_MIN_INTERVAL_S if options.min_interval_s is None else options.min_interval_s
    pacer = Pacer(interval)
    recorder = _Recorder()
    results: dict[str, Checkpoint] = {}
    async with httpx.AsyncClient(timeout=options.timeout_s, event_hooks={"response": [recorder]},
                                 headers={"User-Agent": "candleflow-backfill"}) as client:
        for symbol in symbols:
            cache = PageCache(data_dir, adapter.NAME, symbol, since_ms)
            results[symbol] = await fetch_symbol(adapter, client, recorder, cache, options, pacer, on_progress)
    return results


def run_fetch(adapter: ModuleType, data_dir: Any, symbols: list[str], since_ms: int, options: FetchOptions,
              on_progress: ProgressCallback | None = None) -> dict[str, Checkpoint]:
    return asyncio.run(fetch_history(adapter, data_dir, symbols, since_ms, options, on_progress))
