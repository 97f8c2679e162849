"""market_rows: every way of finding the rows of each market gives the rows a plain Python grouping gives."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from candleflow.core import candles_batch
from candleflow.core.candles_batch import market_rows, market_values

MARKETS = [("kraken", "BTC/USD"), ("binance", "BTC/USDT"), ("kraken", "ETH/USD"), ("binance", "ETH/USDT")]


def expected_rows(frame: pl.DataFrame) -> dict[tuple[str, str], list[int]]:
    rows: dict[tuple[str, str], list[int]] = {}
    for index, market in enumerate(frame.select("exchange", "symbol").iter_rows()):
        rows.setdefault(market, []).append(index)
    return rows


def found_rows(frame: pl.DataFrame) -> dict[tuple[str, str], list[int]]:
    found = {}
    for market, rows in market_rows(frame):
        assert market not in found, f"{market} listed twice"
        found[market] = np.arange(frame.height)[rows].tolist()
    return found


def interleaved(n: int, markets: list[tuple[str, str]], seed: int = 3) -> pl.DataFrame:
    rng = random.Random(seed)
    return pl.DataFrame([rng.choice(markets) for _ in range(n)], schema=["exchange", "symbol"], orient="row")


def in_runs(markets: list[tuple[str, str]], run: int) -> pl.DataFrame:
    """One run of rows per market and then the first market again (a market in two runs)."""
    return pl.DataFrame([m for m in [*markets, markets[0]] for _ in range(run)], schema=["exchange", "symbol"],
                        orient="row")


@pytest.mark.parametrize("frame", [
    interleaved(2_000, MARKETS),  # compared with each market found in the first rows
    interleaved(2_000, [("kraken", "BTC/USD"), ("kraken", "ETH/USD")]),  # one exchange: only symbols compared
    interleaved(2_000, [("kraken", "BTC/USD"), ("binance", "BTC/USD")]),  # one symbol: only exchanges compared
    in_runs(MARKETS, 50),
    in_runs([("kraken", "BTC/USD")], 50),  # one market
    interleaved(1, MARKETS),
], ids=["interleaved", "one-exchange", "one-symbol", "runs", "one-market", "one-row"])
def test_each_market_gets_its_rows_in_input_order(frame: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = expected_rows(frame)
    assert found_rows(frame) == expected
    # The markets of the first rows are not all of them: grouped by codes instead (runs, or positions) ...
    monkeypatch.setattr(candles_batch, "_SAMPLE_ROWS", 1)
    assert found_rows(frame) == expected
    monkeypatch.setattr(candles_batch, "_MAX_RUNS", 0)
    assert found_rows(frame) == expected
    # ... and with many markets, by one stable sort of the codes.
    monkeypatch.setattr(candles_batch, "_MAX_SCANNED_MARKETS", 0)
    assert found_rows(frame) == expected


def test_a_market_first_seen_after_the_sample_is_not_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pl.concat([interleaved(500, MARKETS[:2]), interleaved(500, MARKETS, seed=4)])
    monkeypatch.setattr(candles_batch, "_SAMPLE_ROWS", 100)
    assert found_rows(frame) == expected_rows(frame)


def test_rows_without_a_market_value_form_their_own_group() -> None:
    frame = pl.DataFrame({"exchange": ["kraken", None, "kraken", "kraken", None],
                          "symbol": ["BTC/USD", "BTC/USD", "ETH/USD", "BTC/USD", "BTC/USD"]})
    assert found_rows(frame) == expected_rows(frame)


def test_market_values_gathers_from_every_chunk() -> None:
    column = pl.concat([pl.Series("x", [1.5, 2.5]), pl.Series("x", [3.5]), pl.Series("x", [4.5, 5.5])], rechunk=False)
    assert column.n_chunks() == 3
    whole = column.to_numpy()
    for rows in (slice(1, 4), slice(0, 5), slice(2, 2), np.array([4, 0, 2]), np.array([], dtype=np.int64)):
        assert market_values(column, rows).tolist() == whole[rows].tolist()
