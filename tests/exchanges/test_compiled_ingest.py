"""The compiled ingest hot path (setup.py: mypyc) gives exactly what its pure-Python source gives.

`make install` compiles ``candleflow.exchanges.fastpath`` in place; Python then imports
the extension instead of the ``.py`` file. The same random frames (Kraken v2 and Binance,
usual and unusual, valid and not), timestamps and number texts, then the trades through
de-duplication, gap-fill holds and publication, and through the replay loop, run in the
compiled build (this process) and in the pure-Python source (a copy of the package
without the extensions, in a subprocess): every outcome must be the same, bit for bit.
The staleness of the build is checked by tests/core/test_compiled.py.
"""

from __future__ import annotations

import functools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from candleflow.exchanges import binance, fastpath, kraken
from candleflow.exchanges.base import FrameError
from candleflow.exchanges.times import rfc3339_ms
from candleflow.records import Trade, decode_trade
from tests.fixtures.pure_python import pure_python_results

needs_compiled = pytest.mark.skipif(
    not fastpath.COMPILED, reason="the compiled ingest hot path is not built here (pure-Python install): "
                                   "nothing to compare; `make install` builds it")

_KRAKEN_SYMBOLS = ['"BTC/USD"', '"XBT/USD"', '"ETH/EUR"', '"XDG/USD"', '"BTCUSD"', '""', '"btc/usd"', '"A/B/C"', "1"]
_BINANCE_SYMBOLS = ['"BTCUSDT"', '"ETHBTC"', '"btcusdt"', '"BTCXYZ"', '"USDT"', '""', "1"]
_SIDES = ['"buy"', '"sell"', '"BUY"', '""', "true"]
_TIMES = ["2023-09-25T07:49:37.708706Z", "2023-09-25T07:49:37.7Z", "2023-09-25T07:49:37.70Z",
          "2023-09-25T07:49:37.123456789Z", "2023-09-25T07:49:37.1234567890Z", "2023-09-25T07:49:37Z",
          "2023-09-25T07:49:60.5Z", "2023-09-25T07:49:61.5Z", "2023-09-25t07:49:37.708z", "2023-09-25 07:49:37.5Z",
          "2023-09-25T09:49:37.708+02:00", "2023-02-29T07:49:37.708Z", "2024-02-29T23:59:59.999Z",
          "2023-13-25T07:49:37.708Z", "2023-09-25T07:49:3x.708Z", "2023-09-25T07:49:37.7a8Z", "2023-09-25T07:4937.708Z",
          "2023-09-25T07:49:37.٣Z", "1970-01-01T00:00:00.000Z", "0000-01-01T00:00:00.5Z", "", "not a time"]


def random_time(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(_TIMES)
    seconds = rng.randrange(0, 4_000_000_000)  # several minutes repeat: the minute cache is exercised
    if rng.random() < 0.5:
        seconds = 1_700_000_000 + rng.randrange(0, 600)
    day = __import__("time").gmtime(seconds)
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9)))
    return f"{day.tm_year:04d}-{day.tm_mon:02d}-{day.tm_mday:02d}T{day.tm_hour:02d}:{day.tm_min:02d}:{day.tm_sec:02d}.{digits}Z"


def random_number_text(rng: random.Random) -> str:
    """Decimal text as venues send it, and texts float() reads that are not numbers to a venue."""
    choice = rng.random()
    if choice < 0.5:
        return f"{rng.uniform(0, 1e5):.{rng.randint(0, 10)}f}"
    if choice < 0.6:
        return repr(rng.uniform(-1e3, 1e3) * 10.0 ** rng.randint(-30, 30))
    return rng.choice(["0", "-1", "1e5", "1E-3", "1.5e+3", "1.", ".5", "1_000", " 1", "1\n", "nan", "inf", "-0.0",
                       "1e400", "0x10", "", "-", "1e", "1.5.5", "١٢", "+1", "00012.50"])


def random_json_number(rng: random.Random) -> str:
    """A JSON value for Kraken's price/qty: mostly number literals."""
    choice = rng.random()
    if choice < 0.6:
        return repr(rng.uniform(0, 1e5))
    if choice < 0.7:
        return str(rng.randint(-3, 10**6))
    return rng.choice(["0", "-1.5", "1e5", "1.5E-3", "1e400", "-0.0", '"1.5"', "null", "true", "123456789012345678901"])


