"""The ingest hot path, per trade: the usual Kraken and Binance trade frames, RFC 3339, de-duplication, publication.

Compiled with mypyc at install time (``setup.py``), like the features engine: the
types here are precise for that reason (ints, floats and strings become C values,
classes become native). Uncompiled, it is plain Python giving the same results;
``tests/exchanges/test_compiled_ingest.py`` checks that the two builds agree.

The fast parsers accept only the usual frame, every entry of which makes a valid
Trade, and answer None for anything else: the adapter's general parser then runs
from scratch and names the problem, so both paths give the same result for any
frame. msgspec structs cannot be compiled (foreign metaclass), so the adapters
keep their wire structs and hand their decoders over.

Replay reads the same usual frames with the Rust parser of ``native/`` when it is
built (exchanges/native.py): it gives each trade already encoded, and
TradeFlow.accept_encoded publishes it like accept() publishes a Trade.
"""

from __future__ import annotations

import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, final

from candleflow.exchanges.base import FrameError
from candleflow.exchanges.fields import NUMBER_TEXT
from candleflow.exchanges.symbols import from_concatenated, from_separated
from candleflow.records import Trade, trade_key

_SYMBOL_CACHE_SIZE: Final = 4096  # venue symbols remembered per adapter (as the adapters' lru_cache)
_MINUTE_CACHE_SIZE: Final = 4096  # RFC 3339 minutes remembered
_DELAY_SAMPLE_MASK: Final = 15  # the publish delay is observed for one published trade in 16
_time_ns: Final = time.time_ns  # a constant of the compiled module: no lookup in `time` per call
_ZERO: Final = 48  # ord("0")
_NINE: Final = 57  # ord("9")


def _compiled_probe() -> None:
    """Only here to tell whether this module is compiled (see COMPILED)."""


# True when this module is the mypyc-compiled build: its functions are then built-ins, not Python functions.
COMPILED: Final = not isinstance(_compiled_probe, types.FunctionType)


# ---- RFC 3339 ---------------------------------------------------------------------------------

