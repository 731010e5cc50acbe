"""Work h2 and hpack do on every frame that a proxy never uses, removed without changing behaviour.

Profiling the data path showed three costs that buy nothing here:

* h2 formats ``repr(frame)`` for a trace log on every received frame, which its
  default logger then discards. The frame itself formats identically if a real
  logger ever asks, so the string is built lazily instead.
* hpack logs every header it encodes or decodes at DEBUG: dozens of logger calls
  per request. Its module loggers are replaced by ones that keep warnings and
  errors only.
* h2 copies every header list it sends into fresh bytes tuples. The copy is only
  read, and the proxy's headers are bytes already, so those pass through as they
  are; anything else still gets h2's conversion.

Versions are pinned (h2 4.4.1); the unit tests drive these paths frame by frame.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import h2.connection
import h2.stream
import hpack.hpack
import hpack.table


class _QuietLog:
    def __init__(self, logger: logging.Logger) -> None:
        self.warning = logger.warning
        self.error = logger.error

    def debug(self, *_args: object, **_kwargs: object) -> None:
        return None

    info = debug


def _lazy_repr(frame: object) -> object:
    return frame


def install() -> None:
    """Idempotent; called when the h2 connection factory is imported."""
    if getattr(h2.connection, "repr", None) is _lazy_repr:
        return
    cast(Any, h2.connection).repr = _lazy_repr
    for module in (hpack.hpack, hpack.table):
        cast(Any, module).log = _QuietLog(logging.getLogger(module.__name__))
    stream = cast(Any, h2.stream)
    convert = stream.utf8_encode_headers

    def bytes_headers(headers: Any) -> Any:
        if headers.__class__ is list or headers.__class__ is tuple:
            for name, value in headers:
                if name.__class__ is not bytes or value.__class__ is not bytes:
                    return convert(headers)
            return headers
        return convert(headers)

    stream.utf8_encode_headers = bytes_headers
