"""Field conversions shared by the adapters: venue text -> canonical values.

Each helper raises :class:`FieldError` carrying the machine-friendly reason
(``invalid_price``, ``invalid_qty``, ``invalid_side``, ``invalid_timestamp``,
``unknown_symbol`` …) so an adapter can turn it into a :class:`FrameError`
without guessing. Numbers are converted once, from the exchange's own text
(a JSON number's literal or a decimal string), by a single ``float(text)``.
"""

from __future__ import annotations

import math
import re

from collections.abc import Callable
from typing import Any

import msgspec

from candleflow.exchanges.base import FrameError
from candleflow.exchanges.symbols import SymbolError

# A JSON number literal, or the decimal strings venues send (no exponent needed,
# but allowed). Rejects "nan", "inf", "0x10", "1_000", " 1" that float() would take.
NUMBER_TEXT = re.compile(r"^-?(?:\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?$", re.ASCII)


class FieldError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def to_frame_error(self, raw: bytes) -> FrameError:
        return FrameError(self.reason, self.detail, raw)


def number_text(value: object, field: str) -> str:
    """The literal text of a number given as msgspec.Raw (JSON number) or str."""
    if isinstance(value, msgspec.Raw):
        text = bytes(value).decode("utf-8", "replace")
        if text.startswith('"'):
            try:
                text = msgspec.json.decode(bytes(value), type=str)
            except msgspec.DecodeError:
                raise FieldError(f"invalid_{field}", f"{field} is not a number: {text[:40]}") from None
        return text
    if isinstance(value, str):
        return value
    raise FieldError(f"invalid_{field}", f"{field} must be a number or decimal text, got {type(value).__name__}")


def positive_float(value: object, field: str) -> float:
    """A finite number > 0 from the exchange's text; reason ``invalid_<field>``."""
    text = value if type(value) is str else number_text(value, field)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    # float() also takes "nan", "inf", "1_000" and spaces; the pattern check runs only
    # on the unusual texts, so the common case costs one float().
    if not (number > 0 and math.isfinite(number)) or not NUMBER_TEXT.match(text):
        raise FieldError(f"invalid_{field}", f"{field} must be a finite number > 0, got {text[:40]}")
    return number


def trade_id_text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FieldError("invalid_trade_id", f"trade_id must be an integer or text, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise FieldError("invalid_trade_id", "trade_id is empty")
    return text


def decode_entry(decoder: msgspec.json.Decoder, raw: bytes, what: str = "trade entry") -> Any:
    """One trade entry as the venue's wire struct; a missing or ill-typed field is a FieldError."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise field_error_of(exc, what) from None


def field_error_of(exc: msgspec.ValidationError, what: str = "trade entry") -> FieldError:
    reason = "missing_field" if "missing required field" in str(exc) else "invalid_field"
    return FieldError(reason, f"{what}: {exc}")


def known_symbol(to_canonical: Callable[[str], str], venue_symbol: str) -> str:
    """The canonical ``BASE/QUOTE`` of a venue's symbol; one it cannot map is a FieldError."""
    try:
        return to_canonical(venue_symbol)
    except SymbolError as exc:
        raise FieldError("unknown_symbol", str(exc)) from None