def kraken_frame(rng: random.Random) -> bytes:
    entries = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        fields = {"symbol": rng.choice(_KRAKEN_SYMBOLS) if rng.random() < 0.3 else '"BTC/USD"',
                  "side": rng.choice(_SIDES) if rng.random() < 0.2 else rng.choice(['"buy"', '"sell"']),
                  "price": random_json_number(rng), "qty": random_json_number(rng), "ord_type": '"limit"',
                  "trade_id": rng.choice([str(rng.randrange(10**12)), f'"{rng.randrange(99)}"', '""', "1.5", "null"])
                  if rng.random() < 0.2 else str(rng.randrange(50)),
                  "timestamp": json.dumps(random_time(rng))}
        if rng.random() < 0.05:
            del fields[rng.choice(list(fields))]
        entries.append("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}")
    kind = rng.choice(['"update"', '"snapshot"', '"other"', "null"])
    frame = f'{{"channel":"trade","type":{kind},"data":[{",".join(entries)}]}}'
    unusual = rng.random()
    if unusual < 0.03:
        frame = frame.replace('"data":[', '"method":"subscribe","data":[')
    elif unusual < 0.06:
        frame = frame[:-1]  # not JSON
    elif unusual < 0.08:
        frame = frame.replace('"data":[', '"data":{"x":[') + "}"
    elif unusual < 0.1:
        frame = rng.choice(['{"channel":"heartbeat"}', '{"channel":"trade","type":"update"}', '{"method":"pong"}'])
    return frame.encode()


def binance_frame(rng: random.Random) -> bytes:
    fields = {"e": '"trade"', "E": str(rng.randrange(2 * 10**12)),
              "s": rng.choice(_BINANCE_SYMBOLS) if rng.random() < 0.3 else '"BTCUSDT"',
              "t": rng.choice([f'"{rng.randrange(99)}"', '""', "-1", "null"]) if rng.random() < 0.1
              else str(rng.randrange(50)),
              "p": json.dumps(random_number_text(rng)), "q": json.dumps(random_number_text(rng)),
              "T": rng.choice(['"1700000000000"', "-1", "1.5", "null"]) if rng.random() < 0.1
              else str(rng.randrange(2 * 10**12)),
              "m": rng.choice(["true", "false", "1", "null"]) if rng.random() < 0.1 else rng.choice(["true", "false"]),
              "M": "true"}
    if rng.random() < 0.05:
        del fields[rng.choice(list(fields))]
    frame = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    if rng.random() < 0.05:
        frame = frame[:-2]
    return frame.encode()


def _trade(trade: Trade) -> list[object]:
    return [trade.exchange, trade.symbol, trade.trade_id, trade.price.hex(), trade.qty.hex(), trade.side, trade.ts_ms,
            trade.recv_ms]


def _parsed(result: object) -> list[object]:
    return [[_trade(t) for t in result.trades], result.snapshot, [[e.reason, e.detail, e.raw.hex()] for e in result.errors],
            [[c.kind, c.detail] for c in result.control]]


def _fast(trades: list[Trade] | None) -> object:
    return None if trades is None else [_trade(t) for t in trades]


def _or_error(function, *args) -> object:
    try:
        return function(*args)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"


def parsing(seed: int, n: int) -> list[object]:
    """Frames through parse_frame and fast_trades; timestamps and number texts through their parsers."""
    rng = random.Random(seed)
    out: list[object] = []
    for _ in range(n):
        adapter, frame = (kraken, kraken_frame(rng)) if rng.random() < 0.5 else (binance, binance_frame(rng))
        out.append([adapter.NAME, _parsed(adapter.parse_frame(frame, 7)), _fast(adapter.fast_trades(frame, 7))])
        text = random_time(rng)
        out.append([text, _or_error(rfc3339_ms, text), fastpath.utc_ms(text)])
        number = random_number_text(rng)
        out.append([number, fastpath.is_plain_number(number), fastpath.decimal_value(number).hex()])
    return out


