"""Fetching the trades missed while a feed was down, from the venue's REST history.

After a reconnect, :func:`fill_gap` pages through ``adapter.fetch_trades`` from
the last trade seen on that symbol (its ``ts_ms``, inclusive: repeats are
removed by de-duplication downstream) until it reaches ``until_ms`` (when the
new subscription took effect) or the venue has nothing newer. Requests are
spaced at the adapter's ``REST_MIN_INTERVAL_S``; a :class:`RateLimited` answer
waits the venue's ``Retry-After`` (or a growing back-off) and retries the same
page. Failures other than rate limiting end the fill and are reported, so a
flaky REST endpoint never stops the live feed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from candleflow.exchanges.base import FrameError, RateLimited
from candleflow.log import get_logger
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

log = get_logger("candleflow.exchanges.gapfill")


@dataclass
class GapFillResult:
    trades: list[Trade] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    pages: int = 0
    rate_limited: int = 0
    failure: str = ""  # why the fill stopped early, "" when it completed


class Pacer:
    """At most one request per `interval_s`, shared by all fills of one venue."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = time.monotonic() + self.interval_s

    def push_back(self, seconds: float) -> None:
        self._next = max(self._next, time.monotonic() + seconds)


async def fill_gap(adapter: ModuleType, client: "httpx.AsyncClient", symbol: str, *, since_ms: int,
                   until_ms: int, pacer: Pacer, base_url: str | None = None, max_pages: int = 100,
                   max_rate_limited: int = 10, clock_ms: Callable[[], int] | None = None,
                   on_page: Callable[[list[Trade]], Awaitable[None] | None] | None = None) -> GapFillResult:
    """Trades of `symbol` from `since_ms` up to `until_ms`, oldest first (see module doc)."""
    clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
    result = GapFillResult()
    cursor: str | None = None
    rate_wait = 1.0
    while result.pages < max_pages:
        await pacer.wait()
        try:
            page = await adapter.fetch_trades(client, symbol, since_ms=None if cursor else since_ms, cursor=cursor,
                                              recv_ms=clock_ms(), base_url=base_url)
        except RateLimited as exc:
            result.rate_limited += 1
            if result.rate_limited > max_rate_limited:
                result.failure = f"rate limited {result.rate_limited} times"
                break
            wait = exc.retry_after_s if exc.retry_after_s > 0 else rate_wait
            rate_wait = min(rate_wait * 2, 60.0)
            log.warning("gap fill rate limited", exchange=adapter.NAME, symbol=symbol, wait_s=wait)
            pacer.push_back(wait)
            continue
        except Exception as exc:  # noqa: BLE001 - any REST failure ends this fill, never the feed
            result.failure = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("gap fill failed", exchange=adapter.NAME, symbol=symbol, error=result.failure)
            break
        result.pages += 1
        result.errors.extend(page.errors)
        fresh = [t for t in page.trades if t.ts_ms >= since_ms]
        result.trades.extend(fresh)
        if on_page is not None and fresh:
            maybe = on_page(fresh)
            if maybe is not None:
                await maybe
        reached = bool(page.trades) and page.trades[-1].ts_ms >= until_ms
        if reached or page.next_cursor is None or not page.trades or page.next_cursor == cursor:
            break
        cursor = page.next_cursor
    else:
        result.failure = f"stopped after {max_pages} pages"
    return result
