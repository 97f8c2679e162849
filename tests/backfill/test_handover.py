"""Hand-over: the engine state at the end of a backfill continues live exactly like streaming all history."""

from __future__ import annotations

import math

import msgspec
import polars as pl

from candleflow.backfill import pipeline
from candleflow.backfill.handover import engine_states, load_state, save_states
from candleflow.config import Settings
from candleflow.core.features import feature_columns
from candleflow.records import CANDLE_FIELDS, candle_from_dict, encode
from candleflow.services.features import FEATURES, FeaturesProcessor, decode_state, encode_state
from tests.backfill.test_pipeline import SINCE_MS, synthetic_trades


class DictState:
    """What the Quix state store keeps for one message key (values round-trip through its JSON dumps)."""

    def __init__(self, entries: dict) -> None:
        self.data = {k: decode_state(encode_state(v)) for k, v in entries.items()}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        self.data[key] = decode_state(encode_state(value))


def test_live_service_seeded_with_the_backfill_state_equals_batch_over_all_history(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    trades = synthetic_trades(4_000, [("kraken", "BTC/USD")], seed=21)
    full, _ = pipeline.compute(trades, ["1m"], settings, since_ms=SINCE_MS)  # the whole history, batch
    boundary = int(full["start_ms"][len(full) * 3 // 4])
    backfilled = full.filter(pl.col("start_ms") < boundary)
    live = full.filter(pl.col("start_ms") >= boundary)

    save_states(engine_states(backfilled, settings), tmp_path)
    state = load_state(tmp_path, "kraken", "BTC/USD", "1m")
    assert state is not None and state.last_start_ms == boundary - 60_000 and state.count == backfilled.height

    processor = FeaturesProcessor(settings)
    store = DictState({})  # a key the live service has never seen: it seeds itself from the saved state
    key = "kraken:BTC/USD:1m"
    # The overlap fetched twice on purpose: the boundary candle comes again and is refused, not duplicated.
    last_backfilled = candle_from_dict({c: backfilled[c][-1] for c in CANDLE_FIELDS})
    replayed = processor.final(encode(last_backfilled), key, store)
    assert [destination for destination, _ in replayed] == ["dlq"]
    assert b"stale_candle" in replayed[0][1]

    columns = feature_columns(settings.features, "1m")
    for expected in live.iter_rows(named=True):
        candle = candle_from_dict({c: expected[c] for c in CANDLE_FIELDS})
        [(destination, raw)] = processor.final(encode(candle), key, store)
        assert destination == FEATURES
        row = msgspec.json.decode(raw)
        for name in columns:
            a, e = row[name], expected[name]
            if e is None or a is None:
                assert a is None and e is None, (candle.start_ms, name, a, e)
            else:
                assert math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-9), (candle.start_ms, name, a, e)
    assert live.height > 100  # enough live candles for the long-memory indicators to matter


def test_a_hand_over_state_of_another_indicator_configuration_is_ignored(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    trades = synthetic_trades(1_500, [("kraken", "BTC/USD")], seed=3)
    full, _ = pipeline.compute(trades, ["1m"], settings, since_ms=SINCE_MS)
    save_states(engine_states(full, settings), tmp_path)

    other = Settings(data_dir=tmp_path, features={"indicators": [{"function": "RSI", "params": {"timeperiod": 5}}]})
    processor = FeaturesProcessor(other)
    last = candle_from_dict({c: full[c][-1] for c in CANDLE_FIELDS})
    [(destination, raw)] = processor.final(encode(last), "kraken:BTC/USD:1m", DictState({}))
    assert destination == FEATURES  # not refused as stale: the saved state was not used
    assert msgspec.json.decode(raw)["rsi_5"] is None  # a fresh engine is still warming up
