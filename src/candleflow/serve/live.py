"""The live dashboard's server side: market list, history, a server-sent-events stream, static files.

Routes added to the serve app by :func:`attach`:

- ``GET /``: the dashboard page (``serve/dashboard/``), its files under ``/dashboard/``,
  and the chart library from ``node_modules/lightweight-charts`` at ``/vendor/``.
- ``GET /v1/markets``: the served timeframes and every market with data (plus the
  configured ones), for the page's selectors.
- ``GET /v1/history/{exchange}/{symbol}?timeframe=1m&limit=500``: recent Features
  rows (candle fields and every indicator output), oldest first, from the offline
  dataset, like ``/v1/candles`` but with the indicators the charts draw.
- ``GET /v1/stream/{exchange}/{symbol}?timeframe=1m``: server-sent events of one
  market: ``candle`` (a closed candle's Features row from the ``features`` topic),
  ``partial`` (the still-open candle, when ``candles.partial_updates`` is on),
  ``status`` (whether the Kafka feed is live) and ``resync`` (the client fell
  behind: reload the history).
- ``GET /v1/pipeline``: see :mod:`candleflow.serve.pipeline`.

One :class:`LiveHub` per process reads Kafka and fans each record out to the
clients watching its market. It assigns partitions itself, starting at the end
offsets, and never commits, so it joins no consumer group and never holds back
or disturbs the pipeline's own consumers. It starts with the first client; when
Kafka cannot be reached, the stream says so and the page still shows history.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, FastAPI, HTTPException, Query, Response
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter

from candleflow.config import Settings
from candleflow.log import get_logger
from candleflow.records import RecordError, decode_candle, decode_features, to_dict
from candleflow.serve.pipeline import PipelineMonitor

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
CHART_LIBRARY = Path("lightweight-charts") / "dist" / "lightweight-charts.standalone.production.js"
INSTALL_HINT = "run `npm ci` (or `make install`) in the candleflow repository, then reload the page"

HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
QUEUE_SIZE = 1_000  # events buffered per client before it is told to resync
RETRY_S = 5.0  # wait between attempts to reach Kafka
REFRESH_S = 10.0  # how often new partitions and topics are picked up

RECORDS = Counter("candleflow_serve_live_records_total", "Records read for the live stream", ["topic", "outcome"])

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()

MarketKey = tuple[str, str, str]  # exchange, symbol, timeframe


# -- fan-out -----------------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber:
    """One SSE client: events are handed over on its event loop, in order."""

    key: MarketKey
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, bytes]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, event: tuple[str, bytes]) -> None:
        # Runs on the client's loop. A client too slow to keep up drops its backlog
        # and reloads the history instead, so a stalled browser costs bounded memory.
        if self.queue.full():
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", b"{}"))
            return
        self.queue.put_nowait(event)


class LiveHub:
    """One Kafka reader for the process, fanned out to every SSE client by market."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = live_topics(settings)
        self._subscribers: dict[MarketKey, set[Subscriber]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[tuple[str, int]] = set()  # (topic, partition) being read
        self._started = False  # the first assignment is done
        self.status: dict[str, Any] = {"state": "connecting", "detail": "starting the Kafka reader",
                                       "topics": self.topics}

    # Called on the event loop.
    def subscribe(self, key: MarketKey) -> Subscriber:
        subscriber = Subscriber(key, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.setdefault(key, set()).add(subscriber)
            status = self.status
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-kafka", daemon=True)
                self._thread.start()
        subscriber.offer(("status", _encoder.encode(status)))
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            watchers = self._subscribers.get(subscriber.key)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._subscribers[subscriber.key]

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # Called on the Kafka thread.
    def _publish(self, key: MarketKey | None, event: tuple[str, bytes]) -> None:
        with self._lock:
            targets = [s for watchers in self._subscribers.values() for s in watchers] if key is None \
                else list(self._subscribers.get(key, ()))
        for subscriber in targets:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.offer, event)
            except RuntimeError:  # the client's loop has closed: it is going away
                pass

    def _set_status(self, state: str, detail: str) -> None:
        if (state, detail) == (self.status["state"], self.status["detail"]):
            return
        self.status = {"state": state, "detail": detail, "topics": self.topics}
        log.info("live stream", state=state, detail=detail)
        self._publish(None, ("status", _encoder.encode(self.status)))

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        bootstrap = self.settings.kafka.bootstrap()
        # One client for the process's life: librdkafka reconnects by itself (and
        # logs a lost broker once, not once per retry).
        consumer = Consumer({
            **self.settings.kafka.client_config(),
            # Required by the client; never joined (assign, no subscribe) and never committed.
            "group.id": "candleflow-serve-live",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "error_cb": self._on_error,
        })
        try:
            while not self._stop.is_set():
                try:
                    self._assign_new(consumer)  # raises while the cluster does not answer
                    self._set_status("live", f"reading {', '.join(self.topics)} from {bootstrap}")
                    self._consume(consumer)
                except KafkaException as exc:
                    self._set_status("unavailable", f"Kafka at {bootstrap} is unreachable ({exc.args[0].str()}); "
                                                    f"retrying every {RETRY_S:.0f} s")
                    self._stop.wait(RETRY_S)
                except Exception as exc:  # noqa: BLE001 - the reader must outlive any one bad moment
                    log.exception("live stream reader failed")
                    self._set_status("unavailable", f"the Kafka reader failed ({exc!r}); retrying every {RETRY_S:.0f} s")
                    self._stop.wait(RETRY_S)
        finally:
            consumer.close()

    def _on_error(self, error: Any) -> None:
        # librdkafka reports a lost cluster here and keeps reconnecting by itself;
        # the next metadata refresh in _consume notices when it is back.
        if error.code() == -187 and self.status["state"] == "live":  # _ALL_BROKERS_DOWN
            self._set_status("unavailable", f"lost the connection to Kafka at {self.settings.kafka.bootstrap()}; "
                                            "reconnecting")

    def _consume(self, consumer: Any) -> None:
        next_refresh = time.monotonic() + REFRESH_S
        while not self._stop.is_set():
            if time.monotonic() >= next_refresh:
                # Also proves the cluster answers again after an outage.
                self._assign_new(consumer)
                self._set_status("live", f"reading {', '.join(self.topics)} from {self.settings.kafka.bootstrap()}")
                next_refresh = time.monotonic() + REFRESH_S
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            self._handle(message.topic(), message.value())

    def _assign_new(self, consumer: Any) -> None:
        """Add the partitions not read yet.

        The first time, every partition begins at its current end offset (fixed now,
        not resolved later, so nothing produced after this call is missed). A topic
        or partition that appears later is read from its beginning: all of it is new.
        """
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        metadata = consumer.list_topics(timeout=5)
        first = not self._started
        new = []
        for topic in self.topics:
            partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
            for partition in partitions:
                if (topic, partition) in self._assigned:
                    continue
                if first:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                    new.append(TopicPartition(topic, partition, high))
                else:
                    new.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        if new:
            consumer.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
        self._started = True

    def _handle(self, topic: str, raw: bytes | None) -> None:
        topics = self.settings.topics
        try:
            if topic == topics.candles_partial.name:
                row = to_dict(decode_candle(raw or b""))
                row["provisional"] = True
            else:
                row = decode_features(raw or b"")
        except RecordError:
            # Bad records are the producers' to dead-letter; the stream just skips them.
            RECORDS.labels(topic, "skipped").inc()
            return
        RECORDS.labels(topic, "sent").inc()
        kind = "partial" if topic != topics.features.name or row.get("provisional") else "candle"
        self._publish((row["exchange"], row["symbol"], row["timeframe"]), (kind, _encoder.encode(row)))


def live_topics(settings: Settings) -> list[str]:
    """``features``, plus the still-open candles when partial updates are on.

    The features service turns ``candles.partial`` into ``features.partial`` (with
    indicator values) unless ``features.partial_updates`` is off; then the raw
    partial candles are shown.
    """
    topics = [settings.topics.features.name]
    if settings.candles.partial_updates:
        topics.append(settings.topics.features_partial.name if settings.features.partial_updates
                      else settings.topics.candles_partial.name)
    return topics


# -- routes ------------------------------------------------------------------------------


def _sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


async def _events(hub: LiveHub, subscriber: Subscriber) -> AsyncIterator[bytes]:
    try:
        yield f"retry: {int(RETRY_S * 1000)}\n\n".encode()
        # Ends when the client goes away: the server cancels this generator.
        while True:
            try:
                event, data = await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"
                continue
            yield _sse(event, data)
    finally:
        hub.unsubscribe(subscriber)


def node_modules_dirs() -> list[Path]:
    """Where the chart library may be installed: the working directory, then the source checkout."""
    return [Path.cwd() / "node_modules", Path(__file__).resolve().parents[3] / "node_modules"]


def chart_library() -> Path | None:
    for folder in node_modules_dirs():
        if (folder / CHART_LIBRARY).is_file():
            return folder / CHART_LIBRARY
    return None


def markets(settings: Settings, offline_dir: Path) -> list[dict[str, Any]]:
    """Markets with candles in the offline dataset (their timeframes with data), then configured ones."""
    found: dict[tuple[str, str], list[str]] = {}
    if offline_dir.is_dir():
        for exchange_dir in sorted(p for p in offline_dir.iterdir() if p.is_dir()):
            for symbol_dir in sorted(p for p in exchange_dir.iterdir() if p.is_dir()):
                timeframes = [tf for tf in settings.candles.timeframes if (symbol_dir / tf).is_dir()]
                if timeframes:
                    found[(exchange_dir.name, symbol_dir.name.replace("-", "/"))] = timeframes
    listed = [{"exchange": e, "symbol": s, "timeframes": tfs} for (e, s), tfs in found.items()]
    for exchange in settings.ingest.exchanges:
        for symbol in exchange.symbols:
            if (exchange.name, symbol) not in found:
                listed.append({"exchange": exchange.name, "symbol": symbol, "timeframes": []})
    return listed


@dataclass
class Dashboard:
    """What :func:`attach` adds to an app; ``close()`` on shutdown."""

    hub: LiveHub
    pipeline: PipelineMonitor

    def close(self) -> None:
        self.hub.stop()
        self.pipeline.close()


def attach(app: FastAPI, settings: Settings, offline: Any) -> Dashboard:
    """Add the dashboard's routes and files to the serve app."""
    from candleflow.serve.app import _EXCHANGE_RE, _JSONResponse, parse_symbol

    hub = LiveHub(settings)
    monitor = PipelineMonitor(settings)
    router = APIRouter()

    def market_key(exchange: str, symbol: str, timeframe: str) -> MarketKey:
        # The same checks and messages as the app's other market routes.
        if timeframe not in settings.candles.timeframes:
            raise HTTPException(422, detail=f"timeframe {timeframe!r} is not served; "
                                            f"configured: {', '.join(settings.candles.timeframes)}")
        if not _EXCHANGE_RE.match(exchange):
            raise HTTPException(422, detail=f"exchange {exchange!r} must be lower case, e.g. kraken")
        return exchange, parse_symbol(symbol), timeframe

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/vendor/lightweight-charts.js", include_in_schema=False)
    def vendor_chart_library() -> Response:
        path = chart_library()
        if path is None:
            searched = " or ".join(str(d) for d in node_modules_dirs())
            return PlainTextResponse(f"lightweight-charts is not installed (looked in {searched}): {INSTALL_HINT}",
                                     status_code=404)
        return FileResponse(path, media_type="text/javascript")

    @router.get("/v1/markets", summary="Served timeframes and the markets with data")
    def get_markets() -> dict[str, Any]:
        return {"timeframes": list(settings.candles.timeframes),
                "markets": markets(settings, Path(settings.store.offline_dir))}

    @router.get("/v1/history/{exchange}/{symbol:path}", response_class=_JSONResponse,
                summary="Recent Features rows of one market (candle and indicators), oldest first")
    def get_history(exchange: str, symbol: str, timeframe: str = Query("1m"),
                    limit: int = Query(500, ge=1, le=10_000)) -> Response:
        exchange, market, timeframe = market_key(exchange, symbol, timeframe)
        rows = offline.recent(exchange, market, timeframe, limit)
        if not rows:
            raise HTTPException(404, detail=f"no candles for market {exchange}:{market} at timeframe {timeframe}")
        return _JSONResponse({"exchange": exchange, "symbol": market, "timeframe": timeframe, "rows": rows})

    @router.get("/v1/stream/{exchange}/{symbol:path}", summary="Live candles of one market (server-sent events)",
                response_class=StreamingResponse)
    async def get_stream(exchange: str, symbol: str, timeframe: str = Query("1m")) -> Response:
        subscriber = hub.subscribe(market_key(exchange, symbol, timeframe))
        return StreamingResponse(_events(hub, subscriber), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.get("/v1/pipeline", summary="Throughput, consumer lag, last candle age and dead letters")
    def get_pipeline() -> dict[str, Any]:
        return monitor.snapshot()

    app.include_router(router)
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")
    return Dashboard(hub, monitor)
