"""The NATS bus: CloudEvents publish/subscribe and JetStream key-value helpers over nats-py.

Every service talks to NATS through this module, so connection policy, authentication, decoding and error
handling live once:

* **Connecting.** The first connection and every reconnect follow one jittered exponential backoff, with
  one log line per backoff window naming the URL. Credentials that the server refuses, or a server
  certificate that the configured CA does not sign, end the attempt at once (retrying cannot help).
* **Authorisation.** A publish or subscription the server refuses (a permissions violation) is logged once
  per subject and window, counted in ``tether_bus_permission_denied_total``, and the operation waiting on it
  raises :class:`PermissionDenied` instead of timing out.
* **Decoding.** A message that is not a CloudEvent of the expected type, or whose data fails validation, is
  logged, counted in ``tether_bus_decode_errors_total`` and skipped: it never ends a subscription or a watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
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

from tether.shared import cloudevents, events
from tether.shared.backoff import Backoff, backoff_delay
from tether.shared.cloudevents import EventData, EventDecoder, NotAnEvent
from tether.shared.errors import (
    BusError,
    FatalError,
    InvalidValue,
    PermissionDenied,
    RevisionMismatch,
    SetupError,
)
from tether.shared.nats_settings import NatsSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
EventT = TypeVar("EventT", bound=EventData)

DECODE_ERRORS = Counter(
    "tether_bus_decode_errors_total",
    "Messages received from NATS that were not valid events or values and were skipped",
    ["subject", "reason"],
)
MESSAGES_RECEIVED = Counter("tether_bus_messages_received_total", "Messages decoded from NATS", ["kind"])
PERMISSION_DENIED = Counter(
    "tether_bus_permission_denied_total",
    "Publishes and subscriptions the NATS server refused for lack of permission",
    ["operation"],
)

Handler = Callable[[T, str], Awaitable[None]]

_KV_OPERATION = "KV-Operation"
# JetStream's "wrong last sequence" API errors: an expected-revision write lost the race.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_MARKER_REASON = "Nats-Marker-Reason"
# nats-py lower-cases the server's -ERR text before handing it over.
_PERMISSION_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)"?')
_DENIAL_LOG_WINDOW = 60.0
_HEADERS = {"Content-Type": cloudevents.CONTENT_TYPE}


class NatsUnavailable(FatalError, BusError):
    """NATS did not accept a connection within the connect timeout."""


class NatsRefused(SetupError, BusError):
    """NATS refused our credentials, or its certificate is not signed by our CA: the setup is wrong."""


def _subject_label(subject: str) -> str:
    # Bound the label's cardinality: keep the first four tokens (tether.v1.<domain>.<kind>).
    return ".".join(subject.split(".")[:4])


def _read_secret_file(option: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read {option} file {path}: {exc.strerror}", f"check {option}") from None


def _tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not settings.uses_tls:
        return None
    from tether.shared.tls import KeyPair, client_ssl_context

    pair = None
    if settings.tls_cert_file:
        pair = KeyPair(
            key_pem=_read_secret_file("--nats-tls-key", settings.tls_key_file),
            chain_pem=_read_secret_file("--nats-tls-cert", settings.tls_cert_file),
        )
    try:
        if settings.tls_ca_file:
            return client_ssl_context(_read_secret_file("--nats-tls-ca", settings.tls_ca_file), pair)
        return client_ssl_context(None, pair)
    except (ssl.SSLError, ValueError) as exc:
        raise SetupError(
            f"the NATS TLS files are not valid PEM: {exc}",
            "check --nats-tls-ca, --nats-tls-cert, --nats-tls-key",
        ) from None


def _auth_options(settings: NatsSettings) -> dict[str, Any]:
    if settings.creds_file:
        _read_secret_file("--nats-creds", settings.creds_file)
        return {"user_credentials": settings.creds_file}
    if settings.nkey_seed_file:
        seed = _read_secret_file("--nats-nkey", settings.nkey_seed_file).strip()
        import nkeys

        try:
            nkeys.from_seed(bytearray(seed)).wipe()
        except nkeys.NkeysError:
            raise SetupError(
                f"--nats-nkey file {settings.nkey_seed_file} holds no valid nkey seed",
                "write the user's seed (SU...) into it",
            ) from None
        return {"nkeys_seed_str": seed.decode("ascii")}
    if settings.user:
        return {"user": settings.user, "password": settings.password}
    if settings.token:
        return {"token": settings.token}
    return {}


def _refusal(exc: BaseException, url: str) -> NatsRefused | None:
    """The connection error as a refusal that retrying cannot fix, or None if it may be transient."""
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower():
        return NatsRefused(
            f"NATS at {url} refused the credentials (authorization violation)",
            "check --nats-creds / --nats-nkey / --nats-user against the server's users",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return NatsRefused(
            f"the TLS certificate of NATS at {url} is not trusted: {exc.verify_message}",
            "point --nats-tls-ca at the CA bundle that signed the server's certificate",
        )
    return None


class _Denials:
    """Permission violations reported by the server, matched against the operations waiting on them."""

    def __init__(self, bound: Any) -> None:
        self._log = bound
        self._waiting: dict[str, set[asyncio.Future[PermissionDenied]]] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def expect(self, subject: str) -> asyncio.Future[PermissionDenied]:
        future: asyncio.Future[PermissionDenied] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(subject.lower(), set()).add(future)
        return future

    def forget(self, subject: str, future: asyncio.Future[PermissionDenied]) -> None:
        waiting = self._waiting.get(subject.lower())
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[subject.lower()]

    def record(self, operation: str, subject: str) -> None:
        PERMISSION_DENIED.labels(operation).inc()
        key = (operation, subject)
        now = time.monotonic()
        if now - self._last_logged.get(key, -_DENIAL_LOG_WINDOW) >= _DENIAL_LOG_WINDOW:
            # An operation awaiting this refusal raises it, and its caller reports it (at start-up, as the
            # process's one error line): a warning here. A refusal nothing waits for is the error itself.
            emit = self._log.warning if self._waiting.get(subject) else self._log.error
            emit(
                "nats_permission_denied",
                operation=operation,
                subject=subject,
                repeated=self._suppressed.pop(key, 0),
                hint="this user's permissions do not allow it; see docs/events.md, permissions",
            )
            self._last_logged[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
        for future in self._waiting.get(subject, ()):
            if not future.done():
                future.set_result(PermissionDenied(operation, subject))


class Bus:
    """A connection to NATS that reconnects forever with jittered backoff."""

    def __init__(
        self, client: NatsClient, name: str, source: str, denials: _Denials, reconnects: _Reconnects
    ) -> None:
        self._nc = client
        self._reconnects = reconnects
        self._js: JetStreamContext = client.jetstream()
        self.name = name
        self.source = source
        self._denials = denials

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings | str,
        *,
        name: str,
        source: str = "",
    ) -> Bus:
        """Connect, retrying with backoff for up to ``settings.connect_timeout`` seconds (None: forever).

        Raises :class:`NatsUnavailable` when the time runs out, :class:`NatsRefused` when the server refuses
        our credentials or certificate, :class:`SetupError` when a credentials or TLS file is unusable.
        A plain URL connects without credentials and gives up after 10 s.
        """
        if isinstance(settings, str):
            settings = NatsSettings(servers=tuple(s.strip() for s in settings.split(",") if s.strip()))
        url = settings.url_text
        bound = log.bind(bus=name, url=url)
        denials = _Denials(bound)
        tls = _tls_context(settings)
        auth = _auth_options(settings)
        reconnect = _Reconnects(bound, settings)

        async def on_error(exc: Exception) -> None:
            text = str(exc) or type(exc).__name__
            violation = _PERMISSION_VIOLATION.search(text.lower())
            if violation is not None:
                denials.record("publish" if violation.group(1) == "publish" else "subscribe", violation[2])
                return
            reconnect.last_error = text
            reconnect.last_exception = exc

        async def on_disconnect() -> None:
            if reconnect.established and not reconnect.closing:
                bound.warning("nats_disconnected")

        async def on_reconnect() -> None:
            reconnect.connected()
            bound.info("nats_reconnected")

        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": name,
            # The first connection is retried here, with the same backoff as reconnects: nats-py retries it
            # on a fixed short interval otherwise. Reconnecting is switched on once connected.
            "allow_reconnect": False,
            # nats-py gives up a first connection only once every server failed more than this many times.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": settings.retry_base,
            "reconnect_to_server_handler": reconnect.choose,
            "connect_timeout": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "inbox_prefix": settings.inbox_prefix,
            **({"tls": tls} if tls is not None else {}),
            **auth,
        }
        backoff = Backoff(settings.retry_base, settings.retry_cap)
        started = time.monotonic()
        timeout = settings.connect_timeout
        while True:
            client = NatsClient()
            reconnect.last_error = ""
            reconnect.last_exception = None
            try:
                await client.connect(**options)
                break
            except asyncio.CancelledError:
                await _close_quietly(client)
                raise
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                await _close_quietly(client)
                # nats-py ends with "no servers available"; the error of the attempt itself says more.
                cause = reconnect.last_exception or exc
                refusal = _refusal(cause, url)
                if refusal is not None:
                    raise refusal from None
                error = str(cause) or type(cause).__name__
            elapsed = time.monotonic() - started
            if timeout is not None and elapsed >= timeout:
                raise NatsUnavailable(
                    f"could not connect to NATS at {url} within {timeout:g}s ({error})",
                    "check --nats-url and that nats-server is running and reachable",
                )
            delay = backoff.next()
            if timeout is not None:
                delay = min(delay, max(0.0, timeout - elapsed))
            bound.warning(
                "nats_connect_failed", error=error[:300], attempt=backoff.attempt, retry_in=round(delay, 3)
            )
            await asyncio.sleep(delay)
        # nats-py keeps its options in this public dict and reads them when a connection drops.
        client.options["allow_reconnect"] = True
        client.options["max_reconnect_attempts"] = -1
        reconnect.established = True
        if backoff.attempt:
            bound.info("nats_connected", attempts=backoff.attempt + 1)
        bus = cls(client, name, source or f"/tether/{name}", denials, reconnect)
        await bus._check_inbox(settings.inbox_prefix)
        return bus

    async def _check_inbox(self, prefix: str) -> None:
        """Fail now, naming the cause, if this user may not read its replies: every request (key-value,
        JetStream) would otherwise time out one by one."""
        # nats-py's replies arrive on one wildcard subscription below the prefix, as this one is.
        probe = f"{prefix}.{secrets.token_hex(8)}.*"
        try:
            subscription = await self._confirmed_subscribe(probe, "", None)
        except PermissionDenied:
            self._reconnects.closing = True
            await _close_quietly(self._nc)
            raise NatsRefused(
                f"the NATS user may not subscribe to its reply inbox {prefix}.>",
                "use this component's own NATS credentials, or set --nats-inbox-prefix to the inbox its user "
                "may read (docs/events.md lists each user's)",
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"subscribe to the reply inbox {prefix}.> failed: {exc}") from exc
        await subscription.unsubscribe()

    @property
    def client(self) -> NatsClient:
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        return self._js

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def is_closing(self) -> bool:
        return self._reconnects.closing

    async def _guarded(self, operation: str, subject: str, call: Awaitable[T]) -> T:
        """Await ``call``; if the server reports a permission violation on ``subject`` first, raise it."""
        denied = self._denials.expect(subject)
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        try:
            waiting: set[asyncio.Future[Any]] = {task, denied}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            # Both may be done: a refused SUB's -ERR arrives just before the PONG that ends the call.
            if denied.done():
                raise PermissionDenied(denied.result().operation, subject)
            return task.result()
        finally:
            self._denials.forget(subject, denied)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def publish(self, subject: str, event: EventData, *, confirm: bool = False) -> None:
        """Publish ``event`` as a CloudEvent from this bus's source: fire and forget (a refusal by the server
        is logged and counted when it arrives), or with ``confirm`` wait a round trip for the server to
        accept it and raise PermissionDenied if it refused."""
        payload = cloudevents.encode(event, source=self.source)

        async def publish_and_confirm() -> None:
            await self._nc.publish(subject, payload, headers=_HEADERS)
            # As for a subscription (see _confirmed_subscribe): the -ERR comes before the second PONG.
            await asyncio.shield(self._nc.flush())
            await asyncio.shield(self._nc.flush())

        try:
            if confirm:
                await self._guarded("publish", subject, publish_and_confirm())
            else:
                await self._nc.publish(subject, payload, headers=_HEADERS)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc

    async def subscribe(
        self,
        subject: str,
        event_type: type[EventT],
        handler: Handler[EventT],
        *,
        queue: str = "",
    ) -> Subscription:
        """Deliver every ``event_type`` CloudEvent on ``subject`` to ``handler(data, subject)``.

        With ``queue``, instances sharing the queue name split the messages between them. Raises
        PermissionDenied when the server refuses the subscription.
        """
        decoder = EventDecoder(event_type)
        bound = log.bind(bus=self.name, subscription=subject)
        kind = event_type.__name__

        async def on_message(msg: Msg) -> None:
            try:
                _envelope, event = decoder.decode(msg.data)
            except NotAnEvent as exc:
                DECODE_ERRORS.labels(_subject_label(msg.subject), exc.reason).inc()
                bound.error(
                    "bus_decode_failed",
                    subject=msg.subject[:256],
                    reason=exc.reason,
                    error=str(exc)[:300],
                    size=len(msg.data),
                )
                return
            MESSAGES_RECEIVED.labels(kind).inc()
            try:
                await handler(event, msg.subject)
            except Exception:
                bound.exception("bus_handler_failed", subject=msg.subject)

        try:
            return await self._confirmed_subscribe(subject, queue, on_message)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"subscribe to {subject} failed: {exc}") from exc

    async def _confirmed_subscribe(
        self, subject: str, queue: str, callback: Callable[[Msg], Awaitable[None]] | None
    ) -> Subscription:
        """Subscribe and wait until the server accepted it; PermissionDenied when it refused."""
        made: list[Any] = []

        async def subscribe_and_confirm() -> Any:
            made.append(await self._nc.subscribe(subject, queue=queue, cb=callback))
            # The server answers a refused SUB with -ERR before the PONG of a later PING. nats-py writes a
            # PING straight to the socket, ahead of the SUB still queued for its flusher, so the first
            # round trip only gets the SUB written; the second one comes back after the -ERR.
            # Shielded: when the -ERR wins, _guarded cancels this call, and a flush cancelled while its PONG
            # is outstanding leaves a cancelled future in nats-py's queue of pongs. That PONG then ends
            # nats-py's read loop (InvalidStateError), and the connection silently stops receiving.
            await asyncio.shield(self._nc.flush())
            await asyncio.shield(self._nc.flush())
            return made[0]

        try:
            sub = await self._guarded("subscribe", subject, subscribe_and_confirm())
        except PermissionDenied:
            # Drop the client's half too, or nats-py would re-send the refused SUB on every reconnect.
            for refused in made:
                await Subscription(refused).unsubscribe()
            raise
        return Subscription(sub)

    async def kv(
        self,
        bucket: str,
        *,
        history: int = 1,
        ttl: float | None = None,
        create: bool = True,
        replicas: int = 1,
    ) -> KeyValue:
        """The key-value bucket ``bucket`` (file-backed), created with ``history``/``ttl``/``replicas`` when
        missing (an existing bucket's replica count is :meth:`ensure_replicas`' business)."""
        api = f"$JS.API.STREAM.INFO.KV_{bucket}"
        try:
            store = await self._guarded("publish", api, self._js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise BusError(f"key-value bucket {bucket} does not exist") from None
            config = js_api.KeyValueConfig(
                bucket=bucket, history=history, ttl=ttl, storage=js_api.StorageType.FILE, replicas=replicas
            )
            try:
                store = await self._guarded(
                    "publish", f"$JS.API.STREAM.CREATE.KV_{bucket}", self._js.create_key_value(config=config)
                )
            except nats.js.errors.Error as exc:
                raise BusError(f"creating key-value bucket {bucket} failed: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"opening key-value bucket {bucket} failed: {exc}") from exc
        return KeyValue(self, bucket, store)

    async def ensure_replicas(self, stream: str, replicas: int) -> int:
        """Raise the JetStream stream's replica count to ``replicas`` if it has fewer (a cluster copies its
        data to the new replicas); the count it had. BusError carries the server's reason when it refuses
        (a single server asked for more than one replica, fewer JetStream servers than replicas)."""
        try:
            info = await self._guarded(
                "publish", f"$JS.API.STREAM.INFO.{stream}", self._js.stream_info(stream)
            )
            current = int(info.config.num_replicas or 1)
            if current < replicas:
                config = dataclasses.replace(info.config, num_replicas=replicas)
                await self._guarded(
                    "publish", f"$JS.API.STREAM.UPDATE.{stream}", self._js.update_stream(config=config)
                )
        except nats.js.errors.APIError as exc:
            raise BusError(
                f"setting {replicas} replicas on stream {stream} failed: {exc.description or exc}"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"setting {replicas} replicas on stream {stream} failed: {exc}") from exc
        return current

    async def purge_stream(self, stream: str) -> None:
        """Purge every message of a JetStream stream (``KV_<bucket>`` for a bucket)."""
        try:
            await self._guarded("publish", f"$JS.API.STREAM.PURGE.{stream}", self._js.purge_stream(stream))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"purging stream {stream} failed: {exc}") from exc

    async def delete_stream(self, stream: str) -> None:
        try:
            await self._guarded("publish", f"$JS.API.STREAM.DELETE.{stream}", self._js.delete_stream(stream))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"deleting stream {stream} failed: {exc}") from exc

    async def ensure_stream(
        self, stream: str, stream_subjects: list[str], *, max_age: float, replicas: int = 1
    ) -> None:
        """Create the JetStream stream (file-backed, ``replicas`` copies) capturing ``stream_subjects``, or
        update its settings (a cluster copies an existing stream's data to added replicas)."""
        config = js_api.StreamConfig(
            name=stream,
            subjects=stream_subjects,
            max_age=max_age,
            storage=js_api.StorageType.FILE,
            num_replicas=replicas,
        )
        try:
            await self._guarded(
                "publish", f"$JS.API.STREAM.CREATE.{stream}", self._js.add_stream(config=config)
            )
        except nats.js.errors.BadRequestError as exc:
            if _REPLICA_REFUSALS.search(str(exc.description or "").lower()) and replicas > 1:
                raise BusError(f"creating stream {stream} failed: {exc.description}") from exc
            # Already there with other settings: bring them in line.
            try:
                await self._guarded(
                    "publish", f"$JS.API.STREAM.UPDATE.{stream}", self._js.update_stream(config=config)
                )
            except nats.js.errors.APIError as update:
                raise BusError(f"updating stream {stream} failed: {update.description or update}") from update
            except (nats.errors.Error, TimeoutError) as update:
                raise BusError(f"updating stream {stream} failed: {update}") from update
        except nats.js.errors.APIError as exc:
            raise BusError(f"creating stream {stream} failed: {exc.description or exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"creating stream {stream} failed: {exc}") from exc

    async def publish_stored(
        self, subject: str, event: EventData, *, message_id: str = "", timeout: float = 5.0
    ) -> int:
        """Publish ``event`` as a CloudEvent into the JetStream stream capturing ``subject`` (which also
        delivers it to core subscribers) and wait for the stream's acknowledgement; returns the sequence.

        ``message_id`` (``Nats-Msg-Id``) lets the stream drop a retried duplicate. Raises BusError when the
        stream did not store it (no stream, NATS down, timeout) and PermissionDenied when refused.
        """
        headers = dict(_HEADERS)
        if message_id:
            headers["Nats-Msg-Id"] = message_id
        payload = cloudevents.encode(event, source=self.source)
        try:
            ack = await self._guarded(
                "publish", subject, self._js.publish(subject, payload, timeout=timeout, headers=headers)
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"stored publish to {subject} failed: {exc}") from exc
        return int(ack.seq)

    async def flush(self, timeout: float = 2.0) -> None:
        await self._nc.flush(timeout=int(timeout) or 1)

    async def close(self, drain_timeout: float = 0.5) -> None:
        """Drain subscriptions and pending publishes for up to ``drain_timeout`` seconds, then close.

        The bound keeps shutdown inside the runtime's budget: a subscription whose handler is mid-flight
        (a JetStream consumer waiting on the server, say), or a server that is down, must not hold the
        process open.
        """
        if self._nc.is_closed:
            return
        self._reconnects.closing = True
        if self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._nc.drain(), drain_timeout)
        await _close_quietly(self._nc)


async def _close_quietly(client: NatsClient) -> None:
    # nats-py's close() of a connection that is down writes its pending buffer to the dead transport, which
    # raises RuntimeError under uvloop; the connection is closed either way.
    with contextlib.suppress(nats.errors.Error, OSError, TimeoutError, RuntimeError, AttributeError):
        await asyncio.wait_for(client.close(), 1.0)


class _Reconnects:
    """nats-py's reconnect hook: the shared backoff, one log line per window naming the URL and the error."""

    def __init__(self, bound: Any, settings: NatsSettings) -> None:
        self._log = bound
        self._base = settings.retry_base
        self._cap = settings.retry_cap
        self.last_error = ""
        self.last_exception: BaseException | None = None
        self.established = False
        self.closing = False

    def choose(self, servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        # The server tried least recently is the one with the fewest reconnect attempts.
        server = min(servers, key=lambda candidate: candidate.reconnects)
        delay = backoff_delay(server.reconnects, base=self._base, cap=self._cap, jitter=random.random())
        self._log.warning(
            "nats_reconnecting",
            server=server.uri.geturl() if hasattr(server.uri, "geturl") else str(server.uri),
            attempt=server.reconnects + 1,
            error=self.last_error[:300] or None,
            retry_in=round(delay, 3),
        )
        return server, delay

    def connected(self) -> None:
        self.last_error = ""


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
    """A JetStream key-value bucket holding msgspec values (plain JSON records)."""

    def __init__(self, bus: Bus, bucket: str, store: Any) -> None:
        self._bus = bus
        self.bucket = bucket
        self._store = store
        self._stream = f"KV_{bucket}"

    @property
    def raw(self) -> Any:
        """nats-py's bucket, for reads the typed API does not cover (the raw bytes of a revision)."""
        return self._store

    async def put(self, key: str, value: msgspec.Struct, *, expected_revision: int | None = None) -> int:
        """Write ``value``; with ``expected_revision``, only if that is still the latest (0: a new key).

        Returns the new revision. Raises RevisionMismatch when another writer got there first and
        PermissionDenied when this user may not write the bucket.
        """
        return await self.put_raw(key, events.encode(value), expected_revision=expected_revision)

    async def put_raw(self, key: str, data: bytes, *, expected_revision: int | None = None) -> int:
        """Write bytes as they are (tests use this to plant garbage)."""
        subject = f"$KV.{self.bucket}.{key}"
        try:
            if expected_revision is None:
                return int(await self._bus._guarded("publish", subject, self._store.put(key, data)))
            call = self._store.update(key, data, last=expected_revision)
            return int(await self._bus._guarded("publish", subject, call))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionMismatch(self.bucket, key, expected_revision) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"put {self.bucket}/{key} failed: {exc}") from exc

    async def get(self, key: str, value_type: type[T]) -> KvEntry[T] | None:
        """The key's latest entry: None if it never existed, ``value=None`` if it was deleted.

        Raises InvalidValue (with the revision) when the stored bytes do not decode as ``value_type``.
        """
        revision, data = await self.latest(key)
        if revision == 0:
            return None
        if data is None:
            return KvEntry(key=key, revision=revision, value=None)
        try:
            value = msgspec.json.decode(data, type=value_type)
        except msgspec.DecodeError as exc:
            raise InvalidValue(self.bucket, key, revision, str(exc)) from None
        return KvEntry(key=key, revision=revision, value=value)

    async def latest(self, key: str) -> tuple[int, bytes | None]:
        """The key's latest revision (deletions included, 0 when never written) and its bytes."""
        # The API subject nats-py asks: a bucket created with direct gets allowed (the nats CLI's default)
        # is read on $JS.API.DIRECT.GET.<stream>.<key's subject>.
        if getattr(self._store, "_direct", False):
            subject = f"$JS.API.DIRECT.GET.{self._stream}.$KV.{self.bucket}.{key}"
        else:
            subject = f"$JS.API.STREAM.MSG.GET.{self._stream}"
        try:
            entry = await self._bus._guarded("publish", subject, self._store.get(key))
        except nats.js.errors.KeyNotFoundError as missing:
            # nats-py reports a deleted key as not found, carrying the delete marker's entry.
            marker = getattr(missing, "entry", None)
            return (int(marker.revision) if marker is not None and marker.revision else 0), None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"get {self.bucket}/{key} failed: {exc}") from exc
        return int(entry.revision or 0), entry.value

    async def delete(self, key: str, *, expected_revision: int | None = None) -> None:
        subject = f"$KV.{self.bucket}.{key}"
        try:
            await self._bus._guarded("publish", subject, self._store.delete(key, last=expected_revision))
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
        bus = self._kv._bus
        try:
            self._sub = await bus._guarded(
                "publish",
                f"$JS.API.CONSUMER.CREATE.{self._kv._stream}",
                bus.jetstream.subscribe(
                    self._subject,
                    stream=self._kv._stream,
                    cb=self._on_message,
                    ordered_consumer=True,
                    idle_heartbeat=self._heartbeat,
                    deliver_policy=policy,
                    config=config,
                    inactive_threshold=300.0,
                ),
            )
            info = await self._sub.consumer_info()
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"watching {self._kv.bucket} failed: {exc}") from exc
        # Empty only if the server has delivered nothing to this consumer. The server sends its deliveries
        # and this reply independently, so the reply can overtake a message already counted as delivered
        # (num_pending 0) that this client has not received yet: judged by the client's own count, the
        # watch would say SYNCED before the initial values. Anything delivered ends in a message whose
        # own num_pending is 0, and _on_message marks the watch synced there.
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        if info.num_pending == 0 and delivered == 0:
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
                reason = "invalid_value" if isinstance(exc, msgspec.ValidationError) else "undecodable"
                DECODE_ERRORS.labels(f"$KV.{self._kv.bucket}", reason).inc()
                self._log.error(
                    "kv_decode_failed",
                    key=key[:256],
                    revision=revision,
                    error=str(exc)[:300],
                    size=len(msg.data),
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


# How nats-server words a placement it cannot make (err_codes 10074, 10023, 10005): other failures (a
# timeout, NATS going away) are not the configuration's fault.
_REPLICA_REFUSALS = re.compile(r"replicas|insufficient resources|no suitable peers|cluster")


def replica_refusal(what: str, replicas: int, exc: BusError, option: str) -> SetupError | None:
    """The configuration error (exit 2, naming ``option``) when NATS refused ``replicas`` copies of
    ``what``; None when ``exc`` is some other failure."""
    if replicas <= 1 or not _REPLICA_REFUSALS.search(str(exc).lower()):
        return None
    reason = getattr(exc.__cause__, "description", None) or str(exc).rpartition("failed: ")[2] or str(exc)
    return SetupError(
        f"NATS refused {replicas} replicas for {what} ({reason})",
        f"run NATS as a cluster of at least {replicas} JetStream servers, or set {option} to at most the "
        "number it has (1 for a single server)",
    )
