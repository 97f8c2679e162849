"""The shared connection lifecycle against a fake venue: pings, silence watchdog, back-off, resubscribe."""

import asyncio
import random
import types

from candleflow.exchanges import kraken
from candleflow.exchanges.ws import Backoff, Feed

from .fakeserver import FakeExchange
from .fixtures import fixture


def fast_kraken(ping_interval_s: float) -> types.SimpleNamespace:
    attrs = {name: getattr(kraken, name) for name in dir(kraken) if not name.startswith("_")}
    return types.SimpleNamespace(**{**attrs, "PING_INTERVAL_S": ping_interval_s})


def run_feed(feed: Feed, until) -> None:
    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(feed.run(stop))
        for _ in range(400):
            if until():
                break
            await asyncio.sleep(0.025)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_backoff_grows_exponentially_with_jitter_and_resets():
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(7)]
    ceilings = [0.5, 1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == 7  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_silent_connection_is_dropped_and_the_feed_resubscribes_with_pings():
    ack = fixture("kraken", "ws_subscribe_ack.json").decode()
    update = fixture("kraken", "ws_trade_update.json").decode()
    scripts = [[("recv", "subscribe"), ("send", ack), ("send", update), ("hold",)],  # then silence
               [("recv", "subscribe"), ("send", ack), ("send", update), ("hold",)]]
    frames, subscribed = [], []
    with FakeExchange(scripts) as fake:
        feed = Feed(fast_kraken(0.1), ["MATIC/USD"], ws_url=fake.ws_url, silence_timeout_s=0.6,
                    backoff_initial_s=0.05, on_frame=lambda raw, ms, result: frames.append(result),
                    on_subscribed=subscribed.append)
        run_feed(feed, lambda: fake.connections >= 2 and len(subscribed) >= 2)
    assert subscribed == [False, True]  # the second subscription is a reconnect (gap fill starts there)
    assert feed.stats.reconnects >= 1 and feed.stats.last_disconnect.startswith(("silent", "stopped"))
    assert all('"subscribe"' in conn[0] for conn in fake.received[:2])
    # the venue answered nothing, yet the feed pinged it at the adapter's interval before giving up
    assert fake.received[0].count('{"method":"ping"}') >= 3
    assert sum(len(r.trades) for r in frames) == 2


def test_refused_connection_backs_off_then_connects():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    feed = Feed(kraken, ["BTC/USD"], ws_url=f"ws://127.0.0.1:{port}", backoff_initial_s=0.01,
                on_frame=lambda *a: None, open_timeout_s=1)
    run_feed(feed, lambda: feed.stats.reconnects >= 3)
    assert feed.stats.connects == 0 and feed.stats.reconnects >= 3
    assert "connect failed" in feed.stats.last_disconnect


def test_oversized_frame_is_an_error_not_a_disconnect():
    ack = fixture("kraken", "ws_subscribe_ack.json").decode()
    scripts = [[("recv", "subscribe"), ("send", ack), ("send", "x" * 5000),
                ("send", fixture("kraken", "ws_trade_update.json").decode()), ("hold",)]]
    results = []
    with FakeExchange(scripts) as fake:
        feed = Feed(kraken, ["MATIC/USD"], ws_url=fake.ws_url, max_frame_bytes=4096,
                    on_frame=lambda raw, ms, result: results.append(result))
        run_feed(feed, lambda: any(r.trades for r in results))
    assert [e.reason for r in results for e in r.errors] == ["oversized_frame"]
    assert feed.stats.reconnects == 0 and fake.connections == 1
