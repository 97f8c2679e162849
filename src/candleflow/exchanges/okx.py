"""OKX v5 spot: public ``trades`` channel and REST ``/api/v5/market/trades`` + ``history-trades``.

Wire format (www.okx.com/docs-v5, "WebSocket: Connect", "Trades channel", "Get trades",
"Get trades history"):

* endpoint ``wss://ws.okx.com:8443/ws/v5/public``; subscribe ``{"op":"subscribe","args":
  [{"channel":"trades","instId":"BTC-USDT"}]}``, answered per arg ``{"event":"subscribe",
  "arg":{...},"connId":"..."}`` or ``{"event":"error","code":"60012","msg":"...","connId":"..."}``.
  ``{"event":"notice","code":"64008",...}`` announces a disconnect for a service upgrade: the
  feed reconnects at once (and the gap fill covers the switch).
* OKX closes a connection that has received nothing for 30 s; the client sends the plain text
  ``ping`` (not JSON) and gets the plain text ``pong``, which is a control frame here.
* trades ``{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
  "tradeId":"130639474","px":"42219.9","sz":"0.12060306","side":"buy","ts":"1630048897897",
  "count":"3"}]}``: ``side`` is the taker's side, ``ts`` is epoch ms as text. The channel sends one
  message per taker order and price; ``count`` says how many fills it aggregates. There is no
  snapshot on subscribing. Only spot instruments are accepted: on swaps and futures ``sz`` counts
  contracts, not base asset, and their ids (``BTC-USDT-SWAP``) are rejected as unknown symbols.
* REST ``GET /api/v5/market/trades?instId=&limit=500`` (the latest trades) and ``GET
  /api/v5/market/history-trades?instId=&type=1&after=<tradeId>&limit=100`` (trades older than
  that id, 20 requests per 2 s): ``{"code":"0","msg":"","data":[{instId, side, sz, px, tradeId,
  ts}]}``, newest first. History only pages backwards, so :func:`fetch_trades` walks back from
  the newest trade to the requested point and returns that span oldest first. ``code`` 50011
  (or HTTP 429) means rate limited.
* REST lists individual fills, while a live message aggregates the fills of one taker order at
  one price: ``tradeId`` is the last fill's id and ``count`` fills are covered (``tradeId`` 123
  with ``count`` 3 is fills 121, 122, 123). :func:`merge_taker_fills` merges REST fills the same
  way, so recovered trades carry the ids the live channel uses and de-duplicate against it.
"""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from candleflow.exchanges import symbols
from candleflow.exchanges.base import Control, FrameError, ParseResult, RateLimited, RestPage, decode_envelope
from candleflow.exchanges.fields import FieldError, decode_entry, known_symbol, positive_float, trade_id_text
from candleflow.exchanges.times import epoch_ms
from candleflow.log import get_logger
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

log = get_logger("candleflow.exchanges.okx")

NAME = "okx"
WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
REST_URL = "https://www.okx.com"
PING_INTERVAL_S = 20.0  # OKX drops a connection silent for 30 s; ping well before that
REST_MIN_INTERVAL_S = 0.1  # history-trades: 20 requests per 2 s per IP
SUBSCRIBE_CHUNK = 100  # args per subscribe request (the request must stay under 64 KB)
TRADE_CHANNELS = ("trades", "trades-all")  # trades-all (business endpoint) has the same shape
RECENT_LIMIT = 500  # /market/trades maximum
HISTORY_LIMIT = 100  # /market/history-trades maximum per page
MAX_HISTORY_PAGES = 20  # per fetch: 500 + 20 x 100 trades reach back far enough for a reconnect
RATE_LIMIT_CODE = "50011"
RECONNECT_NOTICE_CODE = "64008"  # "The connection will soon be closed for a service upgrade"
RATE_LIMIT_WAIT_S = 2.0  # OKX limits are per 2 s window and carry no Retry-After


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""


class _Envelope(msgspec.Struct):
    event: str | None = None  # subscribe | unsubscribe | error | notice | channel-conn-count ...
    arg: _Arg | None = None  # the channel a data frame (or an ack) belongs to
    data: list[msgspec.Raw] | None = None
    code: str | int | None = None  # error / notice code, as text
    msg: str | None = None


