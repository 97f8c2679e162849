"""The ingest service: exchange frames -> validated, de-duplicated Trades on the `trades` topic.

Sources (one at a time or several exchanges at once):

* live: one :class:`~candleflow.exchanges.ws.Feed` per configured exchange; after a
  reconnect, the trades missed in between are fetched over REST
  (:mod:`candleflow.exchanges.gapfill`) while live trades of that symbol wait in a
  buffer, so each key's trades stay in order and the topic has no hole;
* replay: a file written by ``--record`` (JSON lines ``{exchange, recv_ms, frame}``),
  re-parsed and published as if live, paced by the recorded receive times;
* simulate: :mod:`candleflow.exchanges.simulate`'s seeded synthetic market.

Everything goes through :class:`IngestPipeline`: errors become dead letters
(``dlq`` topic, reason + raw bytes, counted), trades are counted, de-duplicated
by (exchange, symbol, trade_id) and produced keyed ``exchange:symbol`` by an
idempotent producer (acks=all, lz4, batching).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
from prometheus_client import Counter, Histogram

from candleflow import dlq
from candleflow.config import ExchangeConfig, Settings
from candleflow.exchanges import get_adapter
from candleflow.exchanges.base import FrameError, ParseResult
from candleflow.exchanges.dedup import TradeDedup
from candleflow.exchanges.fastpath import RecordedFrame, SymbolState, TradeFlow, TradeProducer, replay_frames
from candleflow.exchanges.native import NATIVE
from candleflow.log import get_logger
from candleflow.metrics import DEAD_LETTERS
from candleflow.records import Trade, decode_trade

log = get_logger("candleflow.ingest")

SERVICE = "ingest"

RECEIVED = Counter("candleflow_ingest_trades_received_total", "Trades parsed from exchange input",
                   ["exchange", "symbol"])
PUBLISHED = Counter("candleflow_ingest_trades_published_total",
                    "Trades produced to Kafka (idempotent, acks=all); failed deliveries are counted in "
                    "candleflow_ingest_delivery_failures_total", ["exchange", "symbol"])
DELIVERY_FAILURES = Counter("candleflow_ingest_delivery_failures_total",
                            "Messages Kafka did not acknowledge (trades or dead letters)", ["topic"])
DUPLICATES = Counter("candleflow_ingest_duplicates_total", "Trades dropped as already published", ["exchange"])
RECONNECTS = Counter("candleflow_ingest_reconnects_total", "Websocket reconnections", ["exchange"])
GAPS_FILLED = Counter("candleflow_ingest_gaps_filled_total", "REST gap fills completed after a reconnect",
                      ["exchange"])
RECOVERED = Counter("candleflow_ingest_trades_recovered_total", "Trades published from REST gap fill",
                    ["exchange", "symbol"])
PUBLISH_DELAY = Histogram("candleflow_ingest_publish_delay_seconds",
                          "Delay from a trade's exchange time (ts_ms) to its hand-off to the Kafka producer",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, fully acknowledged, batched and compressed."""
    return {
        **settings.kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Call back for failures only: a Python callback per acknowledged message costs
        # about as much as producing it (see Publisher).
        "delivery.report.only.error": True,
    }


_encode_trade = msgspec.json.Encoder().encode  # the bytes of records.encode(), without the extra call


def _observe_publish_delay(seconds: float) -> None:
    PUBLISH_DELAY.observe(seconds)


