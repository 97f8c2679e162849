"""Exchange timestamps -> epoch milliseconds, by integer arithmetic only.

Venues send time as RFC 3339 text with 0 to 9 fractional digits
(``2023-10-06T17:35:55.440295Z``), as epoch milliseconds (number or string),
or as epoch seconds with a fraction (Kraken REST ``1688669597.8277369``).
Going through a float of seconds would round microseconds into the wrong
millisecond, so every form is converted from its text; the sub-millisecond
part is truncated (DESIGN.md).
"""

from __future__ import annotations

import calendar
import re

from candleflow.exchanges.fastpath import remember_minute, utc_ms

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$",
    re.ASCII,
)
_DECIMAL = re.compile(r"^(\d+)(?:\.(\d+))?$", re.ASCII)


def rfc3339_ms(text: str) -> int:
    """``2023-10-06T17:35:55.440295Z`` -> ``1696613755440``. Raises ValueError."""
    # Fast path for the usual UTC form with 1 to 9 fractional digits: the minute is
    # parsed once and cached, then seconds and the fraction's first 3 digits are added.
    millis = utc_ms(text)  # compiled (exchanges/fastpath.py); -1 unless the minute is cached already
    if millis >= 0:
        return millis
    if 22 <= len(text) <= 30 and text[16] == ":" and text[19] == "." and text[-1] == "Z":
        seconds = text[17:19]
        fraction = text[20:-1]
        if seconds.isascii() and seconds.isdigit() and seconds < "60" and fraction.isascii() and fraction.isdigit():
            try:
                minute = _parse_rfc3339(text[:16] + ":00Z")
            except ValueError:
                pass  # the general path below names the problem with the whole text
            else:
                remember_minute(text[:16], minute)
                return minute + int(seconds) * 1000 + int((fraction + "00")[:3])
    return _parse_rfc3339(text)


def _parse_rfc3339(text: str) -> int:
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour <= 23
            and minute <= 59 and second <= 60):
        raise ValueError(f"timestamp out of range: {text[:64]!r}")
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"timestamp out of range: {text[:64]!r}") from exc
    fraction = match.group(7) or ""
    millis = int((fraction + "000")[:3])
    offset = match.group(8)
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds * 1000 + millis


def epoch_ms(value: int | str) -> int:
    """Epoch milliseconds given as an int or as digit text (``"1672515782136"``)."""
    if isinstance(value, bool):
        raise ValueError("epoch ms must be a number, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"epoch ms must be >= 0, got {value}")
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    raise ValueError(f"epoch ms must be an integer or digit text, got {value!r}"[:120])


def epoch_seconds_text_ms(text: str) -> int:
    """Decimal epoch seconds as text (``"1688669597.8277369"``) -> ms, truncated."""
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise ValueError(f"not decimal epoch seconds: {text[:64]!r}")
    fraction = match.group(2) or ""
    return int(match.group(1)) * 1000 + int((fraction + "000")[:3])


def epoch_ns_text_ms(text: str) -> int:
    """Epoch nanoseconds as digit text -> ms, truncated."""
    if not (text.isdigit() and text.isascii()):
        raise ValueError(f"not epoch nanoseconds: {text[:64]!r}")
    return int(text) // 1_000_000
