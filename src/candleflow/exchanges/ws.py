"""The websocket connection lifecycle, written once for every venue.

:class:`Feed` connects to an adapter's endpoint, sends its subscribe frames,
sends the adapter's application-level ping every ``PING_INTERVAL_S`` (when it
has one), treats a connection silent for ``silence_timeout_s`` as dead, and
reconnects with exponential back-off and full jitter. The back-off resets once
a subscription is confirmed (an ack or a first trade). A venue-announced
disconnect (a ``reconnect`` control, a close frame, or the adapter's
``MAX_CONNECTION_S`` such as Binance's 24 h limit) reconnects at once.

Every frame goes through ``adapter.parse_frame`` and is handed to the caller's
``on_frame(raw, recv_ms, result)``; ``on_subscribed(reconnect)`` tells the
caller when a (re)subscription took effect, which is when ingest starts the
REST gap fill. Frames larger than ``max_frame_bytes`` are not parsed: they are
handed over with an ``oversized_frame`` error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import websockets
from websockets.asyncio.client import connect

from candleflow.exchanges.base import FrameError, ParseResult
from candleflow.log import get_logger

log = get_logger("candleflow.exchanges.ws")

FrameHandler = Callable[[bytes, int, ParseResult], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Backoff:
    """Exponential back-off with full jitter: delay n is uniform in [0.5, 1] x min(max, initial x 2^n)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class FeedStats:
    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    last_disconnect: str = ""


class Feed:
    def __init__(self, adapter: ModuleType, symbols: list[str], *, on_frame: FrameHandler,
                 on_subscribed: Callable[[bool], None] | None = None,
                 on_disconnect: Callable[[str], None] | None = None,
                 ws_url: str | None = None, silence_timeout_s: float = 30.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_frame_bytes: int = 1_048_576, open_timeout_s: float = 10.0,
                 on_raw: Callable[[bytes, int], None] | None = None, rng: random.Random | None = None) -> None:
        self.adapter = adapter
        self.symbols = list(symbols)
        self.url = ws_url or adapter.WS_URL
        self.on_frame = on_frame
        self.on_subscribed = on_subscribed
        self.on_disconnect = on_disconnect
        self.on_raw = on_raw
        self.silence_timeout_s = silence_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout_s = open_timeout_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, rng or random.Random())
        self.stats = FeedStats()
        self.name = adapter.NAME
        self._subscribed = False

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set."""
        while not stop.is_set():
            reason, immediate = await self._session(stop)
            if stop.is_set():
                break
            self.stats.reconnects += 1
            self.stats.last_disconnect = reason
            if self.on_disconnect is not None:
                self.on_disconnect(reason)
            delay = 0.0 if immediate else self.backoff.next_delay()
            log.warning("feed disconnected", exchange=self.name, reason=reason, retry_in_s=round(delay, 3))
            if delay:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass

    async def _session(self, stop: asyncio.Event) -> tuple[str, bool]:
        """One connection, from connect to its end: (why it ended, reconnect at once?)."""
        ping_interval = float(getattr(self.adapter, "PING_INTERVAL_S", 0) or 0)
        ping = self.adapter.ping_frame() if ping_interval > 0 else None
        max_age = float(getattr(self.adapter, "MAX_CONNECTION_S", 0) or 0)
        self._subscribed = False
        try:
            async with connect(self.url, max_size=None, open_timeout=self.open_timeout_s,
                               ping_interval=None if ping else 20.0, ping_timeout=self.silence_timeout_s,
                               close_timeout=2.0) as ws:
                self.stats.connects += 1
                opened = time.monotonic()
                log.info("feed connected", exchange=self.name, url=self.url, symbols=len(self.symbols))
                for frame in self.adapter.subscribe_frames(self.symbols):
                    await ws.send(frame)
                pinger = asyncio.create_task(self._ping(ws, ping, ping_interval)) if ping else None
                stopper = asyncio.create_task(stop.wait())
                try:
                    while True:
                        remaining = self.silence_timeout_s
                        if max_age:
                            age_left = max_age - (time.monotonic() - opened)
                            if age_left <= 0:
                                return "connection age limit", True
                            remaining = min(remaining, age_left)
                        receiver = asyncio.ensure_future(ws.recv())
                        done, _ = await asyncio.wait({receiver, stopper}, timeout=remaining,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if stopper in done:
                            receiver.cancel()
                            return "stopped", True
                        if receiver not in done:
                            receiver.cancel()
                            if max_age and time.monotonic() - opened >= max_age:
                                return "connection age limit", True
                            return f"silent for {self.silence_timeout_s}s", False
                        message = receiver.result()
                        if self._handle(message) == "reconnect":
                            return "venue asked to reconnect", True
                finally:
                    stopper.cancel()
                    if pinger is not None:
                        pinger.cancel()
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            # a clean close by the venue (maintenance, 24 h limit) is announced: reconnect at once
            return f"closed by venue ({code})", code in (1000, 1001)
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            return f"connect failed: {exc!r}"[:200], False

    def _handle(self, message: str | bytes) -> str | None:
        raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else bytes(message)
        recv_ms = now_ms()
        self.stats.frames += 1
        if self.on_raw is not None:
            self.on_raw(raw, recv_ms)
        if len(raw) > self.max_frame_bytes:
            result = ParseResult(errors=[FrameError(
                "oversized_frame", f"frame of {len(raw)} bytes exceeds {self.max_frame_bytes}", raw[:4096])])
        else:
            result = self.adapter.parse_frame(raw, recv_ms)
        outcome = None
        for control in result.control:
            if control.kind == "subscribed":
                self._confirm()
            elif control.kind == "reconnect":
                outcome = "reconnect"
            elif control.kind == "error":
                log.warning("venue error", exchange=self.name, detail=control.detail)
        if result.trades and not self._subscribed:
            self._confirm()
        self.on_frame(raw, recv_ms, result)
        return outcome

    def _confirm(self) -> None:
        if self._subscribed:
            return
        self._subscribed = True
        reconnect = self.stats.connects > 1
        self.backoff.reset()
        if self.on_subscribed is not None:
            self.on_subscribed(reconnect)

    async def _ping(self, ws: websockets.asyncio.client.ClientConnection, frame: str, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await ws.send(frame)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            return
