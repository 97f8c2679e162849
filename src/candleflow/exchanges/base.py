"""What every exchange adapter module provides, and the values it returns.

An adapter is a module (``exchanges/kraken.py`` …) with the same shape for
every venue; see ``exchanges/_template.py``. Parsing is a pure function:
``parse_frame(raw, recv_ms)`` never awaits, never reads a clock and never
raises on bad input — problems come back as :class:`FrameError` values that
ingest turns into dead letters. The websocket lifecycle (back-off, pings,
resubscription, the silence watchdog) lives once, in ``exchanges/ws.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from candleflow.records import Trade

if TYPE_CHECKING:
    import httpx

ControlKind = Literal["subscribed", "heartbeat", "pong", "info", "error", "reconnect", "ignored"]


@dataclass(frozen=True)
class Control:
    """A frame that carries no trade: an ack, heartbeat, status, error or reconnect notice."""

    kind: ControlKind
    detail: str = ""


@dataclass(frozen=True)
class FrameError:
    """Input that could not be turned into a valid Trade (goes to the dead-letter topic)."""

    reason: str  # machine-friendly: invalid_json, missing_field, invalid_price, unknown_symbol, ...
    detail: str  # human-readable, names the field
    raw: bytes = b""  # the offending piece (the frame, or the one trade entry inside it)


@dataclass
class ParseResult:
    trades: list[Trade] = field(default_factory=list)
    control: list[Control] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    # True when the frame is a snapshot (e.g. Kraken's first `trade` message):
    # its trades may repeat ones already published and rely on de-duplication.
    snapshot: bool = False


@dataclass
class RestPage:
    """One page of REST trade history, oldest first."""

    trades: list[Trade] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    next_cursor: str | None = None  # pass back as `cursor` for the next page; None: nothing newer yet


class RateLimited(Exception):
    """The exchange said slow down (HTTP 429, Kraken `EAPI:Rate limit exceeded`, …)."""

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        super().__init__(detail or f"rate limited; retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class ExchangeModule(Protocol):
    """The module-level interface of an adapter (checked by tests/exchanges/test_registry.py)."""

    NAME: str
    WS_URL: str
    REST_URL: str

    def subscribe_frames(self, symbols: list[str]) -> list[str]: ...

    def parse_frame(self, raw: bytes | str, recv_ms: int) -> ParseResult: ...

    # Optional (Kraken, Binance): ``fast_trades(raw: bytes, recv_ms) -> list[Trade] | None``, the
    # trades of the venue's usual trade frame, or None when parse_frame must look at the frame.
    # Ingest's replay tries it first (exchanges/fastpath.py, compiled), or, when native/ is built,
    # ``encoded_trades(raw, recv_ms) -> list[(symbol, trade_id, ts_ms, encoded Trade)] | None``
    # (exchanges/native.py, Rust) for the same frames.

    def canonical_symbol(self, venue_symbol: str) -> str: ...

    def venue_symbol(self, canonical: str) -> str: ...

    # Keep-alive: an application-level ping frame (None: rely on websocket pings)
    # sent every PING_INTERVAL_S seconds.
    PING_INTERVAL_S: float

    def ping_frame(self) -> str | None: ...

    # REST history, for gap fill after a reconnect and for backfill. `cursor`
    # is the adapter's own (opaque) position; `since_ms` starts from a time.
    # Raises RateLimited; the caller waits and retries, and paces requests at
    # REST_MIN_INTERVAL_S (the exchange's documented public limit).
    REST_MIN_INTERVAL_S: float

    async def fetch_trades(self, client: "httpx.AsyncClient", symbol: str, *, since_ms: int | None = None,
                           cursor: str | None = None, recv_ms: int, base_url: str | None = None) -> RestPage: ...


def decode_envelope(decoder: msgspec.json.Decoder, data: bytes, result: ParseResult) -> Any | None:
    """A frame's envelope, or None with the reason added to `result` (not JSON, or not the shape expected)."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:  # a DecodeError too: test it first
        result.errors.append(FrameError("invalid_frame", f"unexpected frame shape: {exc}", data))
    except msgspec.DecodeError as exc:
        result.errors.append(FrameError("invalid_json", f"not valid JSON: {exc}", data))
    return None
