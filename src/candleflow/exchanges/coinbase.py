"""Coinbase: Advanced Trade WebSocket ``market_trades`` + ``heartbeats``, and Exchange REST trade history.

Wire format (docs.cdp.coinbase.com, "Advanced Trade WebSocket Channels", "Market trades",
"Heartbeats", and the Exchange API "Get product trades"):

* market data endpoint ``wss://advanced-trade-ws.coinbase.com``, public, no authentication.
  One channel per subscribe message: ``{"type":"subscribe","product_ids":["BTC-USD"],
  "channel":"market_trades"}`` and ``{"type":"subscribe","channel":"heartbeats"}`` (heartbeats
  need no products). Coinbase closes a connection that has not subscribed within 5 s, and
  most channels close after 60-90 s without updates; the heartbeats channel (one message a
  second) keeps quiet markets open, and the transport's silence watchdog sees a dead link.
* every message: ``{"channel":..., "client_id":"", "timestamp":"<RFC 3339, 9 digits>",
  "sequence_num":N, "events":[...]}``. Acks are ``channel: "subscriptions"``; errors are
  ``{"type":"error","message":"..."}``; heartbeats carry ``heartbeat_counter``.
* ``market_trades`` events ``{"type":"snapshot"|"update","trades":[{"trade_id":"...",
  "product_id":"ETH-USD","price":"1260.01","size":"0.3","side":"BUY","time":"2019-08-14T20:42:27.265Z"}]}``:
  prices and sizes are decimal strings; ``time`` is RFC 3339 with 3 to 9 fractional digits.
  The snapshot (the latest trades) follows each subscription; updates batch 250 ms of trades.
  Both list newest first, so a frame's trades are put in time order here.
* ``sequence_num`` counts the messages of one connection (+1 per message, from 0 on each
  new connection); a jump means messages were lost: see :class:`SequenceWatch`.
* REST history comes from the Exchange API (public, same matching engine and trade ids):
  ``GET https://api.exchange.coinbase.com/products/{product_id}/trades?limit=1000&after=<id>``
  returns the trades with ``trade_id < after``, newest first: ``[{"time":"2020-03-20T00:36:59.860Z",
  "trade_id":86327327,"price":"6225.32000000","size":"0.06469797","side":"sell"}]`` (``CB-AFTER``
  names the next older page). Trade ids count up by one per product, so the page holding ids
  ``[c, c + 1000)`` is ``after=c+1000``: that is how pages are walked forward in time. Public
  endpoints allow 10 requests/s per IP (bursts of 15); HTTP 429 means slow down.

Which side is ``side``? The Exchange API documents it as the *maker* order's side for both the
REST trade history ("The side of a trade indicates the maker order side") and the websocket
``match`` channel ("The side field indicates the maker order side ... a sell side is an
up-tick"). The Advanced Trade ``market_trades`` schema only says BUY/SELL, but it publishes
the same trades with the same ids from the same engine, and it is widely observed to follow
the Exchange convention (NautilusTrader's ``coinbase_side_to_aggressor``: "Coinbase reports the
maker side on public market trades, so the aggressor is the opposite side"). So the taker
side recorded here is the opposite of ``side`` on both paths (:data:`SIDE_IS_MAKER`), which
also keeps a trade seen on the websocket and again over REST identical.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

import msgspec

from candleflow.exchanges import symbols
from candleflow.exchanges.base import Control, FrameError, ParseResult, RateLimited, RestPage, decode_envelope
from candleflow.exchanges.fields import FieldError, field_error_of, known_symbol, positive_float, trade_id_text
from candleflow.exchanges.times import rfc3339_ms
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

NAME = "coinbase"
WS_URL = "wss://advanced-trade-ws.coinbase.com"
REST_URL = "https://api.exchange.coinbase.com"
PING_INTERVAL_S = 0.0  # no app-level ping: the heartbeats channel keeps the connection alive
REST_MIN_INTERVAL_S = 0.2  # public REST allows 10 requests/s per IP: stay well under it
REST_LIMIT = 1000  # trades per history page (the documented maximum)
REST_MAX_SEEK_REQUESTS = 60  # finding the first trade at a time: gallop back, then bisect
SUBSCRIBE_CHUNK = 100  # products per subscribe message
# `side` in market_trades and in the REST history is the maker's side (see the module doc).
SIDE_IS_MAKER = True


class _Envelope(msgspec.Struct):
    channel: str | None = None  # market_trades | heartbeats | subscriptions | ...
    type: str | None = None  # "error" on error messages
    message: str | None = None  # the error text
    sequence_num: int | None = None  # per connection, +1 per message
    events: list[msgspec.Raw] | None = None


class _TradesEvent(msgspec.Struct):
    type: str | None = None  # snapshot | update
    trades: list[msgspec.Raw] | None = None


class _WsTrade(msgspec.Struct):
    trade_id: str | int  # decimal text; documented examples pad it with zeros ("000000000")
    product_id: str  # "ETH-USD"
    price: str  # decimal string
    size: str  # base-asset quantity, decimal string
    side: str  # BUY | SELL: the maker's side
    time: str  # RFC 3339, 3 to 9 fractional digits


class _WsTradeNumbers(msgspec.Struct):
    """The same entry with JSON numbers for price and size (not documented, but read exactly)."""

    trade_id: str | int
    product_id: str
    price: msgspec.Raw  # the number's literal text
    size: msgspec.Raw
    side: str
    time: str


class _RestTrade(msgspec.Struct):
    trade_id: int
    price: str
    size: str
    side: str  # buy | sell: the maker's side (documented)
    time: str


_envelope = msgspec.json.Decoder(_Envelope)
_trades_event = msgspec.json.Decoder(_TradesEvent)
_ws_trade = msgspec.json.Decoder(_WsTrade)
_ws_trade_numbers = msgspec.json.Decoder(_WsTradeNumbers)
_rest_rows = msgspec.json.Decoder(list[msgspec.Raw])
_rest_trade = msgspec.json.Decoder(_RestTrade)


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    """``ETH-USD`` -> ``ETH/USD``."""
    return symbols.from_separated(venue_symbol, "-")


def venue_symbol(canonical: str) -> str:
    """``ETH/USD`` -> ``ETH-USD`` (the product id)."""
    return symbols.to_separated(canonical, "-")


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    frames = []
    for start in range(0, len(symbol_list), SUBSCRIBE_CHUNK):
        products = [venue_symbol(s) for s in symbol_list[start:start + SUBSCRIBE_CHUNK]]
        frames.append(msgspec.json.encode(
            {"type": "subscribe", "product_ids": products, "channel": "market_trades"}).decode())
    frames.append('{"type":"subscribe","channel":"heartbeats"}')
    return frames


def ping_frame() -> str | None:
    return None


# ---- gap detection ---------------------------------------------------------------------------

class SequenceWatch:
    """The ``sequence_num`` of the current connection: a jump means messages were lost.

    Coinbase numbers the messages of a connection 0, 1, 2 ... A number more than one past the
    previous one is a gap; a number at or below it means a new connection (numbering starts
    again), which becomes the new baseline, as does every ``subscriptions`` ack. After a gap
    the next number is taken as a baseline too, so the reconnect that a gap causes can never
    be mistaken for another gap.
    """

    def __init__(self) -> None:
        self.last: int | None = None

    def missed(self, sequence_num: int, *, baseline: bool = False) -> int:
        """How many messages are missing before this one (0: none)."""
        last, self.last = self.last, sequence_num
        if baseline or last is None or sequence_num <= last:
            return 0
        missing = sequence_num - last - 1
        if missing:
            self.last = None
        return missing


# The live connection's watch. The transport hands every frame of the feed to parse_frame in
# order, so this is the one piece of state the module keeps; pass `sequence=None` to parse a
# frame on its own.
LIVE_SEQUENCE = SequenceWatch()


# ---- websocket frames ------------------------------------------------------------------------

def _taker_side(text: str) -> str:
    side = text.lower()
    if side not in ("buy", "sell"):
        raise FieldError("invalid_side", f"side must be BUY or SELL, got {text[:20]!r}")
    if SIDE_IS_MAKER:
        return "sell" if side == "buy" else "buy"
    return side


def _trade_id(value: str | int) -> str:
    """The id as the REST history spells it: ``"000123"`` and ``123`` are both ``"123"``."""
    text = trade_id_text(value)
    if len(text) > 1 and text[0] == "0" and text.isdigit() and text.isascii():
        return str(int(text))
    return text


def _symbol(text: str) -> str:
    return known_symbol(canonical_symbol, text)


def _timestamp(text: str) -> int:
    try:
        return rfc3339_ms(text)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", str(exc)) from None


def _ws_trade_to_trade(entry: bytes, recv_ms: int) -> Trade:
    wire: _WsTrade | _WsTradeNumbers
    try:
        wire = _ws_trade.decode(entry)
    except msgspec.ValidationError as exc:
        try:
            wire = _ws_trade_numbers.decode(entry)
        except msgspec.ValidationError:
            raise field_error_of(exc) from None
    return Trade(
        exchange=NAME,
        symbol=_symbol(wire.product_id),
        trade_id=_trade_id(wire.trade_id),
        price=positive_float(wire.price, "price"),
        qty=positive_float(wire.size, "qty"),
        side=_taker_side(wire.side),  # type: ignore[arg-type]
        ts_ms=_timestamp(wire.time),
        recv_ms=recv_ms,
    )


def _time_order(trade: Trade) -> tuple[int, int, str]:
    numeric = trade.trade_id.isascii() and trade.trade_id.isdigit()
    return trade.ts_ms, int(trade.trade_id) if numeric else 0, "" if numeric else trade.trade_id


def _add_trades(result: ParseResult, events: list[msgspec.Raw], frame: bytes, recv_ms: int) -> None:
    for raw_event in events:
        try:
            event = _trades_event.decode(bytes(raw_event))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.errors.append(FrameError("invalid_frame", f"market_trades event: {exc}", frame))
            continue
        if event.trades is None:
            result.errors.append(FrameError("missing_field", "market_trades event has no trades", frame))
            continue
        if event.type == "snapshot":
            result.snapshot = True
        for entry in event.trades:
            entry_bytes = bytes(entry)
            try:
                result.trades.append(_ws_trade_to_trade(entry_bytes, recv_ms))
            except FieldError as exc:
                result.errors.append(exc.to_frame_error(entry_bytes))
            except ValueError as exc:  # Trade's own validation
                result.errors.append(FrameError("invalid_trade", str(exc), entry_bytes))
    if len(result.trades) > 1:
        result.trades.sort(key=_time_order)  # Coinbase lists newest first


def parse_frame(raw: bytes | str, recv_ms: int, sequence: SequenceWatch | None = LIVE_SEQUENCE) -> ParseResult:
    """One websocket message -> trades, control notices and errors. Never raises.

    With a `sequence` watch, a ``sequence_num`` jump yields a ``reconnect`` control, and the
    frame's trades become one ``sequence_gap`` error instead (a dead letter with the raw
    frame): the reconnect's REST gap fill starts at the last trade published before the gap,
    so it returns them together with the lost ones, in order. Replaying a recording or
    ``candleflow parse`` sees the same gaps, reported the same way, never silently dropped.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    result = ParseResult()
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    missed = 0
    if sequence is not None and env.sequence_num is not None:
        missed = sequence.missed(env.sequence_num, baseline=env.channel == "subscriptions")
    if env.type == "error":
        result.control.append(Control("error", (env.message or "error")[:500]))
    elif env.channel == "subscriptions":
        result.control.append(Control("subscribed", b"".join(bytes(e) for e in env.events or ()).decode(
            "utf-8", "replace")[:500]))
    elif env.channel == "heartbeats":
        result.control.append(Control("heartbeat"))
    elif env.channel == "market_trades":
        if env.events is None:
            result.errors.append(FrameError("missing_field", "market_trades message has no events", data))
        else:
            _add_trades(result, env.events, data, recv_ms)
    else:
        result.control.append(Control("ignored", env.channel or env.type or ""))
    if missed:
        lost = f"sequence_num {env.sequence_num}: {missed} message(s) lost"
        if result.trades:
            result.errors.append(FrameError("sequence_gap", f"{lost}; its trades are left to the REST gap fill",
                                            data))
            result.trades.clear()
            result.snapshot = False
        result.control.append(Control("reconnect", lost))
    return result


