"""Binance spot: ``<symbol>@trade`` streams and REST trade history by id.

Wire format (developers.binance.com, "WebSocket Streams" and "Market Data endpoints"):

* raw endpoint ``/ws`` (or ``/ws/<stream>``) delivers the event itself; the combined endpoint
  ``/stream?streams=a/b`` wraps it as ``{"stream":"btcusdt@trade","data":{...}}``. Both accept
  ``{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}``, answered ``{"result":null,"id":1}``
  or ``{"code":2,"msg":"...","id":1}`` on error.
* trade event ``{"e":"trade","E":event ms,"s":"BNBBTC","t":trade id,"p":"0.001","q":"100",
  "T":trade ms,"m":true,"M":true}``: ``m`` true means the *buyer is the maker*, so the taker sold.
* the server sends websocket pings (answered by the client library) and closes every connection
  after 24 hours; :data:`MAX_CONNECTION_S` makes the transport roll over a little earlier.
* REST ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=1000`` (and ``/api/v3/trades`` for the
  latest): ``[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",
  "time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]``. To start from a time,
  ``/api/v3/aggTrades?startTime=<ms>&limit=1`` gives the first trade id ``f``. HTTP 429 (and
  418 once banned) carry ``Retry-After`` seconds.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import msgspec

from candleflow.exchanges import symbols
from candleflow.exchanges.base import Control, FrameError, ParseResult, RateLimited, RestPage, decode_envelope
from candleflow.exchanges.fastpath import BinanceTrades
from candleflow.exchanges.fields import FieldError, decode_entry, known_symbol, positive_float, trade_id_text
from candleflow.exchanges.native import NATIVE
from candleflow.exchanges.times import epoch_ms
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

NAME = "binance"
WS_URL = "wss://stream.binance.com:9443/ws"
REST_URL = "https://api.binance.com"
PING_INTERVAL_S = 0.0  # no app-level ping: the server pings and the client pongs
REST_MIN_INTERVAL_S = 0.25  # weight 25 per history call within 6000 per minute
MAX_CONNECTION_S = 23.5 * 3600  # Binance closes connections at 24 h: reconnect before
SUBSCRIBE_CHUNK = 200  # streams per SUBSCRIBE (limit 1024 per connection)
REST_LIMIT = 1000


class _Trade(msgspec.Struct):
    e: str  # event type: "trade"
    s: str  # symbol, e.g. BNBBTC
    t: int | str  # trade id
    p: str  # price, decimal text
    q: str  # quantity, decimal text
    T: int | str  # trade time, epoch ms
    m: bool  # is the buyer the maker? true: the taker sold
    E: int | str | None = None  # event time
    M: bool | None = None  # ignore


class _Envelope(msgspec.Struct):
    stream: str | None = None  # combined endpoint only
    data: msgspec.Raw = msgspec.Raw()  # combined endpoint: the event (empty when absent)
    e: str | None = None  # raw endpoint: the event type
    id: int | str | None = None  # reply to a request
    result: msgspec.Raw = msgspec.Raw()
    code: int | None = None  # error reply
    msg: str | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_trade = msgspec.json.Decoder(_Trade)


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    """``BTCUSDT`` / ``btcusdt`` -> ``BTC/USDT``."""
    return symbols.from_concatenated(venue_symbol)


def venue_symbol(canonical: str) -> str:
    return symbols.to_concatenated(canonical)


def stream_name(canonical: str) -> str:
    return f"{venue_symbol(canonical).lower()}@trade"


def combined_url(symbol_list: list[str], base: str = "wss://stream.binance.com:9443") -> str:
    """The combined-stream URL for these symbols (an alternative to SUBSCRIBE frames)."""
    return f"{base.rstrip('/')}/stream?streams={'/'.join(stream_name(s) for s in symbol_list)}"


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    frames = []
    for n, start in enumerate(range(0, len(symbol_list), SUBSCRIBE_CHUNK), start=1):
        params = [stream_name(s) for s in symbol_list[start:start + SUBSCRIBE_CHUNK]]
        frames.append(msgspec.json.encode({"method": "SUBSCRIBE", "params": params, "id": n}).decode())
    return frames


def ping_frame() -> str | None:
    return None


def _to_trade(event: bytes, recv_ms: int) -> Trade:
    wire = decode_entry(_trade, event, "trade event")
    symbol = known_symbol(canonical_symbol, wire.s)
    try:
        ts_ms = epoch_ms(wire.T)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", f"T: {exc}") from None
    return Trade(
        exchange=NAME, symbol=symbol, trade_id=trade_id_text(wire.t),
        price=positive_float(wire.p, "price"), qty=positive_float(wire.q, "qty"),
        side="sell" if wire.m else "buy", ts_ms=ts_ms, recv_ms=recv_ms)


# The raw endpoint's usual frame in one decode (exchanges/fastpath.py, compiled). Anything
# unusual (a bad field, a string time, a symbol that does not map) goes to the general path
# in parse_frame, which says what is wrong, so both paths give the same result for any frame.
_fast = BinanceTrades(_trade.decode, NAME)
# The trade of the raw endpoint's usual frame (bytes) in a list, or None: use parse_frame
# (ingest's replay calls this first).
fast_trades = _fast.trades
# The same frames read in Rust (native/, when built), straight to encoded Trade records
# ``(symbol, trade_id, ts_ms, value)``, or None: ingest's replay calls this first when it is there.
encoded_trades = NATIVE.TradeFrames(NAME, canonical_symbol).encoded_trades if NATIVE is not None else None


def parse_frame(raw: bytes | str, recv_ms: int) -> ParseResult:
    """One websocket frame (raw or combined endpoint) -> ParseResult. Never raises."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    trade = _fast.trade(data, recv_ms)  # the raw endpoint's usual frame: one decode, not two
    if trade is not None:
        return ParseResult(trades=[trade], control=[], errors=[])
    result = ParseResult()
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    if env.code is not None:
        result.control.append(Control("error", f"code {env.code}: {env.msg or ''}"))
        return result
    if env.id is not None and env.e is None and not len(env.data):
        result.control.append(Control("subscribed", f"id {env.id}"))
        return result
    event = data
    if len(env.data):
        event = bytes(env.data)
        if env.stream is not None and not env.stream.endswith("@trade"):
            result.control.append(Control("ignored", env.stream))
            return result
        try:
            kind = msgspec.json.decode(event, type=_Envelope).e
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.errors.append(FrameError("invalid_frame", f"combined data: {exc}", data))
            return result
    else:
        kind = env.e
    if kind != "trade":
        if kind is None and env.stream is None:
            result.control.append(Control("ignored", "no event type"))
        else:
            result.control.append(Control("ignored", kind or env.stream or ""))
        return result
    try:
        result.trades.append(_to_trade(event, recv_ms))
    except FieldError as exc:
        result.errors.append(exc.to_frame_error(data))
    except ValueError as exc:
        result.errors.append(FrameError("invalid_trade", str(exc), data))
    return result