class Publisher:
    """Trades and dead letters into Kafka, with delivery accounting.

    Kafka reports back failed deliveries only (``delivery.report.only.error``): those are
    counted, logged and kept in `failed`. What was delivered follows exactly from what
    was produced, what failed and what the producer still holds. The per-trade work
    (encode, produce; the publish delay of one trade in 16) is
    :class:`~candleflow.exchanges.fastpath.TradeProducer`, compiled; the counts per
    symbol are the pipeline's (IngestPipeline.sync_metrics).
    """

    def __init__(self, settings: Settings, producer: Any | None = None) -> None:
        from confluent_kafka import Producer

        self.trades_topic = settings.topics.trades.name
        self.dlq_topic = settings.topics.dlq.name
        self.producer = producer if producer is not None else Producer(
            {**producer_config(settings), "on_delivery": self._failed_delivery})
        self.failed = 0
        self.trades = TradeProducer(self.trades_topic, self.producer.produce, self._produce, _encode_trade,
                                    _observe_publish_delay)

    @property
    def produced(self) -> int:
        """Trades and dead letters handed to the producer."""
        return self.trades.produced

    @property
    def delivered(self) -> int:
        """Messages acknowledged by Kafka: exact once poll() or flush() has served the reports."""
        return self.produced - self.failed - len(self.producer)

    def _failed_delivery(self, err: Any, msg: Any) -> None:
        self.failed += 1
        DELIVERY_FAILURES.labels(msg.topic()).inc()
        log.error("delivery failed", topic=msg.topic(), key=(msg.key() or b"").decode("utf-8", "replace"),
                  error=str(err))

    def _produce(self, topic: str, key: str | bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)

    def dead_letter(self, reason: str, raw: bytes, detail: str, source: str) -> None:
        letter = dlq.dead_letter(SERVICE, reason, raw, detail=detail, source=source)
        self._produce(self.dlq_topic, source, dlq.encode_dead_letter(letter))
        self.trades.produced += 1
        DEAD_LETTERS.labels(SERVICE, reason).inc()

    def poll(self, timeout: float = 0) -> None:
        self.producer.poll(timeout)

    def flush(self, timeout: float = 30) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return self.producer.flush(timeout)


def _count_recovered(exchange: str, symbol: str) -> None:
    RECOVERED.labels(exchange, symbol).inc()


class IngestPipeline:
    """Parse results -> dead letters, counts, de-duplication, publication. No sockets, no clock.

    The per-trade work (counts, de-duplication, publication in order, holding live
    trades during a gap fill) is :class:`~candleflow.exchanges.fastpath.TradeFlow`,
    compiled; its counts go to Prometheus in sync_metrics(), not one metrics call per trade.
    """

    def __init__(self, publisher: Publisher, dedup_capacity: int = 200_000) -> None:
        self.publisher = publisher
        self.dedup = TradeDedup(dedup_capacity)
        self.flow = TradeFlow(publisher.trades, self.dedup, _count_recovered, decode_trade)
        self.state = self.flow.states  # (exchange, symbol) -> SymbolState
        self.dead_letters = 0
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}  # (received, published) counters

    @property
    def received(self) -> int:
        return self.flow.received

    @property
    def published(self) -> int:
        return self.flow.published

    def sync_metrics(self) -> None:
        """Move the per-trade counts into Prometheus (cheap to call often)."""
        for key, state in self.state.items():
            if state.received or state.published:
                children = self._children.get(key)
                if children is None:
                    children = self._children[key] = (RECEIVED.labels(*key), PUBLISHED.labels(*key))
                children[0].inc(state.received)
                children[1].inc(state.published)
                state.received = state.published = 0
        duplicates, self.flow.duplicate_counts = self.flow.duplicate_counts, {}
        for exchange, count in duplicates.items():
            DUPLICATES.labels(exchange).inc(count)

    def poll(self) -> None:
        self.publisher.poll(0)
        self.sync_metrics()

    def symbol_state(self, exchange: str, symbol: str) -> SymbolState:
        return self.flow.state(exchange, symbol)

    def handle(self, exchange: str, result: ParseResult) -> None:
        for error in result.errors:
            self.error(exchange, error)
        if result.trades:
            self.accept(result.trades)

    def error(self, exchange: str, error: FrameError) -> None:
        self.dead_letters += 1
        self.publisher.dead_letter(error.reason, error.raw, error.detail, exchange)

    def trade(self, trade: Trade, *, recovered: bool = False) -> bool:
        """One trade (simulator, REST gap fill); True when it was published."""
        return self.flow.accept((trade,), recovered) == 1

    def accept(self, trades: Sequence[Trade], *, recovered: bool = False, counted: bool = False) -> int:
        """Count, de-duplicate and publish trades in order; returns how many were published.

        Live trades of a symbol whose gap is being filled are held back and published by
        end_fill(), after the recovered ones, to keep the key in order. `counted`: the trades
        were already counted as received (held trades being released).
        """
        return self.flow.accept(trades, recovered, counted)

    def begin_fill(self, exchange: str, symbol: str) -> int | None:
        """Hold live trades of this symbol; returns the time to fill from (None: nothing seen yet)."""
        state = self.symbol_state(exchange, symbol)
        if state.last_ts_ms is None or state.filling:
            return None
        state.filling = True
        return state.last_ts_ms

    def end_fill(self, exchange: str, symbol: str, recovered: list[Trade]) -> int:
        """Publish the recovered trades, then the held live ones; returns how many were new."""
        state = self.symbol_state(exchange, symbol)
        new = 0
        for trade in sorted(recovered, key=lambda t: t.ts_ms):
            new += self.trade(trade, recovered=True)
        held, state.held, state.filling = state.held, [], False
        self.flow.accept(held, False, True)
        return new


