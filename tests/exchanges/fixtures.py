"""Loading recorded exchange frames from tests/exchanges/fixtures/<venue>/."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(venue: str, name: str) -> bytes:
    """The exact bytes of one fixture file, without a trailing newline."""
    return (FIXTURES / venue / name).read_bytes().rstrip(b"\n")