def _encoded(trades: list[Trade]) -> list[tuple[str, str, int, bytes]]:
    """Trades as the native parsers give them (the value here: the test's encoding, repr)."""
    return [(t.symbol, t.trade_id, t.ts_ms, repr(t).encode()) for t in trades]


def flowing(seed: int, n: int) -> list[object]:
    """Random trades through TradeFlow (counts, de-duplication, holds, recovery; as Trades and as
    encoded trades) and TradeProducer."""
    rng = random.Random(seed)
    produced: list[object] = []
    recovered: list[object] = []

    def produce(topic: str, value: bytes, key: bytes) -> None:
        if rng.random() < 0.02:  # the local queue is full: the producer's slower path takes it
            raise BufferError
        produced.append([topic, value.decode(), key.decode()])

    def produce_when_full(topic: str, key: bytes, value: bytes) -> None:
        produced.append(["when full", topic, value.decode(), key.decode()])

    delays: list[float] = []
    producer = fastpath.TradeProducer("trades", produce, produce_when_full, lambda t: repr(t).encode(), delays.append)
    decoded: dict[bytes, Trade] = {}  # the held encoded trades come back through the flow's decode
    flow = fastpath.TradeFlow(producer, fastpath.TradeDedup(rng.choice([1, 5, 50])),
                              lambda exchange, symbol: recovered.append([exchange, symbol]), decoded.__getitem__)
    out: list[object] = []
    for _ in range(n):
        encoded = rng.random() < 0.3  # one exchange's frame from a native parser
        one_exchange = rng.choice(["kraken", "binance"])
        trades = [Trade(exchange=one_exchange if encoded else rng.choice(["kraken", "binance"]),
                        symbol=rng.choice(["BTC/USD", "ETH/USD"]), trade_id=str(rng.randrange(60)),
                        price=rng.uniform(1, 9), qty=1.0, side="buy", ts_ms=rng.randrange(100), recv_ms=1)
                  for _ in range(rng.randint(0, 4))]
        action = rng.random()
        if action < 0.05:
            state = flow.state(rng.choice(["kraken", "binance"]), "BTC/USD")
            state.filling = not state.filling
            if not state.filling:
                out.append(["released", flow.accept(state.held, False, True)])
                state.held = []
        if encoded:
            decoded.update((repr(t).encode(), t) for t in trades)
            out.append(["encoded", flow.accept_encoded(one_exchange, _encoded(trades)), flow.received, flow.published,
                        producer.produced])
        else:
            recovered_now, counted = rng.random() < 0.1, rng.random() < 0.1
            out.append([flow.accept(trades, recovered_now, counted), flow.received, flow.published, producer.produced])
        if rng.random() < 0.1:
            out.append(["counts", sorted([list(key), s.received, s.published] for key, s in flow.states.items()),
                        sorted(flow.duplicate_counts.items())])
            for s in flow.states.values():
                s.received = s.published = 0
            flow.duplicate_counts = {}
    out.append(sorted([list(key), s.kafka_key.decode(), s.last_ts_ms, s.filling, [repr(t) for t in s.held],
                       s.received, s.published] for key, s in flow.states.items()))
    out += [produced, recovered, len(delays), len(flow.dedup), flow.dedup.duplicates]
    return out


