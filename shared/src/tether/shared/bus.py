"""The NATS bus: typed publish/subscribe of msgspec events and JetStream key-value helpers over nats-py.

Every service talks to NATS through this module, so reconnect policy, decoding and error handling live once.
A message that fails to decode is logged as a structured error, counted, and skipped: it never ends a
subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter

from tether.shared import events
from tether.shared.errors import BusError, InvalidValue, RevisionMismatch

log = structlog.get_logger(__name__)

T = TypeVar("T")

DECODE_ERRORS = Counter(
    "tether_bus_decode_errors_total",
    "Messages received from NATS that failed to decode and were skipped",
    ["subject"],
)
MESSAGES_RECEIVED = Counter("tether_bus_messages_received_total", "Messages decoded from NATS", ["kind"])

Handler = Callable[[T, str], Awaitable[None]]

_KV_OPERATION = "KV-Operation"
# JetStream's "wrong last sequence" API errors: an expected-revision write lost the race.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_MARKER_REASON = "Nats-Marker-Reason"


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with full-range jitter: ``jitter`` in [0, 1) picks a point in [d/2, d)."""
    delay: float = min(cap, base * 2.0 ** min(attempt, 16))
    return delay * (0.5 + jitter / 2)


def _reconnect_handler(base: float, cap: float) -> Callable[[list[Any], dict[str, Any]], tuple[Any, float]]:
    def choose(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        # The server tried least recently is the one with the fewest reconnect attempts.
        server = min(servers, key=lambda candidate: candidate.reconnects)
        return server, backoff_delay(server.reconnects, base=base, cap=cap, jitter=random.random())

    return choose


def _subject_label(subject: str) -> str:
    # Bound the label's cardinality: keep the first four tokens (tether.v1.<domain>.<kind>).
    return ".".join(subject.split(".")[:4])


class Bus:
    """A connection to NATS that reconnects forever with jittered backoff."""

    def __init__(self, client: NatsClient, name: str) -> None:
        self._nc = client
        self._js: JetStreamContext = client.jetstream()
        self.name = name

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        name: str,
        initial_timeout: float | None = 10.0,
        reconnect_wait: float = 0.1,
        reconnect_cap: float = 2.0,
    ) -> Bus:
        """Connect within ``initial_timeout`` seconds (None: wait forever).

        Once connected, it reconnects forever with jittered exponential backoff from ``reconnect_wait`` up to
        ``reconnect_cap`` seconds; nats-py re-establishes the subscriptions.
        """
        urls = [s.strip() for s in servers.split(",")] if isinstance(servers, str) else servers
        bound = log.bind(bus=name)

        async def on_error(exc: Exception) -> None:
            bound.warning("nats_error", error=str(exc) or type(exc).__name__)

        async def on_disconnect() -> None:
            bound.warning("nats_disconnected")

        async def on_reconnect() -> None:
            bound.info("nats_reconnected")

        options: dict[str, Any] = {
            "servers": urls,
            "name": name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": reconnect_wait,
            "reconnect_to_server_handler": _reconnect_handler(reconnect_wait, reconnect_cap),
            "connect_timeout": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        try:
            # nats-py itself retries the first connection (max_reconnect_attempts=-1); bound it here.
            client = await asyncio.wait_for(nats.connect(**options), initial_timeout)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"could not connect to NATS at {','.join(urls)}: {exc or 'timed out'}") from exc
        return cls(client, name)

    @property
    def client(self) -> NatsClient:
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        return self._js

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def publish(self, subject: str, event: msgspec.Struct) -> None:
        try:
            await self._nc.publish(subject, events.encode(event))
        except nats.errors.Error as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc

    async def subscribe(
        self,
        subject: str,
        event_type: type[T],
        handler: Handler[T],
        *,
        queue: str = "",
    ) -> Subscription:
        """Deliver every message on ``subject`` decoded as ``event_type`` to ``handler(event, subject)``.

        With ``queue``, instances sharing the queue name split the messages between them.
        """
        decoder = msgspec.json.Decoder(event_type)
        bound = log.bind(bus=self.name, subscription=subject)
        kind = event_type.__name__

        async def on_message(msg: Msg) -> None:
            try:
                event = decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                DECODE_ERRORS.labels(_subject_label(msg.subject)).inc()
                bound.error("bus_decode_failed", subject=msg.subject, error=str(exc), size=len(msg.data))
                return
            MESSAGES_RECEIVED.labels(kind).inc()
            try:
                await handler(event, msg.subject)
            except Exception:
                bound.exception("bus_handler_failed", subject=msg.subject)

        try:
            sub = await self._nc.subscribe(subject, queue=queue, cb=on_message)
        except nats.errors.Error as exc:
            raise BusError(f"subscribe to {subject} failed: {exc}") from exc
        return Subscription(sub)

    async def kv(
        self, bucket: str, *, history: int = 1, ttl: float | None = None, create: bool = True
    ) -> KeyValue:
        """The key-value bucket ``bucket`` (file-backed), created with ``history``/``ttl`` when missing."""
        try:
            store = await self._js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise BusError(f"key-value bucket {bucket} does not exist") from None
            config = js_api.KeyValueConfig(
                bucket=bucket, history=history, ttl=ttl, storage=js_api.StorageType.FILE
            )
            try:
                store = await self._js.create_key_value(config=config)
            except nats.js.errors.Error as exc:
                raise BusError(f"creating key-value bucket {bucket} failed: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"opening key-value bucket {bucket} failed: {exc}") from exc
        return KeyValue(self, bucket, store)

    async def flush(self, timeout: float = 2.0) -> None:
        await self._nc.flush(timeout=int(timeout) or 1)

    async def close(self, drain_timeout: float = 0.5) -> None:
        """Drain subscriptions and pending publishes for up to ``drain_timeout`` seconds, then close.

        The bound keeps shutdown inside the runtime's budget: a subscription whose handler is mid-flight
        (a JetStream consumer waiting on the server, say) must not hold the process open.
        """
        if self._nc.is_closed:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._nc.drain(), drain_timeout)
        with contextlib.suppress(nats.errors.Error):
            await self._nc.close()


