"""Bybit v5: public ``publicTrade.<symbol>`` stream and REST ``/v5/market/recent-trade``.

Wire format (bybit-exchange.github.io/docs/v5, "WebSocket Connect", "Trade" and "Get Public
Recent Trading History"):

* endpoints ``wss://stream.bybit.com/v5/public/spot`` (also ``/linear``, ``/inverse``); subscribe
  ``{"op":"subscribe","args":["publicTrade.BTCUSDT"],"req_id":"..."}`` (spot takes at most 10
  args per request), answered ``{"success":true,"ret_msg":"subscribe","conn_id":"...",
  "op":"subscribe"}`` or ``"success":false`` with the reason in ``ret_msg``.
* the client sends ``{"op":"ping"}`` every 20 s; the answer is ``{"success":true,
  "ret_msg":"pong","op":"ping",...}`` (some endpoints answer ``{"op":"pong",...}``).
* trades ``{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":...,"data":[{"T":trade ms,
  "s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick","i":"<id>","BT":false}]}``.
  ``S`` is the taker's side; ``i`` is numeric text on spot and a UUID on derivatives. Bybit labels
  every push ``snapshot``, but each carries new trades only: there is no replay of past trades on
  subscribing, so these frames are not flagged as snapshots here.
* REST ``GET /v5/market/recent-trade?category=spot&symbol=BTCUSDT&limit=60`` returns only the
  most recent trades (at most 60 on spot, 1000 on derivatives), newest first, with no cursor:
  ``{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[{"execId","symbol","price",
  "size","side","time","isBlockTrade"}]}}``. A gap fill therefore recovers at most the last 60
  spot trades; a longer outage leaves a hole that is logged. ``retCode`` 10006 (and HTTP
  403/429) means rate limited; ``X-Bapi-Limit-Reset-Timestamp`` says when the limit resets.
"""

from __future__ import annotations

import functools
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

log = get_logger("candleflow.exchanges.bybit")

NAME = "bybit"
WS_URL = "wss://stream.bybit.com/v5/public/spot"
REST_URL = "https://api.bybit.com"
PING_INTERVAL_S = 20.0  # Bybit's recommended heartbeat interval
REST_MIN_INTERVAL_S = 0.1  # public endpoints allow 600 requests per 5 s per IP; stay far below
SUBSCRIBE_CHUNK = 10  # spot accepts at most 10 args per subscribe request
TOPIC_PREFIX = "publicTrade."
CATEGORY = "spot"  # REST category matching WS_URL; the parser also reads linear/inverse frames
REST_LIMIT = 60  # the spot maximum (derivatives: 1000)
RATE_LIMIT_CODES = (10006, 10018)  # "Too many visits", "Exceeded the IP rate limit"


class _Envelope(msgspec.Struct):
    topic: str | None = None  # "publicTrade.BTCUSDT" on data frames
    type: str | None = None  # "snapshot" (every publicTrade push)
    data: msgspec.Raw = msgspec.Raw()  # publicTrade: a list of trades (empty when absent)
    op: str | None = None  # reply to a request: subscribe | ping | pong
    success: bool | None = None
    ret_msg: str | None = None  # reason of a failure; "pong" on a ping reply


class _WsTrade(msgspec.Struct):
    T: int | str  # trade time, epoch ms
    s: str  # symbol, e.g. BTCUSDT
    S: str  # taker side: Buy | Sell
    v: str  # quantity, decimal text
    p: str  # price, decimal text
    i: int | str  # trade id: numeric text on spot, a UUID on derivatives
    L: str | None = None  # tick direction (derivatives only)
    BT: bool | None = None  # block trade


_envelope = msgspec.json.Decoder(_Envelope)
_ws_trade = msgspec.json.Decoder(_WsTrade)
_entries = msgspec.json.Decoder(list[msgspec.Raw])


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    """``BTCUSDT`` -> ``BTC/USDT`` (by the known quote suffix, as for Binance)."""
    return symbols.from_concatenated(venue_symbol)


def venue_symbol(canonical: str) -> str:
    return symbols.to_concatenated(canonical)


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    frames = []
    for n, start in enumerate(range(0, len(symbol_list), SUBSCRIBE_CHUNK), start=1):
        args = [TOPIC_PREFIX + venue_symbol(s) for s in symbol_list[start:start + SUBSCRIBE_CHUNK]]
        frames.append(msgspec.json.encode({"op": "subscribe", "args": args, "req_id": f"trades-{n}"}).decode())
    return frames


def ping_frame() -> str | None:
    return '{"op":"ping"}'


def _side(text: str) -> str:
    if text == "Buy":
        return "buy"
    if text == "Sell":
        return "sell"
    raise FieldError("invalid_side", f"side must be Buy or Sell, got {text[:20]!r}")


def _symbol(text: str) -> str:
    return known_symbol(canonical_symbol, text)


def _timestamp(value: int | str, name: str) -> int:
    try:
        return epoch_ms(value)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", f"{name}: {exc}") from None


def _ws_trade_to_trade(entry: bytes, recv_ms: int) -> Trade:
    wire = decode_entry(_ws_trade, entry)
    return Trade(
        exchange=NAME, symbol=_symbol(wire.s), trade_id=trade_id_text(wire.i),
        price=positive_float(wire.p, "price"), qty=positive_float(wire.v, "qty"),
        side=_side(wire.S), ts_ms=_timestamp(wire.T, "T"), recv_ms=recv_ms)  # type: ignore[arg-type]


