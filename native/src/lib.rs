//! candleflow's ingest hot path in Rust: the usual Kraken v2 and Binance trade frames,
//! straight from the frame's bytes to the encoded Trade records that ingest publishes.
//!
//! Built at install time by setup.py (setuptools-rust) as `candleflow.exchanges._native`
//! when a Rust toolchain is there; without one, ingest uses the compiled Python fast path
//! (exchanges/fastpath.py), with the same results. Safe Rust only: frames come from the
//! network, and a parsing bug must never become a memory error.
//!
//! Each parser accepts only the usual frame: plain ASCII JSON without escapes, every field
//! of the type the adapter's msgspec struct declares (kraken._TradeMessage and
//! _FastWsTrade, binance._Trade), every entry a valid Trade. For anything else it answers
//! None and the adapter's `parse_frame` runs from scratch and names the problem, so for
//! any frame the outcome is what `parse_frame` gives (tests/exchanges/test_native_ingest.py
//! checks that on random and malformed frames).
//!
//! Per trade a parser returns `(symbol, trade_id, ts_ms, value)`: the canonical symbol, the
//! exchange's trade id as text, the event time in epoch ms, and the Trade record exactly as
//! `records.encode` writes it (same fields, same order, same float text).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

const SYMBOL_CACHE_SIZE: usize = 4096; // venue symbols remembered per parser (as fastpath._Symbols)
const MAX_DEPTH: usize = 32; // nesting of a skipped value; deeper frames take the general path

// ---- a strict reader of the usual frame ------------------------------------------------------

/// A JSON value's text, as far as a parser here needs to know it.
enum Value<'a> {
    Text(&'a str),   // a string without escapes, its content
    Number(&'a str), // a number's literal
    Bool(bool),
    Null,
    Other, // an object or an array (skipped, checked to be well-formed)
}

/// A cursor over one frame. Every method answers None for anything outside the strict
/// subset (escapes, control characters, malformed JSON): the frame then takes the general path.
struct Reader<'a> {
    frame: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of an ASCII frame (None for any other: non-ASCII text takes the general path).
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let frame = std::str::from_utf8(bytes).ok().filter(|frame| frame.is_ascii())?;
        Some(Self { frame, bytes, at: 0 })
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// The whole frame was read: only whitespace is left.
    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string of printable ASCII without escapes: its content.
    fn text(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = self.bytes[start..].iter().position(|&byte| !PLAIN[usize::from(byte)])?;
        if self.bytes[start + length] != b'"' {
            return None; // an escape or a control character
        }
        self.at = start + length + 1;
        Some(&self.frame[start..start + length])
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// A number's literal, by JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        if self.bytes.get(self.at) == Some(&b'0') {
            self.at += 1;
        } else {
            self.digits()?;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.digits()?;
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(&self.frame[start..self.at])
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// The next value; objects and arrays are read to their end and reported as Other.
    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        Some(match self.peek()? {
            b'"' => Value::Text(self.text()?),
            b'-' | b'0'..=b'9' => Value::Number(self.number()?),
            b't' => self.word(b"true").map(|()| Value::Bool(true))?,
            b'f' => self.word(b"false").map(|()| Value::Bool(false))?,
            b'n' => self.word(b"null").map(|()| Value::Null)?,
            b'{' if depth < MAX_DEPTH => {
                self.object(|reader, _| reader.skip(depth + 1))?;
                Value::Other
            }
            b'[' if depth < MAX_DEPTH => {
                self.array(|reader| reader.skip(depth + 1))?;
                Value::Other
            }
            _ => return None,
        })
    }

    /// Reads past the next value (checked to be well-formed).
    fn skip(&mut self, depth: usize) -> Option<()> {
        self.value(depth).map(|_| ())
    }

    /// `{ "key": value, ... }`, each value read by `field(reader, key)`.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.text()?;
            self.expect(b':')?;
            field(self, key)?;
            if !self.eat(b',') {
                return self.expect(b'}');
            }
        }
    }

    /// `[ value, ... ]`, each value read by `item(reader)`.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.eat(b']') {
            return Some(());
        }
        loop {
            item(self)?;
            if !self.eat(b',') {
                return self.expect(b']');
            }
        }
    }
}

