"""The Rust build of ingest's hot path (``native/``: ``candleflow.exchanges._native``), if installed.

setup.py builds it when a Rust toolchain is there (setuptools-rust), as it compiles
exchanges/fastpath.py with mypyc. Its parsers (``TradeFrames``) read the usual Kraken and
Binance trade frames straight to the encoded Trade records, for ingest's replay; its
``TradeDedup`` is ingest's de-duplication window (exchanges/dedup.py). Without the build,
``NATIVE`` is None and ingest uses the adapters' ``fast_trades`` and fastpath.TradeDedup,
with the same results.
"""

from __future__ import annotations

from types import ModuleType

NATIVE: ModuleType | None
try:
    from candleflow.exchanges import _native as NATIVE
except ImportError:  # not built: no Rust toolchain at install time, or CANDLEFLOW_PURE_PYTHON=1
    NATIVE = None
