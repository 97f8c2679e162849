"""The online-writer contract, run against every backend (SQLite and Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from candleflow.config import load_config
from candleflow.store.base import BACKENDS, MarketKey, online_writer
from tests.store.rows import features_row, store_overrides


# Every backend that runs locally; Hopsworks needs a live cluster (its mapping is tested in test_hopsworks.py).
@pytest.fixture(params=sorted(set(BACKENDS) - {"hopsworks"}))
def writer(request: pytest.FixtureRequest, tmp_path: Path):
    redis_address = request.getfixturevalue("redis_server") if request.param == "redis" else None
    settings = load_config(None, {**store_overrides(tmp_path, request.param, redis_address),
                                  "candles": {"timeframes": ["1m", "5m"]}})
    with online_writer(settings) as w:
        yield w


def test_write_then_read_returns_the_row(writer) -> None:
    row = features_row(writer.settings, "kraken", "BTC/USD", "1m", 10)
    stats = writer.write([row])
    assert (stats.rows, stats.written, stats.stale) == (1, 1, 0)
    (got,) = writer.read([MarketKey("kraken", "BTC/USD", "1m")])
    assert got == row


def test_unknown_market_reads_none(writer) -> None:
    writer.write([features_row(writer.settings, "kraken", "BTC/USD", "1m", 3)])
    assert writer.read([MarketKey("kraken", "ETH/USD", "1m"), MarketKey("kraken", "BTC/USD", "5m")]) == [None, None]


def test_older_row_never_overwrites_newer_across_batches(writer) -> None:
    newer = features_row(writer.settings, "kraken", "BTC/USD", "1m", 20)
    older = features_row(writer.settings, "kraken", "BTC/USD", "1m", 19, seed=5.0)
    writer.write([newer])
    stats = writer.write([older])
    assert stats.stale == 1 and stats.written == 0
    assert writer.read([MarketKey("kraken", "BTC/USD", "1m")]) == [newer]


def test_newest_in_batch_wins_whatever_the_order(writer) -> None:
    rows = [features_row(writer.settings, "binance", "ETH/USDT", "1m", i) for i in (5, 9, 7, 8)]
    stats = writer.write(rows)
    assert (stats.written, stats.superseded) == (1, 3)
    assert writer.read([MarketKey("binance", "ETH/USDT", "1m")]) == [rows[1]]


def test_replaying_the_same_identity_is_idempotent(writer) -> None:
    row = features_row(writer.settings, "kraken", "SOL/USD", "5m", 4)
    writer.write([row])
    writer.write([row])
    assert writer.read([MarketKey("kraken", "SOL/USD", "5m")]) == [row]


def test_markets_and_timeframes_are_independent(writer) -> None:
    rows = [features_row(writer.settings, ex, sym, tf, i)
            for ex, sym in (("kraken", "BTC/USD"), ("okx", "BTC/USDT"))
            for tf, i in (("1m", 30), ("5m", 6))]
    writer.write(rows)
    keys = [MarketKey(r["exchange"], r["symbol"], r["timeframe"]) for r in rows]
    assert writer.read(keys) == rows
    # An older 1m row for one market changes nothing anywhere.
    writer.write([features_row(writer.settings, "kraken", "BTC/USD", "1m", 29)])
    assert writer.read(keys) == rows


def test_feast_sdk_reads_what_the_writer_wrote(writer) -> None:
    row = features_row(writer.settings, "kraken", "BTC/USD", "1m", 40)
    writer.write([row])
    got = writer.store.get_online_features(features=["features_1m:close", "features_1m:rsi_14"],
                                           entity_rows=[{"market": "kraken:BTC/USD"}]).to_dict()
    assert got["close"] == [row["close"]] and got["rsi_14"] == [row["rsi_14"]]


def test_the_guard_also_holds_for_feast_push(writer) -> None:
    import pandas as pd

    from candleflow.store import repo

    newer = features_row(writer.settings, "kraken", "BTC/USD", "1m", 20)
    older = features_row(writer.settings, "kraken", "BTC/USD", "1m", 19, seed=5.0)
    writer.write([newer])
    columns = repo.view_schemas(writer.settings)["1m"].columns

    def push(row: dict) -> None:
        frame = pd.DataFrame([{"market": "kraken:BTC/USD", **{name: row[name] for name in columns},
                               "event_timestamp": pd.Timestamp(row["end_ms"], unit="ms", tz="UTC"),
                               "created_timestamp": pd.Timestamp.now(tz="UTC")}])
        writer.store.push(repo.push_source_name("1m"), frame)

    push(older)
    assert writer.read([MarketKey("kraken", "BTC/USD", "1m")]) == [newer]
    newest = features_row(writer.settings, "kraken", "BTC/USD", "1m", 21)
    push(newest)  # the push path itself works: a newer row goes in
    assert writer.read([MarketKey("kraken", "BTC/USD", "1m")]) == [newest]
