"""Exchange adapters, one module per venue, found by name (imported lazily)."""

from __future__ import annotations

import importlib
from types import ModuleType

# Venue id (the Trade.exchange value) -> adapter module.
ADAPTERS: dict[str, str] = {
    "kraken": "candleflow.exchanges.kraken",
    "binance": "candleflow.exchanges.binance",
    "coinbase": "candleflow.exchanges.coinbase",
    "bybit": "candleflow.exchanges.bybit",
    "okx": "candleflow.exchanges.okx",
}


def get_adapter(name: str) -> ModuleType:
    try:
        return importlib.import_module(ADAPTERS[name])
    except KeyError:
        raise ValueError(f"unknown exchange {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