@final
class _Minutes:
    """Epoch ms of ``YYYY-MM-DDTHH:MM`` minutes the general parser has validated (times.rfc3339_ms)."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        self.last = "\0" * 16  # the minute utc_ms saw last (no timestamp starts with this one) ...
        self.last_ms = 0  # ... and its epoch ms


_MINUTES: Final = _Minutes()


def remember_minute(prefix: str, start_ms: int) -> None:
    """Cache the epoch ms of a validated ``YYYY-MM-DDTHH:MM`` (bounded: cleared when full)."""
    starts = _MINUTES.starts
    if len(starts) >= _MINUTE_CACHE_SIZE:
        starts.clear()
    starts[prefix] = start_ms


def utc_ms(text: str) -> int:
    """Epoch ms of the usual UTC form ``YYYY-MM-DDTHH:MM:SS.f…Z`` (1 to 9 fractional digits) whose
    minute is cached; -1 for anything else (times.rfc3339_ms then parses it and caches the minute)."""
    n = len(text)
    if n < 22 or n > 30 or text[16] != ":" or text[19] != "." or text[n - 1] != "Z":
        return -1
    tens = ord(text[17]) - _ZERO
    units = ord(text[18]) - _ZERO
    if tens < 0 or tens > 5 or units < 0 or units > 9:
        return -1
    millis = 0
    for i in range(20, n - 1):
        digit = ord(text[i]) - _ZERO
        if digit < 0 or digit > 9:
            return -1
        if i < 23:
            millis = millis * 10 + digit
    for _ in range(n - 21, 3):  # fewer than 3 digits: "4" is 400 ms
        millis *= 10
    minutes = _MINUTES
    if not text.startswith(minutes.last):  # a feed's timestamps mostly stay in one minute
        minute = minutes.starts.get(text[:16], -1)
        if minute < 0:
            return -1
        minutes.last = text[:16]
        minutes.last_ms = minute
    return minutes.last_ms + (tens * 10 + units) * 1000 + millis


# ---- numbers ----------------------------------------------------------------------------------

def is_plain_number(text: str) -> bool:
    """``-?digits(.digits)?([eE][+-]?digits)?``, optionally followed by one newline: what fields.NUMBER_TEXT
    matches (``$`` also matches before a final newline, and float() ignores it)."""
    n = len(text)
    if n and text[n - 1] == "\n":
        n -= 1
    i = 0
    if n and text[0] == "-":
        i = 1
    start = i
    while i < n and _ZERO <= ord(text[i]) <= _NINE:
        i += 1
    if i == start:
        return False
    if i < n and text[i] == ".":
        i += 1
        start = i
        while i < n and _ZERO <= ord(text[i]) <= _NINE:
            i += 1
        if i == start:
            return False
    if i < n and (text[i] == "e" or text[i] == "E"):
        i += 1
        if i < n and (text[i] == "+" or text[i] == "-"):
            i += 1
        start = i
        while i < n and _ZERO <= ord(text[i]) <= _NINE:
            i += 1
        if i == start:
            return False
    return i == n


# 10**k for k <= 22: exact as floats, like every integer below 2**53.
_EXACT_POWERS_OF_TEN: Final = tuple([float(10**k) for k in range(23)])
_EXACT_INTEGERS: Final = 1 << 53


def decimal_value(text: str) -> float:
    """float(text) of plain decimal text ``digits(.digits)?`` with fewer than 16 significant digits, or -1.0
    for any other text (the caller then checks it with is_plain_number and reads it with float()).

    Cheaper than float(), and the same value: the digits as an integer below 2**53 and 10**k
    for k <= 22 are exact floats, so one correctly rounded IEEE division gives the correctly
    rounded value of the decimal, which is what float() returns.
    """
    n = len(text)
    mantissa = 0
    dot = -1
    for i in range(n):
        digit = ord(text[i]) - _ZERO
        if 0 <= digit <= 9:
            mantissa = mantissa * 10 + digit
            if mantissa >= _EXACT_INTEGERS:
                return -1.0
        elif text[i] == "." and dot < 0 and 0 < i < n - 1:
            dot = i
        else:
            return -1.0
    if n == 0:
        return -1.0
    if dot < 0:
        return float(mantissa)
    fraction_digits = n - dot - 1
    if fraction_digits > 22:
        return -1.0
    return float(mantissa) / _EXACT_POWERS_OF_TEN[fraction_digits]


def _positive_number(text: str) -> float:
    """float(text) when `text` is number text as fields.NUMBER_TEXT means it, else -1.0."""
    if not COMPILED:  # uncompiled, the pattern is faster than scanning characters in Python
        return float(text) if NUMBER_TEXT.match(text) else -1.0
    value = decimal_value(text)
    if value >= 0.0:
        return value
    if not is_plain_number(text):
        return -1.0
    return float(text)


# ---- venue symbols ------------------------------------------------------------------------------

@final
class _Symbols:
    """Venue symbol -> canonical, cached; "" for a symbol that does not map (the general path names it)."""

    def __init__(self, separator: str) -> None:
        self.separator = separator  # "" for concatenated symbols (BTCUSDT)
        self.known: dict[str, str] = {}

    def canonical(self, venue_symbol: str) -> str:
        found = self.known.get(venue_symbol)
        if found is not None:
            return found
        try:
            if self.separator:
                found = from_separated(venue_symbol, self.separator)
            else:
                found = from_concatenated(venue_symbol)
        except ValueError:
            return ""
        if len(self.known) >= _SYMBOL_CACHE_SIZE:
            self.known.clear()
        self.known[venue_symbol] = found
        return found


# ---- Kraken WebSocket v2 ------------------------------------------------------------------------

KRAKEN_TRADE_PREFIX: Final = b'{"channel":"trade"'


@final
class KrakenTrades:
    """The usual Kraken v2 ``trade`` message -> its Trades, or None (see the module docstring).

    `decode` reads a whole message into kraken._TradeMessage (typed entries: price and
    qty are floats read from the JSON number's literal, with the rounding of float(text)).
    """

    def __init__(self, decode: Callable[[bytes], Any], exchange: str) -> None:
        self.decode = decode
        self.exchange = exchange
        self.symbols = _Symbols("/")

    def trades(self, data: object, recv_ms: int) -> list[Trade] | None:
        """The trades of the frame `data` (bytes), or None: use the adapter's parse_frame."""
        if not isinstance(data, bytes):
            return None
        message = self._message(data)
        if message is None:
            return None
        return self._trades(message, recv_ms)

    def parse(self, data: bytes, recv_ms: int) -> tuple[list[Trade], bool] | None:
        """The trades and whether the message is a snapshot, or None (parse_frame's fast path)."""
        message = self._message(data)
        if message is None:
            return None
        trades = self._trades(message, recv_ms)
        if trades is None:
            return None
        return trades, message.type == "snapshot"

    def _message(self, data: bytes) -> Any:
        if not data.startswith(KRAKEN_TRADE_PREFIX):  # not a trade message, or not in the usual form
            return None
        try:
            message = self.decode(data)
        except ValueError:  # msgspec's DecodeError and ValidationError
            return None
        if message.method is not None or message.channel != "trade" or message.data is None:
            return None
        return message

    def _trades(self, message: Any, recv_ms: int) -> list[Trade] | None:
        exchange = self.exchange
        symbols = self.symbols
        trades: list[Trade] = []
        try:
            for wire in message.data:
                side: str = wire.side
                if side != "buy" and side != "sell":
                    return None
                symbol = symbols.canonical(wire.symbol)
                ts_ms = utc_ms(wire.timestamp)
                if not symbol or ts_ms < 0:
                    return None
                trade_id: int | str = wire.trade_id
                price: float = wire.price
                qty: float = wire.qty
                trades.append(Trade(
                    exchange=exchange, symbol=symbol,
                    trade_id=trade_id if isinstance(trade_id, str) else str(trade_id),
                    price=price, qty=qty, side=side, ts_ms=ts_ms, recv_ms=recv_ms))  # type: ignore[arg-type]
        except ValueError:  # a Trade field out of range: the general path names it
            return None
        return trades


# ---- Binance --------------------------------------------------------------------------------------

BINANCE_TRADE_PREFIX: Final = b'{"e":"trade"'


@final
class BinanceTrades:
    """The raw endpoint's usual ``trade`` event -> its Trade, or None (see the module docstring).

    `decode` reads the event into binance._Trade; prices and quantities are decimal text.
    """

    def __init__(self, decode: Callable[[bytes], Any], exchange: str) -> None:
        self.decode = decode
        self.exchange = exchange
        self.symbols = _Symbols("")

    def trades(self, data: object, recv_ms: int) -> list[Trade] | None:
        """The trade of the frame `data` (bytes) as a list, or None: use the adapter's parse_frame."""
        if not isinstance(data, bytes):
            return None
        trade = self.trade(data, recv_ms)
        return None if trade is None else [trade]

    def trade(self, data: bytes, recv_ms: int) -> Trade | None:
        """The Trade of the frame `data`, or None (parse_frame's fast path)."""
        if not data.startswith(BINANCE_TRADE_PREFIX):  # not the raw endpoint's trade event in the usual form
            return None
        try:
            wire = self.decode(data)
        except ValueError:  # msgspec's DecodeError and ValidationError
            return None
        ts_ms = wire.T
        price_text = wire.p
        qty_text = wire.q
        if not isinstance(ts_ms, int) or not (isinstance(price_text, str) and isinstance(qty_text, str)):
            return None
        price = _positive_number(price_text)
        qty = _positive_number(qty_text)
        if price < 0.0 or qty < 0.0:  # not number text: the general path names it (a negative number too)
            return None
        symbol = self.symbols.canonical(wire.s)
        if not symbol:
            return None
        trade_id = wire.t
        taker_sold: bool = wire.m
        try:
            return Trade(exchange=self.exchange, symbol=symbol,
                         trade_id=trade_id if isinstance(trade_id, str) else str(trade_id),
                         price=price, qty=qty, side="sell" if taker_sold else "buy",
                         ts_ms=ts_ms, recv_ms=recv_ms)
        except ValueError:  # a Trade field out of range: the general path names it
            return None


# ---- de-duplication -------------------------------------------------------------------------------

@final
class TradeDedup:
    """The most recent `capacity` (exchange, symbol, trade_id): memory stays flat however long ingest runs."""

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        # One set of trade ids per market answers "seen?"; two deques remember the order in which
        # to forget, as (market's set, id) pairs. No tuple per trade: a key costs only its id
        # string, which the trade has already, so the window takes less memory and fewer cache
        # misses than a set of (exchange, symbol, trade_id) tuples.
        self._ids: dict[tuple[str, str], set[str]] = {}
        self._order_sets: deque[set[str]] = deque()
        self._order_ids: deque[str] = deque()
        # Bound once: compiled code would otherwise look each deque method up by name per trade.
        self._remember_set = self._order_sets.append
        self._remember_id = self._order_ids.append
        self._oldest_set = self._order_sets.popleft
        self._oldest_id = self._order_ids.popleft
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._order_ids)  # each remembered id is in the order once

    def ids_of(self, exchange: str, symbol: str) -> set[str]:
        """The remembered trade ids of one market (TradeFlow keeps it with the market's state)."""
        key = (exchange, symbol)
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = set()
        return ids

    def seen(self, trade: Trade) -> bool:
        return trade.trade_id in self.ids_of(trade.exchange, trade.symbol)

    def add(self, trade: Trade) -> bool:
        """Remember `trade`; True when it is new, False for a duplicate."""
        return self.add_to(self.ids_of(trade.exchange, trade.symbol), trade.trade_id)

    def add_id(self, exchange: str, symbol: str, trade_id: str) -> bool:
        """`add` of a trade with these."""
        return self.add_to(self.ids_of(exchange, symbol), trade_id)

    def add_to(self, ids: set[str], trade_id: str) -> bool:
        """`add` of a trade of the market whose `ids_of` is `ids`."""
        size = len(ids)
        ids.add(trade_id)  # one lookup, not `in` and then add(): the sets are large, each probe a cache miss
        if len(ids) == size:
            self.duplicates += 1
            return False
        self._remember_set(ids)
        self._remember_id(trade_id)
        if len(self._order_ids) > self.capacity:
            set_of_oldest: set[str] = self._oldest_set()
            set_of_oldest.discard(self._oldest_id())
        return True

    def filter(self, trades: Iterable[Trade]) -> list[Trade]:
        """The trades not seen before, in order (also de-duplicates within the list)."""
        return [t for t in trades if self.add(t)]