class _Trade(msgspec.Struct):
    instId: str  # instrument, e.g. BTC-USDT
    tradeId: str | int  # numeric text, increasing per instrument
    px: str  # price, decimal text
    sz: str  # quantity, base asset on spot
    side: str  # taker side: buy | sell
    ts: str | int  # trade time, epoch ms as text
    count: str | None = None  # fills aggregated in this message (websocket only)
    source: str | None = None  # 0: normal order, 1: enhanced liquidity program


_envelope = msgspec.json.Decoder(_Envelope)
_trade = msgspec.json.Decoder(_Trade)


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    """``BTC-USDT`` -> ``BTC/USDT``."""
    return symbols.from_separated(venue_symbol, "-")


def venue_symbol(canonical: str) -> str:
    return symbols.to_separated(canonical, "-")


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    frames = []
    for start in range(0, len(symbol_list), SUBSCRIBE_CHUNK):
        args = [{"channel": "trades", "instId": venue_symbol(s)} for s in symbol_list[start:start + SUBSCRIBE_CHUNK]]
        frames.append(msgspec.json.encode({"op": "subscribe", "args": args}).decode())
    return frames


def ping_frame() -> str | None:
    return "ping"  # plain text, as OKX requires


def _to_trade(entry: bytes, recv_ms: int, symbol: str | None = None) -> Trade:
    """One trade object (websocket or REST: same fields) -> Trade."""
    wire = decode_entry(_trade, entry)
    if symbol is None:
        symbol = known_symbol(canonical_symbol, wire.instId)
    if wire.side not in ("buy", "sell"):
        raise FieldError("invalid_side", f"side must be buy or sell, got {wire.side[:20]!r}")
    try:
        ts_ms = epoch_ms(wire.ts)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", f"ts: {exc}") from None
    return Trade(exchange=NAME, symbol=symbol, trade_id=trade_id_text(wire.tradeId),
                 price=positive_float(wire.px, "price"), qty=positive_float(wire.sz, "qty"),
                 side=wire.side, ts_ms=ts_ms, recv_ms=recv_ms)  # type: ignore[arg-type]


def _event(env: _Envelope) -> Control:
    detail = f"{env.code}: {env.msg or ''}" if env.code is not None else (env.msg or "")
    if env.event == "subscribe":
        return Control("subscribed", env.arg.instId if env.arg is not None else "")
    if env.event == "error" or env.event.endswith("-error"):  # type: ignore[union-attr]
        return Control("error", detail)
    if env.event == "notice" and str(env.code) == RECONNECT_NOTICE_CODE:
        return Control("reconnect", detail)
    return Control("info", f"{env.event} {detail}".strip())


