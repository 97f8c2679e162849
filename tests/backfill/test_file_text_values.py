"""Text columns of trade files are normalised once per distinct value: values first seen late count too."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from candleflow import tradefiles
from candleflow.tradefiles import read_trades


@pytest.mark.parametrize("sample", [10_000, 3])
def test_every_spelling_of_a_side_and_venue_is_normalised_wherever_it_first_appears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: int) -> None:
    monkeypatch.setattr(tradefiles, "_DISTINCT_SAMPLE", sample)
    sides = ["buy", "sell"] * 5 + ["B", "s", "SELL", "Buy", "bid", None]  # neither "bid" nor a missing side is valid
    exchanges = ["kraken"] * 10 + ["Kraken", "KRAKEN", "kraken", "Kraken", "kraken", "kraken"]
    n = len(sides)
    frame = pl.DataFrame({"exchange": exchanges, "symbol": ["BTC/USD"] * n, "trade_id": [str(i) for i in range(n)],
                          "price": [100.0 + i for i in range(n)], "qty": [1.0] * n, "side": sides,
                          "ts_ms": [1_700_000_000_000 + i for i in range(n)]})
    path = tmp_path / "trades.parquet"
    frame.write_parquet(path)

    result = read_trades(path)

    valid = [i for i, side in enumerate(sides) if side is not None and side.lower() in ("buy", "b", "sell", "s")]
    assert result.trades["trade_id"].to_list() == [str(i) for i in valid]
    assert result.trades["exchange"].to_list() == ["kraken"] * len(valid)
    assert result.trades["side"].to_list() == [
        {"b": "buy", "s": "sell"}.get(sides[i].lower(), sides[i].lower()) for i in valid]
    assert result.trades["is_buy"].to_list() == [sides[i].lower() in ("buy", "b") for i in valid]
    assert result.bad_by_reason == {"invalid_side": 2}
