"""The Rust parsers of ingest's replay (native/: ``candleflow.exchanges._native``) give what parse_frame gives.

For any frame, a native parser either answers None (the frame then takes the adapter's
parse_frame) or the very trades parse_frame finds in it, with no error beside them, each as
``(symbol, trade_id, ts_ms, value)`` where `value` is byte for byte ``records.encode`` of the
Trade. Checked here on random usual and malformed frames (the generators of
test_compiled_ingest), on hypothesis-mutated frames and bytes, on every float the encoder
may write and on timestamps across the calendar.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from candleflow.exchanges import binance, kraken
from candleflow.exchanges.native import NATIVE
from candleflow.exchanges.times import rfc3339_ms
from candleflow.records import Trade, encode
from tests.exchanges.test_compiled_ingest import binance_frame, kraken_frame, random_time

ROOT = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(NATIVE is None, reason="the Rust frame parser is not built here (no cargo at "
                                                         "install time): nothing to check; `make install` builds it")
ADAPTERS = {"kraken": kraken, "binance": binance}


def expected(adapter: object, frame: bytes, recv_ms: int) -> list[tuple[str, str, int, bytes]] | None:
    """What a native parser may answer for `frame` besides None: parse_frame's trades, encoded."""
    result = adapter.parse_frame(frame, recv_ms)
    if result.errors or result.control:
        return None
    return [(t.symbol, t.trade_id, t.ts_ms, encode(t)) for t in result.trades]


def check(name: str, frame: bytes, recv_ms: int = 1_700_000_000_123) -> bool:
    """Asserts the native answer for `frame` is None or parse_frame's; True when it took the frame."""
    adapter = ADAPTERS[name]
    got = adapter.encoded_trades(frame, recv_ms)
    if got is None:
        return False
    assert got == expected(adapter, frame, recv_ms), frame
    return True


def test_the_native_parser_is_built_wherever_cargo_is():
    # setup.py skips the Rust build quietly when it fails: CI (which has cargo) must not lose it unseen.
    if shutil.which("cargo") is None:
        pytest.skip("no cargo here: the native parser is optional")
    assert NATIVE is not None, "cargo is installed but candleflow.exchanges._native is not built: see `make install`"


@needs_native
def test_the_native_build_is_not_older_than_its_sources():
    built = Path(NATIVE.__file__).stat().st_mtime
    for source in [ROOT / "native" / "Cargo.toml", ROOT / "native" / "Cargo.lock", *(ROOT / "native" / "src").glob("*.rs")]:
        assert built >= source.stat().st_mtime, f"the native build is older than {source.name}: run `make install`"


@needs_native
@pytest.mark.parametrize("name", ["kraken", "binance"])
def test_random_frames_give_what_parse_frame_gives(name):
    rng = random.Random(11)
    generate = kraken_frame if name == "kraken" else binance_frame
    taken = total = 0
    for _ in range(6_000):
        frame = generate(rng)
        taken += check(name, frame)
        usual = ADAPTERS[name].fast_trades(frame, 1) is not None
        total += usual
    # The comparison means little unless most usual frames take the native path.
    assert taken > 0.9 * total > 1_000, (taken, total)


@needs_native
def test_the_usual_frames_are_taken():
    assert check("kraken", b'{"channel":"trade","type":"update","data":[{"symbol":"XBT/USD","side":"sell",'
                           b'"price":4000.1,"qty":0.5,"ord_type":"market","trade_id":7,'
                           b'"timestamp":"2023-09-25T07:49:37.708706Z"},{"symbol":"ETH/USD","side":"buy","price":1e3,'
                           b'"qty":2,"ord_type":"limit","trade_id":"8","timestamp":"2024-02-29T23:59:59.9Z"}]}')
    assert check("kraken", b'{"channel":"trade","type":"snapshot","data":[]}')
    assert check("binance", b'{"e":"trade","E":1,"s":"BTCUSDT","t":12,"p":"0.001","q":"100","T":1672515782136,'
                            b'"m":true,"M":true}')
    [(symbol, trade_id, ts_ms, value)] = binance.encoded_trades(
        b'{"e":"trade","E":1,"s":"ETHBTC","t":9,"p":"0.06","q":"1.5","T":1672515782136,"m":false,"M":true}', 5)
    assert (symbol, trade_id, ts_ms) == ("ETH/BTC", "9", 1672515782136)
    assert json.loads(value) == {"exchange": "binance", "symbol": "ETH/BTC", "trade_id": "9", "price": 0.06,
                                 "qty": 1.5, "side": "buy", "ts_ms": 1672515782136, "recv_ms": 5}


def kraken_usual(before: str = "", **entry: str) -> bytes:
    """Kraken's usual trade message in its template; `entry` replaces fields by JSON text."""
    fields = {"symbol": '"BTC/USD"', "side": '"buy"', "price": "4000.1", "qty": "0.5", "ord_type": '"limit"',
              "trade_id": "7", "timestamp": '"2023-09-25T07:49:37.708706Z"', **entry}
    data = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    return f'{{"channel":"trade",{before}"type":"update","data":[{data}]}}'.encode()


