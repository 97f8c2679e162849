"""Kraken spot: WebSocket v2 ``trade`` channel and REST ``/0/public/Trades``.

Wire format (docs.kraken.com, WebSocket v2 "Trade" and REST "Get Recent Trades"):

* subscribe ``{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"],"snapshot":true}}``;
  ack ``{"method":"subscribe","result":{...},"success":true}`` or ``"success":false`` with ``error``.
* trades ``{"channel":"trade","type":"snapshot"|"update","data":[{symbol, side, price, qty,
  ord_type, trade_id, timestamp}]}``: ``side`` is the taker's side; ``price`` and ``qty`` are
  JSON *numbers* (decoded here from their literal text); ``timestamp`` is RFC 3339 with up to
  9 fractional digits. The snapshot (the last trades) comes first after subscribing.
* ``{"channel":"heartbeat"}`` about once a second; ``{"channel":"status",...}``;
  app-level ``{"method":"ping"}`` answered by ``{"method":"pong"}``.
* REST ``GET /0/public/Trades?pair=XBTUSD&since=<ns>``: ``{"error":[],"result":{"XXBTZUSD":
  [[price, volume, time, "b"|"s", "m"|"l", misc, trade_id], ...], "last":"<ns cursor>"}}``;
  price/volume are decimal strings, time is decimal epoch seconds. Rate limiting answers
  ``{"error":["EAPI:Rate limit exceeded"]}``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import msgspec

from candleflow.exchanges import symbols
from candleflow.exchanges.base import Control, FrameError, ParseResult, RateLimited, RestPage, decode_envelope
from candleflow.exchanges.fastpath import KrakenTrades
from candleflow.exchanges.fields import FieldError, decode_entry, known_symbol, positive_float, trade_id_text
from candleflow.exchanges.native import NATIVE
from candleflow.exchanges.times import epoch_seconds_text_ms, rfc3339_ms
from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

NAME = "kraken"
WS_URL = "wss://ws.kraken.com/v2"
REST_URL = "https://api.kraken.com"
PING_INTERVAL_S = 20.0  # Kraken also sends heartbeats; the ping keeps idle links open
REST_MIN_INTERVAL_S = 1.0  # public endpoints: about one call per second per IP
SUBSCRIBE_CHUNK = 50  # symbols per subscribe request


class _Envelope(msgspec.Struct):
    channel: str | None = None
    type: str | None = None  # snapshot | update
    method: str | None = None  # subscribe | unsubscribe | pong
    success: bool | None = None
    error: str | None = None
    result: msgspec.Raw = msgspec.Raw()  # empty when absent
    data: list[msgspec.Raw] | None = None


class _WsTrade(msgspec.Struct):
    symbol: str  # "BTC/USD" (v2 uses BTC; older names may say XBT)
    side: str  # taker side: buy | sell
    price: msgspec.Raw  # JSON number, kept as its literal text
    qty: msgspec.Raw  # JSON number, base asset
    trade_id: int | str
    timestamp: str  # RFC 3339, up to 9 fractional digits
    ord_type: str = ""  # market | limit (taker's order type)


class _FastWsTrade(msgspec.Struct):
    """`_WsTrade` with typed numbers, for the one-pass decode of a whole trade message.

    msgspec reads a JSON number's literal with correct rounding, so ``price`` is the
    same float as ``float(text)`` of the exchange's text.
    """

    symbol: str
    side: str
    price: float
    qty: float
    trade_id: int | str
    timestamp: str
    ord_type: str = ""


class _TradeMessage(msgspec.Struct):
    """`_Envelope` with typed trade entries: accepts no frame that `_Envelope` rejects."""

    channel: str | None = None
    type: str | None = None
    method: str | None = None
    success: bool | None = None
    error: str | None = None
    result: msgspec.Raw = msgspec.Raw()
    data: list[_FastWsTrade] | None = None


_envelope = msgspec.json.Decoder(_Envelope)
_ws_trade = msgspec.json.Decoder(_WsTrade)
_trade_message = msgspec.json.Decoder(_TradeMessage)


@functools.lru_cache(maxsize=4096)
def canonical_symbol(venue_symbol: str) -> str:
    """``XBT/USD`` or ``BTC/USD`` -> ``BTC/USD``."""
    return symbols.from_separated(venue_symbol, "/")


def venue_symbol(canonical: str) -> str:
    """WebSocket v2 name: the canonical form (v2 spells bitcoin BTC)."""
    base, quote = symbols.split_canonical(canonical)
    return f"{base}/{quote}"


def rest_pair(canonical: str) -> str:
    """REST pair name: ``BTC/USD`` -> ``XBTUSD``."""
    return symbols.to_separated(canonical, "", aliases={"BTC": "XBT", "DOGE": "XDG"})


def subscribe_frames(symbol_list: list[str]) -> list[str]:
    frames = []
    for start in range(0, len(symbol_list), SUBSCRIBE_CHUNK):
        chunk = [venue_symbol(s) for s in symbol_list[start:start + SUBSCRIBE_CHUNK]]
        frames.append(msgspec.json.encode(
            {"method": "subscribe", "params": {"channel": "trade", "symbol": chunk, "snapshot": True}}).decode())
    return frames


def ping_frame() -> str | None:
    return '{"method":"ping"}'


def _side(text: str) -> str:
    if text not in ("buy", "sell"):
        raise FieldError("invalid_side", f"side must be buy or sell, got {text[:20]!r}")
    return text


def _symbol(text: str) -> str:
    return known_symbol(canonical_symbol, text)


def _ws_trade_to_trade(entry: bytes, recv_ms: int) -> Trade:
    wire = decode_entry(_ws_trade, entry)
    try:
        ts_ms = rfc3339_ms(wire.timestamp)
    except ValueError as exc:
        raise FieldError("invalid_timestamp", str(exc)) from None
    return Trade(
        exchange=NAME,
        symbol=_symbol(wire.symbol),
        trade_id=trade_id_text(wire.trade_id),
        price=positive_float(wire.price, "price"),
        qty=positive_float(wire.qty, "qty"),
        side=_side(wire.side),  # type: ignore[arg-type]
        ts_ms=ts_ms,
        recv_ms=recv_ms,
    )


# The usual trade message in one decode (exchanges/fastpath.py, compiled): only well-formed
# frames whose every entry makes a valid Trade take this path; for anything else the
# general path in parse_frame runs from scratch and says what is wrong, entry by entry,
# so both paths give the same result for any frame.
_fast = KrakenTrades(_trade_message.decode, NAME)
# The trades of the usual trade frame (bytes), or None: use parse_frame (ingest's replay calls this first).
fast_trades = _fast.trades
# The same frames read in Rust (native/, when built), straight to encoded Trade records
# ``(symbol, trade_id, ts_ms, value)``, or None: ingest's replay calls this first when it is there.
encoded_trades = NATIVE.TradeFrames(NAME, canonical_symbol).encoded_trades if NATIVE is not None else None


def parse_frame(raw: bytes | str, recv_ms: int) -> ParseResult:
    """One websocket frame -> trades, control notices and errors. Never raises."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    fast = _fast.parse(data, recv_ms)
    if fast is not None:
        return ParseResult(trades=fast[0], snapshot=fast[1])
    result = ParseResult()
    env = decode_envelope(_envelope, data, result)
    if env is None:
        return result
    if env.method is not None:
        if env.method == "pong":
            result.control.append(Control("pong"))
        elif env.success is False or env.error:
            result.control.append(Control("error", f"{env.method}: {env.error or 'failed'}"))
        elif env.method == "subscribe":
            result.control.append(Control("subscribed", bytes(env.result).decode("utf-8", "replace")))
        else:
            result.control.append(Control("info", env.method))
        return result
    if env.channel == "heartbeat":
        result.control.append(Control("heartbeat"))
        return result
    if env.channel != "trade":
        result.control.append(Control("info" if env.channel == "status" else "ignored", env.channel or ""))
        return result
    if env.data is None:
        result.errors.append(FrameError("missing_field", "trade frame has no data", data))
        return result
    result.snapshot = env.type == "snapshot"
    for entry in env.data:
        entry_bytes = bytes(entry)
        try:
            result.trades.append(_ws_trade_to_trade(entry_bytes, recv_ms))
        except FieldError as exc:
            result.errors.append(exc.to_frame_error(entry_bytes))
        except ValueError as exc:  # Trade's own validation
            result.errors.append(FrameError("invalid_trade", str(exc), entry_bytes))
    return result