# ---- REST history ----------------------------------------------------------------------------

def parse_rest_trades(body: bytes, symbol: str, recv_ms: int) -> RestPage:
    """A ``/products/{id}/trades`` body -> a page, oldest first (next_cursor: last id + 1)."""
    try:
        rows = _rest_rows.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"coinbase REST: unexpected response: {exc}") from None
    page = RestPage()
    last_id: int | None = None
    for row in rows:
        row_bytes = bytes(row)
        try:
            wire = _rest_trade.decode(row_bytes)
            page.trades.append(Trade(
                exchange=NAME, symbol=symbol, trade_id=str(wire.trade_id),
                price=positive_float(wire.price, "price"), qty=positive_float(wire.size, "qty"),
                side=_taker_side(wire.side), ts_ms=_timestamp(wire.time), recv_ms=recv_ms))  # type: ignore[arg-type]
            last_id = wire.trade_id if last_id is None else max(last_id, wire.trade_id)
        except FieldError as exc:
            page.errors.append(exc.to_frame_error(row_bytes))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            page.errors.append(FrameError("invalid_field", f"trade row: {exc}", row_bytes))
        except ValueError as exc:
            page.errors.append(FrameError("invalid_trade", str(exc), row_bytes))
    page.trades.sort(key=lambda t: int(t.trade_id))
    page.next_cursor = str(last_id + 1) if last_id is not None else None
    return page