def parse_frame(raw: bytes | str, recv_ms: int) -> ParseResult:
    """One websocket frame -> trades, control notices and errors. Never raises."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    result = ParseResult()
    if data.strip() == b"pong":  # the answer to our plain-text ping: not JSON, not an error
        result.control.append(Control("pong"))
        return result
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    if env.event is not None:
        result.control.append(_event(env))
        return result
    if env.arg is None or env.arg.channel not in TRADE_CHANNELS:
        result.control.append(Control("ignored", env.arg.channel if env.arg is not None else ""))
        return result
    if env.data is None:
        result.errors.append(FrameError("missing_field", "trades frame has no data", data))
        return result
    for entry in env.data:
        entry_bytes = bytes(entry)
        try:
            result.trades.append(_to_trade(entry_bytes, recv_ms))
        except FieldError as exc:
            result.errors.append(exc.to_frame_error(entry_bytes))
        except (msgspec.DecodeError, ValueError) as exc:  # a non-object entry, or Trade's own validation
            result.errors.append(FrameError("invalid_trade", str(exc), entry_bytes))
    return result


# ---- REST history -------------------------------------------------------------------------

class _RestBody(msgspec.Struct):
    code: str | int
    msg: str = ""
    data: list[msgspec.Raw] = []


_rest_body = msgspec.json.Decoder(_RestBody)


def _id_order(trade: Trade) -> tuple[int, int]:
    return (int(trade.trade_id), trade.ts_ms) if trade.trade_id.isdigit() else (-1, trade.ts_ms)


def parse_rest_trades(body: bytes, symbol: str, recv_ms: int) -> RestPage:
    """A ``trades`` / ``history-trades`` body -> a page, oldest first (raises RateLimited / ValueError)."""
    try:
        parsed = _rest_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"okx REST: unexpected response: {exc}") from None
    code = str(parsed.code)
    if code == RATE_LIMIT_CODE:
        raise RateLimited(RATE_LIMIT_WAIT_S, f"okx REST {code}: {parsed.msg}")
    if code != "0":
        raise ValueError(f"okx REST error {code}: {parsed.msg}"[:300])
    page = RestPage()
    for row in parsed.data:
        row_bytes = bytes(row)
        try:
            page.trades.append(_to_trade(row_bytes, recv_ms, symbol))
        except FieldError as exc:
            page.errors.append(exc.to_frame_error(row_bytes))
        except (msgspec.DecodeError, ValueError) as exc:
            page.errors.append(FrameError("invalid_trade", str(exc), row_bytes))
    page.trades.sort(key=_id_order)
    return page


def merge_taker_fills(fills: list[Trade]) -> list[Trade]:
    """Fills in id order -> one trade per run of consecutive ids with the same ms, side and price.

    That is how the live channel aggregates one taker order's fills at one price; the merged
    trade keeps the run's last id, and its quantity is the exact decimal sum of the fills'.
    """
    merged: list[Trade] = []
    run: list[Trade] = []

    def close_run() -> None:
        if len(run) == 1:
            merged.append(run[0])
        elif run:
            qty = float(sum((Decimal(repr(t.qty)) for t in run), Decimal(0)))
            merged.append(msgspec.structs.replace(run[-1], qty=qty))
        run.clear()

    for fill in fills:
        if run:
            last = run[-1]
            same_order = (fill.ts_ms, fill.side, fill.price) == (last.ts_ms, last.side, last.price)
            consecutive = last.trade_id.isdigit() and _id_order(fill)[0] == int(last.trade_id) + 1
            if not (same_order and consecutive):
                close_run()
        run.append(fill)
    close_run()
    return merged


async def _get_page(client: "httpx.AsyncClient", url: str, params: dict[str, str], symbol: str,
                    recv_ms: int) -> RestPage:
    response = await client.get(url, params=params)
    if response.status_code == 429:
        raise RateLimited(RATE_LIMIT_WAIT_S, "HTTP 429")
    if response.status_code >= 400 and not response.content.startswith(b"{"):
        raise ValueError(f"okx REST: HTTP {response.status_code}")
    return parse_rest_trades(response.content, symbol, recv_ms)


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    """Trades newer than trade id `cursor` (or at/after `since_ms`), oldest first.

    OKX pages backwards only, so this walks from the latest trades (one ``trades`` call)
    back through ``history-trades`` until it passes the requested point, pacing its own
    requests at REST_MIN_INTERVAL_S and stopping after MAX_HISTORY_PAGES (a warning says
    when that leaves older trades out). Fills are merged per taker order and price, as the
    live channel sends them (:func:`merge_taker_fills`). `next_cursor` is the newest id returned.
    """
    if cursor is not None and not cursor.isdigit():
        raise ValueError(f"okx REST: cursor must be a trade id, got {cursor[:40]!r}")
    after_id = int(cursor) if cursor is not None else None
    base = (base_url or REST_URL).rstrip("/")
    inst = venue_symbol(symbol)

    def wanted(trade: Trade) -> bool:
        if after_id is not None:
            return _id_order(trade)[0] > after_id
        return since_ms is None or trade.ts_ms >= since_ms

    page = await _get_page(client, f"{base}/api/v5/market/trades", {"instId": inst, "limit": str(RECENT_LIMIT)},
                           symbol, recv_ms)
    trades, errors = list(page.trades), list(page.errors)
    pages = 0
    while page.trades and wanted(page.trades[0]) and (after_id is not None or since_ms is not None):
        if pages == MAX_HISTORY_PAGES or not page.trades[0].trade_id.isdigit():
            log.warning("REST history walk stopped before the requested point", exchange=NAME, symbol=symbol,
                        since_ms=since_ms, cursor=cursor, oldest_ms=page.trades[0].ts_ms)
            break
        await asyncio.sleep(REST_MIN_INTERVAL_S)
        page = await _get_page(client, f"{base}/api/v5/market/history-trades",
                               {"instId": inst, "type": "1", "after": page.trades[0].trade_id,
                                "limit": str(HISTORY_LIMIT)}, symbol, recv_ms)
        pages += 1
        trades.extend(page.trades)
        errors.extend(page.errors)
    unique = {t.trade_id: t for t in trades if wanted(t)}
    result = RestPage(trades=merge_taker_fills(sorted(unique.values(), key=_id_order)), errors=errors)
    result.next_cursor = result.trades[-1].trade_id if result.trades else None
    return result
