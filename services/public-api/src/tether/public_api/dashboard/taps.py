"""Live taps for the dashboard: the gRPC Tap stream, carried to the browser as server-sent events.

``POST /api/taps`` (same-origin only) validates the form as ``tether tap`` validates its flags and creates a
session with an unguessable id; the page then opens ``GET /api/taps/<id>/events`` with an EventSource, which
starts the tap: a supervised task (``dashboard-tap:<n>``, one per tap, ending with it) calls ``Api/Tap``
through the channel every dashboard call uses, exactly as the CLI does, with the user's bearer token as
``authorization`` metadata when the page sent one, so in a cluster the dashboard's tap passes the same
TokenReview and SubjectAccessReview as ``tether tap`` (and with ``--authz kubernetes`` a tap without a token
is refused at once). The events reach the page as ``tap`` events (JSON; sensitive headers dropped once more
here, although proxies never capture them), then one ``end`` or ``failed`` event (not ``error``: that is
the name EventSource gives its own connection errors) closes the stream. ``POST /api/taps/<id>/stop``, the
page going away, or the process stopping cancels the task, and with it the gRPC call (the public API then
cancels the tap on NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Literal

import grpc
import msgspec
import structlog
from msgspec import Meta

from tether.public_api.dashboard.views import Json, address
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.supervisor import SupervisedTask, TaskFactory
from tether.shared.tap_requests import MAX_REQUESTS_LIMIT, MAX_TAP_RATE, SENSITIVE_HEADERS

MAX_TAPS = 8
QUEUE_EVENTS = 2000
ATTACH_TIMEOUT = 30.0
TICK_SECONDS = 1.0
MAX_TOKEN_BYTES = 16 * 1024
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9\-._~+/]+=*)$")
_PHASES = {"request_init": "request", "response_init": "response", "response_end": "end"}
_DIRECTIONS = {telemetry_pb2.DIRECTION_INBOUND: "inbound", telemetry_pb2.DIRECTION_OUTBOUND: "outbound"}
_GRPC_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

log = structlog.get_logger(__name__)
_numbers = itertools.count(1)
Spawn = Callable[..., SupervisedTask]

Label = Annotated[str, Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
Name = Annotated[str, Meta(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]


class TapForm(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The tap page's form: ``tether tap TYPE/NAME -n NS --method --path --authority --max-rps
    --max-requests``, with the CLI's limits."""

    namespace: Label = "default"
    kind: Literal["deployment", "statefulset", "daemonset", "job", "pod"] = "deployment"
    name: Name
    method: Annotated[str, Meta(pattern=r"^[A-Za-z]{0,32}$")] = ""
    path: Annotated[str, Meta(max_length=1024)] = ""
    authority: Annotated[str, Meta(max_length=512)] = ""
    max_rps: Annotated[float, Meta(gt=0, le=MAX_TAP_RATE)] = 100.0
    max_requests: Annotated[int, Meta(ge=0, le=MAX_REQUESTS_LIMIT)] = 0

    def request(self) -> public_pb2.TapRequest:
        return public_pb2.TapRequest(
            target=public_pb2.Resource(namespace=self.namespace, kind=self.kind, name=self.name),
            match=telemetry_pb2.TapMatch(
                authority=self.authority, path_prefix=self.path, method=self.method.upper()
            ),
            max_requests=self.max_requests,
            max_events_per_second=self.max_rps,
        )


class TapRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_form(body: bytes) -> TapForm:
    try:
        return msgspec.json.decode(body, type=TapForm)
    except msgspec.ValidationError as exc:
        raise TapRefused(400, f"invalid tap: {exc}") from None
    except msgspec.DecodeError:
        raise TapRefused(400, "invalid tap: the body is not a JSON object") from None


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without the header."""
    if header is None:
        return None
    match = _BEARER.match(header.strip())
    if match is None or len(header) > MAX_TOKEN_BYTES:
        raise TapRefused(400, "Authorization: expected Bearer <token> (RFC 6750)")
    return match.group(1)


def sse(event: str, data: Json) -> bytes:
    # JSON escapes every control character: a client-controlled string cannot end the event early.
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def tap_event_json(event: telemetry_pb2.TapEvent) -> Json:
    phase = event.WhichOneof("phase") or ""
    out: Json = {
        "id": str(event.stream_id),
        "at": event.at.ToJsonString() if event.HasField("at") else "",
        "phase": _PHASES.get(phase, "unknown"),
        "direction": _DIRECTIONS.get(event.direction, ""),
        "source": address(event.source) if event.HasField("source") else "",
        "destination": address(event.destination) if event.HasField("destination") else "",
        "source_pod": event.source_labels.get("pod", ""),
        "destination_pod": event.destination_labels.get("pod", ""),
        "tls": event.tls,
        "source_identity": event.source_identity,
        "destination_identity": event.destination_identity,
        "headers": {k: v for k, v in sorted(event.headers.items()) if k.lower() not in SENSITIVE_HEADERS},
    }
    if phase == "request_init":
        r = event.request_init
        out.update(method=r.method, scheme=r.scheme, authority=r.authority, path=r.path)
    elif phase == "response_init":
        out.update(
            status=event.response_init.status_code, latency_us=event.response_init.since_request_init_us
        )
    elif phase == "response_end":
        e = event.response_end
        out.update(
            grpc_status=_GRPC_NAMES.get(e.grpc_status, str(e.grpc_status)) if e.grpc_status >= 0 else "",
            duration_us=e.since_request_init_us,
            bytes=e.response_bytes,
            reset_error_code=e.reset_error_code,
        )
    return out


def refusal(exc: grpc.aio.AioRpcError) -> Json:
    code = exc.code()
    message = f"the public API refused the tap ({code.name}): {exc.details()}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        message += "; give a bearer token allowed to tap this resource"
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"the public API did not answer the tap ({code.name}): {exc.details()}"
    return {"code": code.name, "message": message}


class TapSession:
    def __init__(self, form: TapForm, token: str | None) -> None:
        self.id = secrets.token_urlsafe(18)  # a capability: only the page that started the tap knows it
        self.number = next(_numbers)
        self.form = form
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.created = time.monotonic()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        self.task: SupervisedTask | None = None
        self.attached = False
        self.stopped = False  # asked to stop, perhaps before its task started
        self.dropped = 0

    def put(self, chunk: bytes) -> None:
        try:
            self.queue.put_nowait(chunk)
        except asyncio.QueueFull:
            self.dropped += 1  # the page is not keeping up: drop, and say so at the end

    def finish(self, chunk: bytes) -> None:
        """The last event, then the end of the stream; room is made for both."""
        while self.queue.qsize() > QUEUE_EVENTS - 2:
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(chunk)
        self.queue.put_nowait(None)


class Taps:
    def __init__(
        self, stub: public_pb2_grpc.ApiStub, spawn: Spawn, *, needs_token: bool, max_taps: int = MAX_TAPS
    ) -> None:
        self._stub = stub
        self._spawn = spawn
        self._needs_token = needs_token
        self._max = max_taps
        self._sessions: dict[str, TapSession] = {}

    @property
    def needs_token(self) -> bool:
        return self._needs_token

    @property
    def active(self) -> int:
        self._expire()
        return len(self._sessions)

    def _expire(self) -> None:
        now = time.monotonic()
        for key, session in list(self._sessions.items()):
            if not session.attached and now - session.created > ATTACH_TIMEOUT:
                del self._sessions[key]

    def start(self, body: bytes, authorization: str | None) -> TapSession:
        form = parse_form(body)
        token = bearer_token(authorization)
        if self._needs_token and not token:
            raise TapRefused(
                401,
                "this public API authorises taps with Kubernetes (--authz kubernetes): give a bearer token "
                "allowed to tap this resource (e.g. kubectl create token NAME)",
            )
        if self.active >= self._max:
            raise TapRefused(429, f"{self._max} taps run already; stop one first")
        session = TapSession(form, token)
        self._sessions[session.id] = session
        return session

    def attach(self, key: str) -> AsyncGenerator[bytes | None, None] | None:
        """The event stream of a session not yet attached; None when there is no such session."""
        self._expire()
        session = self._sessions.get(key)
        if session is None or session.attached:
            return None
        session.attached = True
        return self._events(session)

    async def _events(self, session: TapSession) -> AsyncGenerator[bytes | None, None]:
        form = session.form
        try:
            if session.stopped:
                yield sse("end", {"reason": "stopped", "dropped": 0})
                return
            session.task = self._spawn(
                f"dashboard-tap:{session.number}", self._runner(session), critical=False
            )
            yield sse("started", {"target": f"{form.kind}/{form.name}", "namespace": form.namespace})
            while True:
                try:
                    async with asyncio.timeout(TICK_SECONDS):
                        chunk = await session.queue.get()
                except TimeoutError:
                    yield None
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            await self._end(session)

    def _runner(self, session: TapSession) -> TaskFactory:
        async def run() -> None:
            call = self._stub.Tap(session.form.request(), metadata=session.metadata or None)
            try:
                async for event in call:
                    session.put(sse("tap", tap_event_json(event)))
                session.finish(sse("end", {"reason": "the tap ended", "dropped": session.dropped}))
            except asyncio.CancelledError:
                session.finish(sse("end", {"reason": "stopped", "dropped": session.dropped}))
                raise
            except grpc.aio.AioRpcError as exc:
                session.finish(sse("failed", refusal(exc)))
            except Exception as exc:  # never restarted by the supervisor: said once, on the page and here
                log.exception("dashboard_tap_failed", tap=session.number)
                session.finish(sse("failed", {"code": "INTERNAL", "message": f"the tap failed: {exc}"}))
            finally:
                call.cancel()

        return run

    async def _end(self, session: TapSession) -> None:
        self._sessions.pop(session.id, None)
        if session.task is not None:
            await session.task.stop()

    async def stop(self, key: str) -> bool:
        session = self._sessions.get(key)
        if session is None:
            return False
        session.stopped = True
        if session.task is not None:
            await session.task.stop()  # its event stream sends the task's last event, then ends
        self._sessions.pop(key, None)
        return True

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            if session.task is not None:
                with contextlib.suppress(Exception):
                    await session.task.stop()
        self._sessions.clear()
