"""Dead letters: input that could not be used, kept with its reason and raw bytes.

Every service sends what it cannot parse or must reject to the `dlq` topic
instead of crashing or dropping it (DESIGN.md, principle 5). The record is
JSON; ``raw_base64`` holds the exact bytes, ``raw`` a readable copy.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    service: str  # ingest | candles | features | sink | backfill
    reason: str  # short machine-friendly cause, e.g. "invalid_json", "late"
    detail: str = ""  # human-readable explanation
    raw: str = ""
    raw_base64: str = ""
    source: str = ""  # where it came from: exchange name, topic, file:line
    key: str = ""
    ts_ms: int = 0  # when it was dead-lettered


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def dead_letter(service: str, reason: str, raw: bytes | str | None, *, detail: str = "",
                source: str = "", key: str = "", now_ms: int | None = None) -> DeadLetter:
    data = raw.encode() if isinstance(raw, str) else (raw or b"")
    return DeadLetter(
        service=service, reason=reason, detail=detail, source=source, key=key,
        raw=data.decode("utf-8", errors="replace"),
        raw_base64=base64.b64encode(data).decode("ascii"),
        ts_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return _encoder.encode(letter)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _decoder.decode(raw)


def raw_bytes(letter: DeadLetter) -> bytes:
    return base64.b64decode(letter.raw_base64)


def as_dict(letter: DeadLetter) -> dict[str, Any]:
    return msgspec.structs.asdict(letter)