# ---- REST history -------------------------------------------------------------------------

class _RestBody(msgspec.Struct):
    error: list[str] = []
    result: dict[str, msgspec.Raw] | None = None


# [price, volume, time, side, order type, misc, trade_id]
_rest_row = msgspec.json.Decoder(tuple[str, str, msgspec.Raw, str, str, str, int])
_rest_body = msgspec.json.Decoder(_RestBody)


def parse_rest_trades(body: bytes, symbol: str, recv_ms: int) -> RestPage:
    """A ``/0/public/Trades`` response body -> a page (raises RateLimited / ValueError)."""
    try:
        parsed = _rest_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"kraken REST: unexpected response: {exc}") from None
    if parsed.error:
        if any("Rate limit" in e or "Too many requests" in e for e in parsed.error):
            raise RateLimited(5.0, "; ".join(parsed.error))
        raise ValueError(f"kraken REST error: {'; '.join(parsed.error)}")
    page = RestPage()
    if parsed.result is None:
        return page
    for key, value in parsed.result.items():
        if key == "last":
            try:
                page.next_cursor = str(msgspec.json.decode(bytes(value), type=str | int))
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise ValueError("kraken REST: bad `last` cursor") from None
            continue
        try:
            rows = msgspec.json.decode(bytes(value), type=list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"kraken REST: trades of {key} are not a list: {exc}") from None
        for row in rows:
            row_bytes = bytes(row)
            try:
                price, volume, when, side, _ord_type, _misc, trade_id = _rest_row.decode(row_bytes)
                if side not in ("b", "s"):
                    raise FieldError("invalid_side", f"side must be b or s, got {side[:10]!r}")
                try:
                    ts_ms = epoch_seconds_text_ms(bytes(when).decode())
                except ValueError as exc:
                    raise FieldError("invalid_timestamp", str(exc)) from None
                page.trades.append(Trade(
                    exchange=NAME, symbol=symbol, trade_id=str(trade_id),
                    price=positive_float(price, "price"), qty=positive_float(volume, "qty"),
                    side="buy" if side == "b" else "sell", ts_ms=ts_ms, recv_ms=recv_ms))
            except FieldError as exc:
                page.errors.append(exc.to_frame_error(row_bytes))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                page.errors.append(FrameError("invalid_field", f"trade row: {exc}", row_bytes))
            except ValueError as exc:
                page.errors.append(FrameError("invalid_trade", str(exc), row_bytes))
    page.trades.sort(key=lambda t: (t.ts_ms, int(t.trade_id)))
    return page


async def fetch_trades(client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                       cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage:
    """One page (up to 1000 trades) after `cursor` (ns) or `since_ms`, oldest first."""
    params = {"pair": rest_pair(symbol)}
    if cursor is not None:
        params["since"] = cursor
    elif since_ms is not None:
        params["since"] = str(since_ms * 1_000_000)
    response = await client.get(f"{(base_url or REST_URL).rstrip('/')}/0/public/Trades", params=params)
    if response.status_code == 429:
        raise RateLimited(float(response.headers.get("Retry-After", "5") or 5), "HTTP 429")
    if response.status_code >= 400 and not response.content.startswith(b"{"):
        raise ValueError(f"kraken REST: HTTP {response.status_code}")
    page = parse_rest_trades(response.content, symbol, recv_ms)
    if not page.trades and not page.errors:
        page.next_cursor = None  # caught up: nothing newer yet
    return page
