"""The features service against the real broker: exactly-once through SIGKILLs, equal to batch.

The service runs as a real `candleflow features` subprocess. Candles arrive in
chunks and the process is SIGKILLed after each chunk, mid-stream, then
restarted. The read_committed `features` topic must then hold exactly one row
per candle, equal (bit for bit) to an uninterrupted streaming run of the same
engine and equal to the TA-Lib batch computation within the parity tolerance.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time

import numpy as np
import polars as pl
import pytest

from candleflow.core.features import FeatureEngine, indicators_for
from candleflow.dlq import decode_dead_letter
from candleflow.records import Candle, decode_features, encode, to_dict
from candleflow.services.features import (FeaturesProcessor, RowEncoder, compute_features_table, decode_state,
                                         encode_state)
from tests.core.test_indicators import make_candles
from tests.fixtures.kafka import consume_all, produce
from tests.fixtures.processes import start_service, stop_process

TF_MS = 60_000
START = 1_700_000_040_000 // TF_MS * TF_MS


def key_candles(exchange: str, symbol: str, n: int, seed: int) -> list[Candle]:
    out = []
    for i, c in enumerate(make_candles(n, seed=seed, gap_fraction=0.15)):
        out.append(Candle(exchange=exchange, symbol=symbol, timeframe="1m", start_ms=START + i * TF_MS,
                          end_ms=START + (i + 1) * TF_MS, open=c["open"], high=c["high"], low=c["low"],
                          close=c["close"], volume=c["volume"], quote_volume=c["quote_volume"], vwap=c["vwap"],
                          trades=int(c["trades"]), buy_volume=c["buy_volume"], gap_fill=c["trades"] == 0))
    return out


class DictState:
    def __init__(self) -> None:
        self.data: dict = {}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        self.data[key] = decode_state(encode_state(value))  # what the state topic keeps, read back


@pytest.mark.slow
def test_sigkilled_service_equals_uninterrupted_run_and_batch(settings_factory, kafka_config, tmp_path):
    settings = settings_factory(partitions=2, features={"partial_updates": False})
    series = {("kraken", "BTC/USD"): key_candles("kraken", "BTC/USD", 700, 1),
              ("binance", "ETH/USDT"): key_candles("binance", "ETH/USDT", 700, 2),
              ("okx", "SOL/USDT"): key_candles("okx", "SOL/USDT", 400, 3)}
    # Interleave the keys as the candle service would emit them (time order across keys).
    stream = sorted((c for candles in series.values() for c in candles), key=lambda c: (c.start_ms, c.key))
    chunks = np.array_split(np.arange(len(stream)), 5)
    bad = [(b"kraken:BTC/USD:1m", b"{not json"),
           (b"kraken:BTC/USD:1m", encode(series[("kraken", "BTC/USD")][3]))]  # stale duplicate
    log = tmp_path / "service.log"
    rng = random.Random(7)
    proc = None
    try:
        for n, chunk in enumerate(chunks):
            messages = [(stream[i].key, encode(stream[i])) for i in chunk]
            if n == 2:
                messages[len(messages) // 2:len(messages) // 2] = bad
            proc = start_service("features", tmp_path / "candleflow.yaml", log)
            produce(kafka_config, settings.topics.candles.name, messages)
            time.sleep(rng.uniform(4.0, 7.0))  # start-up, recovery and part of the chunk
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        proc = start_service("features", tmp_path / "candleflow.yaml", log)
        rows = consume_all(kafka_config, settings.topics.features.name, expected=len(stream), timeout_s=120)
        time.sleep(3)  # anything beyond the expected count would be a duplicate
        rows += consume_all(kafka_config, settings.topics.features.name, idle_s=2)[len(rows):]
    finally:
        stop_process(proc)
    assert proc.returncode is not None
    tail = log.read_text(errors="replace")[-3000:]
    assert len(rows) == len(stream), f"{len(rows)} rows for {len(stream)} candles; log tail:\n{tail}"

    got: dict[str, list[dict]] = {}
    for msg in rows:
        row = decode_features(msg.value())
        assert msg.key().decode() == f"{row['exchange']}:{row['symbol']}:{row['timeframe']}"
        got.setdefault(msg.key().decode(), []).append(row)

    # An uninterrupted run of the same processing, in this process.
    processor, states = FeaturesProcessor(settings), {}  # state is per message key
    expected: dict[str, list[dict]] = {}
    for candle in stream:
        [(dest, value)] = processor.final(encode(candle), candle.key, states.setdefault(candle.key, DictState()))
        expected.setdefault(candle.key, []).append(json.loads(value))
    assert got == expected  # bit-identical: same keys, same order, same floats

    # ... and the batch path on the same candles.
    frame = pl.DataFrame([c.__struct_fields__ and {f: getattr(c, f) for f in c.__struct_fields__} for c in stream])
    batch, rejected = compute_features_table(frame, settings.features)
    assert len(rejected) == 0
    for key, key_rows in got.items():
        exchange, symbol, _ = key.split(":")
        b = batch.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol)).to_dicts()
        assert len(b) == len(key_rows)
        for s_row, b_row in zip(key_rows, b):
            for name, value in b_row.items():
                if value is None or s_row[name] is None:
                    assert value is None and s_row[name] is None, (key, s_row["start_ms"], name)
                elif isinstance(value, float):
                    assert math.isclose(s_row[name], value, rel_tol=1e-9, abs_tol=1e-9), (key, name)
                else:
                    assert s_row[name] == value

    letters = [decode_dead_letter(m.value()) for m in consume_all(kafka_config, settings.topics.dlq.name, idle_s=2)]
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == ["invalid_candle", "stale_candle"]


def test_processor_dead_letters_bad_input_and_keeps_going(settings_factory):
    settings = settings_factory(partitions=1)
    processor, state = FeaturesProcessor(settings), DictState()
    candles = key_candles("kraken", "BTC/USD", 5, 9)
    out = processor.final(encode(candles[0]), candles[0].key, state)
    assert [dest for dest, _ in out] == ["features"]
    cases = {
        "invalid_candle": (b'{"exchange": "kraken"}', candles[0].key),
        "key_mismatch": (encode(candles[1]), "kraken:ETH/USD:1m"),
        "stale_candle": (encode(candles[0]), candles[0].key),
    }
    for reason, (raw, key) in cases.items():
        [(dest, value)] = processor.final(raw, key, state)
        letter = decode_dead_letter(value)
        assert (dest, letter.reason, letter.service) == ("dlq", reason, "features")
    [(dest, _)] = processor.final(encode(candles[1]), candles[1].key, state)
    assert dest == "features"


def test_rows_are_the_candle_then_the_features_in_layout_order(settings_factory):
    """The encoded row is byte for byte the merged dict's JSON: warm-up nulls, gap fills, every column."""
    settings = settings_factory(partitions=1)
    config = settings.features
    engine = FeatureEngine(indicators_for(config, "1m"), config.candle_features)
    encoder = RowEncoder(engine.columns)
    twin = FeatureEngine(indicators_for(config, "1m"), config.candle_features)  # the same engine, by dict
    nulls = []
    for candle in key_candles("kraken", "BTC/USD", 120, 12):
        values, row = engine.update_values(candle), twin.update(candle)
        assert list(row) == engine.columns and list(row.values()) == values
        assert encoder(candle, values) == encode({**to_dict(candle), **row})
        nulls.append(values.count(None))
    assert nulls[0] > 0 and nulls[-1] < nulls[0]  # warm-up rows and filled rows were both encoded
    # A layout with a column named like a candle field: the feature value wins, as in the merged dict.
    clashing = RowEncoder(["close", "rsi_14"])
    candle = key_candles("kraken", "BTC/USD", 1, 13)[0]
    raw = clashing(candle, [None, 50.5])
    assert raw == encode({**to_dict(candle), "close": None, "rsi_14": 50.5})
    assert json.loads(raw)["close"] is None