# ---- publication ----------------------------------------------------------------------------------

@final
class TradeProducer:
    """Trades into Kafka keyed ``exchange:symbol``: encode, produce (the per-trade part of Publisher)."""

    def __init__(self, topic: str, produce: Callable[[str, bytes, bytes], object],
                 produce_when_full: Callable[[str, bytes, bytes], object], encode: Callable[[Trade], bytes],
                 observe_delay: Callable[[float], object]) -> None:
        self.topic = topic
        self.produce = produce  # the Kafka producer's produce(topic, value, key)
        self.produce_when_full = produce_when_full  # (topic, key, value): waits while the local queue is full
        self.encode = encode
        self.observe_delay = observe_delay  # seconds from ts_ms to the hand-off, one trade in 16
        self.produced = 0  # trades and dead letters handed to the producer
        self.keys: dict[tuple[str, str], bytes] = {}

    def key_of(self, exchange: str, symbol: str) -> bytes:
        key = (exchange, symbol)
        found = self.keys.get(key)
        if found is None:
            found = self.keys[key] = trade_key(exchange, symbol).encode()  # once per symbol
        return found

    def value(self, value: bytes, kafka_key: bytes, ts_ms: int) -> None:
        """Produce an encoded trade (event time `ts_ms`)."""
        try:
            self.produce(self.topic, value, kafka_key)
        except BufferError:
            self.produce_when_full(self.topic, kafka_key, value)
        self.produced += 1
        if not self.produced & _DELAY_SAMPLE_MASK:
            now_ms: int = _time_ns() // 1_000_000
            self.observe_delay(max(0.0, (now_ms - ts_ms) / 1000))


