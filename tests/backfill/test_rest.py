"""REST paging into the page cache against local fake venues: pagination, rate limits, bad pages, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from candleflow.backfill.cache import PageCache
from candleflow.backfill.rest import FetchOptions, run_fetch
from candleflow.exchanges import binance, kraken
from tests.backfill.fakes import FakeBinance, FakeKraken, FakeTrade, Script, make_history

START_MS = 1_700_000_100_000
FAR_FUTURE_MS = 4_000_000_000_000


def fast(url: str, **kw: object) -> FetchOptions:
    """No pacing and short waits: the fakes do not need the venues' manners."""
    return FetchOptions(until_ms=kw.pop("until_ms", FAR_FUTURE_MS), base_url=url, min_interval_s=0.0,  # type: ignore[arg-type]
                        retry_wait_s=0.01, max_rate_limit_wait_s=0.01, **kw)  # type: ignore[arg-type]


def cached(data_dir: Path, exchange: str, symbol: str, since_ms: int = START_MS) -> list[tuple[str, int, float]]:
    cache = PageCache(data_dir, exchange, symbol, since_ms)
    return [(i, ts, p) for page in cache.pages() for i, ts, p in zip(page.trade_id, page.ts_ms, page.price)]


def expected(history: list[FakeTrade], since_ms: int = START_MS, skip: set[int] = frozenset()) -> list[str]:
    return [str(t.trade_id) for t in history if t.ts_ms >= since_ms and t.trade_id not in skip]


def test_kraken_pages_every_trade_once_through_rate_limits_and_bad_input(tmp_path: Path) -> None:
    history = make_history(2600, START_MS)
    script = Script(rate_limited={1}, http_429={3}, malformed={5}, bad_rows={history[40].trade_id})
    with FakeKraken({"BTC/USD": history}, page_size=400, script=script) as fake:
        result = run_fetch(kraken, tmp_path, ["BTC/USD"], START_MS, fast(fake.url))["BTC/USD"]
    ids = [i for i, _, _ in cached(tmp_path, "kraken", "BTC/USD")]
    # Every trade exactly once, in order, except the one served with a broken price.
    assert ids == expected(history, skip={history[40].trade_id})
    assert result.trades == len(ids)
    assert result.bad_rows == 1
    assert result.rate_limited == 2  # EAPI:Rate limit exceeded and HTTP 429, each retried
    assert result.bad_pages == []  # the malformed page was transient: the retry got it
    assert result.repeats > 0  # Kraken's cursor repeats the boundary trades; they are dropped
    assert result.caught_up and not result.stopped
    # The bad row is kept with its location and raw text in the page that held it.
    pages = list(PageCache(tmp_path, "kraken", "BTC/USD", START_MS).pages())
    errors = [(page.seq, e) for page in pages for e in page.errors]
    assert [(seq, e.reason) for seq, e in errors] == [(0, "invalid_price")]
    assert "not-a-price" in errors[0][1].raw
    # Raw response bodies are cached beside the parsed trades.
    assert all(page.responses and page.responses[-1].startswith('{"error":[]') for page in pages)


def test_binance_starts_from_a_time_and_skips_a_page_that_stays_bad(tmp_path: Path) -> None:
    history = make_history(3500, START_MS - 100_000, first_id=1000)
    # History request 2 and its retries are malformed: the page at that cursor stays bad.
    script = Script(rate_limited={0}, malformed={2, 3, 4, 5})
    with FakeBinance({"BTC/USDT": history}, script=script) as fake:
        result = run_fetch(binance, tmp_path, ["BTC/USDT"], START_MS, fast(fake.url))["BTC/USDT"]
    assert len(result.bad_pages) == 1
    bad = result.bad_pages[0]
    assert bad.skipped_to == str(int(bad.cursor) + binance.REST_LIMIT)
    hole = set(range(int(bad.cursor), int(bad.skipped_to)))
    ids = [i for i, _, _ in cached(tmp_path, "binance", "BTC/USDT")]
    assert ids == expected(history, skip=hole)  # exactly the reported page is missing, nothing else
    assert result.rate_limited == 1
    assert int(ids[0]) == next(t.trade_id for t in history if t.ts_ms >= START_MS)


