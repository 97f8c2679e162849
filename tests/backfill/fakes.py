"""Local fake REST trade history for Kraken and Binance, paging as the venues document it.

Both serve a fixed, generated trade history through
:class:`tests.exchanges.fakeserver.FakeExchange` (HTTP on 127.0.0.1):

- Kraken ``GET /0/public/Trades?pair=XBTUSD&since=<ns>``: up to ``page_size``
  trades with time >= since (the boundary trade comes again on the next page,
  as Kraken's inclusive cursor does), ``last`` = the nanosecond time of the
  page's last trade; an exhausted history answers an empty list.
- Binance ``GET /api/v3/aggTrades?startTime=<ms>&limit=1`` (the first trade at or
  after a time, as an aggregate with its first trade id ``f``) and
  ``GET /api/v3/historicalTrades?fromId=<id>&limit=<n>``.

Misbehaviour is scripted by request number (0-based, counted per route):
``rate_limited`` (Kraken ``EAPI:Rate limit exceeded`` / Binance HTTP 429),
``http_429`` (Kraken HTTP 429), ``malformed`` (a truncated body), and
``bad_rows`` (trade ids whose row is served with a broken price).
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from typing import Self

from candleflow.exchanges import binance, kraken
from tests.exchanges.fakeserver import FakeExchange

KRAKEN_TRADES = "/0/public/Trades"
BINANCE_AGG = "/api/v3/aggTrades"
BINANCE_HISTORY = "/api/v3/historicalTrades"


@dataclass
class FakeTrade:
    trade_id: int
    ts_ns: int
    price: str
    qty: str
    buy: bool

    @property
    def ts_ms(self) -> int:
        return self.ts_ns // 1_000_000


def make_history(n: int, start_ms: int, seed: int = 7, mean_gap_ms: float = 900.0,
                 first_id: int = 1) -> list[FakeTrade]:
    """`n` trades from `start_ms` on: a random walk, with bursts sharing one timestamp."""
    rng = random.Random(seed)
    price = 30_000.0
    ts_ns = start_ms * 1_000_000
    out = []
    for i in range(n):
        if rng.random() > 0.15:  # 15% share the previous trade's time (same-time bursts)
            ts_ns += int(rng.expovariate(1 / mean_gap_ms) * 1_000_000) + 1_000
        price = max(1.0, price * (1 + rng.gauss(0, 0.0004)))
        out.append(FakeTrade(first_id + i, ts_ns // 1000 * 1000, f"{price:.1f}", f"{rng.uniform(0.0001, 2):.8f}",
                             rng.random() < 0.5))
    return out


@dataclass
class Script:
    rate_limited: set[int] = field(default_factory=set)
    http_429: set[int] = field(default_factory=set)
    malformed: set[int] = field(default_factory=set)
    bad_rows: set[int] = field(default_factory=set)  # trade ids served with a broken price


class _RestServer:
    """A fake venue's REST API on a local FakeExchange, used as a context manager."""

    server: FakeExchange

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.rest_url


