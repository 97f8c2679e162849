"""The fake exchange itself: scripts run per connection, REST routes answer and are recorded."""

import asyncio

import httpx
from websockets.asyncio.client import connect

from .fakeserver import FakeExchange


def test_scripts_play_per_connection_and_rest_answers():
    scripts = [[("recv", "subscribe"), ("send", "hello"), ("drop",)],
               [("recv", "subscribe"), ("send_many", ["a", "b"]), ("close", 1000, "bye")]]
    routes = {"/trades": lambda params: (200, {}, ('{"since":"%s"}' % params.get("since")).encode())}

    async def client(url):
        got = []
        for _ in range(2):
            async with connect(url) as ws:
                await ws.send("ping")
                await ws.send('{"method":"subscribe"}')
                try:
                    async for message in ws:
                        got.append(message)
                except Exception:  # the drop
                    pass
        return got

    with FakeExchange(scripts, respond=lambda text: "pong" if text == "ping" else None, rest_routes=routes) as fake:
        got = asyncio.run(client(fake.ws_url))
        body = httpx.get(f"{fake.rest_url}/trades", params={"since": "5"}).json()
    assert got == ["pong", "hello", "pong", "a", "b"]
    assert fake.received == [["ping", '{"method":"subscribe"}'], ["ping", '{"method":"subscribe"}']]
    assert body == {"since": "5"} and fake.rest_requests == [("/trades", {"since": "5"})]
    assert fake.errors == []
