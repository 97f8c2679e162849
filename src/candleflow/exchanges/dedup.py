"""De-duplication of trades by (exchange, symbol, trade_id), in bounded memory.

Snapshots after a reconnect and REST gap fill both repeat trades already
published. :class:`TradeDedup` remembers the most recent ``capacity`` ids
(insertion order, oldest forgotten first), so memory stays flat however long
ingest runs; a repeat older than the window is far older than any snapshot
or gap-fill page can reach. It runs once per trade, so it lives in the
compiled ingest hot path (:mod:`candleflow.exchanges.fastpath`), and in the
Rust build of ``native/`` when that is installed, which keeps the same window
with the ids in one flat table instead of Python objects (the two give the same
answers: tests/exchanges/test_dedup.py).
"""

from __future__ import annotations

from candleflow.exchanges import fastpath
from candleflow.exchanges.native import NATIVE

TradeDedup = fastpath.TradeDedup if NATIVE is None else NATIVE.TradeDedup

__all__ = ["TradeDedup"]