def test_kraken_page_that_stays_bad_stops_the_symbol_and_a_rerun_resumes_there(tmp_path: Path) -> None:
    history = make_history(1500, START_MS)
    with FakeKraken({"ETH/USD": history}, page_size=300, script=Script(malformed={2, 3, 4, 5})) as fake:
        first = run_fetch(kraken, tmp_path, ["ETH/USD"], START_MS, fast(fake.url))["ETH/USD"]
        assert first.stopped and "failed 4 times" in first.stopped
        assert first.bad_pages[0].skipped_to is None
        stopped_at = first.cursor
        # The venue recovers; the same command continues from the saved cursor.
        second = run_fetch(kraken, tmp_path, ["ETH/USD"], START_MS, fast(fake.url))["ETH/USD"]
        resumed_from = fake.server.rest_requests[6][1]["since"]
    assert resumed_from == stopped_at
    assert not second.stopped and second.caught_up
    ids = [i for i, _, _ in cached(tmp_path, "kraken", "ETH/USD")]
    assert ids == expected(history)


def test_an_interrupted_fetch_resumes_to_the_same_cache_as_one_run(tmp_path: Path) -> None:
    history = make_history(2000, START_MS)
    with FakeKraken({"BTC/USD": history, "ETH/USD": history}, page_size=250) as fake:
        run_fetch(kraken, tmp_path / "one", ["BTC/USD"], START_MS, fast(fake.url))
        for _ in range(3):  # three interrupted runs of two pages each, then one to the end
            run_fetch(kraken, tmp_path / "parts", ["BTC/USD"], START_MS, fast(fake.url, max_pages=2))
        run_fetch(kraken, tmp_path / "parts", ["BTC/USD"], START_MS, fast(fake.url))
    assert cached(tmp_path / "parts", "kraken", "BTC/USD") == cached(tmp_path / "one", "kraken", "BTC/USD")
    assert [i for i, _, _ in cached(tmp_path / "parts", "kraken", "BTC/USD")] == expected(history)


def test_until_stops_early_and_a_later_until_continues_without_a_hole(tmp_path: Path) -> None:
    history = make_history(2000, START_MS)
    middle = history[900].ts_ms
    with FakeKraken({"BTC/USD": history}, page_size=200) as fake:
        early = run_fetch(kraken, tmp_path, ["BTC/USD"], START_MS, fast(fake.url, until_ms=middle))["BTC/USD"]
        requests_early = len(fake.server.rest_requests)
        late = run_fetch(kraken, tmp_path, ["BTC/USD"], START_MS, fast(fake.url))["BTC/USD"]
    assert early.last_ts_ms >= middle and not early.caught_up
    assert requests_early <= 6  # stopped near `until`, not at the end of the history
    assert late.caught_up
    assert [i for i, _, _ in cached(tmp_path, "kraken", "BTC/USD")] == expected(history)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cache = PageCache(tmp_path, "kraken", "BTC/USD", START_MS)
    cache.root.mkdir(parents=True)
    cache.checkpoint_path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        cache.load()


def test_coinbase_seeks_the_start_time_then_pages_forward_by_id(tmp_path: Path) -> None:
    from candleflow.exchanges import coinbase
    from tests.backfill.fakes import FakeCoinbase

    history = make_history(5200, START_MS - 2_000_000, first_id=100)
    since = history[1700].ts_ms
    with FakeCoinbase({"BTC/USD": history}, script=Script(rate_limited={2})) as fake:
        result = run_fetch(coinbase, tmp_path, ["BTC/USD"], since, fast(fake.url))["BTC/USD"]
    trades = cached(tmp_path, "coinbase", "BTC/USD", since)
    assert [i for i, _, _ in trades] == expected(history, since)
    assert result.rate_limited == 1 and result.caught_up
    # Timestamps are truncated to the millisecond, prices parsed from the text.
    by_id = {str(t.trade_id): t for t in history}
    assert all(ts == by_id[i].ts_ms and p == float(by_id[i].price) for i, ts, p in trades)