@final
class SymbolState:
    """What ingest keeps per (exchange, symbol)."""

    def __init__(self, exchange: str, symbol: str, kafka_key: bytes, trade_ids: object) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.kafka_key = kafka_key
        self.trade_ids = trade_ids  # TradeDedup.ids_of this market
        self.last_ts_ms: int | None = None  # the newest trade published
        self.filling = False  # a REST gap fill runs: live trades wait in `held`
        self.held: list[Trade] = []
        # Since the counts were last taken (IngestPipeline.sync_metrics):
        self.received = 0  # trades received
        self.published = 0  # trades published


@final
class TradeFlow:
    """Count, de-duplicate and publish trades in order: IngestPipeline.accept, compiled."""

    def __init__(self, producer: TradeProducer, dedup: Any, on_recovered: Callable[[str, str], object],
                 decode: Callable[[bytes], Trade]) -> None:
        self.producer = producer
        self.dedup = dedup  # a TradeDedup: this module's, or the native one (exchanges/dedup.py)
        self._remember: Callable[[object, str], bool] = dedup.add_to  # bound once: called per trade
        self.on_recovered = on_recovered  # (exchange, symbol) of each recovered trade published
        self.decode = decode  # an encoded trade -> Trade (records.decode_trade)
        self.states: dict[tuple[str, str], SymbolState] = {}
        self.symbols: dict[str, dict[str, SymbolState]] = {}  # the same states: exchange -> symbol -> state
        self.duplicate_counts: dict[str, int] = {}  # since the counts were last taken
        self.received = 0
        self.published = 0

    def state(self, exchange: str, symbol: str) -> SymbolState:
        key = (exchange, symbol)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = SymbolState(exchange, symbol, self.producer.key_of(exchange, symbol),
                                                   self.dedup.ids_of(exchange, symbol))
            self.symbols.setdefault(exchange, {})[symbol] = state
        return state

    def accept(self, trades: Sequence[Trade], recovered: bool = False, counted: bool = False) -> int:
        """Publish the new trades, in order; returns how many were published.

        Live trades of a symbol whose gap is being filled are held back. `counted`: the
        trades were already counted as received (held trades being released).
        """
        states = self.states
        encode = self.producer.encode
        published = 0
        for trade in trades:
            exchange = trade.exchange
            symbol = trade.symbol
            state = states.get((exchange, symbol))
            if state is None:
                state = self.state(exchange, symbol)
            if not counted:
                state.received += 1
            if state.filling and not recovered:
                state.held.append(trade)
            elif self._admit(state, trade.trade_id):
                self._hand_off(state, trade.ts_ms, encode(trade))
                published += 1
                if recovered:
                    self.on_recovered(exchange, symbol)
        if not counted:
            self.received += len(trades)
        self.published += published
        return published

    def accept_encoded(self, exchange: str, trades: list[tuple[str, str, int, bytes]]) -> int:
        """`accept` of live trades given encoded, as the native parsers give them:
        ``(symbol, trade_id, ts_ms, value)`` each, `value` the encoded Trade."""
        states = self.symbols.get(exchange)
        if states is None:
            states = self.symbols[exchange] = {}
        published = 0
        for symbol, trade_id, ts_ms, value in trades:
            state = states.get(symbol)  # (not the pair: no tuple to make per trade)
            if state is None:
                state = self.state(exchange, symbol)
            state.received += 1
            if state.filling:
                state.held.append(self.decode(value))
            elif self._admit(state, trade_id):
                self._hand_off(state, ts_ms, value)
                published += 1
        self.received += len(trades)
        self.published += published
        return published

    def _admit(self, state: SymbolState, trade_id: str) -> bool:
        """Whether the trade is new (remembered from now on), else counted as a duplicate."""
        if self._remember(state.trade_ids, trade_id):
            return True
        exchange = state.exchange
        self.duplicate_counts[exchange] = self.duplicate_counts.get(exchange, 0) + 1
        return False

    def _hand_off(self, state: SymbolState, ts_ms: int, value: bytes) -> None:
        """Publish an admitted trade, encoded."""
        self.producer.value(value, state.kafka_key, ts_ms)
        state.published += 1
        last = state.last_ts_ms
        if last is None or ts_ms > last:
            state.last_ts_ms = ts_ms


# ---- replay ---------------------------------------------------------------------------------------

@final
class RecordedFrame:
    """One frame of a recording (services/ingest.py read_recording): a native class, so the replay
    loop reads its fields directly."""

    def __init__(self, exchange: str, recv_ms: int, raw: bytes) -> None:
        self.exchange = exchange
        self.recv_ms = recv_ms
        self.raw = raw

    def __repr__(self) -> str:
        return f"RecordedFrame({self.exchange!r}, {self.recv_ms}, {self.raw!r})"


def replay_frames(frames: Iterable[RecordedFrame | FrameError], flow: TradeFlow,
                  fast_paths: dict[str, Callable[[bytes, int], Any]], encoded: bool,
                  add_exchange: Callable[[RecordedFrame], bool], parse_and_handle: Callable[[str, bytes, int], object],
                  dead_letter: Callable[[Any], object], pace: Callable[[int], object] | None,
                  poll: Callable[[], object], stop: Any, restamp: bool) -> int:
    """The loop of ingest's replay (services/ingest.py `replay`): each recorded frame's trades into
    `flow`; returns how many frames were replayed.

    `frames` yields RecordedFrames and FrameErrors (to `dead_letter`).
    `fast_paths`: exchange -> its adapter's fast path (trades, or None: `parse_and_handle` the
    frame); `encoded`: the fast paths are the native parsers, which give encoded trades
    (TradeFlow.accept_encoded), not Trades. `add_exchange(frame)` fills `fast_paths` for a new
    exchange, or dead-letters the frame of an unknown one and returns False. `pace(recorded
    recv_ms)` waits until a frame is due; `poll` serves the producer every 1000 frames; `stop`
    (an Event, or None) ends the replay early; `restamp`: the frames' recv_ms is the wall clock
    when they are replayed.
    """
    count = 0
    for item in frames:
        if stop is not None and stop.is_set():
            break
        if isinstance(item, FrameError):
            dead_letter(item)
            continue
        exchange = item.exchange
        fast_trades = fast_paths.get(exchange)
        if fast_trades is None:
            if not add_exchange(item):
                continue
            fast_trades = fast_paths[exchange]
        if pace is not None:
            pace(item.recv_ms)
        recv_ms = _time_ns() // 1_000_000 if restamp else item.recv_ms
        raw = item.raw
        trades = fast_trades(raw, recv_ms)
        if trades is None:
            parse_and_handle(exchange, raw, recv_ms)
        elif encoded:
            flow.accept_encoded(exchange, trades)
        else:  # what IngestPipeline.handle does with a frame that has trades and no errors
            flow.accept(trades)
        count += 1
        if count % 1000 == 0:
            poll()
    return count
