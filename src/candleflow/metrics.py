"""Prometheus metrics shared by the services; each service exposes `/metrics`."""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

DEAD_LETTERS = Counter(
    "candleflow_dead_letters_total", "Records sent to the dead-letter topic", ["service", "reason"]
)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose /metrics on `port` (None: not exposed; 0: any free port)."""
    if port is not None:
        start_http_server(port, addr=host)
