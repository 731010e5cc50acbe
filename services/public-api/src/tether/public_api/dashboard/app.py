"""The dashboard's routes, and the :class:`Dashboard` the public API starts next to its gRPC listener.

Pages (one static page; ``dashboard.js`` renders what the path names): ``/`` overview, ``/workloads/<ns>/
<kind>/<name>`` a workload, ``/tap`` the live tap. JSON: ``/api/status``, ``/api/overview?window=``,
``/api/workloads/<ns>/<kind>/<name>?window=``, ``/api/taps`` (GET: how many run; POST: start one),
``/api/taps/<id>/events`` (server-sent events), ``/api/taps/<id>/stop`` (POST). Files: ``/static/<name>``.
Every request first passes the Host check; ``/api`` refuses other sites' pages; the POSTs need the
same-origin proof (:mod:`.security`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

import grpc
import msgspec
import structlog

from tether.public_api.config import PublicApiConfig
from tether.public_api.dashboard.history import History, sample_forever
from tether.public_api.dashboard.http import HttpServer, Request, Response, Stream, text
from tether.public_api.dashboard.security import (
    SECURITY_HEADERS,
    allowed_hosts,
    cross_site,
    host_allowed,
    same_origin,
)
from tether.public_api.dashboard.taps import Spawn, TapRefused, Taps
from tether.public_api.dashboard.views import (
    CALL_TIMEOUT,
    DEFAULT_WINDOW,
    WINDOWS,
    WORKLOAD_KINDS,
    Json,
    Views,
)
from tether.shared.config import parse_hostport
from tether.shared.proto.public.v1 import public_pb2_grpc
from tether.shared.runtime import Context
from tether.shared.supervisor import SupervisedTask

REFRESH_SECONDS = 3
STATIC_TYPES = {
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
JSON = b"application/json"
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NAME = r"[a-z0-9](?:[-.a-z0-9]{0,251}[a-z0-9])?"
_WORKLOAD = re.compile(rf"^/workloads/({_LABEL})/([a-z]+)/({_NAME})$")
_API_WORKLOAD = re.compile(rf"^/api/workloads/({_LABEL})/([a-z]+)/({_NAME})$")
_TAP = re.compile(r"^/api/taps/([A-Za-z0-9_-]{1,64})/(events|stop)$")
_NO_STORE = ((b"cache-control", b"no-store"),)
_REVALIDATE = ((b"cache-control", b"no-cache"),)

log = structlog.get_logger(__name__)


def json_response(status: int, body: Json) -> Response:
    return Response(status, msgspec.json.encode(body), JSON, _NO_STORE)


def json_error(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    return Response(status, msgspec.json.encode({"error": message}), JSON, (*_NO_STORE, *headers))


def _methods(request: Request, allowed: tuple[str, ...], *, head: bool = True) -> Response | None:
    """None when ``request.method`` is allowed (HEAD with GET, unless not ``head``), else the 405."""
    head = head and "GET" in allowed
    if request.method in allowed or (request.method == "HEAD" and head):
        return None
    allow = ", ".join((*allowed, "HEAD") if head else allowed)
    return json_error(405, f"method not allowed: {allow}", ((b"allow", allow.encode()),))


def load_assets() -> dict[str, bytes]:
    folder = resources.files("tether.public_api.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in (*STATIC_TYPES, "index.html")}


def api_target(grpc_addr: str, port: int) -> str:
    """Where this process' own gRPC listener answers: its address, loopback for a wildcard."""
    host, _ = parse_hostport(grpc_addr)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Dashboard:
    def __init__(
        self,
        *,
        addr: str,
        extra_hosts: Iterable[str] = (),
        api_target: str,
        spawn: Spawn,
        needs_token: bool = False,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        host, port = parse_hostport(addr)
        self._allowed = allowed_hosts(host, extra_hosts)
        self._spawn = spawn
        self._timeout = timeout
        # The CLI's way to the API: a plaintext channel to the gRPC listener (here: this process').
        self._channel = grpc.aio.insecure_channel(api_target)
        self._stub = public_pb2_grpc.ApiStub(self._channel)
        self.views = Views(self._stub, timeout)
        self.taps = Taps(self._stub, spawn, needs_token=needs_token)
        self.history = History()
        self._assets = load_assets()
        self._server = HttpServer(self.handle, host, port, common_headers=SECURITY_HEADERS)
        self._sampler: SupervisedTask | None = None

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        try:
            await self._server.start()
        except BaseException:
            await self._channel.close()
            raise
        stub, history, timeout = self._stub, self.history, self._timeout

        async def sampler() -> None:
            await sample_forever(stub, history, timeout)

        self._sampler = self._spawn("dashboard-history", sampler, critical=False)

    async def close(self) -> None:
        await self._server.close()
        await self.taps.close()
        if self._sampler is not None:
            await self._sampler.stop()
        await self._channel.close()

    async def handle(self, request: Request) -> Response | Stream:
        host = request.headers.get("host")
        if not host_allowed(host, self._allowed):
            return text(
                403,
                f"forbidden: this dashboard answers to {', '.join(sorted(self._allowed))} only, not Host "
                f"{(host or '')[:100]!r} (add a name with --dashboard-host)",
                _NO_STORE,
            )
        path = request.path
        if path.startswith("/api/"):
            if cross_site(request.headers):
                return json_error(403, "forbidden: another site's page may not use this API")
            return await self._api(request)
        if path.startswith("/static/"):
            return self._static(request, path.removeprefix("/static/"))
        match = _WORKLOAD.match(path)
        if path in ("/", "/tap") or (match is not None and match.group(2) in WORKLOAD_KINDS):
            return _methods(request, ("GET",)) or Response(
                200, self._assets["index.html"], b"text/html; charset=utf-8", _REVALIDATE
            )
        return text(404, "not found", _NO_STORE)

    def _static(self, request: Request, name: str) -> Response:
        content_type = STATIC_TYPES.get(name)
        if content_type is None:
            return text(404, "not found", _NO_STORE)
        return _methods(request, ("GET",)) or Response(200, self._assets[name], content_type, _REVALIDATE)

    def _window(self, request: Request) -> str | Response:
        """The window a GET asks for, or the 405 or 400 it gets."""
        refused = _methods(request, ("GET",))
        if refused is not None:
            return refused
        window = request.query.get("window", DEFAULT_WINDOW)
        if window not in WINDOWS:
            return json_error(400, f"window: {window[:20]!r} is not one of {', '.join(WINDOWS)}")
        return window

    async def _api(self, request: Request) -> Response | Stream:
        path = request.path
        if path in ("/api/status", "/api/overview"):
            window = self._window(request)
            if isinstance(window, Response):
                return window
            body = await (self.views.status() if path == "/api/status" else self.views.overview(window))
            return json_response(200, {**body, "refresh_seconds": REFRESH_SECONDS})
        match = _API_WORKLOAD.match(path)
        if match is not None:
            return await self._workload(request, *match.groups())
        if path == "/api/taps":
            return await self._taps(request)
        match = _TAP.match(path)
        if match is not None:
            return await self._tap(request, match.group(1), match.group(2))
        return json_error(404, "not found")

    async def _workload(self, request: Request, namespace: str, kind: str, name: str) -> Response:
        window = self._window(request)
        if isinstance(window, Response):
            return window
        if kind not in WORKLOAD_KINDS:
            return json_error(404, f"kind: {kind!r} is not one of {', '.join(WORKLOAD_KINDS)}")
        body = await self.views.workload(namespace, kind, name, window)
        if body is None:
            return json_error(
                404, f"no {kind} {name!r} in namespace {namespace} in the last hour's telemetry"
            )
        samples = self.history.samples((namespace, kind, name))
        return json_response(
            200,
            {
                **body,
                "refresh_seconds": REFRESH_SECONDS,
                "history": {"interval_seconds": 10, "samples": samples},
            },
        )

    async def _taps(self, request: Request) -> Response:
        refused = _methods(request, ("GET", "POST"))
        if refused is not None:
            return refused
        if request.method != "POST":
            return json_response(200, {"active": self.taps.active, "needs_token": self.taps.needs_token})
        why = same_origin(request.headers)
        if why:
            return json_error(403, f"forbidden: a tap starts only from the dashboard's own page ({why})")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return json_error(415, "a tap is started with a JSON body (Content-Type: application/json)")
        try:
            session = self.taps.start(request.body, request.headers.get("authorization"))
        except TapRefused as exc:
            return json_error(exc.status, exc.message)
        base = f"/api/taps/{session.id}"
        return json_response(201, {"id": session.id, "events": f"{base}/events", "stop": f"{base}/stop"})

    async def _tap(self, request: Request, key: str, action: str) -> Response | Stream:
        if action == "events":
            refused = _methods(request, ("GET",), head=False)  # a HEAD would use the tap up
            if refused is not None:
                return refused
            events = self.taps.attach(key)
            if events is None:
                return json_error(404, "no such tap waiting for its events (it ended, or was never started)")
            return Stream(events, headers=(*_NO_STORE, (b"x-accel-buffering", b"no")))
        refused = _methods(request, ("POST",))
        if refused is not None:
            return refused
        why = same_origin(request.headers)
        if why:
            return json_error(403, f"forbidden: a tap stops only from the dashboard's own page ({why})")
        if not await self.taps.stop(key):
            return json_error(404, "no such tap (it ended already)")
        return json_response(200, {"stopped": True})


async def start_dashboard(ctx: Context, config: PublicApiConfig, grpc_port: int) -> Dashboard | None:
    """The dashboard of ``config``, started, calling the API on ``grpc_port``; None: no --dashboard-addr."""
    if not config.dashboard_addr:
        return None
    dashboard = Dashboard(
        addr=config.dashboard_addr,
        extra_hosts=config.dashboard_host,
        api_target=api_target(config.grpc_addr, grpc_port),
        spawn=ctx.spawn,
        needs_token=config.authz == "kubernetes",
    )
    await dashboard.start()
    ctx.log.info("dashboard_listening", addr=config.dashboard_addr, port=dashboard.port)
    return dashboard