async def _get_page(client: "httpx.AsyncClient", base: str, product: str, symbol: str, recv_ms: int,
                    before_id: int | None) -> RestPage:
    """The newest page of trades with ids below `before_id` (None: the latest trades)."""
    params = {"limit": str(REST_LIMIT)}
    if before_id is not None:
        params["after"] = str(before_id)
    response = await client.get(f"{base}/products/{product}/trades", params=params)
    if response.status_code == 429:
        retry = response.headers.get("Retry-After")
        try:
            wait = float(retry) if retry else 1.0
        except ValueError:
            wait = 1.0
        raise RateLimited(wait, "HTTP 429")
    if response.status_code >= 400:
        raise ValueError(f"coinbase REST: HTTP {response.status_code}: {response.text[:200]}")
    return parse_rest_trades(response.content, symbol, recv_ms)


def _from(page: RestPage, first_id: int | None = None, since_ms: int | None = None) -> RestPage:
    """The part of `page` at or after a trade id or a time (next_cursor unchanged)."""
    trades = page.trades
    if first_id is not None:
        trades = [t for t in trades if int(t.trade_id) >= first_id]
    if since_ms is not None:
        trades = [t for t in trades if t.ts_ms >= since_ms]
    return RestPage(trades=trades, errors=page.errors, next_cursor=page.next_cursor if trades else None)