def replaying(seed: int, n: int, encoded: bool = False) -> list[object]:
    """Recorded frames through the replay loop (fastpath.replay_frames), with the recorded receive times;
    `encoded`: with fast paths that give encoded trades, as the native parsers do."""
    rng = random.Random(seed)
    frames: list[object] = []
    for k in range(n):
        kind = rng.random()
        if kind < 0.03:
            frames.append(FrameError("invalid_recording", f"line {k}", b"x"))
        elif kind < 0.05:
            frames.append(fastpath.RecordedFrame("nowhere", k, b"{}"))
        else:
            exchange, frame = ("kraken", kraken_frame(rng)) if rng.random() < 0.5 else ("binance", binance_frame(rng))
            frames.append(fastpath.RecordedFrame(exchange, k, frame))
    events: list[object] = []
    fast_paths: dict[str, object] = {}

    def add_exchange(frame: fastpath.RecordedFrame) -> bool:
        events.append(["new exchange", frame.exchange])
        if frame.exchange == "nowhere":
            return False
        fast_trades = {"kraken": kraken, "binance": binance}[frame.exchange].fast_trades
        fast_paths[frame.exchange] = (lambda raw, recv_ms: None if (trades := fast_trades(raw, recv_ms)) is None
                                      else _encoded(trades)) if encoded else fast_trades
        return True

    producer = fastpath.TradeProducer("trades", lambda topic, value, key: events.append(["produce", key.decode()]),
                                      lambda topic, key, value: None, lambda t: repr(t).encode(), lambda s: None)
    flow = fastpath.TradeFlow(producer, fastpath.TradeDedup(30), lambda exchange, symbol: None, decode_trade)
    count = fastpath.replay_frames(
        frames, flow, fast_paths, encoded, add_exchange,
        lambda exchange, raw, recv_ms: events.append(["general path", exchange, raw.decode("utf-8", "replace"), recv_ms]),
        lambda error: events.append(["dead letter", error.detail]),
        lambda recorded_ms: events.append(["pace", recorded_ms]),
        lambda: events.append(["poll"]), None, False)
    return [count, flow.received, flow.published, events]


CASES = [("parsing", 1, 3_000), ("parsing", 2, 3_000), ("flowing", 3, 2_000), ("flowing", 4, 500),
         ("replaying", 5, 2_500), ("replaying encoded", 6, 2_500)]


def outcome(kind: str, seed: int, n: int) -> str:
    cases = {"parsing": parsing, "flowing": flowing, "replaying": replaying,
             "replaying encoded": functools.partial(replaying, encoded=True)}
    return json.dumps(cases[kind](seed, n))


@needs_compiled
def test_the_compiled_ingest_path_matches_the_pure_python_source(tmp_path):
    assert not fastpath.__file__.endswith(".py")
    compiled = [outcome(*case) for case in CASES]
    pure = pure_python_results(tmp_path, __name__, "outcome", [fastpath.__name__])
    for case, mine, theirs in zip(CASES, compiled, pure, strict=True):
        if mine != theirs:
            entries = zip(json.loads(mine), json.loads(theirs), strict=True)
            k, (got, expected) = next((k, pair) for k, pair in enumerate(entries) if pair[0] != pair[1])
            pytest.fail(f"{case}: entry {k} differs: compiled {str(got)[:600]} != pure {str(expected)[:600]}")


def test_the_random_frames_reach_both_paths_and_every_outcome():
    # The comparison above means little unless the frames exercise the fast path, the general
    # path, errors and control frames, and the helpers' accepting and rejecting branches.
    entries = parsing(1, 3_000)
    frames, times, numbers = entries[0::3], entries[1::3], entries[2::3]
    fast = [e for e in frames if e[2] is not None]
    general_trades = [e for e in frames if e[2] is None and e[1][0]]
    assert {e[0] for e in fast} == {"kraken", "binance"} and len(fast) > 500 and len(general_trades) > 20
    assert any(e[1][2] for e in frames) and any(e[1][3] for e in frames)  # errors, control frames
    assert any(t[2] >= 0 for t in times) and any(t[2] < 0 and isinstance(t[1], int) for t in times)
    assert any(isinstance(t[1], str) for t in times)
    assert {n[1] for n in numbers} == {True, False}
    flow = flowing(3, 2_000)
    assert any(isinstance(e, list) and e and e[0] == "released" for e in flow) and flow[-4] and flow[-1] > 0


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=10**17), st.integers(min_value=0, max_value=25), st.integers(0, 3))
def test_decimal_text_is_read_as_float_reads_it(digits, scale, zeros):
    # Binance's prices and quantities: decimal_value takes the exact path where it can, float() elsewhere.
    text = str(digits).rjust(scale + 1, "0")
    text = (f"{text[:-scale]}.{text[-scale:]}" if scale else text) + "0" * zeros * (scale > 0)
    value = fastpath.decimal_value(text)
    assert value == -1.0 or value.hex() == float(text).hex()
    assert fastpath._positive_number(text).hex() == float(text).hex()
