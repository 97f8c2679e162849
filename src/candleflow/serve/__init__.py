"""The HTTP API (FastAPI): latest features, recent candles, health and metrics.

:func:`candleflow.serve.app.create_app` builds the app from a Settings; other
parts (the live dashboard) mount themselves on it.
"""

from candleflow.serve.app import create_app

__all__ = ["create_app"]