# ---- REST history -------------------------------------------------------------------------

class _RestTrade(msgspec.Struct):
    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool  # true: the taker sold
    quoteQty: str | None = None
    isBestMatch: bool | None = None


class _AggTrade(msgspec.Struct):
    a: int  # aggregate id
    f: int  # first trade id
    l: int  # last trade id  # noqa: E741
    T: int


_rest_rows = msgspec.json.Decoder(list[msgspec.Raw])
_rest_trade = msgspec.json.Decoder(_RestTrade)
_agg_rows = msgspec.json.Decoder(list[_AggTrade])


def parse_rest_trades(body: bytes, symbol: str, recv_ms: int) -> RestPage:
    """A ``historicalTrades`` / ``trades`` body -> a page; next cursor = last id + 1."""
    try:
        rows = _rest_rows.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"binance REST: unexpected response: {exc}") from None
    page = RestPage()
    last_id: int | None = None
    for row in rows:
        row_bytes = bytes(row)
        try:
            wire = _rest_trade.decode(row_bytes)
            last_id = wire.id if last_id is None else max(last_id, wire.id)
            page.trades.append(Trade(
                exchange=NAME, symbol=symbol, trade_id=str(wire.id),
                price=positive_float(wire.price, "price"), qty=positive_float(wire.qty, "qty"),
                side="sell" if wire.isBuyerMaker else "buy", ts_ms=epoch_ms(wire.time), recv_ms=recv_ms))
        except FieldError as exc:
            page.errors.append(exc.to_frame_error(row_bytes))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            page.errors.append(FrameError("invalid_field", f"trade row: {exc}", row_bytes))
        except ValueError as exc:
            page.errors.append(FrameError("invalid_trade", str(exc), row_bytes))
    page.trades.sort(key=lambda t: int(t.trade_id))
    page.next_cursor = str(last_id + 1) if last_id is not None else None
    return page


def _check_status(response: "httpx.Response") -> None:
    if response.status_code in (418, 429):
        retry = response.headers.get("Retry-After")
        try:
            wait = float(retry) if retry else 60.0
        except ValueError:
            wait = 60.0
        raise RateLimited(wait, f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ValueError(f"binance REST: HTTP {response.status_code}: {response.text[:200]}")


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    """Up to 1000 trades from trade id `cursor`, or from the first trade at/after `since_ms`."""
    base = (base_url or REST_URL).rstrip("/")
    pair = venue_symbol(symbol)
    if cursor is None and since_ms is not None:
        response = await client.get(f"{base}/api/v3/aggTrades",
                                    params={"symbol": pair, "startTime": str(since_ms), "limit": "1"})
        _check_status(response)
        try:
            aggs = _agg_rows.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"binance REST: unexpected aggTrades response: {exc}") from None
        if not aggs:
            return RestPage()
        cursor = str(aggs[0].f)
    params = {"symbol": pair, "limit": str(REST_LIMIT)}
    if cursor is not None:
        params["fromId"] = cursor
        path = "/api/v3/historicalTrades"
    else:
        path = "/api/v3/trades"
    response = await client.get(f"{base}{path}", params=params)
    _check_status(response)
    page = parse_rest_trades(response.content, symbol, recv_ms)
    if not page.trades and cursor is not None:
        page.next_cursor = None
    return page