/// Remembers which fields an object had: a repeated field sends the frame to the general path.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first(&mut self, field: u32) -> Option<()> {
        let bit = 1 << field;
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new.then_some(())
    }

    /// Whether fields 0 to `count - 1` were all there (each object numbers its required fields first).
    fn all_of_first(&self, count: u32) -> bool {
        let required = (1 << count) - 1;
        self.0 & required == required
    }
}

// ---- field values ----------------------------------------------------------------------------

/// A positive finite price or quantity from a number's literal or decimal text: `float(text)`
/// (Rust's parse is correctly rounded, as CPython's float() is).
fn positive(text: &str) -> Option<f64> {
    let value = short_decimal(text).or_else(|| text.parse().ok())?;
    (value > 0.0 && value.is_finite()).then_some(value)
}

/// 10^k for k <= 22: exact as floats.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The value of `digits(.digits)?` below 2^53 as an integer, with at most 22 fraction digits
/// (the usual price and quantity), else None (then `parse`). The same value as `parse` gives,
/// for less work: the integer and the power of ten are exact floats, so one correctly rounded
/// division gives the correctly rounded decimal (as exchanges/fastpath.py decimal_value).
fn short_decimal(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut mantissa: u64 = 0;
    let mut dot = None;
    for (at, &byte) in bytes.iter().enumerate() {
        if byte.is_ascii_digit() {
            mantissa = mantissa * 10 + u64::from(byte - b'0');
            if mantissa >= 1 << 53 {
                return None;
            }
        } else if byte == b'.' && dot.is_none() && at > 0 && at + 1 < bytes.len() {
            dot = Some(at);
        } else {
            return None;
        }
    }
    if bytes.is_empty() {
        return None;
    }
    let power = EXACT_POWERS_OF_TEN.get(dot.map_or(0, |at| bytes.len() - at - 1))?;
    Some(mantissa as f64 / power)
}

/// Decimal text as fields.NUMBER_TEXT means it (`-?digits(.digits)?([eE][+-]?digits)?`), as a
/// positive finite number.
fn number_text(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let digits = |mut at: usize| -> Option<usize> {
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        (at > start).then_some(at)
    };
    let mut at = digits(usize::from(bytes.first() == Some(&b'-')))?;
    if bytes.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        at = digits(at)?;
    }
    if at != bytes.len() {
        return None;
    }
    positive(text)
}

/// A non-negative integer literal that fits 64 bits: its value (as `int` in msgspec's `int | str`).
fn unsigned(literal: &str) -> Option<u64> {
    if !literal.bytes().all(|c| c.is_ascii_digit()) {
        return None; // negative, or a fraction or an exponent
    }
    literal.parse().ok()
}

