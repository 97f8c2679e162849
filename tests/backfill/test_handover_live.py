"""Hand-over to live, end to end: a REST backfill up to W0, then live ingest -> candles -> features.

One Kraken market, 1m candles, a fixed trade history H of about two hours:

- the backfill pages H from a fake Kraken REST (serving H up to a few minutes
  after W0, "now") with ``--until W0 --handover-state`` into the offline store;
- live: ``candleflow ingest`` reads the fake websocket, which starts with trades
  from before W0 (the overlap, already in the backfill: fetched twice on
  purpose) and repeats one update frame (a re-sent frame, de-duplicated by
  trade_id); ``candleflow candles`` and ``candleflow features`` (same
  ``data_dir``, so it continues from the hand-over state) run on the real broker.

"No gap and no duplicate" at candle level: the backfill holds the windows
``[since, W0)``, the live `features` topic holds ``[W0, end)``, one row per
window, contiguous, and the trade counts of the two parts add up to every trade
of H exactly once. The live path's incomplete window just before W0 (made of the
overlap trades only) is refused by the features service as stale (dead letter),
not published a second time. The live features equal TA-Lib batch over the
whole candle history.
"""

from __future__ import annotations

import math
import subprocess
import uuid

import msgspec
import polars as pl
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from candleflow.backfill import pipeline
from candleflow.cli import app
from candleflow.core.features import feature_columns
from candleflow.dlq import decode_dead_letter
from candleflow.records import CANDLE_FIELDS, decode_candle, decode_trade
from candleflow.services.candles import TICK_HEADER, TICK_KEY, tick_value
from candleflow.services.features import compute_features_table
from tests.backfill.fakes import FakeKraken, FakeTrade, make_history
from tests.backfill.parity import stored_rows
from tests.exchanges.e2e import frame, start_ingest, stop_ingest
from tests.exchanges.fakeserver import FakeExchange
from tests.fixtures.kafka import consume_all
from tests.fixtures.processes import start_service, stop_process

pytestmark = pytest.mark.slow

MINUTE = 60_000
SINCE_MS = 1_700_002_800_000  # an hour boundary
W0 = SINCE_MS + 100 * MINUTE  # where live takes over
OVERLAP_MS = 25_000  # the websocket starts this long before W0
GRACE_MS = 2_000
KEY = "kraken:BTC/USD:1m"