def binance_usual(**event: str) -> bytes:
    """Binance's usual trade event in its template; `event` replaces fields by JSON text."""
    fields = {"e": '"trade"', "E": "1672515782137", "s": '"BTCUSDT"', "t": "12", "p": '"0.001"', "q": '"100"',
              "T": "1672515782136", "m": "true", "M": "true", **event}
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


UNUSUAL = [  # each differs from the template in one place: the general path must read it
    kraken_usual(symbol='"BTC\\/USD"'),  # an escape
    kraken_usual(trade_id='"é1"'),  # not ASCII
    kraken_usual(before='"channel":"trade",'),  # a repeated field
    kraken_usual(before='"method":"subscribe",'),  # not in the template
    kraken_usual(ord_type="null"),  # a field of the wrong type
    kraken_usual(price="01"),  # not JSON
    kraken_usual(price="1.5 "),  # a space
    kraken_usual(trade_id="18446744073709551616"),  # beyond 64 bits
    kraken_usual(trade_id="-3"),
    kraken_usual(trade_id='""'),
    kraken_usual(qty="1e400"),
    kraken_usual(qty="-0.5"),
    kraken_usual(side='"BUY"'),
    kraken_usual(timestamp='"2023-02-29T07:49:37.708Z"'),  # no such day
    kraken_usual(timestamp='"2023-09-25T07:49:60.708Z"'),  # a leap second
    kraken_usual(timestamp='"1969-12-31T23:59:59.999Z"'),
    kraken_usual(timestamp='"2023-09-25T07:49:37Z"'),  # no fraction
    kraken_usual(timestamp='"2023-09-25T09:49:37.708+02:00"'),
    kraken_usual(symbol='"BTCUSD"'),  # a symbol that does not map
    kraken_usual() + b" ",
    kraken_usual().replace(b'"ord_type":"limit",', b""),  # a field missing
    binance_usual(E="1.5"),
    binance_usual(T='"1672515782136"'),  # the time as text
    binance_usual(T="9223372036854775808"),
    binance_usual(p='"1.5\\n"'),
    binance_usual(p='" 1"'),
    binance_usual(p='"1e400"'),
    binance_usual(q='"0"'),
    binance_usual(m="1"),
    binance_usual(t='""'),
    binance_usual(M='"x"'),
    binance_usual(s='"BTCXYZ"'),
    binance_usual().replace(b',"M":true', b""),
]


@needs_native
def test_the_template_frames_are_taken():
    assert check("kraken", kraken_usual()) and check("binance", binance_usual())
    assert check("kraken", kraken_usual(trade_id='"a-1"', price="1e3", timestamp='"2024-02-29T23:59:59.9Z"'))
    assert check("binance", binance_usual(t='"x"', p='"1.5E+3"', m="false", M="null"))


@needs_native
@pytest.mark.parametrize("frame", UNUSUAL)
def test_unusual_frames_take_the_general_path(frame):
    name = "kraken" if frame.startswith(b'{"channel"') else "binance"
    assert ADAPTERS[name].encoded_trades(frame, 1) is None
    check(name, frame)


@needs_native
def test_only_bytes_are_read():
    frame = '{"e":"trade","E":1,"s":"BTCUSDT","t":12,"p":"1","q":"1","T":1,"m":true,"M":true}'
    assert binance.encoded_trades(frame, 1) is None and binance.encoded_trades(bytearray(frame.encode()), 1) is None
    assert binance.encoded_trades(frame.encode(), 1) is not None


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_give_what_parse_frame_gives(data):
    # One random edit of a usual frame: a byte replaced, inserted or removed, or a piece repeated.
    name = data.draw(st.sampled_from(["kraken", "binance"]))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    frame = bytearray(kraken_frame(rng) if name == "kraken" else binance_frame(rng))
    at = data.draw(st.integers(0, len(frame)))
    edit = data.draw(st.sampled_from(["replace", "insert", "delete", "repeat"]))
    byte = data.draw(st.sampled_from(list(b' \t\n"\\:,{}[]-+.eE0123456789tfnulx') + [0, 0x1F, 0x7F, 0xC3, 0xFF]))
    if edit == "replace" and at < len(frame):
        frame[at] = byte
    elif edit == "insert":
        frame.insert(at, byte)
    elif edit == "delete" and at < len(frame):
        del frame[at]
    elif edit == "repeat":
        frame[at:at] = frame[at:at + data.draw(st.integers(1, 20))]
    check(name, bytes(frame))


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"")
@example(b'{"channel":"trade"')
@example(b'{"e":"trade"')
def test_any_bytes_are_safe(raw):
    for name in ADAPTERS:
        check(name, raw)
        check(name, b'{"channel":"trade","data":' + raw)
        check(name, b'{"e":"trade",' + raw)


def _positive_floats(rng: random.Random, n: int) -> list[float]:
    """Positive finite floats across the whole range: random bit patterns and decimal prices."""
    out = []
    while len(out) < n:
        value = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(63)))[0]
        if 0.0 < value < float("inf"):
            out.append(value)
        out.append(round(rng.uniform(0, 1e5), rng.randint(0, 10)) or 1.0)
    return out


