"""`candleflow sink`: Features rows from the real broker into the real Feast store and Parquet dataset."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from candleflow.dlq import decode_dead_letter
from candleflow.records import candle_key, encode
from candleflow.services.sink import Sink
from candleflow.store.base import MarketKey, online_writer
from candleflow.store.offline import OfflineDataset
from tests.fixtures.kafka import consume_all, produce
from tests.store.rows import features_row

MARKETS = [("kraken", "BTC/USD"), ("kraken", "ETH/USD"), ("binance", "BTC/USDT")]


def _messages(rows):
    return [(candle_key(r["exchange"], r["symbol"], r["timeframe"]), encode(r)) for r in rows]


def _identities(table) -> list[tuple]:
    cols = [table[c].to_pylist() for c in ("exchange", "symbol", "timeframe", "start_ms")]
    return list(zip(*cols))


def test_sink_writes_online_and_offline_and_dead_letters_bad_rows(settings_factory) -> None:
    settings = settings_factory(partitions=2, candles={"timeframes": ["1m", "5m"]},
                                sink={"batch_size": 50, "batch_interval_ms": 100})
    rows = [features_row(settings, ex, sym, tf, i) for ex, sym in MARKETS for tf in ("1m", "5m") for i in range(40)]
    bad = [
        (b"kraken:BTC/USD:1m", b"{not json"),
        (b"kraken:BTC/USD:1m", encode({**rows[0], "close": -1.0})),  # invalid candle
        (b"kraken:BTC/USD:3m", encode({**rows[0], "timeframe": "3m"})),  # no such feature view
        (b"kraken:BTC/USD:1m", encode({k: v for k, v in rows[0].items() if k != "rsi_14"})),  # schema drift
    ]
    messages = _messages(rows)
    random.Random(7).shuffle(messages)  # order across markets does not matter; per key it is preserved
    messages = sorted(messages, key=lambda m: (m[0], __import__("json").loads(m[1])["start_ms"]))
    produce(settings.kafka, settings.topics.features.name, messages[:100] + bad + messages[100:])

    Sink(settings).run(max_idle_s=3)

    with online_writer(settings) as writer:
        keys = [MarketKey(ex, sym, tf) for ex, sym in MARKETS for tf in ("1m", "5m")]
        latest = writer.read(keys)
    expected = [features_row(settings, k.exchange, k.symbol, k.timeframe, 39) for k in keys]
    assert latest == expected

    table = OfflineDataset(settings.store.offline_dir).read_all()
    assert sorted(_identities(table)) == sorted((r["exchange"], r["symbol"], r["timeframe"], r["start_ms"]) for r in rows)
    by_identity = {ident: row for ident, row in zip(_identities(table), table.to_pylist())}
    sample = rows[17]
    stored = by_identity[(sample["exchange"], sample["symbol"], sample["timeframe"], sample["start_ms"])]
    assert {k: stored[k] for k in sample} == sample

    letters = [decode_dead_letter(m.value()) for m in consume_all(settings.kafka, settings.topics.dlq.name, expected=4)]
    assert sorted(letter.reason for letter in letters) == ["invalid_features", "invalid_features",
                                                           "schema_mismatch", "unknown_timeframe"]
    assert all(letter.service == "sink" for letter in letters)


def _start_sink(config_file: Path, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config_file), "sink"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing_and_compaction_leaves_one_row_per_identity(
        settings_factory, tmp_path: Path) -> None:
    settings = settings_factory(partitions=3, candles={"timeframes": ["1m"]},
                                sink={"batch_size": 200, "batch_interval_ms": 50,
                                      # Static membership: a restarted sink gets its partitions back at once.
                                      "instance_id": "sink-under-test", "session_timeout_ms": 6000})
    config_file = tmp_path / "candleflow.yaml"
    per_market = 1500
    rows = {m: [features_row(settings, m[0], m[1], "1m", i) for i in range(per_market)] for m in MARKETS}

    # A producer feeds the topic in slices (~10 s) while the sink is killed and restarted.
    def feed() -> None:
        for start in range(0, per_market, 30):
            chunk = [r for m in MARKETS for r in rows[m][start:start + 30]]
            produce(settings.kafka, settings.topics.features.name, _messages(chunk))
            time.sleep(0.2)

    dataset = OfflineDataset(settings.store.offline_dir)

    def files() -> int:
        return len(list(dataset.root.glob("*/*/*/*/part-*.parquet")))

    feeder = threading.Thread(target=feed)
    feeder.start()
    rng = random.Random(11)
    log = open(tmp_path / "sink.log", "ab")
    kills = kills_while_writing = 0
    try:
        while feeder.is_alive() or kills < 4:
            proc = _start_sink(config_file, log)
            # Kill shortly after this run starts writing, so the kill lands between
            # writes and commits, not during start-up.
            before, deadline = files(), time.monotonic() + 90  # generous: start-up is slow on a busy machine
            while files() == before and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            kills_while_writing += files() > before
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        feeder.join()
        # Final run: drains what is left and exits when idle.
        final = subprocess.run([sys.executable, "-m", "candleflow", "--config", str(config_file), "sink",
                                "--max-idle", "4"], stdout=log, stderr=subprocess.STDOUT, timeout=120)
        assert final.returncode == 0
    finally:
        log.close()
    assert kills >= 4 and kills_while_writing >= 2

    result = subprocess.run([sys.executable, "-m", "candleflow", "--config", str(config_file), "store", "compact"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # After compaction every partition is one file and each identity appears once.
    assert all(len(list(folder.glob("part-*.parquet"))) == 1 for folder in dataset.partitions())
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.concat_tables([pq.read_table(f) for f in sorted(dataset.root.glob("*/*/*/*/part-*.parquet"))])
    identities = _identities(raw)
    assert len(identities) == len(set(identities)) == len(MARKETS) * per_market
    expected = {(r["exchange"], r["symbol"], "1m", r["start_ms"]) for m in MARKETS for r in rows[m]}
    assert set(identities) == expected

    with online_writer(settings) as writer:
        latest = writer.read([MarketKey(ex, sym, "1m") for ex, sym in MARKETS])
    assert latest == [rows[m][-1] for m in MARKETS]
