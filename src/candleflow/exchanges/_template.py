"""Template for a new venue adapter: copy to ``exchanges/<venue>.py`` and fill in.

Checklist for adding a venue
----------------------------
1. Read the venue's public docs for: the trade channel and its subscribe frame,
   the ack and error frames, snapshot vs update, heartbeats / pings it needs,
   announced disconnects, the taker-side definition, every timestamp form, and
   the public REST trade history (cursor, page size, rate limit, 429 answer).
2. Write fixtures first, from the documented examples:
   ``tests/exchanges/fixtures/<venue>/ws_<channel>_<case>.json`` (ack, error,
   heartbeat, snapshot, update, malformed price, missing field, unknown symbol)
   and ``rest_trades_page1.json`` (+ the rate-limited answer).
3. Fill in this module: wire structs keep the venue's field names (comment the
   cryptic ones); numbers stay text until one ``positive_float`` call
   (``msgspec.Raw`` for JSON numbers); timestamps go through
   ``exchanges/times.py`` (integer arithmetic, never float seconds); symbols
   through ``exchanges/symbols.py``; every problem becomes a ``FrameError``
   (``parse_frame`` never raises, one bad entry never hides its neighbours).
4. Register the module in ``exchanges/__init__.py`` (``ADAPTERS``) and add the
   name to ``ExchangeConfig.name`` in ``config.py``.
5. Tests in ``tests/exchanges/test_<venue>.py``: each fixture parsed to the exact
   Trade, field by field; control frames carry no trade; hypothesis: no input
   makes ``parse_frame`` raise; ``fetch_trades`` request parameters and cursor
   with ``httpx.MockTransport``; 429 raises ``RateLimited``.
6. End to end: a ``tests/exchanges/fakeserver.FakeExchange`` script with ack,
   snapshot, updates, heartbeat, a malformed frame, a drop, a repeated
   snapshot and a REST-only gap; run ``candleflow ingest`` with
   ``tests/exchanges/e2e.start_ingest`` and assert on the ``trades`` and ``dlq``
   topics (see ``tests/services/test_ingest.py``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import msgspec

from candleflow.exchanges import symbols
from candleflow.exchanges.base import Control, FrameError, ParseResult, RateLimited, RestPage, decode_envelope
from candleflow.exchanges.fields import FieldError, decode_entry, known_symbol, positive_float, trade_id_text
from candleflow.exchanges.times import rfc3339_ms
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

NAME = "venue"  # lower case, equal to Trade.exchange
WS_URL = "wss://ws.example.invalid/v1"
REST_URL = "https://api.example.invalid"
PING_INTERVAL_S = 20.0  # 0: the venue pings at the websocket level and the client pongs
REST_MIN_INTERVAL_S = 1.0  # the documented public rate limit
# MAX_CONNECTION_S = 24 * 3600 - 600  # optional: reconnect before a documented connection age limit


class _Envelope(msgspec.Struct):
    type: str | None = None  # what kind of frame
    data: list[msgspec.Raw] | None = None  # trade entries, decoded one by one


class _WireTrade(msgspec.Struct):
    symbol: str
    side: str  # check the venue's definition: taker side, or maker side, or a maker flag
    price: msgspec.Raw  # a JSON number or a decimal string: kept as text
    size: msgspec.Raw
    trade_id: int | str
    time: str


_envelope = msgspec.json.Decoder(_Envelope)
_wire_trade = msgspec.json.Decoder(_WireTrade)


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    return symbols.from_separated(venue_symbol, "-")


def venue_symbol(canonical: str) -> str:
    return symbols.to_separated(canonical, "-")


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    return [msgspec.json.encode({"op": "subscribe", "channel": "trades",
                                 "symbols": [venue_symbol(s) for s in symbol_list]}).decode()]


def ping_frame() -> str | None:
    return '{"op":"ping"}'


def _to_trade(entry: bytes, recv_ms: int) -> Trade:
    wire = decode_entry(_wire_trade, entry)
    symbol = known_symbol(canonical_symbol, wire.symbol)
    if wire.side not in ("buy", "sell"):
        raise FieldError("invalid_side", f"side must be buy or sell, got {wire.side[:20]!r}")
    try:
        ts_ms = rfc3339_ms(wire.time)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", str(exc)) from None
    return Trade(exchange=NAME, symbol=symbol, trade_id=trade_id_text(wire.trade_id),
                 price=positive_float(wire.price, "price"), qty=positive_float(wire.size, "qty"),
                 side=wire.side, ts_ms=ts_ms, recv_ms=recv_ms)  # type: ignore[arg-type]


def parse_frame(raw: bytes | str, recv_ms: int) -> ParseResult:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    result = ParseResult()
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    if env.type in ("subscribed", "heartbeat", "pong", "error"):
        result.control.append(Control(env.type))  # type: ignore[arg-type]
        return result
    if env.type not in ("snapshot", "update") or env.data is None:
        result.control.append(Control("ignored", env.type or ""))
        return result
    result.snapshot = env.type == "snapshot"
    for entry in env.data:
        entry_bytes = bytes(entry)
        try:
            result.trades.append(_to_trade(entry_bytes, recv_ms))
        except FieldError as exc:
            result.errors.append(exc.to_frame_error(entry_bytes))
        except ValueError as exc:
            result.errors.append(FrameError("invalid_trade", str(exc), entry_bytes))
    return result


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    params = {"symbol": venue_symbol(symbol)}
    if cursor is not None:
        params["after"] = cursor
    elif since_ms is not None:
        params["start"] = str(since_ms)
    response = await client.get(f"{(base_url or REST_URL).rstrip('/')}/trades", params=params)
    if response.status_code == 429:
        raise RateLimited(float(response.headers.get("Retry-After") or 1), "HTTP 429")
    response.raise_for_status()
    page = RestPage()
    for entry in msgspec.json.decode(response.content, type=list[msgspec.Raw]):
        try:
            page.trades.append(_to_trade(bytes(entry), recv_ms))
        except FieldError as exc:
            page.errors.append(exc.to_frame_error(bytes(entry)))
    page.next_cursor = page.trades[-1].trade_id if page.trades else None
    return page
