"""The HTTP API on a real Feast online store (SQLite) and a real Parquet dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from candleflow.config import load_config
from candleflow.records import CANDLE_FIELDS
from candleflow.serve import create_app
from candleflow.store import repo
from candleflow.store.base import online_writer
from candleflow.store.offline import OfflineDataset
from tests.store.rows import features_row, store_overrides


@pytest.fixture
def filled(tmp_path: Path):
    settings = load_config(None, {**store_overrides(tmp_path, "sqlite"), "candles": {"timeframes": ["1m", "5m"]}})
    rows = {m: [features_row(settings, m[0], m[1], "1m", i) for i in range(30)]
            for m in (("kraken", "BTC/USD"), ("binance", "ETH/USDT"))}
    columns = {tf: list(s.feature_columns) for tf, s in repo.view_schemas(settings).items()}
    with online_writer(settings) as writer:
        for market_rows in rows.values():
            writer.write(market_rows)
            OfflineDataset(settings.store.offline_dir).append(market_rows, columns)
    with TestClient(create_app(settings)) as client:
        yield client, rows


@pytest.mark.parametrize("path_symbol", ["BTC-USD", "btc-usd", "BTC%2FUSD", "BTC/USD"])
def test_latest_features_of_a_market(filled, path_symbol: str) -> None:
    client, rows = filled
    response = client.get(f"/v1/features/kraken/{path_symbol}", params={"timeframe": "1m"})
    assert response.status_code == 200, response.text
    assert response.json() == rows[("kraken", "BTC/USD")][-1]


def test_unknown_market_is_a_404_naming_it(filled) -> None:
    client, _ = filled
    response = client.get("/v1/features/kraken/DOGE-USD")
    assert response.status_code == 404
    assert "kraken:DOGE/USD" in response.json()["detail"]
    assert "kraken:BTC/USD at timeframe 5m" in client.get("/v1/features/kraken/BTC-USD?timeframe=5m").json()["detail"]


@pytest.mark.parametrize("url", ["/v1/features/kraken/BTC-USD?timeframe=7m", "/v1/features/kraken/BTCUSD",
                                 "/v1/features/Kraken/BTC-USD", "/v1/candles/kraken/BTC-USD?limit=0",
                                 "/v1/candles/kraken/BTC-USD?limit=abc"])
def test_bad_parameters_are_422(filled, url: str) -> None:
    client, _ = filled
    assert client.get(url).status_code == 422


def test_many_markets_at_once(filled) -> None:
    client, rows = filled
    body = {"timeframe": "1m", "markets": [{"exchange": "binance", "symbol": "ETH/USDT"},
                                           {"exchange": "kraken", "symbol": "SOL-USD"},
                                           {"exchange": "kraken", "symbol": "BTC-USD"}]}
    response = client.post("/v1/features", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["rows"] == [rows[("binance", "ETH/USDT")][-1], None, rows[("kraken", "BTC/USD")][-1]]
    assert data["missing"] == ["kraken:SOL/USD"]
    assert client.post("/v1/features", json={"markets": []}).status_code == 422


def test_recent_candles_oldest_first_limited(filled) -> None:
    client, rows = filled
    response = client.get("/v1/candles/kraken/BTC-USD", params={"timeframe": "1m", "limit": 5})
    assert response.status_code == 200, response.text
    candles = response.json()["candles"]
    assert candles == [{k: r[k] for k in CANDLE_FIELDS} for r in rows[("kraken", "BTC/USD")][-5:]]
    assert client.get("/v1/candles/okx/BTC-USDT").status_code == 404


def test_health_metrics_and_openapi(filled) -> None:
    client, _ = filled
    assert client.get("/healthz").json()["status"] == "ok"
    client.get("/v1/features/kraken/BTC-USD")
    metrics = client.get("/metrics").text
    assert 'candleflow_serve_request_seconds_count{route="/v1/features/{exchange}/{symbol:path}",status="200"}' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/features", "/v1/features/{exchange}/{symbol}", "/v1/candles/{exchange}/{symbol}", "/healthz"} <= set(paths)