class Subscription:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class KvEntry(msgspec.Struct, Generic[T], frozen=True):
    """One key's value at one revision. ``value`` is None when the key was deleted or purged."""

    key: str
    revision: int
    value: T | None


class Synced(msgspec.Struct, frozen=True):
    """Marks the end of the initial values in a watch: later entries are live changes."""


SYNCED = Synced()


class KeyValue:
    """A JetStream key-value bucket holding msgspec values (JSON)."""

    def __init__(self, bus: Bus, bucket: str, store: Any) -> None:
        self._bus = bus
        self.bucket = bucket
        self._store = store
        self._stream = f"KV_{bucket}"

    async def put(self, key: str, value: msgspec.Struct, *, expected_revision: int | None = None) -> int:
        """Write ``value``; with ``expected_revision``, only if that is still the latest (0: a new key).

        Returns the new revision. Raises RevisionMismatch when another writer got there first.
        """
        data = events.encode(value)
        try:
            if expected_revision is None:
                return int(await self._store.put(key, data))
            return int(await self._store.update(key, data, last=expected_revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionMismatch(self.bucket, key, expected_revision) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"put {self.bucket}/{key} failed: {exc}") from exc

    async def put_raw(self, key: str, data: bytes) -> int:
        """Write bytes as they are (tests use this to plant garbage)."""
        return int(await self._store.put(key, data))

    async def get(self, key: str, value_type: type[T]) -> KvEntry[T] | None:
        """The key's latest entry: None if it never existed, ``value=None`` if it was deleted.

        Raises InvalidValue (with the revision) when the stored bytes do not decode as ``value_type``.
        """
        try:
            entry = await self._store.get(key)
        except nats.js.errors.KeyNotFoundError as missing:
            # nats-py reports a deleted key as not found, carrying the delete marker's entry.
            if missing.entry is not None:
                return KvEntry(key=key, revision=int(missing.entry.revision), value=None)
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"get {self.bucket}/{key} failed: {exc}") from exc
        revision = int(entry.revision)
        try:
            value = msgspec.json.decode(entry.value, type=value_type)
        except msgspec.DecodeError as exc:
            raise InvalidValue(self.bucket, key, revision, str(exc)) from None
        return KvEntry(key=key, revision=revision, value=value)

    async def delete(self, key: str, *, expected_revision: int | None = None) -> None:
        try:
            await self._store.delete(key, last=expected_revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionMismatch(self.bucket, key, expected_revision) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionMismatch(self.bucket, key, expected_revision) from None
            raise BusError(f"delete {self.bucket}/{key} failed: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"delete {self.bucket}/{key} failed: {exc}") from exc

    def watch(
        self,
        value_type: type[T],
        *,
        from_revision: int | None = None,
        keys: str = ">",
        heartbeat: float = 1.0,
    ) -> KvWatch[T]:
        """Watch the bucket: the initial values, then :data:`SYNCED`, then every change in revision order.

        Without ``from_revision`` the initial values are each key's latest; with it, every revision from
        ``from_revision`` on. The watch survives NATS restarts: it resumes after the last revision delivered.
        """
        return KvWatch(self, value_type, from_revision, keys, heartbeat)


class KvWatch(Generic[T]):
    """An async iterator of :class:`KvEntry` and one :data:`SYNCED` marker; close it with ``aclose()``."""

    def __init__(
        self, kv: KeyValue, value_type: type[T], from_revision: int | None, keys: str, heartbeat: float
    ):
        self._kv = kv
        self._decoder = msgspec.json.Decoder(value_type)
        self._subject = f"$KV.{kv.bucket}.{keys}"
        self._prefix_len = len(f"$KV.{kv.bucket}.")
        self._from_revision = from_revision
        self._heartbeat = heartbeat
        self._queue: asyncio.Queue[KvEntry[T] | Synced] = asyncio.Queue()
        self._sub: Any = None
        self._synced = False
        self._last_revision = 0
        self._log = log.bind(bucket=kv.bucket)

    async def _start(self) -> None:
        if self._from_revision is None:
            policy, start = js_api.DeliverPolicy.LAST_PER_SUBJECT, None
        else:
            policy, start = js_api.DeliverPolicy.BY_START_SEQUENCE, self._from_revision
        config = js_api.ConsumerConfig(opt_start_seq=start) if start else None
        self._sub = await self._kv._bus.jetstream.subscribe(
            self._subject,
            stream=self._kv._stream,
            cb=self._on_message,
            ordered_consumer=True,
            idle_heartbeat=self._heartbeat,
            deliver_policy=policy,
            config=config,
            inactive_threshold=300.0,
        )
        info = await self._sub.consumer_info()
        if info.num_pending == 0 and self._sub.delivered == 0:
            self._mark_synced()

    def _mark_synced(self) -> None:
        if not self._synced:
            self._synced = True
            self._queue.put_nowait(SYNCED)

    async def _on_message(self, msg: Msg) -> None:
        meta = msg.metadata
        revision = int(meta.sequence.stream)
        if revision <= self._last_revision:
            return  # redelivered after a consumer reset
        self._last_revision = revision
        key = msg.subject[self._prefix_len :]
        headers = msg.headers or {}
        if _KV_OPERATION in headers or _MARKER_REASON in headers:
            self._queue.put_nowait(KvEntry(key=key, revision=revision, value=None))
        else:
            try:
                value = self._decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                DECODE_ERRORS.labels(f"$KV.{self._kv.bucket}").inc()
                self._log.error(
                    "kv_decode_failed", key=key, revision=revision, error=str(exc), size=len(msg.data)
                )
            else:
                MESSAGES_RECEIVED.labels("kv").inc()
                self._queue.put_nowait(KvEntry(key=key, revision=revision, value=value))
        if meta.num_pending == 0:
            self._mark_synced()

    @property
    def last_revision(self) -> int:
        return self._last_revision

    def __aiter__(self) -> AsyncIterator[KvEntry[T] | Synced]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[KvEntry[T] | Synced]:
        if self._sub is None:
            await self._start()
        while True:
            yield await self._queue.get()

    async def aclose(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._sub.unsubscribe()
            self._sub = None