/// The trade id as text, as `str()` of msgspec's `int | str` gives it: a non-negative
/// integer's literal (JSON has no leading zeros, so it is the integer's text) or a non-empty
/// string. None for anything else.
fn trade_id(value: Value<'_>) -> Option<&str> {
    match value {
        Value::Number(literal) => unsigned(literal).map(|_| literal),
        Value::Text(text) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// Epoch ms of the usual UTC timestamp `YYYY-MM-DDTHH:MM:SS.f…Z` (1 to 9 fractional digits,
/// a real calendar date, seconds 00 to 59, not before 1970), the sub-millisecond part
/// truncated, as times.rfc3339_ms gives it; None for anything else.
fn utc_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let n = b.len();
    if !(22..=30).contains(&n)
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[n - 1] != b'Z'
    {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |value, &c| c.is_ascii_digit().then(|| value * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    number(20, n - 1)?; // the fraction is all digits
    let millis = (20..23).fold(0, |value, i| value * 10 + if i < n - 1 { i64::from(b[i] - b'0') } else { 0 });
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second;
    let ms = seconds * 1000 + millis;
    (ms >= 0).then_some(ms)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The bytes that JSON text holds as themselves, in a string and in its encoding: printable
/// ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        plain[byte] = byte != b'"' as usize && byte != b'\\' as usize;
        byte += 1;
    }
    plain
};

/// Text that JSON-encodes as itself.
fn is_plain(text: &str) -> bool {
    text.bytes().all(|byte| PLAIN[usize::from(byte)])
}

// ---- encoding --------------------------------------------------------------------------------

/// One trade's fields, checked: what a valid Trade holds.
struct TradeFields<'a> {
    venue_symbol: &'a str,
    trade_id: &'a str,
    price: f64,
    qty: f64,
    side: &'static str,
    ts_ms: i64,
}

/// FNV-1a: a venue symbol is a few bytes, for which SipHash (the default) costs more than the
/// lookup itself; the keys come from the adapter's own symbol function, capped in number.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A canonical symbol, as Python text (handed out) and as Rust text (encoded).
struct Symbol {
    python: Py<PyString>,
    text: String,
}

/// What both parsers share: the exchange's name, the venue symbol -> canonical symbol cache
/// (filled by the adapter's own Python function, so the symbol rules live in one place),
/// and the encoding buffer.
struct Encoder {
    exchange: String,
    canonical: Py<PyAny>,
    symbols: HashMap<String, Symbol, BuildHasherDefault<Fnv>>,
    buffer: Vec<u8>,
}

impl Encoder {
    fn new(exchange: String, canonical: Py<PyAny>) -> PyResult<Self> {
        if exchange.is_empty() || !is_plain(&exchange) {
            return Err(PyValueError::new_err(format!("exchange must be plain non-empty text, got {exchange:?}")));
        }
        Ok(Self { exchange, canonical, symbols: HashMap::default(), buffer: Vec::with_capacity(256) })
    }

    /// Appends `(symbol, trade_id, ts_ms, value)` to `out`; false when the venue symbol does not
    /// map (the general path names it).
    fn append<'py>(
        &mut self,
        py: Python<'py>,
        out: &Bound<'py, PyList>,
        trade: &TradeFields,
        recv_ms: i64,
    ) -> PyResult<bool> {
        if !self.symbols.contains_key(trade.venue_symbol) && !self.learn_symbol(py, trade.venue_symbol) {
            return Ok(false);
        }
        let symbol = &self.symbols[trade.venue_symbol];
        encode(&mut self.buffer, &self.exchange, &symbol.text, trade, recv_ms);
        let value = PyBytes::new(py, &self.buffer);
        out.append((symbol.python.bind(py), PyString::new(py, trade.trade_id), trade.ts_ms, value))?;
        Ok(true)
    }

    /// Caches the canonical symbol of `venue`; false when it does not map.
    fn learn_symbol(&mut self, py: Python<'_>, venue: &str) -> bool {
        let Some(found) = self.canonical.bind(py).call1((venue,)).ok().and_then(|s| s.cast_into::<PyString>().ok())
        else {
            return false;
        };
        let Some(text) = found.to_str().ok().filter(|text| !text.is_empty() && is_plain(text)).map(str::to_owned)
        else {
            return false;
        };
        if self.symbols.len() >= SYMBOL_CACHE_SIZE {
            self.symbols.clear();
        }
        self.symbols.insert(venue.to_owned(), Symbol { python: found.unbind(), text });
        true
    }
}