# ---- record / replay ------------------------------------------------------------------------

class Recorder:
    """Every raw frame with its receive time, one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, exchange: str, raw: bytes, recv_ms: int) -> None:
        try:
            entry = {"exchange": exchange, "recv_ms": recv_ms, "frame": raw.decode("utf-8")}
        except UnicodeDecodeError:
            entry = {"exchange": exchange, "recv_ms": recv_ms, "frame_base64": base64.b64encode(raw).decode()}
        self.file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.file.close()


def read_recording(path: Path) -> Iterator[RecordedFrame | FrameError]:
    """The frames of a recording; a damaged line comes back as a FrameError."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                raw = (entry["frame"].encode("utf-8", "surrogatepass") if "frame" in entry
                       else base64.b64decode(entry["frame_base64"]))
                yield RecordedFrame(str(entry["exchange"]), int(entry["recv_ms"]), raw)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                yield FrameError("invalid_recording", f"{path}:{number}: {exc}", line.rstrip(b"\n"))


def _no_fast_path(raw: bytes, recv_ms: int) -> None:
    return None


def _pacer(speed: float) -> Callable[[int], None]:
    """Waits until a frame recorded at `recorded_ms` is due, replaying at `speed` times the recorded pace."""
    first_recorded: int | None = None
    started = time.monotonic()

    def pace(recorded_ms: int) -> None:
        nonlocal first_recorded
        if first_recorded is None:
            first_recorded = recorded_ms
        delay = (recorded_ms - first_recorded) / 1000 / speed - (time.monotonic() - started)
        if delay > 0:
            time.sleep(delay)

    return pace


def replay(pipeline: IngestPipeline, frames: Iterable[RecordedFrame | FrameError], *, speed: float | None,
           stop: Any = None, restamp: bool = True, native: bool = True) -> int:
    """Publish recorded frames as if live; speed None = as fast as possible. Returns frames replayed.

    The loop itself is compiled (fastpath.replay_frames); the usual trade frame of an adapter
    with a fast path goes from its text to Kafka without a Python call: through the adapter's
    native parser (`encoded_trades`, Rust) when that is built and `native` is true, else its
    `fast_trades` (the same records: benchmarks compare the two).
    """
    adapters: dict[str, Any] = {}
    fast_paths: dict[str, Any] = {}  # exchange -> its adapter's encoded_trades or fast_trades
    encoded = native and NATIVE is not None

    def add_exchange(frame: RecordedFrame) -> bool:
        try:
            adapter = adapters[frame.exchange] = get_adapter(frame.exchange)
        except ValueError as exc:
            pipeline.error("replay", FrameError("unknown_exchange", str(exc), frame.raw))
            return False
        fast_paths[frame.exchange] = getattr(adapter, "encoded_trades" if encoded else "fast_trades", None) \
            or _no_fast_path
        return True

    def parse_and_handle(exchange: str, raw: bytes, recv_ms: int) -> None:
        pipeline.handle(exchange, adapters[exchange].parse_frame(raw, recv_ms))

    def dead_letter(error: FrameError) -> None:
        pipeline.error("replay", error)

    count = replay_frames(frames, pipeline.flow, fast_paths, encoded, add_exchange, parse_and_handle, dead_letter,
                          None if speed is None else _pacer(speed), pipeline.poll, stop, restamp)
    pipeline.sync_metrics()
    return count


