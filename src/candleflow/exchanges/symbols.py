"""Canonical symbols: ``BASE/QUOTE`` in upper case, one spelling per asset.

Venues spell the same market differently (Kraken ``XBT/USD``, Binance
``BTCUSDT``, Coinbase and OKX ``BTC-USD``, Bybit ``BTCUSDT``). Adapters convert
at the edge with these helpers, so everything downstream sees one form.
"""

from __future__ import annotations

import re

# Venue-specific asset codes -> the common code.
ASSET_ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

# Quote assets, longest first, for splitting concatenated symbols like BTCUSDT.
KNOWN_QUOTES: tuple[str, ...] = tuple(sorted(
    ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "USD", "EUR", "GBP", "JPY", "TRY", "BRL", "AUD", "CAD",
     "CHF", "BTC", "ETH", "BNB", "SOL", "XRP", "DOGE", "TRX", "PLN", "UAH", "ZAR", "MXN", "ARS", "IDR"),
    key=len, reverse=True,
))

_ASSET_RE = re.compile(r"^[A-Z0-9]{1,20}$")


class SymbolError(ValueError):
    """A venue symbol that cannot be mapped to BASE/QUOTE."""


def normalise_asset(code: str) -> str:
    code = code.strip().upper()
    return ASSET_ALIASES.get(code, code)


def canonical(base: str, quote: str) -> str:
    base, quote = normalise_asset(base), normalise_asset(quote)
    if not (_ASSET_RE.match(base) and _ASSET_RE.match(quote)):
        raise SymbolError(f"invalid asset codes {base!r}/{quote!r}")
    return f"{base}/{quote}"


def split_canonical(symbol: str) -> tuple[str, str]:
    """``"BTC/USD"`` -> ``("BTC", "USD")``."""
    base, sep, quote = symbol.partition("/")
    if not sep or not base or not quote or "/" in quote:
        raise SymbolError(f"symbol {symbol!r} is not BASE/QUOTE")
    return base, quote


def from_separated(venue_symbol: str, sep: str) -> str:
    """``"ETH-USD"`` (sep ``-``) or ``"XBT/USD"`` (sep ``/``) -> canonical."""
    base, found, quote = venue_symbol.partition(sep)
    if not found or not base or not quote:
        raise SymbolError(f"symbol {venue_symbol!r} has no {sep!r} between base and quote")
    return canonical(base, quote)


def from_concatenated(venue_symbol: str, quotes: tuple[str, ...] = KNOWN_QUOTES) -> str:
    """``"BTCUSDT"`` -> ``"BTC/USDT"``, by the longest known quote suffix."""
    code = venue_symbol.strip().upper()
    for quote in quotes:
        if code.endswith(quote) and len(code) > len(quote):
            return canonical(code[: -len(quote)], quote)
    raise SymbolError(f"cannot split {venue_symbol!r} into base and quote: no known quote asset suffix")


def to_separated(symbol: str, sep: str, aliases: dict[str, str] | None = None) -> str:
    """Canonical -> venue spelling with a separator, e.g. ``BTC/USD`` -> ``BTC-USD``."""
    base, quote = split_canonical(symbol)
    aliases = aliases or {}
    return f"{aliases.get(base, base)}{sep}{aliases.get(quote, quote)}"


def to_concatenated(symbol: str) -> str:
    base, quote = split_canonical(symbol)
    return f"{base}{quote}"