def test_partial_rows_are_provisional_and_leave_the_state_alone(settings_factory):
    settings = settings_factory(partitions=1)
    processor, state = FeaturesProcessor(settings), DictState()
    candles = key_candles("kraken", "BTC/USD", 80, 10)
    assert processor.partial(encode(candles[0]), candles[0].key) == []  # no engine yet: skipped
    for candle in candles[:60]:
        processor.final(encode(candle), candle.key, state)
    before = json.dumps(state.data, sort_keys=True)
    [(dest, value)] = processor.partial(encode(candles[60]), candles[60].key)
    assert json.dumps(state.data, sort_keys=True) == before
    provisional = decode_features(value)
    assert dest == "features.partial" and provisional["provisional"] is True
    [(_, final)] = processor.final(encode(candles[60]), candles[60].key, state)
    final_row = json.loads(final)
    assert {k: v for k, v in provisional.items() if k != "provisional"} == final_row


def test_partial_rows_of_keys_taking_turns_are_each_their_own(settings_factory):
    """Provisional rows of several keys of one timeframe are computed in one spare engine: each
    row must still be its own key's, equal to the row the candle gets when it closes."""
    settings = settings_factory(partitions=1)
    processor = FeaturesProcessor(settings)
    series = {symbol: key_candles("kraken", symbol, 70, seed) for symbol, seed in (("BTC/USD", 3), ("ETH/USD", 4))}
    states = {symbol: DictState() for symbol in series}
    for k in range(70):
        provisional = {}
        for symbol, candles in series.items():
            if k >= 40:
                [(_, value)] = processor.partial(encode(candles[k]), candles[k].key)
                provisional[symbol] = decode_features(value)
        for symbol, candles in series.items():
            [(_, final)] = processor.final(encode(candles[k]), candles[k].key, states[symbol])
            if symbol in provisional:
                row = provisional[symbol]
                assert row.pop("provisional") is True
                assert row == json.loads(final), (symbol, k)