# ---- live -----------------------------------------------------------------------------------

class LiveIngest:
    """Feeds for the configured exchanges, REST gap fill, one producer."""

    def __init__(self, settings: Settings, exchanges: list[ExchangeConfig], pipeline: IngestPipeline,
                 recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.exchanges = exchanges
        self.pipeline = pipeline
        self.recorder = recorder
        self.fill_tasks: set[asyncio.Task[None]] = set()
        self.feeds: list[Any] = []

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        from candleflow.exchanges.gapfill import Pacer
        from candleflow.exchanges.ws import Feed

        ingest = self.settings.ingest
        async with httpx.AsyncClient(timeout=10.0) as client:
            tasks = []
            for config in self.exchanges:
                adapter = get_adapter(config.name)
                pacer = Pacer(float(getattr(adapter, "REST_MIN_INTERVAL_S", 1.0)))
                feed = Feed(
                    adapter, config.symbols, ws_url=config.ws_url,
                    on_frame=self._on_frame(config.name),
                    on_subscribed=self._on_subscribed(adapter, config, client, pacer),
                    on_disconnect=lambda reason, name=config.name: RECONNECTS.labels(name).inc(),
                    on_raw=(lambda raw, ms, name=config.name: self.recorder.write(name, raw, ms))
                    if self.recorder else None,
                    silence_timeout_s=ingest.silence_timeout_s, backoff_initial_s=ingest.backoff_initial_s,
                    backoff_max_s=ingest.backoff_max_s, max_frame_bytes=ingest.max_frame_bytes)
                self.feeds.append(feed)
                tasks.append(asyncio.create_task(feed.run(stop), name=f"feed-{config.name}"))
            tasks.append(asyncio.create_task(self._poll(stop), name="producer-poll"))
            await asyncio.gather(*tasks)
            for task in list(self.fill_tasks):
                task.cancel()
            await asyncio.gather(*self.fill_tasks, return_exceptions=True)

    def _on_frame(self, name: str) -> Any:
        def handle(raw: bytes, recv_ms: int, result: ParseResult) -> None:
            self.pipeline.handle(name, result)

        return handle

    def _on_subscribed(self, adapter: Any, config: ExchangeConfig, client: Any, pacer: Any) -> Any:
        def subscribed(reconnect: bool) -> None:
            if not (reconnect and self.settings.ingest.gap_fill):
                return
            until = now_ms()
            for symbol in config.symbols:
                since = self.pipeline.begin_fill(config.name, symbol)
                if since is None:
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._fill(adapter, config, client, pacer, symbol, since, until))
                self.fill_tasks.add(task)
                task.add_done_callback(self.fill_tasks.discard)

        return subscribed

    async def _fill(self, adapter: Any, config: ExchangeConfig, client: Any, pacer: Any, symbol: str,
                    since: int, until: int) -> None:
        from candleflow.exchanges.gapfill import fill_gap

        recovered: list[Trade] = []
        try:
            result = await fill_gap(adapter, client, symbol, since_ms=since, until_ms=until, pacer=pacer,
                                    base_url=config.rest_url)
            recovered = result.trades
            for error in result.errors:
                self.pipeline.error(config.name, error)
            if not result.failure:
                GAPS_FILLED.labels(config.name).inc()
        finally:
            new = self.pipeline.end_fill(config.name, symbol, recovered)
            log.info("gap filled", exchange=config.name, symbol=symbol, since_ms=since, fetched=len(recovered),
                     recovered=new)

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.pipeline.poll()
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.05)
            except TimeoutError:
                pass


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass


# ---- entry points -----------------------------------------------------------------------------

@dataclass
class IngestOptions:
    record: Path | None = None
    replay: Path | None = None
    speed: float | None = 1.0  # replay/simulate pace; None = as fast as possible
    simulate: bool = False
    sim_exchange: str = "sim"
    sim_symbols: list[str] | None = None
    sim_seed: int = 42
    count: int | None = None  # simulate: stop after this many trades
    create_topics: bool = True


@dataclass
class IngestSummary:
    received: int = 0
    published: int = 0
    dead_letters: int = 0
    undelivered: int = 0


def run(settings: Settings, options: IngestOptions | None = None, stop: asyncio.Event | None = None) -> IngestSummary:
    """Run ingest until SIGINT/SIGTERM (live) or the end of the input (replay, counted simulate)."""
    from candleflow.metrics import serve_metrics

    options = options or IngestOptions()
    if options.create_topics:
        from candleflow.broker.topics import create_topics

        create_topics(settings.kafka, [settings.topics.trades, settings.topics.dlq])
    serve_metrics(settings.ingest.metrics_port, settings.metrics_host)
    publisher = Publisher(settings)
    pipeline = IngestPipeline(publisher, settings.ingest.dedup_capacity)
    recorder = Recorder(options.record) if options.record else None
    try:
        asyncio.run(_run_async(settings, options, pipeline, recorder, stop))
    finally:
        if recorder is not None:
            recorder.close()
        undelivered = publisher.flush(30)
        pipeline.sync_metrics()
        log.info("ingest stopped", received=pipeline.received, published=pipeline.published,
                 dead_letters=pipeline.dead_letters, duplicates=pipeline.dedup.duplicates, undelivered=undelivered)
    return IngestSummary(pipeline.received, pipeline.published, pipeline.dead_letters, undelivered)


async def _run_async(settings: Settings, options: IngestOptions, pipeline: IngestPipeline,
                     recorder: Recorder | None, stop: asyncio.Event | None) -> None:
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    if options.replay is not None:
        log.info("replaying", file=str(options.replay), speed=options.speed or "max")
        await asyncio.to_thread(replay, pipeline, read_recording(options.replay), speed=options.speed, stop=stop)
        return
    if options.simulate:
        await _simulate(options, pipeline, stop)
        return
    log.info("ingest starting", exchanges={e.name: e.symbols for e in settings.ingest.exchanges},
             trades=settings.topics.trades.name)
    await LiveIngest(settings, settings.ingest.exchanges, pipeline, recorder).run(stop)


async def _simulate(options: IngestOptions, pipeline: IngestPipeline, stop: asyncio.Event) -> None:
    from candleflow.exchanges.simulate import DEFAULT_SYMBOLS, SimulatedMarket

    start = now_ms()
    market = SimulatedMarket(options.sim_symbols or list(DEFAULT_SYMBOLS), seed=options.sim_seed,
                             start_ms=start, exchange=options.sim_exchange)
    log.info("simulating", exchange=options.sim_exchange, symbols=[m.symbol for m in market.markets],
             seed=options.sim_seed, speed=options.speed or "max", count=options.count)
    started = time.monotonic()
    for n, trade in enumerate(market.trades(options.count), start=1):
        if stop.is_set():
            break
        if options.speed is not None:
            delay = (trade.ts_ms - start) / 1000 / options.speed - (time.monotonic() - started)
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
            trade = msgspec.structs.replace(trade, recv_ms=now_ms())
        pipeline.trade(trade)
        if n % 1000 == 0:
            pipeline.poll()
            await asyncio.sleep(0)
    pipeline.sync_metrics()