ACK = frame({"method": "subscribe", "result": {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"},
             "success": True, "time_in": "2023-11-14T23:00:00.000000Z", "time_out": "2023-11-14T23:00:00.000100Z"})


def ws_entry(t: FakeTrade) -> dict:
    """Kraken v2 trade entry of a history trade (microsecond RFC 3339 time, like the venue)."""
    from datetime import datetime, timezone

    seconds, micros = divmod(t.ts_ns // 1000, 1_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"
    return {"symbol": "BTC/USD", "side": "buy" if t.buy else "sell", "price": float(t.price), "qty": float(t.qty),
            "ord_type": "limit", "trade_id": t.trade_id, "timestamp": stamp}


def ws_script(live: list[FakeTrade]) -> list[tuple]:
    """Snapshot of the first trades, then updates of 200; the second update frame is sent twice."""
    chunks = [live[:50]] + [live[i:i + 200] for i in range(50, len(live), 200)]
    frames = [frame({"channel": "trade", "type": "snapshot" if i == 0 else "update",
                     "data": [ws_entry(t) for t in chunk]}) for i, chunk in enumerate(chunks)]
    frames.insert(3, frames[2])  # a re-sent frame: its trades must reach `trades` once
    return [("recv", "subscribe"), ("send", ACK), ("send_many", frames), ("hold",)]


def history_frame(history: list[FakeTrade]) -> pl.DataFrame:
    return pl.DataFrame([{"exchange": "kraken", "symbol": "BTC/USD", "trade_id": str(t.trade_id),
                          "price": float(t.price), "qty": float(t.qty), "side": "buy" if t.buy else "sell",
                          "ts_ms": t.ts_ms} for t in history])


def assert_features_equal(actual: dict, expected: dict, columns: list[str]) -> None:
    for name in columns:
        a, e = actual[name], expected[name]
        if e is None or a is None:
            assert a is None and e is None, (actual["start_ms"], name, a, e)
        else:
            assert math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-9), (actual["start_ms"], name, a, e)


def test_backfill_then_live_ingest_hands_over_without_gap_or_duplicate(settings_factory, kafka_config, tmp_path):
    settings = settings_factory(
        partitions=1,
        candles={"timeframes": ["1m"], "grace_ms": GRACE_MS, "ticks": False,
                 "consumer_group": f"candles-handover-{uuid.uuid4().hex[:8]}"},
        features={"partial_updates": False, "consumer_group": f"features-handover-{uuid.uuid4().hex[:8]}"},
        ingest={"silence_timeout_s": 120},
        log={"format": "json", "level": "INFO"},
    )
    config_file = tmp_path / "candleflow.yaml"
    history = make_history(9_000, SINCE_MS, seed=41)
    last_end = history[-1].ts_ms // MINUTE * MINUTE + MINUTE
    assert last_end - W0 >= 15 * MINUTE  # enough live windows for the indicators' memory to show

    # 1. Backfill up to W0 from a REST history that already reaches a little past it ("now").
    served = [t for t in history if t.ts_ms < W0 + 5 * MINUTE]
    with FakeKraken({"BTC/USD": served}, page_size=1_000) as rest:
        result = CliRunner().invoke(app, [
            "--config", str(config_file), "backfill", "-e", "kraken", "-s", "BTC/USD", "-t", "1m",
            "--since", str(SINCE_MS), "--until", str(W0), "--rest-url", rest.url, "--min-interval", "0",
            "--no-online", "--handover-state"])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0, output
    assert "state at the end of the backfill saved for 1 key(s)" in output
    backfilled = {identity[3]: row for identity, row in stored_rows(settings).items()}
    assert sorted(backfilled) == list(range(SINCE_MS, W0, MINUTE))  # every window before W0, none after

    # 2. Live: the websocket starts OVERLAP_MS before W0 and runs to the end of H.
    live = [t for t in history if t.ts_ms >= W0 - OVERLAP_MS]
    overlap = [t for t in live if t.ts_ms < W0]
    assert overlap and overlap[0].ts_ms >= W0 - MINUTE  # the overlap lies inside the window just before W0
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []
    with FakeExchange([ws_script(live)], respond=lambda text: '{"method":"pong"}' if '"ping"' in text else None) as ws:
        ingest = start_ingest(config_file, "kraken", ["BTC/USD"], ws.ws_url)
        try:
            processes += [start_service("candles", config_file, logs / "candles.log"),
                          start_service("features", config_file, logs / "features.log")]
            published = consume_all(kafka_config, settings.topics.trades.name, expected=len(live), timeout_s=90)
            # The candles service runs without its wall-clock ticker: the test closes the last window.
            producer = Producer(kafka_config.client_config())
            producer.produce(settings.topics.trades.name, key=TICK_KEY, value=tick_value(last_end + GRACE_MS),
                             headers=[(TICK_HEADER, b"1")])
            producer.flush(30)
            expected_live = (last_end - W0) // MINUTE
            rows = consume_all(kafka_config, settings.topics.features.name, expected=expected_live, timeout_s=120)
            rows = consume_all(kafka_config, settings.topics.features.name, idle_s=3)  # any extra would show here
            candles = [decode_candle(m.value()) for m in consume_all(kafka_config, settings.topics.candles.name,
                                                                     idle_s=2)]
            letters = [decode_dead_letter(m.value()) for m in consume_all(kafka_config, settings.topics.dlq.name,
                                                                          idle_s=2)]
        finally:
            code, stderr = stop_ingest(ingest)
            for process in processes:
                stop_process(process)
    assert code == 0, stderr
    service_logs = "\n".join((logs / f).read_text() for f in ("candles.log", "features.log"))

    # (a) Trades: the live topic holds every websocket trade once (the re-sent frame de-duplicated by trade_id) ...
    assert [decode_trade(m.value()).trade_id for m in published] == [str(t.trade_id) for t in live]
    assert len(consume_all(kafka_config, settings.topics.trades.name, idle_s=1)) == len(live) + 1  # + the tick
    # ... and the live path's window before W0, made of the overlap only, is refused, not published again.
    first = candles[0]
    assert (first.start_ms, first.trades) == (W0 - MINUTE, len(overlap))
    assert [(d.reason, d.service) for d in letters] == [("stale_candle", "features")], service_logs
    assert "continuing from the backfill's hand-over state" in service_logs

    # Candles: backfill [since, W0) + live [W0, end): contiguous, one row per window, every trade of H once.
    live_rows = [msgspec.json.decode(m.value()) for m in rows]
    assert all(m.key().decode() == KEY for m in rows)
    assert [r["start_ms"] for r in live_rows] == list(range(W0, last_end, MINUTE)), service_logs
    assert sum(r["trades"] for r in backfilled.values()) + sum(r["trades"] for r in live_rows) == len(history)
    batch, _ = pipeline.compute(history_frame(history), ["1m"], settings, since_ms=SINCE_MS)
    assert batch["start_ms"].to_list() == list(range(SINCE_MS, last_end, MINUTE))
    by_start = {r["start_ms"]: r for r in batch.iter_rows(named=True)}
    for row in live_rows:
        expected = by_start[row["start_ms"]]
        for field in ("open", "high", "low", "close", "trades", "gap_fill", "start_ms", "end_ms"):
            assert row[field] == expected[field], (row["start_ms"], field, row[field], expected[field])
        for field in ("volume", "quote_volume", "vwap", "buy_volume"):
            assert math.isclose(row[field], expected[field], rel_tol=1e-12), (row["start_ms"], field)

    # (b) Features of the live candles = TA-Lib batch over the whole candle history (backfilled + live).
    history_candles = pl.DataFrame([{c: r[c] for c in CANDLE_FIELDS}
                                    for r in [*(backfilled[s] for s in sorted(backfilled)), *live_rows]])
    reference, rejected = compute_features_table(history_candles, settings.features)
    assert rejected.height == 0
    reference_by_start = {r["start_ms"]: r for r in reference.iter_rows(named=True)}
    columns = feature_columns(settings.features, "1m")
    for row in live_rows:
        assert_features_equal(row, reference_by_start[row["start_ms"]], columns)
    # The long-memory indicators are past warm-up at the boundary, so the comparison means something.
    assert sum(live_rows[0][c] is not None for c in columns) >= len(columns) - 2, live_rows[0]