def test_engine_restored_from_the_store_when_the_cache_is_behind(settings_factory):
    """After an aborted transaction the store is the truth: a cache that ran ahead is not reused."""
    settings = settings_factory(partitions=1)
    processor, state = FeaturesProcessor(settings), DictState()
    candles = key_candles("kraken", "BTC/USD", 50, 11)
    for candle in candles[:30]:
        processor.final(encode(candle), candle.key, state)
    committed = json.loads(json.dumps(state.data))
    for candle in candles[30:40]:  # processed, then "aborted"
        processor.final(encode(candle), candle.key, state)
    state.data = committed
    replayed = [json.loads(processor.final(encode(c), c.key, state)[0][1]) for c in candles[30:50]]
    fresh, fresh_state = FeaturesProcessor(settings), DictState()
    reference = [json.loads(fresh.final(encode(c), c.key, fresh_state)[0][1]) for c in candles][30:50]
    assert replayed == reference


@pytest.mark.slow
def test_live_view_from_candles_partial(settings_factory, kafka_config, topic_factory, tmp_path):
    partial_topic = topic_factory("features-partial", 2)
    settings = settings_factory(partitions=2, topics={"features_partial": {"name": partial_topic, "partitions": 2}})
    candles = key_candles("kraken", "BTC/USD", 61, 21)
    finals, still_open = candles[:60], candles[60]
    proc = start_service("features", tmp_path / "candleflow.yaml", tmp_path / "service.log")
    try:
        produce(kafka_config, settings.topics.candles.name, [(c.key, encode(c)) for c in finals])
        rows = consume_all(kafka_config, settings.topics.features.name, expected=len(finals), timeout_s=90)
        assert len(rows) == len(finals), (tmp_path / "service.log").read_text(errors="replace")[-3000:]
        produce(kafka_config, settings.topics.candles_partial.name, [(still_open.key, encode(still_open))])
        live = consume_all(kafka_config, partial_topic, expected=1, timeout_s=60)
    finally:
        stop_process(proc)
    assert len(live) == 1
    row = decode_features(live[0].value())
    assert row.pop("provisional") is True
    engine = FeatureEngine(indicators_for(settings.features, "1m"), settings.features.candle_features)
    for candle in finals:
        engine.update(candle)
    expected = {**{f: getattr(still_open, f) for f in still_open.__struct_fields__}, **engine.update(still_open)}
    assert row == json.loads(json.dumps(expected))
