"""`candleflow parse --exchange NAME`: frames on stdin, Trade JSON lines on stdout, problems on stderr."""

import json
import subprocess
import sys

from .fixtures import fixture


def run_parse(exchange: str, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "candleflow", "parse", "--exchange", exchange], input=stdin,
                          capture_output=True, timeout=60)


def test_kraken_frames_to_trade_lines():
    lines = [fixture("kraken", "ws_subscribe_ack.json"), fixture("kraken", "ws_heartbeat.json"),
             fixture("kraken", "ws_trade_snapshot.json"), b"{not json", b"",
             fixture("kraken", "ws_trade_malformed_price.json")]
    result = run_parse("kraken", b"\n".join(lines) + b"\n")
    assert result.returncode == 0
    trades = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["trade_id"] for t in trades] == ["4665846", "4665847", "2"]
    assert trades[0] == {**trades[0], "exchange": "kraken", "symbol": "MATIC/USD", "price": 0.5147,
                         "qty": 6423.46326, "side": "buy", "ts_ms": 1695628116925}
    errors = result.stderr.decode().splitlines()
    assert errors[0].startswith("line 4: invalid_json:") and errors[1].startswith("line 6: invalid_price:")
    assert len(errors) == 2


def test_binance_and_unknown_exchange():
    result = run_parse("binance", fixture("binance", "ws_trade_combined.json") + b"\n")
    assert result.returncode == 0 and json.loads(result.stdout)["symbol"] == "BTC/USDT"
    assert run_parse("nowhere", b"").returncode == 2