/// The Trade record as records.encode (msgspec) writes it: fields in declaration order, no
/// spaces, floats as their shortest round-trip text in msgspec's notation.
fn encode(out: &mut Vec<u8>, exchange: &str, symbol: &str, trade: &TradeFields, recv_ms: i64) {
    let mut float = ryu::Buffer::new();
    let mut int = itoa::Buffer::new();
    out.clear();
    for part in [
        "{\"exchange\":\"",
        exchange,
        "\",\"symbol\":\"",
        symbol,
        "\",\"trade_id\":\"",
        trade.trade_id,
        "\",\"price\":",
        float.format_finite(trade.price),
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    for part in [
        ",\"qty\":",
        float.format_finite(trade.qty),
        ",\"side\":\"",
        trade.side,
        "\",\"ts_ms\":",
        int.format(trade.ts_ms),
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    for part in [",\"recv_ms\":", int.format(recv_ms), "}"] {
        out.extend_from_slice(part.as_bytes());
    }
}

fn frame_bytes<'a>(data: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    data.cast::<PyBytes>().ok().map(|bytes| bytes.as_bytes())
}

// ---- Kraken WebSocket v2 ---------------------------------------------------------------------

/// Reads one entry of a trade message's `data` (kraken._FastWsTrade's fields and types).
fn kraken_entry<'a>(reader: &mut Reader<'a>) -> Option<TradeFields<'a>> {
    let mut seen = Seen::default();
    let mut trade = TradeFields { venue_symbol: "", trade_id: "", price: 0.0, qty: 0.0, side: "", ts_ms: 0 };
    reader.object(|reader, key| {
        let field = match key {
            "symbol" => {
                trade.venue_symbol = reader.text()?;
                0
            }
            "side" => {
                trade.side = match reader.text()? {
                    "buy" => "buy",
                    "sell" => "sell",
                    _ => return None,
                };
                1
            }
            "price" => {
                trade.price = positive(reader.number()?)?;
                2
            }
            "qty" => {
                trade.qty = positive(reader.number()?)?;
                3
            }
            "trade_id" => {
                trade.trade_id = trade_id(reader.value(0)?)?;
                4
            }
            "timestamp" => {
                trade.ts_ms = utc_ms(reader.text()?)?;
                5
            }
            "ord_type" => {
                reader.text()?;
                6
            }
            _ => return reader.skip(0), // a field msgspec ignores
        };
        seen.first(field)
    })?;
    seen.all_of_first(6).then_some(trade) // all but ord_type
}

/// The usual Kraken v2 `trade` message -> its encoded trades, or None.
#[pyclass(module = "candleflow.exchanges._native")]
struct KrakenTrades {
    encoder: Encoder,
}

#[pymethods]
impl KrakenTrades {
    /// `canonical(venue_symbol) -> str` raises ValueError for a symbol that does not map.
    #[new]
    fn new(exchange: String, canonical: Py<PyAny>) -> PyResult<Self> {
        Ok(Self { encoder: Encoder::new(exchange, canonical)? })
    }

    /// `[(symbol, trade_id, ts_ms, value), ...]` of the frame `data` (bytes), or None: use
    /// the adapter's parse_frame.
    fn encoded_trades<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        recv_ms: i64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(frame) = frame_bytes(data) else { return Ok(None) };
        let out = PyList::empty(py);
        let mut failure = None; // a Python error while building the list (out of memory)
        let read = kraken_message(frame, |trade| match self.encoder.append(py, &out, &trade, recv_ms) {
            Ok(appended) => appended.then_some(()),
            Err(error) => {
                failure = Some(error);
                None
            }
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(read.map(|()| out)),
        }
    }
}

