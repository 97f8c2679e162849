"""De-duplication of trades by (exchange, symbol, trade_id), in bounded memory.

Snapshots after a reconnect and REST gap fill both repeat trades already
published. :class:`TradeDedup` remembers the most recent ``capacity`` ids
(insertion order, oldest forgotten first), so memory stays flat however long
ingest runs; a repeat older than the window is far older than any snapshot
or gap-fill page can reach.
"""

from __future__ import annotations

from collections import deque

from candleflow.records import Trade


class TradeDedup:
    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        # A set answers "seen?"; the deque remembers the order in which to forget
        # (cheaper per trade than an OrderedDict, which keeps a linked list).
        self._seen: set[tuple[str, str, str]] = set()
        self._order: deque[tuple[str, str, str]] = deque()
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, trade: Trade) -> bool:
        return (trade.exchange, trade.symbol, trade.trade_id) in self._seen

    def add(self, trade: Trade) -> bool:
        """Remember `trade`; True when it is new, False for a duplicate."""
        key = (trade.exchange, trade.symbol, trade.trade_id)
        seen = self._seen
        if key in seen:
            self.duplicates += 1
            return False
        seen.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            seen.discard(order.popleft())
        return True

    def filter(self, trades: list[Trade]) -> list[Trade]:
        """The trades not seen before, in order (also de-duplicates within the list)."""
        return [t for t in trades if self.add(t)]
