"""A deterministic synthetic market: seeded trades for several symbols, no exchange needed.

Each symbol follows a geometric random walk. Trade arrivals are a Poisson
process whose rate switches between regimes (quiet spells, normal trading,
bursts) as a Markov chain, sizes are log-normal with occasional block trades,
and the taker side leans with the last move. The same seed, symbols and start
time give the same trades, byte for byte, so demos and benchmarks are
reproducible. Trades carry ``exchange="sim"`` by default (a venue id of its
own, so synthetic data never mixes with a real venue's keys); pass another
name to stand in for one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from candleflow.records import Trade

DEFAULT_EXCHANGE = "sim"
DEFAULT_SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")

# Typical price and trade size of a few markets, so the numbers look familiar.
_PROFILES: dict[str, tuple[float, float]] = {
    "BTC": (60_000.0, 0.02), "ETH": (3_000.0, 0.3), "SOL": (150.0, 5.0), "XRP": (0.6, 800.0),
    "DOGE": (0.15, 3_000.0), "ADA": (0.45, 1_000.0),
}

# regime -> (trades per second per symbol, probability per second of leaving the regime)
_REGIMES = {"quiet": (0.3, 0.05), "normal": (4.0, 0.03), "burst": (40.0, 0.25)}
_NEXT = {"quiet": ("normal",), "normal": ("quiet", "burst"), "burst": ("normal",)}


@dataclass
class _Market:
    symbol: str
    price: float
    size: float
    regime: str = "normal"
    next_id: int = 1
    last_move: float = 0.0


class SimulatedMarket:
    def __init__(self, symbols: list[str] | tuple[str, ...] = DEFAULT_SYMBOLS, *, seed: int = 42,
                 start_ms: int = 1_700_000_000_000, exchange: str = DEFAULT_EXCHANGE,
                 volatility_per_s: float = 0.0005) -> None:
        self.rng = random.Random(seed)
        self.exchange = exchange
        self.vol = volatility_per_s
        self.now_ms = start_ms
        self.markets = []
        for symbol in symbols:
            base = symbol.partition("/")[0]
            price, size = _PROFILES.get(base, (100.0, 1.0))
            self.markets.append(_Market(symbol, price * math.exp(self.rng.gauss(0, 0.01)), size))

    def trades(self, count: int | None = None, *, recv_offset_ms: int = 0) -> Iterator[Trade]:
        """Trades in time order; `count` None: forever."""
        produced = 0
        while count is None or produced < count:
            # time to the next trade across all symbols (sum of the regimes' rates)
            rates = [_REGIMES[m.regime][0] for m in self.markets]
            total = sum(rates)
            gap_s = self.rng.expovariate(total)
            step_ms = max(0, int(gap_s * 1000))
            self.now_ms += step_ms
            self._switch_regimes(gap_s)
            market = self.rng.choices(self.markets, weights=rates)[0]
            yield self._trade(market, gap_s, recv_offset_ms)
            produced += 1

    def _switch_regimes(self, elapsed_s: float) -> None:
        for market in self.markets:
            leave = _REGIMES[market.regime][1]
            if self.rng.random() < 1 - math.exp(-leave * max(elapsed_s, 1e-3)):
                market.regime = self.rng.choice(_NEXT[market.regime])

    def _trade(self, market: _Market, elapsed_s: float, recv_offset_ms: int) -> Trade:
        move = self.rng.gauss(0, self.vol * math.sqrt(max(elapsed_s, 1e-3)) * (3 if market.regime == "burst" else 1))
        market.price *= math.exp(move)
        market.last_move = move
        size = market.size * self.rng.lognormvariate(0, 1.0)
        if self.rng.random() < 0.01:
            size *= 20  # an occasional block trade
        lean = 0.5 + max(-0.2, min(0.2, move / (self.vol * 4)))
        side = "buy" if self.rng.random() < lean else "sell"
        trade_id = market.next_id
        market.next_id += 1
        price = float(f"{market.price:.6g}") if market.price < 1 else round(market.price, 2)
        return Trade(exchange=self.exchange, symbol=market.symbol, trade_id=str(trade_id), price=price,
                     qty=float(f"{size:.8g}"), side=side, ts_ms=self.now_ms,  # type: ignore[arg-type]
                     recv_ms=self.now_ms + recv_offset_ms)
