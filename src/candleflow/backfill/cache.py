"""The on-disk page cache and checkpoint of one REST backfill job.

One job is one (exchange, symbol, since) and lives in its own directory::

    <data_dir>/backfill/rest/<exchange>/<BASE-QUOTE>/since-<since_ms>/
        checkpoint.json        where the next request starts, counters, bad pages
        pages/000000.json ...  every page fetched, in order: the venue's raw
                               response bodies and the trades parsed from them

Durability order: a page file is written under a temporary name, fsynced and
renamed into place *before* the checkpoint that counts it is replaced the same
way. A process killed at any instant therefore leaves either the old
checkpoint (the page is fetched again; a leftover page file with that number
is simply overwritten) or the new one; the cursor in the checkpoint always
belongs to the last page on disk, so a rerun continues with no hole, and
trade ids repeated across page boundaries are dropped (no duplicate).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from candleflow.store.offline import path_symbol


class PageError(msgspec.Struct):
    """A trade row of a page that could not be used (reported, skipped)."""

    reason: str
    detail: str
    raw: str


class BadPage(msgspec.Struct):
    """A page that stayed unusable after retries: where it was and why."""

    seq: int  # the page number it would have had
    cursor: str | None  # the request's position (None: started from since_ms)
    reason: str
    skipped_to: str | None = None  # the cursor the backfill continued from (None: it stopped there)


class CachedPage(msgspec.Struct):
    """One REST page as fetched: the request position, the raw bodies and the parsed trades (columns)."""

    seq: int
    cursor: str | None
    next_cursor: str | None
    fetched_ms: int
    responses: list[str]  # raw response bodies, in request order
    trade_id: list[str]
    price: list[float]
    qty: list[float]
    side: list[str]
    ts_ms: list[int]
    recv_ms: list[int]
    errors: list[PageError] = []
    repeats: int = 0  # trades dropped because the previous page already had them


class Checkpoint(msgspec.Struct):
    exchange: str
    symbol: str
    since_ms: int
    pages: int = 0  # pages 0 .. pages-1 are on disk
    cursor: str | None = None  # the next request's position; None: start from since_ms
    trades: int = 0  # unique trades cached (ts >= since_ms)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None  # newest trade time cached
    bad_rows: int = 0
    repeats: int = 0
    rate_limited: int = 0
    bad_pages: list[BadPage] = []
    caught_up: bool = False  # the venue had nothing newer at the last request
    stopped: str = ""  # why the last run could not continue ("" when it could)
    last_page_ids: list[str] = []  # trade ids of the last page, to drop repeats on the next one


_encoder = msgspec.json.Encoder()
_page_decoder = msgspec.json.Decoder(CachedPage)
_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PageCache:
    def __init__(self, data_dir: str | os.PathLike[str], exchange: str, symbol: str, since_ms: int) -> None:
        self.exchange, self.symbol, self.since_ms = exchange, symbol, since_ms
        self.root = Path(data_dir) / "backfill" / "rest" / exchange / path_symbol(symbol) / f"since-{since_ms}"
        self.pages_dir = self.root / "pages"
        self.checkpoint_path = self.root / "checkpoint.json"

    def load(self) -> Checkpoint:
        """The saved checkpoint, or a fresh one when this job never ran."""
        try:
            data = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return Checkpoint(exchange=self.exchange, symbol=self.symbol, since_ms=self.since_ms)
        try:
            checkpoint = _checkpoint_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{self.checkpoint_path}: unreadable checkpoint ({exc}); "
                             f"delete {self.root} to start this backfill over") from None
        if (checkpoint.exchange, checkpoint.symbol, checkpoint.since_ms) != (self.exchange, self.symbol, self.since_ms):
            raise ValueError(f"{self.checkpoint_path} belongs to another job")
        return checkpoint

    def page_path(self, seq: int) -> Path:
        return self.pages_dir / f"{seq:06d}.json"

    def commit(self, page: CachedPage, checkpoint: Checkpoint) -> None:
        """Make `page` durable, then the checkpoint that counts it."""
        self.pages_dir.mkdir(parents=True, exist_ok=True)
        _write_durably(self.page_path(page.seq), _encoder.encode(page))
        self.save(checkpoint)

    def save(self, checkpoint: Checkpoint) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_durably(self.checkpoint_path, _encoder.encode(checkpoint))

    def pages(self, checkpoint: Checkpoint | None = None) -> Iterator[CachedPage]:
        """The committed pages in order (a page file beyond the checkpoint was never committed)."""
        checkpoint = checkpoint or self.load()
        for seq in range(checkpoint.pages):
            yield _page_decoder.decode(self.page_path(seq).read_bytes())
