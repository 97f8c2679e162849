"""Structured logging: JSON lines when not on a terminal, readable console otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

from candleflow.config import LogConfig


def configure_logging(config: LogConfig | None = None, service: str | None = None) -> None:
    config = config or LogConfig()
    as_json = config.format == "json" or (config.format == "auto" and not sys.stderr.isatty())
    level = getattr(logging, config.level)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
