"""`candleflow backfill --via-kafka`: the same history through the real candles, features and sink services."""

from __future__ import annotations

import re
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from candleflow.cli import app
from candleflow.records import Trade, encode
from tests.backfill.parity import assert_rows_equal, stored_rows, streamed_rows
from tests.backfill.test_pipeline import synthetic_trades


@pytest.mark.slow
def test_via_kafka_stores_what_streaming_computes(backfill_config, kafka_config, tmp_path: Path) -> None:
    settings, config = backfill_config(kafka={"bootstrap_servers": kafka_config.bootstrap_servers},
                                       topics={"trades": {"name": "trades", "partitions": 2}},
                                       candles={"timeframes": ["1m", "5m"], "grace_ms": 0})
    trades = synthetic_trades(1_500, [("kraken", "BTC/USD"), ("binance", "ETH/USDT")], seed=8)
    source = tmp_path / "trades.jsonl"
    source.write_text("\n".join(encode(Trade(recv_ms=0, **row)).decode() for row in trades.to_dicts()) + "\n")

    result = CliRunner().invoke(app, ["--config", str(config), "backfill", "--from-file", str(source),
                                      "--via-kafka"])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0, output
    assert "3,000 trades" in output

    stored = stored_rows(settings)
    streamed = streamed_rows(trades, ["1m", "5m"], settings)
    # The services also close the windows after a market's last trade up to the end tick (the
    # end of the newest trade's 5m window): gap fills, as live streaming would emit them.
    last_trade = dict(trades.group_by("exchange", "symbol").agg(pl.col("ts_ms").max())
                      .select(pl.concat_str("exchange", "symbol"), "ts_ms").iter_rows())
    extra = [row for identity, row in stored.items() if identity not in streamed]
    assert all(row["gap_fill"] and row["start_ms"] > last_trade[row["exchange"] + row["symbol"]] for row in extra)
    assert_rows_equal({i: r for i, r in stored.items() if i in streamed}, streamed, settings)
    # The run's own topics are gone afterwards.
    from candleflow.broker.topics import admin_client

    run_id = re.search(r"via Kafka \(run ([0-9a-f]+)\)", output).group(1)
    deadline = time.monotonic() + 60
    while True:  # deletion spreads through the cluster's metadata asynchronously
        left = [name for name in admin_client(settings.kafka).list_topics(timeout=10).topics if run_id in name]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == []
