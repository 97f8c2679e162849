//! candleflow's ingest hot path in Rust: the usual Kraken v2 and Binance trade frames,
//! straight from the frame's bytes to the encoded Trade records that ingest publishes, and
//! the de-duplication window of exchanges/fastpath.py's TradeDedup.
//!
//! Built at install time by setup.py (setuptools-rust) as `candleflow.exchanges._native`
//! when a Rust toolchain is there; without one, ingest uses the compiled Python fast path
//! (exchanges/fastpath.py), with the same results. Safe Rust only: frames come from the
//! network, and a parsing bug must never become a memory error.
//!
//! Each parser accepts only the usual frame: the exchange's template (its fields in the
//! documented order, no spaces), plain ASCII without escapes, every field of the type the
//! adapter's msgspec struct declares (kraken._TradeMessage and _FastWsTrade, binance._Trade),
//! every entry a valid Trade. For anything else it answers None and the adapter's
//! `parse_frame` runs from scratch and names the problem, so for any frame the outcome is
//! what `parse_frame` gives (tests/exchanges/test_native_ingest.py checks that on random and
//! malformed frames).
//!
//! Per trade a parser returns `(symbol, trade_id, ts_ms, value)`: the canonical symbol, the
//! exchange's trade id as text, the event time in epoch ms, and the Trade record exactly as
//! `records.encode` writes it (same fields, same order, same float text).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

const SYMBOL_CACHE_SIZE: usize = 4096; // venue symbols remembered per parser (as fastpath._Symbols)

// ---- a reader of the usual frame ---------------------------------------------------------------
//
// Exchanges write their trade frames from one template: the fields in the documented order,
// no spaces. The reader follows that template and answers None at the first byte that
// differs (another order, an extra or a missing field, whitespace, an escape, anything not
// ASCII): such frames are rare, and the adapter's Python parsers read them.

/// A cursor over one frame.
struct Reader<'a> {
    frame: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of an ASCII frame (None for any other).
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let frame = std::str::from_utf8(bytes).ok().filter(|frame| frame.is_ascii())?;
        Some(Self { frame, bytes, at: 0 })
    }

    /// The template's next bytes.
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at + expected.len();
        (self.bytes.get(self.at..end)? == expected).then(|| self.at = end)
    }

    /// Whether `byte` comes next (consumed if so).
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.bytes.get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    /// The whole frame was read.
    fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// A string's content, after its opening quote: printable ASCII without escapes, up to
    /// and including the closing quote.
    #[inline(never)] // one copy: inlined at each of its calls, it makes the parsers slower
    fn text(&mut self) -> Option<&'a str> {
        let bytes = self.bytes;
        let start = self.at;
        let mut end = start;
        while end < bytes.len() && PLAIN[usize::from(bytes[end])] {
            end += 1;
        }
        if bytes.get(end) != Some(&b'"') {
            return None; // an escape, a control character, or the end of the frame
        }
        self.at = end + 1;
        self.frame.get(start..end)
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
        let start = self.at;
        self.eat(b'-');
        if !self.eat(b'0') {
            self.digits()?;
        }
        if self.eat(b'.') {
            self.digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.digits()?;
        }
        Some(&self.frame[start..self.at])
    }

    /// `true` or `false`.
    fn boolean(&mut self) -> Option<bool> {
        if self.literal(b"true").is_some() {
            return Some(true);
        }
        self.literal(b"false").map(|()| false)
    }

    /// A trade id as msgspec's `int | str` reads it, as text (`str()` of it): a non-negative
    /// integer that fits 64 bits (JSON has no leading zeros: the literal is the integer's
    /// text) or a non-empty string. None for anything else (the general path reads it).
    fn trade_id(&mut self) -> Option<&'a str> {
        if self.eat(b'"') {
            return self.text().filter(|text| !text.is_empty());
        }
        let literal = self.number()?;
        unsigned(literal).map(|_| literal)
    }
}

// ---- field values ----------------------------------------------------------------------------

/// A positive finite price or quantity, and its shortest decimal digits when they are known
/// from its text (so encoding it needs no float-to-text search).
#[derive(Clone, Copy, Default)]
struct Quantity {
    value: f64,
    digits: Option<Digits>,
}

/// `mantissa × 10^exponent`, the mantissa without trailing zeros.
#[derive(Clone, Copy)]
struct Digits {
    mantissa: u64,
    exponent: i32,
}

/// 10^k for k <= 22: exact as floats.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// At most this many significant digits: below 2^53, and each such decimal is the shortest
/// text of its float (DBL_DIG: two decimals of 15 digits never round to the same double).
const SHORT_DIGITS: u32 = 15;

/// Number text as fields.NUMBER_TEXT means it (`-?digits(.digits)?([eE][+-]?digits)?`; a JSON
/// number's literal is one) as a positive finite quantity: the value `float(text)` gives.
///
/// One pass. The usual price (no sign, no exponent, at most 15 significant digits, at most 22
/// fraction digits) is its digits as an integer divided by a power of ten: both are exact
/// floats, so the one correctly rounded division gives the correctly rounded value (as
/// exchanges/fastpath.py decimal_value). Any other text goes to Rust's parse, also correctly
/// rounded, as CPython's float() is.
fn quantity(text: &str) -> Option<Quantity> {
    let bytes = text.as_bytes();
    let mut at = usize::from(bytes.first() == Some(&b'-'));
    let mut mantissa: u64 = 0;
    let mut significant = 0; // digits from the first non-zero one on
    let mut fraction_digits = 0;
    let mut digits = |at: &mut usize, in_fraction: bool| -> Option<()> {
        let start = *at;
        while let Some(&byte) = bytes.get(*at).filter(|byte| byte.is_ascii_digit()) {
            if mantissa != 0 || byte != b'0' {
                significant += 1;
                if significant <= SHORT_DIGITS {
                    mantissa = mantissa * 10 + u64::from(byte - b'0');
                }
            }
            fraction_digits += i32::from(in_fraction);
            *at += 1;
        }
        (*at > start).then_some(())
    };
    digits(&mut at, false)?;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        digits(&mut at, true)?;
    }
    let short = bytes.first() != Some(&b'-') && at == bytes.len() && significant <= SHORT_DIGITS;
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
    }
    if at != bytes.len() {
        return None;
    }
    let power = EXACT_POWERS_OF_TEN.get(fraction_digits as usize).filter(|_| short);
    let value = match power {
        Some(power) => mantissa as f64 / power,
        None => text.parse().ok()?,
    };
    if !(value > 0.0 && value.is_finite()) {
        return None;
    }
    let digits = power.map(|_| {
        let (mut mantissa, mut exponent) = (mantissa, -fraction_digits);
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        Digits { mantissa, exponent }
    });
    Some(Quantity { value, digits })
}

/// A non-negative integer literal that fits 64 bits: its value (as `int` in msgspec's `int | str`).
fn unsigned(literal: &str) -> Option<u64> {
    let bytes = literal.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |value, &byte| {
        let digit = byte.is_ascii_digit().then(|| u64::from(byte - b'0'))?; // not a sign, fraction or exponent
        value.checked_mul(10)?.checked_add(digit)
    })
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
    price: Quantity,
    qty: Quantity,
    side: &'static str,
    ts_ms: i64,
}

