"""The online-writer interface every backend implements, and the registry that finds them.

An online writer keeps the latest Features row per (market, timeframe) and must
never let an older row overwrite a newer one (DESIGN.md, principle 4): "older"
is judged by the row's event time, the candle end. Rows with the same event
time are the same identity and may be rewritten (idempotent replays).
``tests/store/test_contract.py`` runs the same cases against every backend.

Backends are registered by name with a dotted path and imported only when
chosen, so Redis's client is not loaded for SQLite users.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from candleflow.config import Settings


class MarketKey(NamedTuple):
    """What an online read asks for: one market at one timeframe."""

    exchange: str
    symbol: str
    timeframe: str


@dataclass
class WriteStats:
    rows: int = 0  # rows handed to write()
    written: int = 0  # rows sent to the store (the newest per key in the batch)
    superseded: int = 0  # rows dropped because a newer row of the same key was in the same batch
    stale: int = 0  # rows the store refused because it already held a newer one

    def __iadd__(self, other: WriteStats) -> WriteStats:
        self.rows += other.rows
        self.written += other.written
        self.superseded += other.superseded
        self.stale += other.stale
        return self


class OnlineWriter(ABC):
    """The narrow interface the sink and the readers use."""

    name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def setup(self) -> None:
        """Make the store ready (apply the Feast definitions, create tables, connect)."""

    @abstractmethod
    def write(self, rows: Sequence[dict[str, Any]]) -> WriteStats:
        """Upsert Features rows; durable when it returns; older never overwrites newer."""

    @abstractmethod
    def read(self, keys: Sequence[MarketKey]) -> list[dict[str, Any] | None]:
        """The latest row per key (None where the store holds nothing), in the order asked."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> OnlineWriter:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def newest_per_key(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The newest row (by end_ms; later in the batch wins a tie) per (exchange, symbol, timeframe).

    The online store keeps one row per key, so a batch only needs to send that
    one: this is what makes batched online writes cheap. Returns the rows and
    how many were superseded.
    """
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    count = 0
    for row in rows:
        count += 1
        key = (row["exchange"], row["symbol"], row["timeframe"])
        held = newest.get(key)
        if held is None or row["end_ms"] >= held["end_ms"]:
            newest[key] = row
    return list(newest.values()), count - len(newest)


# name -> "module:Class"; imported lazily by online_writer().
BACKENDS: dict[str, str] = {
    "sqlite": "candleflow.store.sqlite:SqliteWriter",
    "redis": "candleflow.store.redis:RedisWriter",
    "hopsworks": "candleflow.store.hopsworks:HopsworksWriter",
}


def writer_class(name: str) -> type[OnlineWriter]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown online store type {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def online_writer(settings: Settings) -> OnlineWriter:
    """The writer for ``store.online.type`` (not yet set up)."""
    return writer_class(settings.store.online.type)(settings)