async def _seek(client: "httpx.AsyncClient", base: str, product: str, symbol: str, since_ms: int,
                recv_ms: int) -> RestPage:
    """The page that holds the first trade at or after `since_ms`.

    Usually the latest page already reaches back that far (one request). Otherwise step back
    by doubling page distances until a page starts before `since_ms`, then bisect on trade ids;
    requests are spaced at REST_MIN_INTERVAL_S.
    """
    latest = await _get_page(client, base, product, symbol, recv_ms, None)
    if not latest.trades or latest.trades[0].ts_ms < since_ms or len(latest.trades) < REST_LIMIT:
        return _from(latest, since_ms=since_ms)
    newer = int(latest.trades[0].trade_id)  # ts(newer) >= since_ms
    older: int | None = None  # an id whose trade is before since_ms (None: not found yet)
    step = REST_LIMIT
    for _ in range(REST_MAX_SEEK_REQUESTS):
        if older is None:
            probe = max(newer - step, 1)
            step *= 2
        else:
            probe = (older + newer) // 2
            if newer - older <= REST_LIMIT:
                probe = older + REST_LIMIT
        await asyncio.sleep(REST_MIN_INTERVAL_S)
        page = await _get_page(client, base, product, symbol, recv_ms, probe + 1)  # ids up to probe
        if not page.trades:  # before the first trade ever
            older = probe
            continue
        if page.trades[0].ts_ms < since_ms <= page.trades[-1].ts_ms:
            return _from(page, since_ms=since_ms)
        if page.trades[-1].ts_ms < since_ms:
            older = int(page.trades[-1].trade_id)
        else:
            newer = int(page.trades[0].trade_id)
            # the page starts at the first trade at/after since_ms, or at the first trade ever
            if len(page.trades) < REST_LIMIT or newer <= 1 or (older is not None and newer - older <= 1):
                return page
        if older is not None and newer - older <= 1:  # `newer` is the first trade at/after since_ms
            await asyncio.sleep(REST_MIN_INTERVAL_S)
            return await _forward_page(client, base, product, symbol, recv_ms, newer)
    raise ValueError(f"coinbase REST: no trade id found for {since_ms} within {REST_MAX_SEEK_REQUESTS} requests")


async def _forward_page(client: "httpx.AsyncClient", base: str, product: str, symbol: str, recv_ms: int,
                        first_id: int) -> RestPage:
    # ids [first_id, first_id + LIMIT): at most LIMIT trades, so the page holds all of them
    page = await _get_page(client, base, product, symbol, recv_ms, first_id + REST_LIMIT)
    return _from(page, first_id=first_id)


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    """Up to 1000 trades from trade id `cursor`, or from the first trade at/after `since_ms`, oldest first."""
    base = (base_url or REST_URL).rstrip("/")
    product = venue_symbol(symbol)
    if cursor is not None:
        try:
            first_id = int(cursor)
        except ValueError:
            raise ValueError(f"coinbase REST: cursor must be a trade id, got {cursor[:40]!r}") from None
        return await _forward_page(client, base, product, symbol, recv_ms, first_id)
    if since_ms is not None:
        return await _seek(client, base, product, symbol, since_ms, recv_ms)
    return await _get_page(client, base, product, symbol, recv_ms, None)