/// FNV-1a for text, one multiply per integer: a venue symbol or a trade id is a few bytes, for
/// which SipHash (the default) costs more than the lookup itself. The keys come from the
/// adapter's own symbol function and from exchanges' trade ids, not from an adversary who
/// could aim at collisions.
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

    // Integers (the dedup window's keys) in one step each, as FxHash does.
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the high bits mixed and the low ones not; the table indexes by the
        // low bits, so bring high ones down (as rustc-hash does): ids that differ only in their
        // high bits (time-based ids) must not share buckets.
        self.0.rotate_left(26)
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
    /// `exchange` is plain text (TradeFrames reads only the formats of named exchanges).
    fn new(exchange: String, canonical: Py<PyAny>) -> Self {
        Self { exchange, canonical, symbols: HashMap::default(), buffer: Vec::with_capacity(256) }
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
    let mut int = itoa::Buffer::new();
    out.clear();
    for part in ["{\"exchange\":\"", exchange, "\",\"symbol\":\"", symbol, "\",\"trade_id\":\"", trade.trade_id] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\",\"price\":");
    write_float(out, trade.price);
    out.extend_from_slice(b",\"qty\":");
    write_float(out, trade.qty);
    for part in [",\"side\":\"", trade.side, "\",\"ts_ms\":", int.format(trade.ts_ms)] {
        out.extend_from_slice(part.as_bytes());
    }
    for part in [",\"recv_ms\":", int.format(recv_ms), "}"] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// A positive float's shortest round-trip text in the notation of ryu's (and msgspec's)
/// `format64`: digits and zeros around the point up to 16 digits before it and 5 zeros after
/// it (`123.0`, `0.00012`), else an exponent (`1e-7`, `1.5e22`). From the digits the text was
/// written with when they are known, else from ryu's search for them.
fn write_float(out: &mut Vec<u8>, quantity: Quantity) {
    let Some(Digits { mantissa, exponent }) = quantity.digits else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(quantity.value).as_bytes());
        return;
    };
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(mantissa).as_bytes();
    let length = digits.len() as i32;
    let point = length + exponent; // the value is 0.digits × 10^point
    if 0 <= exponent && point <= 16 {
        out.extend_from_slice(digits); // 1234e2 -> 123400.0
        out.resize(out.len() + exponent as usize, b'0');
        out.extend_from_slice(b".0");
    } else if 0 < point && point <= 16 {
        out.extend_from_slice(&digits[..point as usize]); // 1234e-2 -> 12.34
        out.push(b'.');
        out.extend_from_slice(&digits[point as usize..]);
    } else if -5 < point && point <= 0 {
        out.extend_from_slice(b"0."); // 1234e-6 -> 0.001234
        out.resize(out.len() + (-point) as usize, b'0');
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]); // 1234e30 -> 1.234e33, 1e-7
        if length > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.extend_from_slice(itoa::Buffer::new().format(point - 1).as_bytes());
    }
}

fn frame_bytes<'a>(data: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    data.cast::<PyBytes>().ok().map(|bytes| bytes.as_bytes())
}

// ---- Kraken WebSocket v2 ---------------------------------------------------------------------

/// Reads one entry of a trade message's `data`:
/// `{"symbol":"…","side":"buy|sell","price":N,"qty":N,"ord_type":"…","trade_id":N|"…","timestamp":"…"}`.
fn kraken_entry<'a>(reader: &mut Reader<'a>) -> Option<TradeFields<'a>> {
    reader.literal(b"{\"symbol\":\"")?;
    let venue_symbol = reader.text()?;
    reader.literal(b",\"side\":\"")?;
    let side = match reader.text()? {
        "buy" => "buy",
        "sell" => "sell",
        _ => return None,
    };
    reader.literal(b",\"price\":")?;
    let price = quantity(reader.number()?)?;
    reader.literal(b",\"qty\":")?;
    let qty = quantity(reader.number()?)?;
    reader.literal(b",\"ord_type\":\"")?;
    reader.text()?;
    reader.literal(b",\"trade_id\":")?;
    let trade_id = reader.trade_id()?;
    reader.literal(b",\"timestamp\":\"")?;
    let ts_ms = utc_ms(reader.text()?)?;
    reader.literal(b"}")?;
    Some(TradeFields { venue_symbol, trade_id, price, qty, side, ts_ms })
}

