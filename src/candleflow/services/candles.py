"""The candles service: trades in (`trades`), final candles out (`candles`), closed on time.

A thin Quix Streams app around :class:`candleflow.core.candles.CandleAggregator`,
one aggregator per market (``exchange:symbol``), all configured timeframes at once.

**Closing on time, deterministically.** Quix closes a window only when a newer
message for the key arrives, and a decision taken on the process's own clock
would differ after a crash. So time is part of the input log: a small ticker
thread in each service process appends a *tick* record (header
``candleflow-tick``, value = wall-clock epoch ms) to every partition of
`trades` every ``candles.tick_interval_ms``. Each partition has one
watermark, the largest trade ``ts_ms`` or tick time read from it so far; a
window is closed once ``end + grace <= watermark``, for every market of the
partition, and a trade for a closed window is late (dead letter ``late``,
counted, not merged). The watermark and therefore every candle and every
late/merged decision is a function of the partition's log alone: a restarted
process, a second replica or an uninterrupted run all give the same output.
Consumers of `trades` other than this one must skip records carrying the
``candleflow-tick`` header (:func:`is_tick`). Ticks are wall-clock time: when
`trades` holds history (a replay), run with ``candles.ticks: false``
(``--no-ticks``), or every old trade would be late.

**Partition-wide state.** Quix scopes a stateful function's state to the
message key, but a tick must reach every market of its partition. The
processing step therefore opens the partition's state-store transaction itself
(exactly as Quix's own stateful ``apply`` does) under one fixed prefix, and
keeps there the watermark, the list of markets and one aggregator state per
market. The aggregators live in memory between commits and are written to the
store once per commit (from a sink's ``flush``, which Quix calls at the start
of every commit), not once per trade. With ``processing_guarantee:
exactly-once`` the state changelog, the candles and the consumer offsets commit
in one Kafka transaction, so a process killed at any instant leaves no
duplicate and no gap in `candles` (read_committed).

Live view (optional, ``candles.partial_updates``): the still-open candles of a
market are sent to `candles.partial` at most every ``partial_interval_ms``
(wall clock; a view, not part of the deterministic output).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import msgspec
from prometheus_client import Counter

from candleflow.config import Settings, timeframe_ms
from candleflow.core.candles import CandleAggregator
from candleflow.dlq import dead_letter, encode_dead_letter
from candleflow.log import get_logger
from candleflow.metrics import DEAD_LETTERS, serve_metrics
from candleflow.records import RecordError, candle_key, decode_trade, encode

SERVICE = "candles"
CANDLES, PARTIAL, DLQ = "candles", "candles.partial", "dlq"

TICK_HEADER = "candleflow-tick"
TICK_KEY = b"candleflow-tick"

# State keys under the partition-wide prefix.
_PREFIX = b"candles:partition"
_WATERMARK = "watermark"  # the partition's watermark as of the last time windows closed
_MARKETS = "markets"  # trade keys of the partition, in order of first trade
_AGG = "agg:"  # + trade key: that market's aggregator state

_TRANSACTION_TIMEOUT_MS = 10_000

CANDLES_OUT = Counter("candleflow_candles_emitted_total", "Final candles produced", ["timeframe", "gap_fill"])
TRADES_IN = Counter("candleflow_candles_trades_total", "Trades merged into candles")
LATE = Counter("candleflow_candles_late_trades_total", "Trades for an already closed window, per timeframe",
               ["timeframe"])
TICKS_IN = Counter("candleflow_candles_ticks_total", "Tick records read from the trades topic")
PARTIALS_OUT = Counter("candleflow_candles_partial_total", "Still-open candles produced to candles.partial")

log = get_logger(__name__)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def is_tick(headers: Any) -> bool:
    """True for a tick record (any consumer of `trades` must skip those)."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(name == TICK_HEADER for name, _ in items)


def tick_value(now_ms: int) -> bytes:
    return str(now_ms).encode()


class _PartitionCache:
    """This process's live copy of one partition's state.

    Valid only while messages arrive at consecutive offsets: after an aborted
    transaction the partition is read again from its committed offset, and after
    a rebalance another process may have moved the state on; either way the next
    offset is not ``last_offset + 1`` and the store, the single truth, is read again.
    """

    __slots__ = ("last_offset", "watermark", "aggregators", "markets", "changed")

    def __init__(self, watermark: int | None) -> None:
        self.last_offset: int | None = None
        self.watermark = watermark
        self.aggregators: dict[str, CandleAggregator] = {}
        self.markets: list[str] | None = None
        self.changed: set[str] = set()  # markets whose aggregator the store has not got yet