@needs_native
def test_floats_are_written_as_records_encode_writes_them():
    # Kraken's prices are JSON numbers: every float's shortest text goes through the native
    # parser and comes out encoded byte for byte as msgspec encodes it.
    rng = random.Random(5)
    values = _positive_floats(rng, 20_000) + [5e-324, 1.7976931348623157e308, 1e16, 1e15, 1e-5, 1e-7, 0.1, 100.0]
    for price, qty in zip(values, reversed(values), strict=True):
        frame = (f'{{"channel":"trade","type":"update","data":[{{"symbol":"BTC/USD","side":"buy","price":{price!r},'
                 f'"qty":{qty!r},"ord_type":"limit","trade_id":1,"timestamp":"2023-09-25T07:49:37.708706Z"}}]}}').encode()
        [(_, _, _, value)] = kraken.encoded_trades(frame, 3)
        assert value == encode(Trade(exchange="kraken", symbol="BTC/USD", trade_id="1", price=price, qty=qty,
                                     side="buy", ts_ms=1695628177708, recv_ms=3)), (price, qty)


@needs_native
def test_timestamps_are_read_as_rfc3339_ms_reads_them():
    rng = random.Random(9)
    times = [random_time(rng) for _ in range(20_000)]
    times += [f"{year:04d}-{month:02d}-{day:02d}T23:59:59.999999999Z" for year in (1970, 1999, 2000, 2024, 2100, 9999)
              for month in (1, 2, 3, 12) for day in (1, 28, 29, 30, 31)]
    taken = 0
    for text in times:
        frame = (f'{{"channel":"trade","type":"update","data":[{{"symbol":"BTC/USD","side":"buy","price":1.5,"qty":2,'
                 f'"ord_type":"market","trade_id":1,"timestamp":{json.dumps(text)}}}]}}').encode()
        got = kraken.encoded_trades(frame, 3)
        if got is not None:
            taken += 1
            assert got[0][2] == rfc3339_ms(text), text
        check("kraken", frame)
    assert taken > 10_000


@needs_native
def test_decimal_texts_are_read_as_float_reads_them():
    # Up to 15 significant digits and 22 fraction digits take an exact shortcut (one division);
    # longer texts the full parse. Both must give float(text), bit for bit.
    rng = random.Random(13)
    taken = 0
    for _ in range(30_000):
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 25)))
        text = f"{whole}.{fraction}" if fraction else whole
        frame = f'{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"{text}","q":"{text}","T":1,"m":true,"M":true}}'.encode()
        got = binance.encoded_trades(frame, 1)
        if got is not None:
            taken += 1
            trade = json.loads(got[0][3])
            assert trade["price"].hex() == trade["qty"].hex() == float(text).hex(), text
        check("binance", frame)
    assert taken > 25_000


@needs_native
def test_a_parser_is_made_only_for_a_format_it_reads():
    for exchange in ("okx", "Kraken", "kraken\n", ""):
        with pytest.raises(ValueError, match="no native parser"):
            NATIVE.TradeFrames(exchange, str)


@needs_native
def test_short_decimals_are_written_in_every_notation_msgspec_uses():
    # A decimal of up to 15 significant digits is written from its own digits (the shortest
    # text of its float): with ".0", with a point inside, as "0.000…", or with an exponent.
    from decimal import Decimal

    taken = 0
    for digits in ["1", "5", "12", "1234", "99999", "123456789012345", "100000000000001"]:
        for exponent in range(-14, 16):
            text = format(Decimal(digits).scaleb(exponent), "f")
            for name, frame in [
                ("binance", f'{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"{text}","q":"{text}","T":1,"m":true,'
                            f'"M":true}}'),
                ("kraken", f'{{"channel":"trade","type":"update","data":[{{"symbol":"BTC/USD","side":"buy",'
                           f'"price":{text},"qty":{text},"ord_type":"limit","trade_id":1,'
                           f'"timestamp":"2023-09-25T07:49:37.708Z"}}]}}'),
            ]:
                taken += check(name, frame.encode())
    assert taken > 300


@needs_native
def test_a_receive_time_beyond_64_bits_takes_the_general_path():
    assert binance.encoded_trades(binance_usual(), 2**63) is None
    assert binance.encoded_trades(binance_usual(), 2**63 - 1) is not None


@needs_native
def test_a_parser_in_use_sends_a_frame_to_the_general_path():
    # The symbol function runs Python code, which may let another thread call the same parser:
    # that call does not wait for the first, and its frame takes the general path instead.
    inner: list[object] = []

    def canonical(venue_symbol: str) -> str:
        inner.append(parser.encoded_trades(binance_usual(s='"ETHBTC"'), 1))
        return binance.canonical_symbol(venue_symbol)

    parser = NATIVE.TradeFrames("binance", canonical)
    [(symbol, *_)] = parser.encoded_trades(binance_usual(), 1)
    assert symbol == "BTC/USDT" and inner == [None]