class FakeKraken(_RestServer):
    """Kraken's public trade history for one or more pairs."""

    def __init__(self, histories: dict[str, list[FakeTrade]], page_size: int = 1000,
                 script: Script | None = None, delay_s: float = 0.0) -> None:
        self.histories = {kraken.rest_pair(symbol): trades for symbol, trades in histories.items()}
        self.page_size = page_size
        self.script = script or Script()
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()
        self.server = FakeExchange(rest_routes={KRAKEN_TRADES: self._trades})

    def _trades(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        import time

        with self._lock:
            index = self.requests
            self.requests += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if index in self.script.rate_limited:
            return 200, {}, b'{"error":["EAPI:Rate limit exceeded"]}'
        if index in self.script.http_429:
            return 429, {"Retry-After": "0.01"}, b'{"error":["EGeneral:Too many requests"]}'
        pair = params.get("pair", "")
        if pair not in self.histories:
            return 200, {}, json.dumps({"error": ["EQuery:Unknown asset pair"]}).encode()
        if index in self.script.malformed:
            return 200, {}, b'{"error":[],"result":{"' + pair.encode() + b'":[["30000.1","0.5",'
        since = int(params.get("since", "0"))
        history = self.histories[pair]
        page = [t for t in history if t.ts_ns >= since][:self.page_size]
        rows = []
        for t in page:
            price = "not-a-price" if t.trade_id in self.script.bad_rows else t.price
            seconds = f"{t.ts_ns // 1_000_000_000}.{t.ts_ns % 1_000_000_000:09d}"[:-2]  # 7 decimals, like Kraken
            rows.append(f'["{price}","{t.qty}",{seconds},"{"b" if t.buy else "s"}","l","",{t.trade_id}]')
        last = str(page[-1].ts_ns) if page else str(since)
        body = '{"error":[],"result":{"%s":[%s],"last":"%s"}}' % (pair, ",".join(rows), last)
        return 200, {}, body.encode()


class FakeBinance(_RestServer):
    """Binance's historicalTrades (by id) and aggTrades (first id at a time) for one or more symbols."""

    def __init__(self, histories: dict[str, list[FakeTrade]], script: Script | None = None) -> None:
        self.histories = {binance.venue_symbol(symbol): trades for symbol, trades in histories.items()}
        self.script = script or Script()
        self.history_requests = 0
        self._lock = threading.Lock()
        self.server = FakeExchange(rest_routes={BINANCE_AGG: self._agg, BINANCE_HISTORY: self._history})

    def _agg(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        history = self.histories.get(params.get("symbol", ""))
        if history is None:
            return 400, {}, b'{"code":-1121,"msg":"Invalid symbol."}'
        start = int(params["startTime"])
        first = next((t for t in history if t.ts_ms >= start), None)
        if first is None:
            return 200, {}, b"[]"
        return 200, {}, json.dumps([{"a": first.trade_id, "p": first.price, "q": first.qty, "f": first.trade_id,
                                     "l": first.trade_id, "T": first.ts_ms, "m": not first.buy, "M": True}]).encode()

    def _history(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            index = self.history_requests
            self.history_requests += 1
        if index in self.script.rate_limited:
            return 429, {"Retry-After": "0.01"}, (b'{"code":-1003,"msg":"Too many requests; current limit of IP'
                                               b'(127.0.0.1) is 6000 requests per minute."}')
        history = self.histories.get(params.get("symbol", ""))
        if history is None:
            return 400, {}, b'{"code":-1121,"msg":"Invalid symbol."}'
        if index in self.script.malformed:
            return 200, {}, b'[{"id":1,"price":'
        from_id, limit = int(params["fromId"]), int(params.get("limit", "500"))
        page = [t for t in history if t.trade_id >= from_id][:limit]
        rows = [{"id": t.trade_id, "price": "-5" if t.trade_id in self.script.bad_rows else t.price,
                 "qty": t.qty, "quoteQty": "0", "time": t.ts_ms, "isBuyerMaker": not t.buy, "isBestMatch": True}
                for t in page]
        return 200, {}, json.dumps(rows).encode()


class FakeCoinbase(_RestServer):
    """Coinbase Exchange ``GET /products/{id}/trades?limit=&after=<id>``: ids below `after`, newest first."""

    def __init__(self, histories: dict[str, list[FakeTrade]], script: Script | None = None) -> None:
        from candleflow.exchanges import coinbase

        self.histories = {coinbase.venue_symbol(symbol): trades for symbol, trades in histories.items()}
        self.script = script or Script()
        self.requests = 0
        self._lock = threading.Lock()
        routes = {f"/products/{product}/trades": self._route(product) for product in self.histories}
        self.server = FakeExchange(rest_routes=routes)

    def _route(self, product: str):  # noqa: ANN202 - a RestHandler
        def trades(params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            from datetime import datetime, timezone

            with self._lock:
                index = self.requests
                self.requests += 1
            if index in self.script.rate_limited:
                return 429, {"Retry-After": "0.01"}, b'{"message":"Public rate limit exceeded"}'
            if index in self.script.malformed:
                return 200, {}, b'[{"time":"2023-'
            history = self.histories[product]
            after = int(params.get("after", str(history[-1].trade_id + 1)))
            limit = int(params.get("limit", "100"))
            page = [t for t in history if t.trade_id < after][-limit:][::-1]
            rows = [{"time": datetime.fromtimestamp(t.ts_ns // 1000 / 1e6, tz=timezone.utc)
                     .strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
                     "trade_id": t.trade_id, "price": t.price, "size": t.qty,
                     "side": "sell" if t.buy else "buy"}  # the maker's side
                    for t in page]
            headers = {"CB-AFTER": str(page[-1].trade_id)} if page else {}
            return 200, headers, json.dumps(rows).encode()

        return trades