/// Reads a trade message, `{"channel":"trade","type":"…"|null,"data":[entry,…]}`, handing each
/// entry to `entry` as it goes; None as soon as anything differs.
fn kraken_message<'a>(bytes: &'a [u8], mut entry: impl FnMut(TradeFields<'a>) -> Option<()>) -> Option<()> {
    let mut reader = Reader::new(bytes)?;
    reader.literal(b"{\"channel\":\"trade\",\"type\":")?;
    if reader.eat(b'"') {
        reader.text()?; // update or snapshot: the trades are the same
    } else {
        reader.literal(b"null")?;
    }
    reader.literal(b",\"data\":[")?;
    if !reader.eat(b']') {
        loop {
            entry(kraken_entry(&mut reader)?)?;
            if !reader.eat(b',') {
                reader.literal(b"]")?;
                break;
            }
        }
    }
    reader.literal(b"}")?;
    reader.at_end().then_some(())
}

// ---- Binance ---------------------------------------------------------------------------------

/// Reads the raw endpoint's trade event,
/// `{"e":"trade","E":N,"s":"…","t":N|"…","p":"…","q":"…","T":N,"m":bool,"M":bool|null}`.
fn binance_event(bytes: &[u8]) -> Option<TradeFields<'_>> {
    let mut reader = Reader::new(bytes)?;
    reader.literal(b"{\"e\":\"trade\",\"E\":")?;
    reader.number().filter(|literal| unsigned(literal).is_some())?; // the event time: unused
    reader.literal(b",\"s\":\"")?;
    let venue_symbol = reader.text()?;
    reader.literal(b",\"t\":")?;
    let trade_id = reader.trade_id()?;
    reader.literal(b",\"p\":\"")?;
    let price = quantity(reader.text()?)?;
    reader.literal(b",\"q\":\"")?;
    let qty = quantity(reader.text()?)?;
    reader.literal(b",\"T\":")?;
    let ts_ms = i64::try_from(unsigned(reader.number()?)?).ok()?;
    reader.literal(b",\"m\":")?;
    let side = if reader.boolean()? { "sell" } else { "buy" }; // m: the buyer is the maker, so the taker sold
    reader.literal(b",\"M\":")?;
    if reader.boolean().is_none() {
        reader.literal(b"null")?;
    }
    reader.literal(b"}")?;
    reader.at_end().then_some(TradeFields { venue_symbol, trade_id, price, qty, side, ts_ms })
}

// ---- de-duplication --------------------------------------------------------------------------

/// A trade id as the window keeps it: the integer of a canonical decimal id (most venues'
/// ids), else the text.
#[derive(Clone, PartialEq, Eq, Hash)]
enum TradeId {
    Integer(u64),
    Text(Box<str>),
}

impl TradeId {
    fn of(text: &str) -> Self {
        let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
        match unsigned(text).filter(|_| canonical) {
            Some(value) => TradeId::Integer(value),
            None => TradeId::Text(text.into()),
        }
    }
}

/// The most recent `capacity` (exchange, symbol, trade_id), exactly as exchanges/fastpath.py's
/// TradeDedup keeps them (same answers, same order of forgetting), with the ids in one flat
/// table instead of Python objects. A market is a number from `ids_of`.
#[pyclass(module = "candleflow.exchanges._native")]
struct TradeDedup {
    #[pyo3(get)]
    capacity: usize,
    #[pyo3(get, set)]
    duplicates: u64,
    markets: HashMap<(String, String), u32>,
    seen: HashSet<(u32, TradeId), BuildHasherDefault<Fnv>>,
    order: VecDeque<(u32, TradeId)>,
}

impl TradeDedup {
    fn market_of(&mut self, trade: &Bound<'_, PyAny>) -> PyResult<(u32, String)> {
        let exchange: String = trade.getattr("exchange")?.extract()?;
        let symbol: String = trade.getattr("symbol")?.extract()?;
        let trade_id: String = trade.getattr("trade_id")?.extract()?;
        Ok((self.ids_of(&exchange, &symbol), trade_id))
    }
}

#[pymethods]
impl TradeDedup {
    #[new]
    #[pyo3(signature = (capacity = 200_000))]
    fn new(capacity: i64) -> PyResult<Self> {
        let Some(capacity) = usize::try_from(capacity).ok().filter(|capacity| *capacity >= 1) else {
            return Err(PyValueError::new_err("capacity must be >= 1"));
        };
        Ok(Self { capacity, duplicates: 0, markets: HashMap::new(), seen: HashSet::default(), order: VecDeque::new() })
    }

