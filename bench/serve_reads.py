"""Online reads on loopback: Feast SDK and HTTP (`candleflow serve`), 1 and 50 markets per request.

The online store (SQLite, the default) holds the latest 1m row of 50 markets
(default indicator set). `candleflow serve` runs as its own process; a second
process keeps it busy with a steady stream of requests (2 threads) while this
process measures, one request at a time on a keep-alive connection:

- HTTP GET /v1/features/{exchange}/{symbol} (1 market) and POST /v1/features (50 markets);
- Feast SDK `FeatureStore.get_online_features` (1 and 50 entity rows), in process;
- candleflow's reader (`OnlineWriter.read`, what the API calls), in process.

Usage: python bench/serve_reads.py [--requests N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

MARKETS = [("binance", f"C{m}/USDT") for m in range(50)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill(settings) -> None:
    from candleflow.core.features import feature_columns
    from candleflow.store.base import online_writer

    columns = feature_columns(settings.features, "1m")
    rows = []
    for m, (exchange, symbol) in enumerate(MARKETS):
        close = 100.0 + m
        row = {"exchange": exchange, "symbol": symbol, "timeframe": "1m", "start_ms": 1_767_225_600_000,
               "end_ms": 1_767_225_660_000, "open": close, "high": close + 1, "low": close - 1, "close": close,
               "volume": 1.0, "quote_volume": close, "vwap": close, "trades": 3, "buy_volume": 0.5, "gap_fill": False}
        row.update({name: close + k for k, name in enumerate(columns)})
        rows.append(row)
    with online_writer(settings) as writer:
        writer.write(rows)


def background_load(base: str, stop_at: float) -> None:
    import threading

    import httpx

    def hammer(offset: int) -> None:
        with httpx.Client(base_url=base) as client:
            i = offset
            while time.time() < stop_at:
                exchange, symbol = MARKETS[i % len(MARKETS)]
                client.get(f"/v1/features/{exchange}/{symbol.replace('/', '-')}")
                i += 1

    threads = [threading.Thread(target=hammer, args=(k * 7,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3), "n": len(samples)}


def timed(fn, n: int) -> dict[str, float]:
    for _ in range(min(50, n)):  # warm-up
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    import httpx

    from candleflow.config import load_config
    from candleflow.store import repo
    from candleflow.store.base import MarketKey, online_writer

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-serve-"))
    port = free_port()
    data = {"data_dir": str(workdir), "candles": {"timeframes": ["1m"]},
            "store": {"repo_dir": str(workdir / "repo"), "offline_dir": str(workdir / "offline"),
                      "online": {"type": "sqlite", "path": str(workdir / "online.db")}},
            "serve": {"port": port}, "log": {"level": "WARNING", "format": "json"}}
    config_file = workdir / "candleflow.yaml"
    config_file.write_text(yaml.safe_dump(data))
    settings = load_config(config_file)
    fill(settings)
    server = subprocess.Popen([sys.executable, "-m", "candleflow", "--config", str(config_file), "serve"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    figures: dict = {"markets": len(MARKETS), "online_store": "sqlite", "background_load": "1 process, 2 threads"}
    loader = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("candleflow serve did not start")
            time.sleep(0.2)
        loader = multiprocessing.get_context("spawn").Process(target=background_load,
                                                              args=(base, time.time() + 3600))
        loader.start()
        time.sleep(1.0)
        n = args.requests
        body = {"timeframe": "1m", "markets": [{"exchange": e, "symbol": s} for e, s in MARKETS]}
        with httpx.Client(base_url=base) as client:
            figures["http_get_1_market"] = timed(lambda: client.get("/v1/features/binance/C7-USDT").raise_for_status(), n)
            figures["http_post_50_markets"] = timed(lambda: client.post("/v1/features", json=body).raise_for_status(),
                                                    n // 4)
        store = repo.open_store(settings)
        refs = [f"features_1m:{name}" for name in repo.view_schemas(settings)["1m"].columns]
        one = [{"market": "binance:C7/USDT"}]
        many = [{"market": f"{e}:{s}"} for e, s in MARKETS]
        figures["feast_sdk_1_market"] = timed(lambda: store.get_online_features(features=refs, entity_rows=one).to_dict(), n // 2)
        figures["feast_sdk_50_markets"] = timed(lambda: store.get_online_features(features=refs, entity_rows=many).to_dict(), n // 8)
        with online_writer(settings) as writer:
            keys = [MarketKey(e, s, "1m") for e, s in MARKETS]
            figures["reader_1_market"] = timed(lambda: writer.read(keys[7:8]), n)
            figures["reader_50_markets"] = timed(lambda: writer.read(keys), n // 4)
    finally:
        if loader is not None:
            loader.terminate()
            loader.join(10)
        server.terminate()
        server.wait(15)
        shutil.rmtree(workdir, ignore_errors=True)
    for name, value in figures.items():
        print(name, value)
    g, p = figures["http_get_1_market"], figures["http_post_50_markets"]
    f1, f50 = figures["feast_sdk_1_market"], figures["feast_sdk_50_markets"]
    summary = (f"Online reads on loopback, SQLite online store, {len(MARKETS)} markets x default indicator set, "
               f"`candleflow serve` under steady load from a second process (2 threads). HTTP GET one market: "
               f"p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms (target p99 <= 5 ms); HTTP POST 50 markets: p50 "
               f"{p['p50_ms']} ms, p99 {p['p99_ms']} ms. Feast SDK get_online_features: 1 market p50 {f1['p50_ms']} ms / "
               f"p99 {f1['p99_ms']} ms, 50 markets p50 {f50['p50_ms']} ms / p99 {f50['p99_ms']} ms. candleflow's "
               f"direct reader (what the API uses): 1 market p99 {figures['reader_1_market']['p99_ms']} ms, 50 markets "
               f"p99 {figures['reader_50_markets']['p99_ms']} ms. Shared 2-core machine (server, load generator and "
               f"client compete for the same cores; other suites were running), so tails are noisy.")
    write_results("serve_reads", figures, summary)


if __name__ == "__main__":
    main()