class CandlesProcessor:
    """What the service does with one message; no Kafka here, so tests can drive it directly.

    `state` is anything with ``get_bytes(key, default)`` and ``set_bytes(key, value)``
    (a Quix State), holding one partition. :meth:`process` returns
    ``[(destination, key_bytes, value_bytes), ...]``; :meth:`store_changes` must run
    before every commit.
    """

    def __init__(self, settings: Settings, now_ms: Any = None) -> None:
        self.settings = settings
        self.timeframes: list[str] = list(settings.candles.timeframes)
        self.grace_ms = settings.candles.grace_ms
        self.tf_ms = [timeframe_ms(tf) for tf in self.timeframes]
        self.partial_updates = settings.candles.partial_updates
        self.partial_interval_ms = settings.candles.partial_interval_ms
        self.trades_topic = settings.topics.trades.name
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._caches: dict[int, _PartitionCache] = {}
        self._last_partial: dict[str, int] = {}
        self._late = {tf: LATE.labels(tf) for tf in self.timeframes}
        self._emitted = {(tf, gap): CANDLES_OUT.labels(tf, str(gap).lower())
                         for tf in self.timeframes for gap in (False, True)}

    # --- one message ----------------------------------------------------------------

    def process(self, value: bytes, key: bytes | None, headers: Any, state: Any,
                partition: int, offset: int) -> list[tuple[str, bytes | None, bytes]]:
        """One message of `trades` (a trade or a tick) at `offset` of `partition`."""
        cache = self._caches.get(partition)
        if cache is None or cache.last_offset is None or offset != cache.last_offset + 1:
            # (Changes not yet stored belonged to a transaction that did not commit: dropped.)
            raw = state.get_bytes(_WATERMARK)
            cache = self._caches[partition] = _PartitionCache(_decoder.decode(raw) if raw is not None else None)
        cache.last_offset = offset
        out: list[tuple[str, bytes | None, bytes]] = []
        if is_tick(headers):
            TICKS_IN.inc()
            time_ms = self._tick(value, key, out)
        else:
            time_ms = self._trade(value, key, state, cache, out)
        # Decisions depend on the watermark only through the window boundaries it has
        # passed, so it is advanced (and stored) only when it passes one: one write
        # per closing instead of one per message, and the same output.
        if time_ms is not None and self._passes_boundary(cache.watermark, time_ms):
            self._close_all(time_ms, state, cache, out)
            cache.watermark = time_ms
            state.set_bytes(_WATERMARK, _encoder.encode(time_ms))
        return out

    def _tick(self, value: bytes, key: bytes | None, out: list) -> int | None:
        try:
            return int(value)
        except ValueError:
            out.append(self._dead("invalid_tick", value, "tick value is not integer epoch ms", key))
            return None

    def _trade(self, value: bytes, key: bytes | None, state: Any, cache: _PartitionCache, out: list) -> int | None:
        """Merge a trade into its market's candles; returns its time (None if it cannot be decoded)."""
        try:
            trade = decode_trade(value)
        except RecordError as exc:
            out.append(self._dead("invalid_trade", value, str(exc), key))
            return None
        market = trade.key
        if key is not None and key != market.encode():
            # Its market's other trades may sit on another partition, with another watermark.
            out.append(self._dead("key_mismatch", value, f"message key {key!r} but the trade is {market!r}", key))
            return None
        agg = self._aggregator(market, state, cache)
        if agg is None:
            agg = CandleAggregator(trade.exchange, trade.symbol, self.timeframes, self.grace_ms, cache.watermark)
            cache.aggregators[market] = agg
            markets = self._markets(state, cache)
            markets.append(market)
            state.set_bytes(_MARKETS, _encoder.encode(markets))
        result = agg.add(trade)
        if result.late:
            for tf in result.late:
                self._late[tf].inc()
            merged = f"; merged into {', '.join(result.merged)}" if result.merged else ""
            out.append(self._dead("late", value, f"window already closed for {', '.join(result.late)} "
                                  f"(watermark {agg.watermark_ms}, grace {self.grace_ms} ms){merged}", key))
        if result.merged:
            TRADES_IN.inc()
            cache.changed.add(market)
            if self.partial_updates:
                self._partial(market, agg, out)
        return trade.ts_ms

    # --- closing --------------------------------------------------------------------

    def _passes_boundary(self, watermark: int | None, time_ms: int) -> bool:
        """Whether moving the watermark to `time_ms` closes some window (a window closes at end + grace)."""
        if watermark is None:
            return True
        if time_ms <= watermark:
            return False
        grace = self.grace_ms
        return any((time_ms - grace) // ms != (watermark - grace) // ms for ms in self.tf_ms)

    def _close_all(self, watermark: int, state: Any, cache: _PartitionCache, out: list) -> None:
        """Close every due window of every market of the partition (gap fills included)."""
        for market in self._markets(state, cache):
            agg = self._aggregator(market, state, cache)
            if agg is None:  # listed, never stored: cannot happen unless the store was edited
                continue
            candles = agg.close_until(watermark)
            cache.changed.add(market)
            for candle in candles:
                self._emitted[(candle.timeframe, candle.gap_fill)].inc()
                out.append((CANDLES, candle_key(candle.exchange, candle.symbol, candle.timeframe).encode(),
                            encode(candle)))
            if candles and self.partial_updates:
                self._last_partial.pop(market, None)  # the next trade shows the new window at once

    def store_changes(self, state_of: Any) -> None:
        """Write every aggregator changed since the last call to the store; call before each commit.

        Storing an aggregator once per commit instead of once per trade is the
        service's largest saving; `state_of(partition)` gives that partition's state.
        """
        for partition, cache in self._caches.items():
            if not cache.changed:
                continue
            state = state_of(partition)
            for market in cache.changed:
                state.set_bytes(_AGG + market, _encoder.encode(cache.aggregators[market].to_state()))
            cache.changed.clear()

    # --- helpers --------------------------------------------------------------------

    def _aggregator(self, market: str, state: Any, cache: _PartitionCache) -> CandleAggregator | None:
        agg = cache.aggregators.get(market)
        if agg is None:
            raw = state.get_bytes(_AGG + market)
            if raw is None:
                return None
            agg = CandleAggregator.from_state(_decoder.decode(raw), self.timeframes, self.grace_ms)
            cache.aggregators[market] = agg
        return agg

    def _markets(self, state: Any, cache: _PartitionCache) -> list[str]:
        if cache.markets is None:
            raw = state.get_bytes(_MARKETS)
            cache.markets = _decoder.decode(raw) if raw is not None else []
        return cache.markets

    def _partial(self, market: str, agg: CandleAggregator, out: list) -> None:
        now = self._now_ms()
        last = self._last_partial.get(market)
        if last is not None and now - last < self.partial_interval_ms:
            return
        self._last_partial[market] = now
        for candle in agg.open_candles():
            PARTIALS_OUT.inc()
            out.append((PARTIAL, candle_key(candle.exchange, candle.symbol, candle.timeframe).encode(),
                        encode(candle)))

    def _dead(self, reason: str, raw: bytes, detail: str, key: bytes | None) -> tuple[str, bytes | None, bytes]:
        DEAD_LETTERS.labels(SERVICE, reason).inc()
        text_key = (key or b"").decode("utf-8", "replace")
        letter = dead_letter(SERVICE, reason, raw, detail=detail, source=self.trades_topic, key=text_key)
        return DLQ, key, encode_dead_letter(letter)


# --- the ticker -------------------------------------------------------------------------


class Ticker:
    """Appends a tick (wall-clock ms) to every partition of the trades topic at a fixed interval.

    A plain, non-transactional producer: a tick is input, like a trade. Several
    replicas may tick the same partitions; only the largest time counts.
    """

    def __init__(self, client_config: dict[str, str], topic: str, interval_ms: int) -> None:
        self.client_config = client_config
        self.topic = topic
        self.interval_s = interval_ms / 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="candles-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from confluent_kafka import KafkaException, Producer

        producer = Producer({**self.client_config, "linger.ms": 0, "enable.idempotence": False, "acks": 1})
        partitions: list[int] = []
        refreshed = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if started - refreshed > 10 or not partitions:  # partitions may be added while running
                    meta = producer.list_topics(self.topic, timeout=5)
                    partitions = sorted(meta.topics[self.topic].partitions)
                    refreshed = started
                value = tick_value(int(time.time() * 1000))
                for partition in partitions:
                    producer.produce(self.topic, value=value, key=TICK_KEY, partition=partition,
                                     headers=[(TICK_HEADER, b"1")])
                producer.poll(0)
            except (KafkaException, BufferError, KeyError) as exc:
                log.warning("tick failed", topic=self.topic, error=str(exc))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        producer.flush(5)


# --- the Quix app ----------------------------------------------------------------------


def build_app(settings: Settings) -> Any:
    """The Quix Application with its topology; `app.run()` starts it."""
    from quixstreams import Application
    from quixstreams.context import message_context
    from quixstreams.kafka.configuration import ConnectionConfig
    from quixstreams.models.serializers import Serializer
    from quixstreams.models.topics import TopicConfig as QuixTopicConfig
    from quixstreams.sinks import BaseSink

    class _Payload(Serializer):
        """Output items are (destination, key, value bytes): the message value is the bytes."""

        def __call__(self, value: Any, ctx: Any) -> bytes:
            return value[2]

    processor = CandlesProcessor(settings)
    config = settings.candles
    topics = settings.topics
    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(settings.kafka.client_config()),
        consumer_group=config.consumer_group,
        processing_guarantee=config.processing_guarantee,
        auto_offset_reset="earliest",
        state_dir=str(settings.data_dir / "state" / "candles"),
        # Candles become visible (read_committed) when their transaction commits.
        commit_interval=config.commit_interval_ms / 1000,
        consumer_extra_config={
            "session.timeout.ms": config.session_timeout_ms,
            **({"group.instance.id": config.instance_id} if config.instance_id else {}),
        },
        producer_extra_config={
            # A crashed process's open transaction holds read_committed readers back until
            # it times out, unless its successor fences it at once: with a stable replica id
            # the restarted process reuses the transactional id and aborts it on start.
            "transaction.timeout.ms": _TRANSACTION_TIMEOUT_MS,
            **({"transactional.id": f"{config.consumer_group}-{config.instance_id}"}
               if config.instance_id and config.processing_guarantee == "exactly-once" else {}),
        },
        loglevel="WARNING",
    )

    def output(topic: Any) -> Any:
        return app.topic(topic.name, value_serializer=_Payload(), key_serializer="bytes",
                         config=QuixTopicConfig(num_partitions=topic.partitions,
                                                replication_factor=settings.kafka.replication_factor))

    trades = app.topic(topics.trades.name, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(trades)
    sdf.register_store()
    stream_id = sdf.stream_id

    states: dict[int, tuple[Any, Any]] = {}  # partition -> (checkpoint, its state view)

    def partition_state(partition: int) -> Any:
        # The partition's own store transaction, under one prefix for the whole partition
        # (Quix's stateful apply would prefix by the message key instead). One view per
        # checkpoint: each commit starts a new checkpoint with new transactions.
        checkpoint = sdf.processing_context.checkpoint
        cached = states.get(partition)
        if cached is None or cached[0] is not checkpoint:
            view = checkpoint.get_store_transaction(stream_id=stream_id, partition=partition).as_state(prefix=_PREFIX)
            cached = states[partition] = (checkpoint, view)
        return cached[1]

    def on_message(value: bytes, key: bytes | None, _timestamp: int, headers: Any) -> list:
        ctx = message_context()
        return processor.process(value, key, headers, partition_state(ctx.partition), ctx.partition, ctx.offset)

    class _StoreBeforeCommit(BaseSink):
        """Quix flushes every sink first thing when a checkpoint commits, before it produces the
        state changelog and commits the transaction (Checkpoint.commit), so this sink's flush
        stores the changed aggregators inside the very transaction that commits their input."""

        def add(self, *args: Any, **kwargs: Any) -> None:  # receives nothing
            pass

        def flush(self) -> None:
            processor.store_changes(partition_state)

    items = sdf.apply(on_message, metadata=True, expand=True)
    items = items.set_headers(lambda *_: [])  # do not pass the tick header on to candles
    routes = [(CANDLES, topics.candles), (DLQ, topics.dlq)]
    if config.partial_updates:
        routes.append((PARTIAL, topics.candles_partial))
    for destination, topic in routes:
        items.filter(_is_for(destination)).to_topic(output(topic), key=lambda item: item[1])
    items.filter(lambda _item: False).sink(_StoreBeforeCommit())
    return app


def _is_for(destination: str) -> Any:
    return lambda item: item[0] == destination


def run(settings: Settings) -> None:
    """Run the service (and its ticker) until SIGINT/SIGTERM."""
    serve_metrics(settings.candles.metrics_port, settings.metrics_host)
    app = build_app(settings)
    ticker = None
    if settings.candles.ticks:
        ticker = Ticker(settings.kafka.client_config(), settings.topics.trades.name, settings.candles.tick_interval_ms)
    signal.signal(signal.SIGTERM, lambda *_: app.stop())
    log.info("candles service starting", trades=settings.topics.trades.name, candles=settings.topics.candles.name,
             timeframes=settings.candles.timeframes, grace_ms=settings.candles.grace_ms,
             ticks=settings.candles.ticks, guarantee=settings.candles.processing_guarantee)
    if ticker is not None:
        ticker.start()
    try:
        app.run()
    finally:
        if ticker is not None:
            ticker.stop()
