"""structlog, configured once per process: JSON lines in containers, a readable console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# The level configure() set last: failures carry their traceback only at debug.
_configured = {"level": logging.INFO}


def tracebacks_wanted() -> bool:
    """Whether failures should carry their traceback: only at ``--log-level debug``."""
    return _configured["level"] <= logging.DEBUG


def configure(
    *,
    service: str,
    instance: str,
    version: str,
    fmt: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process and bind service, instance and version on every line.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a terminal, JSON otherwise).
    Standard-library loggers (grpc, nats, asyncio) are routed through the same renderer.
    """
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    threshold = _LEVELS[level]
    _configured["level"] = threshold
    structlog.configure(
        processors=[
            *shared,
            _bind_static(service=service, instance=instance, version=version),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _bind_static(service=service, instance=instance, version=version)],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(threshold, logging.INFO))
    # urllib3 (under the Kubernetes client) warns of each of its own connection retries; the callers log
    # theirs once per backoff window, naming the server. Its lines stay visible at --log-level debug.
    logging.getLogger("urllib3.connectionpool").setLevel(max(threshold, logging.ERROR))


def _bind_static(**static: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in static.items():
            event.setdefault(key, value)
        return event

    return processor
