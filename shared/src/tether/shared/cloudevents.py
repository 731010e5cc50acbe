"""Mesh events as CloudEvents 1.0, structured JSON mode, as the CloudEvents NATS protocol binding describes.

The whole event is the message payload (``Content-Type: application/cloudevents+json`` is also set as a
NATS header); the Tether payload is its ``data``. The event's ``type`` carries the schema version
(``io.tether.endpoints.changed.v1``): a change that breaks readers is a new type. Readers ignore attributes
and data fields they do not know.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from tether.shared.errors import TetherError

CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
SPEC_VERSION: Literal["1.0"] = "1.0"

EventT = TypeVar("EventT", bound="EventData")


class EventData(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every event's ``data``. Subclasses name their CloudEvents ``type``."""

    event_type: ClassVar[str] = ""

    def event_subject(self) -> str | None:
        """The CloudEvents ``subject``: what the event is about, within its source."""
        return None


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, omit_defaults=True):
    """The envelope. Required attributes first; ``data`` is kept raw until its type is known."""

    specversion: Literal["1.0"]
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    source: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: Annotated[str, Meta(min_length=1, max_length=256)]
    time: datetime | None = None
    subject: Annotated[str, Meta(max_length=1024)] | None = None
    datacontenttype: str | None = None
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


class NotAnEvent(TetherError):
    """A message that is not a CloudEvents 1.0 event of the expected type; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(CloudEvent)


def encode(data: EventData, *, source: str, now: datetime | None = None, event_id: str = "") -> bytes:
    """The event's bytes: ``data`` wrapped in a fresh envelope from ``source``."""
    if not data.event_type:
        raise TypeError(f"{type(data).__name__} names no CloudEvents type")
    envelope = CloudEvent(
        specversion=SPEC_VERSION,
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=data.event_type,
        time=now or datetime.now(UTC),
        subject=data.event_subject(),
        datacontenttype=DATA_CONTENT_TYPE,
        data=msgspec.Raw(_encoder.encode(data)),
    )
    return _encoder.encode(envelope)


class EventDecoder(Generic[EventT]):
    """Decodes messages of one event type; anything else raises :class:`NotAnEvent`."""

    def __init__(self, data_type: type[EventT]) -> None:
        self.data_type = data_type
        self.event_type = data_type.event_type
        self._data_decoder = msgspec.json.Decoder(data_type)

    def decode(self, payload: bytes) -> tuple[CloudEvent, EventT]:
        try:
            envelope = _envelope_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise NotAnEvent("not_cloudevent", f"not a CloudEvents 1.0 JSON event: {exc}") from None
        if envelope.type != self.event_type:
            raise NotAnEvent("unknown_type", f"event type {envelope.type[:100]!r} is not {self.event_type!r}")
        if envelope.datacontenttype not in (None, DATA_CONTENT_TYPE):
            raise NotAnEvent("bad_content_type", f"datacontenttype {envelope.datacontenttype[:100]!r}")
        try:
            data = self._data_decoder.decode(envelope.data)
        except msgspec.DecodeError as exc:
            raise NotAnEvent("invalid_data", f"data of {self.event_type}: {exc}") from None
        return envelope, data


def source_for(component: str, instance: str) -> str:
    """The ``source`` of everything one process publishes: ``/tether/<component>/<instance>``."""
    return f"/tether/{component}/{instance}"