def _reply(env: _Envelope) -> Control:
    """A reply to one of our requests (subscribe, ping)."""
    if env.op == "pong" or (env.op == "ping" and env.success is not False):
        return Control("pong")
    if env.success is False:
        return Control("error", f"{env.op}: {env.ret_msg or 'failed'}")
    if env.op == "subscribe":
        return Control("subscribed", env.ret_msg or "")
    return Control("info", env.op or "")


def parse_frame(raw: bytes | str, recv_ms: int) -> ParseResult:
    """One websocket frame -> trades, control notices and errors. Never raises."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    result = ParseResult()
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    if env.op is not None:
        result.control.append(_reply(env))
        return result
    if env.topic is None or not env.topic.startswith(TOPIC_PREFIX):
        result.control.append(Control("ignored", env.topic or ""))
        return result
    if not len(env.data):
        result.errors.append(FrameError("missing_field", "publicTrade frame has no data", data))
        return result
    try:
        entries = _entries.decode(env.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        result.errors.append(FrameError("invalid_frame", f"publicTrade data is not a list: {exc}", data))
        return result
    for entry in entries:
        entry_bytes = bytes(entry)
        try:
            result.trades.append(_ws_trade_to_trade(entry_bytes, recv_ms))
        except FieldError as exc:
            result.errors.append(exc.to_frame_error(entry_bytes))
        except (msgspec.DecodeError, ValueError) as exc:  # a non-object entry, or Trade's own validation
            result.errors.append(FrameError("invalid_trade", str(exc), entry_bytes))
    return result


# ---- REST history -------------------------------------------------------------------------

class _RestResult(msgspec.Struct, rename={"trades": "list"}):
    trades: list[msgspec.Raw] = []  # the venue's `list`, newest first


class _RestBody(msgspec.Struct):
    retCode: int
    retMsg: str = ""
    result: _RestResult | None = None


class _RestTrade(msgspec.Struct):
    execId: str  # trade id, as `i` on the websocket
    symbol: str
    price: str
    size: str  # base-asset quantity
    side: str  # taker side: Buy | Sell
    time: str | int  # epoch ms
    isBlockTrade: bool | None = None


_rest_body = msgspec.json.Decoder(_RestBody)
_rest_trade = msgspec.json.Decoder(_RestTrade)


def parse_rest_trades(body: bytes, symbol: str, recv_ms: int, *, retry_after_s: float = 1.0) -> RestPage:
    """A ``recent-trade`` body -> a page, oldest first (raises RateLimited / ValueError)."""
    try:
        parsed = _rest_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"bybit REST: unexpected response: {exc}") from None
    if parsed.retCode in RATE_LIMIT_CODES:
        raise RateLimited(retry_after_s, f"bybit REST {parsed.retCode}: {parsed.retMsg}")
    if parsed.retCode != 0:
        raise ValueError(f"bybit REST error {parsed.retCode}: {parsed.retMsg}"[:300])
    page = RestPage()
    rows = parsed.result.trades if parsed.result is not None else []
    for row in reversed(rows):  # the venue lists newest first
        row_bytes = bytes(row)
        try:
            wire = _rest_trade.decode(row_bytes)
            page.trades.append(Trade(
                exchange=NAME, symbol=symbol, trade_id=trade_id_text(wire.execId),
                price=positive_float(wire.price, "price"), qty=positive_float(wire.size, "qty"),
                side=_side(wire.side), ts_ms=_timestamp(wire.time, "time"),  # type: ignore[arg-type]
                recv_ms=recv_ms))
        except FieldError as exc:
            page.errors.append(exc.to_frame_error(row_bytes))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            page.errors.append(FrameError("invalid_field", f"trade row: {exc}", row_bytes))
        except ValueError as exc:
            page.errors.append(FrameError("invalid_trade", str(exc), row_bytes))
    page.trades.sort(key=lambda t: t.ts_ms)  # stable: same-ms trades keep the venue's order
    return page


def _retry_after_s(response: "httpx.Response", now_ms: int) -> float:
    """Seconds until the limit resets, from ``X-Bapi-Limit-Reset-Timestamp`` (epoch ms)."""
    reset = response.headers.get("X-Bapi-Limit-Reset-Timestamp", "")
    if reset.isdigit():
        return min(60.0, max(0.5, (int(reset) - now_ms) / 1000))
    return 1.0


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    """The most recent trades (Bybit has no history cursor), oldest first; never a next page.

    `since_ms` / `cursor` cannot be sent to the venue: the caller keeps the trades it needs.
    When the oldest trade returned is newer than `since_ms`, trades in between are lost and
    a warning says so.
    """
    response = await client.get(f"{(base_url or REST_URL).rstrip('/')}/v5/market/recent-trade",
                                params={"category": CATEGORY, "symbol": venue_symbol(symbol),
                                        "limit": str(REST_LIMIT)})
    wait = _retry_after_s(response, recv_ms)
    if response.status_code in (403, 429):
        raise RateLimited(wait, f"HTTP {response.status_code}")
    if response.status_code >= 400 and not response.content.startswith(b"{"):
        raise ValueError(f"bybit REST: HTTP {response.status_code}")
    page = parse_rest_trades(response.content, symbol, recv_ms, retry_after_s=wait)
    if since_ms is not None and len(page.trades) + len(page.errors) >= REST_LIMIT \
            and page.trades and page.trades[0].ts_ms > since_ms:
        log.warning("gap longer than the REST history", exchange=NAME, symbol=symbol, since_ms=since_ms,
                    oldest_ms=page.trades[0].ts_ms, limit=REST_LIMIT)
    page.next_cursor = None
    return page