    fn __len__(&self) -> usize {
        self.order.len()
    }

    /// The number of one market (TradeFlow keeps it with the market's state).
    fn ids_of(&mut self, exchange: &str, symbol: &str) -> u32 {
        let next = self.markets.len() as u32;
        *self.markets.entry((exchange.to_owned(), symbol.to_owned())).or_insert(next)
    }

    /// Remember a trade of market `market`; true when it is new, false for a duplicate.
    fn add_to(&mut self, market: u32, trade_id: &str) -> bool {
        let key = (market, TradeId::of(trade_id));
        if !self.seen.insert(key.clone()) {
            self.duplicates += 1;
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }

    fn add_id(&mut self, exchange: &str, symbol: &str, trade_id: &str) -> bool {
        let market = self.ids_of(exchange, symbol);
        self.add_to(market, trade_id)
    }

    /// `add_id` of a Trade.
    fn add(&mut self, trade: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (market, trade_id) = self.market_of(trade)?;
        Ok(self.add_to(market, &trade_id))
    }

    fn seen(&mut self, trade: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (market, trade_id) = self.market_of(trade)?;
        Ok(self.seen.contains(&(market, TradeId::of(&trade_id))))
    }

    /// The trades not seen before, in order (also de-duplicates within the list).
    fn filter<'py>(&mut self, trades: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(trades.py());
        for trade in trades.try_iter()? {
            let trade = trade?;
            if self.add(&trade)? {
                out.append(trade)?;
            }
        }
        Ok(out)
    }
}

// ---- the parsers ----------------------------------------------------------------------------

/// The frame formats read here.
#[derive(Clone, Copy)]
enum Format {
    KrakenV2,     // WebSocket v2 `trade` messages
    BinanceTrade, // the raw endpoint's `<symbol>@trade` events
}

/// The usual trade frames of one exchange -> their encoded trades, or None.
#[pyclass(module = "candleflow.exchanges._native", frozen)]
struct TradeFrames {
    format: Format,
    encoder: Mutex<Encoder>,
}

#[pymethods]
impl TradeFrames {
    /// The parser of `exchange`'s frames ("kraken" or "binance"); `canonical(venue_symbol) -> str`
    /// raises ValueError for a symbol that does not map.
    #[new]
    fn new(exchange: String, canonical: Py<PyAny>) -> PyResult<Self> {
        let format = match exchange.as_str() {
            "kraken" => Format::KrakenV2,
            "binance" => Format::BinanceTrade,
            _ => return Err(PyValueError::new_err(format!("no native parser for {exchange:?}"))),
        };
        Ok(Self { format, encoder: Mutex::new(Encoder::new(exchange, canonical)) })
    }

    /// `[(symbol, trade_id, ts_ms, value), ...]` of the frame `data` (bytes), or None: use the
    /// adapter's parse_frame.
    fn encoded_trades<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        recv_ms: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let (Some(frame), Ok(recv_ms)) = (frame_bytes(data), recv_ms.extract::<i64>()) else {
            return Ok(None); // not bytes, or a receive time beyond 64 bits: the general path
        };
        // Another thread parsing with this parser at the same moment (the symbol function can let
        // it in) sends this frame to the general path rather than waiting.
        let Ok(mut encoder) = self.encoder.try_lock() else { return Ok(None) };
        let out = PyList::empty(py);
        let mut failure = None; // a Python error while building the list (out of memory)
        let mut append = |trade: TradeFields| match encoder.append(py, &out, &trade, recv_ms) {
            Ok(appended) => appended.then_some(()),
            Err(error) => {
                failure = Some(error);
                None
            }
        };
        let read = match self.format {
            Format::KrakenV2 => kraken_message(frame, &mut append),
            Format::BinanceTrade => binance_event(frame).and_then(&mut append),
        };
        match failure {
            Some(error) => Err(error),
            None => Ok(read.map(|()| out)),
        }
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TradeFrames>()?;
    module.add_class::<TradeDedup>()?;
    Ok(())
}