/// Reads a trade message (kraken._TradeMessage's fields and types; `method` null or absent),
/// handing each entry to `entry` as it goes; None as soon as anything is unusual.
fn kraken_message<'a>(bytes: &'a [u8], mut entry: impl FnMut(TradeFields<'a>) -> Option<()>) -> Option<()> {
    let mut reader = Reader::new(bytes)?;
    let mut seen = Seen::default();
    reader.object(|reader, key| {
        let (field, accepted) = match key {
            "channel" => (0, reader.text()? == "trade"),
            "data" => {
                let entries = reader.array(|reader| entry(kraken_entry(reader)?));
                (1, entries.is_some())
            }
            "type" => (2, matches!(reader.value(0)?, Value::Text(_) | Value::Null)),
            "method" => (3, matches!(reader.value(0)?, Value::Null)), // a method's reply is not a trade message
            "success" => (4, matches!(reader.value(0)?, Value::Bool(_) | Value::Null)),
            "error" => (5, matches!(reader.value(0)?, Value::Text(_) | Value::Null)),
            _ => return reader.skip(0), // "result" (any value) and fields msgspec ignores
        };
        seen.first(field)?;
        accepted.then_some(())
    })?;
    (reader.at_end() && seen.all_of_first(2)).then_some(()) // channel and data
}

// ---- Binance ---------------------------------------------------------------------------------

/// The raw endpoint's `trade` event (binance._Trade's fields and types; the time an integer).
fn binance_event(bytes: &[u8]) -> Option<TradeFields<'_>> {
    let mut reader = Reader::new(bytes)?;
    let mut seen = Seen::default();
    let mut trade = TradeFields { venue_symbol: "", trade_id: "", price: 0.0, qty: 0.0, side: "", ts_ms: 0 };
    reader.object(|reader, key| {
        let (field, accepted) = match key {
            "e" => (0, reader.text()? == "trade"),
            "s" => {
                trade.venue_symbol = reader.text()?;
                (1, true)
            }
            "t" => {
                trade.trade_id = trade_id(reader.value(0)?)?;
                (2, true)
            }
            "p" => {
                trade.price = number_text(reader.text()?)?;
                (3, true)
            }
            "q" => {
                trade.qty = number_text(reader.text()?)?;
                (4, true)
            }
            "T" => {
                trade.ts_ms = i64::try_from(unsigned(reader.number()?)?).ok()?;
                (5, true)
            }
            "m" => {
                trade.side = match reader.value(0)? {
                    Value::Bool(true) => "sell", // the buyer is the maker: the taker sold
                    Value::Bool(false) => "buy",
                    _ => return None,
                };
                (6, true)
            }
            "E" => match reader.value(0)? {
                Value::Number(literal) => (7, literal.bytes().all(|c| c.is_ascii_digit() || c == b'-')), // an integer
                Value::Text(_) | Value::Null => (7, true),
                _ => return None,
            },
            "M" => (8, matches!(reader.value(0)?, Value::Bool(_) | Value::Null)),
            _ => return reader.skip(0), // a field msgspec ignores
        };
        seen.first(field)?;
        accepted.then_some(())
    })?;
    (reader.at_end() && seen.all_of_first(7)).then_some(trade) // all but E and M
}

/// The raw endpoint's usual `trade` event -> its encoded trade, or None.
#[pyclass(module = "candleflow.exchanges._native")]
struct BinanceTrades {
    encoder: Encoder,
}

#[pymethods]
impl BinanceTrades {
    /// `canonical(venue_symbol) -> str` raises ValueError for a symbol that does not map.
    #[new]
    fn new(exchange: String, canonical: Py<PyAny>) -> PyResult<Self> {
        Ok(Self { encoder: Encoder::new(exchange, canonical)? })
    }

    /// `[(symbol, trade_id, ts_ms, value)]` of the frame `data` (bytes), or None: use the
    /// adapter's parse_frame.
    fn encoded_trades<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        recv_ms: i64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(trade) = frame_bytes(data).and_then(binance_event) else { return Ok(None) };
        let out = PyList::empty(py);
        Ok(self.encoder.append(py, &out, &trade, recv_ms)?.then_some(out))
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<KrakenTrades>()?;
    module.add_class::<BinanceTrades>()?;
    Ok(())
}
