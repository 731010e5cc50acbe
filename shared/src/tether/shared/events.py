"""Every message that crosses NATS, as msgspec Structs, JSON-encoded.

External subscribers in any language read these: each carries ``schema_version``; a change that breaks
readers bumps it. docs/events.md documents each subject and payload with an example.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")


class Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every bus payload. Unknown fields are ignored so newer publishers don't break older readers."""

    schema_version: int = 1


class Heartbeat(Event, frozen=True, kw_only=True):
    """Published every 2 s by every service instance on ``tether.v1.health.<service>.<instance>``."""

    service: str
    instance: str
    version: str
    uptime_seconds: float
    ready: bool


_encoder = msgspec.json.Encoder()


def encode(event: msgspec.Struct) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes, event_type: type[T]) -> T:
    return msgspec.json.decode(data, type=event_type)
