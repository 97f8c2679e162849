"""A scriptable fake exchange on 127.0.0.1: a websocket server plus HTTP for REST history.

It runs in a background thread with its own event loop, so the code under test
(in-process or a ``candleflow ingest`` subprocess) connects to it like to a
real venue. Each websocket connection plays the next script from ``scripts``;
once they are used up, further connections play ``default_script`` (by
default: wait for the subscribe frame, then stay open quietly).

Script steps (tuples)::

    ("recv", "subscribe")      wait for a client frame containing this text (any frame: "")
    ("send", frame)            send one text frame (str) or binary frame (bytes)
    ("send_many", [frames])    send several frames back to back
    ("sleep", seconds)
    ("wait", threading.Event)  block until the test sets the event
    ("drop",)                  cut the TCP connection without a close frame
    ("close", code, reason)    a clean websocket close
    ("hold",)                  stay open until the client leaves or the server stops

``respond`` answers client frames automatically (e.g. pings): a function from
the frame text to a reply text or None. ``received[i]`` lists the frames of
connection ``i``. REST: ``rest_routes`` maps a path to a function
``(params: dict[str, str]) -> (status, headers, body bytes)``; ``rest_requests``
records ``(path, params)`` in order.

    with FakeExchange(scripts=[[("recv", "subscribe"), ("send", ack), ("drop",)]]) as fake:
        run_ingest(ws_url=fake.ws_url, rest_url=fake.rest_url)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import websockets
from websockets.asyncio.server import ServerConnection, serve

Step = tuple[Any, ...]
RestHandler = Callable[[dict[str, str]], tuple[int, dict[str, str], bytes]]

DEFAULT_SCRIPT: list[Step] = [("recv", ""), ("hold",)]


class FakeExchange:
    def __init__(self, scripts: list[list[Step]] | None = None, *, default_script: list[Step] | None = None,
                 respond: Callable[[str], str | None] | None = None,
                 rest_routes: dict[str, RestHandler] | None = None, ws_path: str = "") -> None:
        self.scripts = list(scripts or [])
        self.default_script = list(default_script or DEFAULT_SCRIPT)
        self.respond = respond
        self.rest_routes = dict(rest_routes or {})
        self.ws_path = ws_path
        self.received: list[list[str]] = []
        self.rest_requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._ws_port = 0
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._ws_port}{self.ws_path}"

    @property
    def rest_url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> FakeExchange:
        self._thread = threading.Thread(target=self._run, name="fake-exchange-ws", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake exchange did not start")
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._http_handler())
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="fake-exchange-http",
                                             daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- websocket ---------------------------------------------------------------------

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None) as server:
            self._ws_port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close()

    async def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            index = self.connections
            self.connections += 1
            self.received.append([])
            script = self.scripts[index] if index < len(self.scripts) else self.default_script
        inbox: asyncio.Queue[str | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(connection, index, inbox))
        try:
            for step in script:
                if await self._step(connection, step, inbox) is False:
                    break
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - a broken script is reported, not raised in the server
            self.errors.append(f"connection {index}: {exc!r}")
        finally:
            reader.cancel()

    async def _read(self, connection: ServerConnection, index: int, inbox: asyncio.Queue[str | None]) -> None:
        try:
            async for message in connection:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self.received[index].append(text)
                if self.respond is not None:
                    reply = self.respond(text)
                    if reply is not None:
                        await connection.send(reply)
                await inbox.put(text)
        except websockets.ConnectionClosed:
            pass
        finally:
            await inbox.put(None)

    async def _step(self, connection: ServerConnection, step: Step, inbox: asyncio.Queue[str | None]) -> bool:
        op = step[0]
        if op == "recv":
            needle = step[1] if len(step) > 1 else ""
            while True:
                message = await inbox.get()
                if message is None:
                    return False
                if needle in message:
                    return True
        if op == "send":
            await connection.send(step[1])
        elif op == "send_many":
            for frame in step[1]:
                await connection.send(frame)
        elif op == "sleep":
            await asyncio.sleep(step[1])
        elif op == "wait":
            event: threading.Event = step[1]
            while not event.is_set():
                await asyncio.sleep(0.02)
        elif op == "drop":
            connection.transport.abort()
            return False
        elif op == "close":
            await connection.close(step[1] if len(step) > 1 else 1000, step[2] if len(step) > 2 else "")
            return False
        elif op == "hold":
            assert self._stop is not None
            closed = asyncio.ensure_future(connection.wait_closed())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            stopped.cancel()
            return False
        else:
            raise ValueError(f"unknown script step {op!r}")
        return True

    # ---- REST --------------------------------------------------------------------------

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                fake.rest_requests.append((parts.path, params))
                route = fake.rest_routes.get(parts.path)
                if route is None:
                    status, headers, body = 404, {}, b'{"error":"not found"}'
                else:
                    status, headers, body = route(params)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        return Handler
