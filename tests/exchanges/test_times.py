import calendar

import pytest
from hypothesis import given, strategies as st

from candleflow.exchanges.times import epoch_ms, epoch_ns_text_ms, epoch_seconds_text_ms, rfc3339_ms


@pytest.mark.parametrize(("text", "expected"), [
    ("2023-10-06T17:35:55.440295Z", 1696613755440),  # microseconds truncated, not rounded
    ("2023-10-06T17:35:55.999999999Z", 1696613755999),  # 9 digits
    ("2023-10-06T17:35:55.4Z", 1696613755400),  # 1 digit
    ("2023-10-06T17:35:55Z", 1696613755000),  # none
    ("2023-10-06T19:35:55.440+02:00", 1696613755440),  # offset
    ("1970-01-01T00:00:00.000Z", 0),
])
def test_rfc3339_to_ms_by_integer_arithmetic(text, expected):
    assert rfc3339_ms(text) == expected


@pytest.mark.parametrize("text", ["2023-10-06", "2023-13-06T17:35:55Z", "2023-10-06T17:35:55.1234567890Z",
                                  "2023-10-06T17:35:55.44", "nonsense", ""])
def test_rfc3339_rejects_malformed(text):
    with pytest.raises(ValueError):
        rfc3339_ms(text)


@given(st.integers(min_value=0, max_value=253402300799), st.integers(min_value=0, max_value=999_999_999))
def test_rfc3339_agrees_with_exact_nanoseconds(seconds, nanos):
    y, mo, d, h, mi, s = __import__("time").gmtime(seconds)[:6]
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{nanos:09d}Z"
    assert rfc3339_ms(text) == calendar.timegm((y, mo, d, h, mi, s)) * 1000 + nanos // 1_000_000


def test_epoch_forms():
    assert epoch_ms(1672515782136) == 1672515782136
    assert epoch_ms("1672515782136") == 1672515782136
    assert epoch_seconds_text_ms("1688669597.8277369") == 1688669597827
    assert epoch_seconds_text_ms("1688669597") == 1688669597000
    assert epoch_ns_text_ms("1688669599000500000") == 1688669599000
    for bad in (True, -1, "12.5", "", "1e3"):
        with pytest.raises(ValueError):
            epoch_ms(bad)


@pytest.mark.parametrize("text", ["2023-10-06T17:35x55.123Z", "2023-10-06T17:35:5٣.123Z", "2023-10-06T17:35:61.1Z",
                                  "2023-10-06T17:35:55.12a4Z", "2023-02-30T17:35:55.123Z"])
def test_fast_path_rejects_what_the_full_parser_rejects(text):
    with pytest.raises(ValueError):
        rfc3339_ms(text)
