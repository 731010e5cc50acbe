"""Routers: where each new request goes, and what its outcome teaches the balancer and metrics.

The common case is decided synchronously, inside the read that delivered the
request: a known destination, an endpoint picked, a pooled connection with room.
Anything that must wait (first lookup of an authority, connecting) moves to a
task bounded by the fail-fast timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any, cast

import structlog
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from tether.proxy.core.balancer import EndpointLoad
from tether.proxy.core.connection import UpstreamConnection
from tether.proxy.core.conninfo import NOT_PROVIDED_BY_DISCOVERY, ConnectionInfo, tls_labels
from tether.proxy.core.detect import Protocol
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.h1codec import HTTP11, ORIG_PROTO_HEADER
from tether.proxy.core.h1connection import AnyUpstream, H1UpstreamConnection
from tether.proxy.core.headers import with_client_id
from tether.proxy.core.resolution import Address, Endpoint, Resolution, Status
from tether.proxy.discovery import DestinationClient
from tether.proxy.errors import AuthorityLimitError, ProxyError, UpstreamConnectError
from tether.proxy.metrics import Labels, MetricsRegistry, RouteHandle, dst_labels
from tether.proxy.pool import EndpointPool, Pools
from tether.proxy.tap import Taps
from tether.proxy.tcp import TcpRouteRefused, TcpTarget

Clock = Callable[[], float]

log = structlog.get_logger(__name__)

#: Latency charged to an endpoint that could not be connected to, so the balancer avoids it.
CONNECT_FAILURE_PENALTY = 5.0


class RouteFailure(ProxyError):
    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


#: ``_RouteState.tap``: not captured by a tap; request reported; response (headers) reported too.
_UNTAPPED, _TAPPED, _TAP_RESPONDED = 0, 1, 2
_NO_LABELS: Mapping[str, str] = {}
#: Where the request's pseudo-headers go in ``_tap_request``'s list.
_PSEUDO = {b":method": 0, b":scheme": 1, b":path": 2}


class _RouteState:
    __slots__ = ("load", "metrics", "tap")

    def __init__(self, load: EndpointLoad[Address] | None, metrics: RouteHandle) -> None:
        self.load = load
        self.metrics = metrics
        self.tap = _UNTAPPED


class _BaseRouter:
    def __init__(
        self,
        *,
        direction: str,
        pools: Pools,
        registry: MetricsRegistry,
        fail_fast_timeout: float,
        clock: Clock,
    ) -> None:
        self.direction = direction
        self.pools = pools
        self.registry = registry
        self.fail_fast_timeout = fail_fast_timeout
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        #: The tap observer (the proxy's, when it reports to telemetry); with no tap capturing, the data
        #: path's whole cost is one check of ``taps.capturing`` per request.
        self.taps = Taps()
        #: This pod's workload labels (namespace, pod, serviceaccount, deployment...) and mesh identity:
        #: the tap events' source (outbound) or destination (inbound).
        self.own_labels: Mapping[str, str] = _NO_LABELS
        self.local_identity = ""

    # ExchangeListener
    def response_started(self, exchange: Exchange, now: float) -> None:
        state = cast(_RouteState, exchange.route_state)
        load = state.load
        if load is not None:
            load.observe(now - exchange.started_at, now)
        if state.tap:
            state.tap = _TAP_RESPONDED
            self.taps.response_started(exchange, exchange.status, now)

    def exchange_finished(self, exchange: Exchange, now: float) -> None:
        state = cast(_RouteState, exchange.route_state)
        if state.tap:
            self._tap_finished(exchange, state, now)
        load = state.load
        if load is not None:
            if not exchange.response_started:
                # Ended with no response (the client's deadline, a reset, the connection lost): the endpoint
                # held it that long, which counts as its latency, as in tower's peak-EWMA. Unobserved, an
                # endpoint that hangs would look ever faster as its estimate decays and keep winning picks.
                load.observe(now - exchange.started_at, now)
                upstream = exchange.upstream
                if isinstance(upstream, UpstreamConnection):
                    # And it is left alone until its connection answers a PING: a live server answers at
                    # once, a hung host never (nor would the requests sent to find out).
                    load.check_started()
                    upstream.probe(load.check_answered)
            load.finished()
        metrics = state.metrics
        reset = exchange.reset_code
        if reset is not None and reset != ErrorCodes.NO_ERROR and not exchange.failed_by_proxy:
            metrics.failed(_error_name(reset), (now - exchange.started_at) * 1000.0)
        elif exchange.status:
            # Latency to the response's first byte (its headers), not to its end: Linkerd's meaning, so
            # response_latency_ms and the telemetry reports read the same; a stream's length is not latency.
            responded = exchange.responded_at if exchange.responded_at is not None else now
            metrics.response(
                exchange.status, exchange.grpc_status, (responded - exchange.started_at) * 1000.0
            )
        else:
            metrics.failed("no_response", (now - exchange.started_at) * 1000.0)

    def _attach(
        self,
        exchange: Exchange,
        connection: AnyUpstream,
        pool: EndpointPool,
        load: EndpointLoad[Address] | None,
        metrics: RouteHandle,
        now: float,
    ) -> None:
        if isinstance(connection, H1UpstreamConnection):
            connection.attach_upgrade(exchange.upgrade)
        elif exchange.protocol == HTTP1_NAME:
            # An HTTP/1.1 request over a mesh HTTP/2 connection: the inbound proxy restores the protocol.
            exchange.request_headers = [*exchange.request_headers, (ORIG_PROTO_HEADER, HTTP11)]
        state = exchange.route_state = _RouteState(load, metrics)
        exchange.listener = self
        metrics.request()
        if self.taps.capturing and self._tap_request(exchange, pool.address, pool.identity):
            state.tap = _TAPPED
            exchange.count_response_bytes()
        if load is not None:
            load.started()
        pool.last_used = now
        try:
            exchange.attach(connection, now)
        except ProtocolError:
            exchange.fail(503, "upstream refused a new stream", now)

    def _plain_metrics(self, exchange: Exchange) -> RouteHandle:
        labels, tls = _info(exchange).metric_labels()
        return self.registry.route(self.direction, _authority_text(exchange), labels, tls, exchange.protocol)

    def _fail(self, exchange: Exchange, metrics: RouteHandle, http_status: int, message: str) -> None:
        if exchange.closed:
            return
        state = exchange.route_state = _RouteState(None, metrics)
        exchange.listener = self
        metrics.request()
        if self.taps.capturing and self._tap_request(exchange, None, None):
            state.tap = _TAPPED
        exchange.fail(http_status, message, self.clock())

    # --- tap (only for requests a tap may capture) ------------------------------------------------------

    def _tap_request(
        self, exchange: Exchange, upstream: Address | None, upstream_identity: str | None
    ) -> bool:
        """Show a routed request to the taps (``upstream``: where it goes, None when it failed first);
        True when one captured it."""
        fields = ["", "", ""]
        for name, value in exchange.request_headers:
            index = _PSEUDO.get(name)
            if index is not None:
                fields[index] = value.decode("utf-8", "replace")
        info = _info(exchange)
        if self.direction == "outbound":
            destination = upstream or info.original_dst
            source_labels, destination_labels = self.own_labels, self._upstream_labels(destination)
            source_identity, destination_identity = self.local_identity, upstream_identity or ""
            tls = self._upstream_tls(upstream_identity)
        else:
            destination = info.original_dst or info.local
            source_labels, destination_labels = _NO_LABELS, self.own_labels
            source_identity, destination_identity = info.client_id or "", self.local_identity
            tls = info.metric_labels()[1]
        return self.taps.request_started(
            exchange,
            self.direction,
            fields[0],
            fields[1],
            _authority_text(exchange),
            fields[2],
            exchange.request_headers,
            info.peer,
            destination,
            source_labels,
            destination_labels,
            source_identity,
            destination_identity,
            tls,
            exchange.started_at,
        )

    def _upstream_labels(self, address: Address | None) -> Mapping[str, str]:
        return _NO_LABELS

    def _upstream_tls(self, identity: str | None) -> str:
        return "true" if identity else "no_identity"

    def _tap_finished(self, exchange: Exchange, state: _RouteState, now: float) -> None:
        taps = self.taps
        if state.tap == _TAPPED and exchange.responded_at is not None:
            # Answered by the proxy itself, or a protocol switch: no response_started came.
            taps.response_started(exchange, exchange.status, exchange.responded_at)
        grpc_status = exchange.grpc_status if exchange.is_grpc else None
        taps.finished(exchange, grpc_status, exchange.reset_code, exchange.response_bytes, now)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_attach(
        self,
        exchange: Exchange,
        pool: EndpointPool,
        load: EndpointLoad[Address] | None,
        metrics: RouteHandle,
    ) -> None:
        try:
            connection = await pool.acquire()
        except UpstreamConnectError as exc:
            if load is not None:
                load.observe(CONNECT_FAILURE_PENALTY, self.clock())
            log.warning("upstream_connect_failed", direction=self.direction, error=str(exc))
            self._fail(exchange, metrics, 502, str(exc))
            return
        if not exchange.closed:
            self._attach(exchange, connection, pool, load, metrics, self.clock())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OutboundRouter(_BaseRouter):
    """Routes the application's requests by :authority through service discovery."""

    def __init__(
        self,
        *,
        discovery: DestinationClient | None,
        pools: Pools,
        registry: MetricsRegistry,
        fail_fast_timeout: float,
        clock: Clock,
        mesh_tls: bool = True,
        no_tls_reason: str = NOT_PROVIDED_BY_DISCOVERY,
    ) -> None:
        super().__init__(
            direction="outbound",
            pools=pools,
            registry=registry,
            fail_fast_timeout=fail_fast_timeout,
            clock=clock,
        )
        self.discovery = discovery
        #: With identity disabled, endpoints are dialled in plaintext whatever identity they have.
        self.mesh_tls = mesh_tls
        self._no_tls_reason = no_tls_reason
        self._labels: dict[Address, tuple[Endpoint, Labels, str]] = {}

    def route(self, exchange: Exchange) -> None:
        now = exchange.started_at
        tunnel = _info(exchange).connect_authority
        if tunnel is not None:
            # HTTP inside a CONNECT tunnel goes where the tunnel was opened to, whatever its Host says.
            exchange.authority = tunnel
        discovery = self.discovery
        status = Status.NOT_IN_MESH
        if discovery is not None and exchange.authority:
            try:
                resolution = discovery.resolve(exchange.authority, now)
            except AuthorityLimitError as exc:
                self._fail(exchange, self._plain_metrics(exchange), 503, str(exc))
                return
            status = resolution.status
            if status is Status.KNOWN:
                load = resolution.balancer.pick(now)
                if load is not None:
                    pool = self._pool(resolution, load.key, exchange)
                    connection = pool.ready()
                    if connection is not None:
                        metrics = self._metrics(resolution, load.key, exchange)
                        self._attach(exchange, connection, pool, load, metrics, now)
                        return
        if status is Status.NOT_IN_MESH:
            target = self._fallback_target(exchange)
            if target is not None:
                pool = self.pools.get(target, None, _protocol(exchange, None))
                connection = pool.ready()
                if connection is not None:
                    self._attach(exchange, connection, pool, None, self._plain_metrics(exchange), now)
                    return
        self._spawn(self._route_slowly(exchange))

    def _fallback_target(self, exchange: Exchange) -> Address | None:
        """Outside the mesh, only where the client meant to connect: the original destination of a
        redirected connection. A client that dialled the proxy itself gets nothing more (no open relay)."""
        return _info(exchange).original_dst

    def _pool(self, resolution: Resolution, address: Address, exchange: Exchange) -> EndpointPool:
        endpoint = resolution.endpoints.get(address)
        identity = endpoint.tls_identity if endpoint is not None and self.mesh_tls else None
        return self.pools.get(address, identity, _protocol(exchange, identity))

    async def _route_slowly(self, exchange: Exchange) -> None:
        try:
            async with asyncio.timeout(self.fail_fast_timeout):
                pool, load, metrics = await self._choose(exchange)
                await self._connect_and_attach(exchange, pool, load, metrics)
        except RouteFailure as failure:
            self._fail(exchange, self._plain_metrics(exchange), failure.http_status, failure.message)
        except AuthorityLimitError as exc:
            self._fail(exchange, self._plain_metrics(exchange), 503, str(exc))
        except TimeoutError:
            self._fail(exchange, self._plain_metrics(exchange), 503, "timed out waiting for a route")
        except Exception:
            log.exception("routing_failed", direction=self.direction)
            self._fail(exchange, self._plain_metrics(exchange), 502, "proxy routing error")

    async def _choose(
        self, exchange: Exchange
    ) -> tuple[EndpointPool, EndpointLoad[Address] | None, RouteHandle]:
        discovery = self.discovery
        if discovery is not None and exchange.authority:
            resolution = await discovery.wait_usable(exchange.authority, self.fail_fast_timeout)
            if resolution is None:
                raise RouteFailure(503, "no endpoints available")
            if resolution.status is Status.KNOWN:
                load = resolution.balancer.pick(self.clock())
                if load is None:
                    raise RouteFailure(503, "no endpoints available")
                pool = self._pool(resolution, load.key, exchange)
                return pool, load, self._metrics(resolution, load.key, exchange)
        target = self._fallback_target(exchange)
        if target is None:
            raise RouteFailure(502, "authority not in the mesh and no original destination")
        return self.pools.get(target, None, _protocol(exchange, None)), None, self._plain_metrics(exchange)

    def _metrics(self, resolution: Resolution, address: Address, exchange: Exchange) -> RouteHandle:
        endpoint = resolution.endpoints.get(address)
        cached = self._labels.get(address)
        if cached is None or cached[0] is not endpoint:
            identity = endpoint.tls_identity if endpoint is not None and self.mesh_tls else None
            extra, tls = tls_labels("server_id", identity, self._no_tls_reason)
            labels = (*_endpoint_labels(endpoint), *extra)
            cached = self._labels[address] = (endpoint or Endpoint(address), labels, tls)
        return self.registry.route(
            self.direction, resolution.authority, cached[1], cached[2], exchange.protocol
        )

    async def tcp_target(self, info: ConnectionInfo) -> TcpTarget:
        """Where an opaque connection goes: discovery by its original destination (a service's address
        balances over its endpoints, a pod's is that endpoint, with mTLS where meshed), else that
        destination itself. A client that dialled the proxy directly has none: refused (no open relay)."""
        original = info.original_dst
        if info.connect_authority is not None:
            return await self._tunnel_target(info.connect_authority, original)
        if original is None:
            raise TcpRouteRefused("no_original_destination")
        discovery = self.discovery
        if discovery is not None:
            resolution = await discovery.wait_usable(ip_authority(original), self.fail_fast_timeout)
            if resolution is not None and resolution.status is Status.KNOWN:
                return self._pick_tcp(resolution)
        return TcpTarget(original)

    def _pick_tcp(self, resolution: Resolution) -> TcpTarget:
        """An endpoint of a known service for one TCP stream (mTLS to it where it is meshed)."""
        load = resolution.balancer.pick(self.clock())
        if load is None:
            raise TcpRouteRefused("no_endpoints")
        endpoint = resolution.endpoints.get(load.key)
        identity = endpoint.tls_identity if endpoint is not None and self.mesh_tls else None
        load.started()
        return TcpTarget(load.key, identity, _endpoint_labels(endpoint), load.finished)

    async def _tunnel_target(self, authority: bytes, original: Address | None) -> TcpTarget:
        """Where an HTTP ``CONNECT host:port`` goes: discovery by that name or address (mTLS where meshed),
        else only the connection's own original destination, in plaintext. Nothing else (no open relay)."""
        discovery = self.discovery
        if discovery is not None:
            try:
                resolution = await discovery.wait_usable(authority, self.fail_fast_timeout)
            except AuthorityLimitError:
                raise TcpRouteRefused("connect_authority_unknown") from None
            if resolution is not None and resolution.status is Status.KNOWN:
                return self._pick_tcp(resolution)
        if original is not None and ip_authority(original) == authority:
            return TcpTarget(original)
        raise TcpRouteRefused("connect_authority_unknown")

    def opaque_hint(self, info: ConnectionInfo) -> bool | None:
        """Whether discovery says the connection's destination port is opaque (None: not known yet)."""
        discovery = self.discovery
        original = info.original_dst
        if discovery is None or original is None:
            return False
        try:
            resolution = discovery.resolve(ip_authority(original), self.clock())
        except AuthorityLimitError:
            return False
        if resolution.status is Status.PENDING:
            return None
        return _any_opaque(resolution)

    async def opaque_lookup(self, info: ConnectionInfo) -> bool:
        discovery = self.discovery
        original = info.original_dst
        if discovery is None or original is None:
            return False
        resolution = await discovery.wait_usable(ip_authority(original), self.fail_fast_timeout)
        return resolution is not None and _any_opaque(resolution)

    def _upstream_labels(self, address: Address | None) -> Mapping[str, str]:
        """The endpoint's labels from discovery (``namespace``, ``service``, ``pod``, its owner...)."""
        cached = self._labels.get(address) if address is not None else None
        return cached[0].labels if cached is not None else _NO_LABELS

    def _upstream_tls(self, identity: str | None) -> str:
        return tls_labels("server_id", identity, self._no_tls_reason)[1]

    def forget(self, addresses: list[Address]) -> None:
        """Endpoints left every set: retire their connections once in-flight requests finish."""
        for address in addresses:
            self._labels.pop(address, None)
            self.pools.retire(address)


class InboundRouter(_BaseRouter):
    """Routes requests arriving for this pod to the local application, and nowhere else.

    A request goes to the connection's original destination (the pod's own address and the application's
    port), never to a loopback-only listener (unless ``app_host`` says so, for a local mesh without
    iptables) and never to the proxy's own ports: the proxy must not become a way into what the pod keeps
    to itself. The client's verified identity reaches the application in ``tether-client-id``; one sent by
    the client itself is dropped first.
    """

    def __init__(
        self,
        *,
        pools: Pools,
        registry: MetricsRegistry,
        fail_fast_timeout: float,
        clock: Clock,
        proxy_ports: Collection[int],
        app_host: str = "",
        app_port: int = 0,
        probe_only_paths: Callable[[int], frozenset[bytes] | None] = lambda _port: None,
    ) -> None:
        super().__init__(
            direction="inbound",
            pools=pools,
            registry=registry,
            fail_fast_timeout=fail_fast_timeout,
            clock=clock,
        )
        self.app_host = app_host
        #: Where connections without an original destination go (a mesh without iptables); 0: refused.
        self.app_port = app_port
        self.proxy_ports = frozenset(proxy_ports)
        #: Requests refused for targeting one of the proxy's own ports.
        self.refused_proxy_port = 0
        #: Requests and connections refused for an original destination that is not this pod's address.
        self.refused_not_local = 0
        #: The inbound policy's probe-only ports (see InboundPolicy.probe_only_paths).
        self._probe_only_paths = probe_only_paths
        #: Plaintext requests refused on a probe-only port: not a probe.
        self.refused_not_probe = 0

    def route(self, exchange: Exchange) -> None:
        info = _info(exchange)
        labels, tls = info.metric_labels()
        # The application gets the protocol its client spoke: HTTP/1.1 carried over the mesh's HTTP/2
        # says so in a header (read before every tether-* header from outside is dropped), and that is the
        # protocol its series are labelled with.
        protocol = Protocol.HTTP1 if exchange.protocol == HTTP1_NAME else Protocol.HTTP2
        if protocol is Protocol.HTTP2 and _orig_proto(exchange) == HTTP11:
            protocol = Protocol.HTTP1
        metrics = self.registry.route(self.direction, _authority_text(exchange), labels, tls, protocol.value)
        exchange.request_headers = with_client_id(exchange.request_headers, info.client_id)
        try:
            target = self._app_target(info)
            self._check_probe_only(exchange, info, target[1])
        except TcpRouteRefused as refused:
            if refused.reason == "not_a_probe":
                self._fail(
                    exchange,
                    metrics,
                    403,
                    f"port {refused.port} takes plaintext only for the kubelet's probes; use the mesh (mTLS)",
                )
            elif refused.reason == "proxy_port":
                self._fail(
                    exchange, metrics, 403, f"port {refused.port} is the proxy's own; it is not forwarded"
                )
            elif refused.reason == "no_original_destination":
                self._fail(
                    exchange,
                    metrics,
                    403,
                    f"port {refused.port} is the proxy's own and the connection was not redirected to it; "
                    "without iptables, set --inbound-app-port",
                )
            else:
                self._fail(
                    exchange,
                    metrics,
                    403,
                    "the connection was for another host than this pod; the proxy forwards only to its "
                    "own application",
                )
            return
        pool = self.pools.get(target, None, protocol)
        connection = pool.ready()
        if connection is not None:
            self._attach(exchange, connection, pool, None, metrics, exchange.started_at)
        else:
            self._spawn(self._connect_slowly(exchange, pool, metrics))

    async def tcp_target(self, info: ConnectionInfo) -> TcpTarget:
        """The application, at the port the client asked for (never one of the proxy's own)."""
        target = self._app_target(info)
        if info.client_id is None and self._probe_only_paths(target[1]) is not None:
            # An HTTP probe port: plaintext may probe, never open a raw stream to the application.
            self.refused_not_probe += 1
            raise TcpRouteRefused("not_a_probe", target[1])
        return TcpTarget(target)

    def _check_probe_only(self, exchange: Exchange, info: ConnectionInfo, port: int) -> None:
        """Plaintext on a probe-only port: a GET or HEAD of one of the probes' paths, or refused."""
        if info.client_id is not None:
            return
        paths = self._probe_only_paths(port)
        if paths is None:
            return
        method = path = b""
        for name, value in exchange.request_headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD") or path not in paths:
            self.refused_not_probe += 1
            raise TcpRouteRefused("not_a_probe", port)

    def _app_target(self, info: ConnectionInfo) -> Address:
        """Where the application is: the port the client asked for on the pod's own address (its original
        destination), or, without an iptables redirect, the configured application port."""
        original = info.original_dst
        if original is None:
            if self.app_port:
                return (self.app_host or "127.0.0.1", self.app_port)
            # Not redirected, so the client dialled the proxy's inbound port itself (iptables sends one
            # meant for it back to it): the proxy's own port, with nothing behind it.
            self.refused_proxy_port += 1
            raise TcpRouteRefused("no_original_destination", info.local[1])
        if not info.original_dst_is_local:
            self.refused_not_local += 1
            raise TcpRouteRefused("not_local", original[1])
        if original[1] in self.proxy_ports:
            self.refused_proxy_port += 1
            raise TcpRouteRefused("proxy_port", original[1])
        return (self.app_host or original[0], original[1])

    async def _connect_slowly(self, exchange: Exchange, pool: EndpointPool, metrics: RouteHandle) -> None:
        try:
            async with asyncio.timeout(self.fail_fast_timeout):
                await self._connect_and_attach(exchange, pool, None, metrics)
        except TimeoutError:
            self._fail(exchange, metrics, 503, "timed out connecting to the application")
        except Exception:
            log.exception("routing_failed", direction=self.direction)
            self._fail(exchange, metrics, 502, "proxy routing error")


HTTP1_NAME = Protocol.HTTP1.value


def _protocol(exchange: Exchange, identity: str | None) -> Protocol:
    """What to speak upstream: HTTP/2 for HTTP/2 clients, and for HTTP/1.1 ones to a meshed endpoint (its
    proxy restores HTTP/1.1); HTTP/1.1 otherwise, and always for a protocol switch (WebSocket, CONNECT),
    which needs a connection of its own."""
    if exchange.protocol != HTTP1_NAME:
        return Protocol.HTTP2
    if identity is None or exchange.upgrade is not None or _method(exchange) == b"CONNECT":
        return Protocol.HTTP1
    return Protocol.HTTP2


def _method(exchange: Exchange) -> bytes:
    for name, value in exchange.request_headers:
        if name == b":method":
            return value
    return b""


def _orig_proto(exchange: Exchange) -> bytes | None:
    for name, value in exchange.request_headers:
        if name == ORIG_PROTO_HEADER:
            return value
    return None


def ip_authority(address: Address) -> bytes:
    """``ip:port`` (``[ip]:port`` for IPv6): how discovery is asked about an address."""
    host, port = address
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


def _any_opaque(resolution: Resolution) -> bool:
    return resolution.status is Status.KNOWN and any(e.opaque for e in resolution.endpoints.values())


def _info(exchange: Exchange) -> ConnectionInfo:
    info = exchange.downstream.info
    assert info is not None, "the I/O layer describes every accepted connection"
    return info


def _authority_text(exchange: Exchange) -> str:
    return exchange.authority.decode("utf-8", "replace")


def _endpoint_labels(endpoint: Endpoint | None) -> Labels:
    if endpoint is None:
        return ()
    labels = endpoint.labels
    kind = ""
    for candidate in ("deployment", "statefulset", "daemonset", "replicaset", "job", "cronjob"):
        if candidate in labels:
            kind = candidate
            break
    return dst_labels(
        namespace=labels.get("namespace", ""),
        service=labels.get("service", ""),
        pod=labels.get("pod", ""),
        workload_kind=kind,
        workload_name=labels.get(kind, "") if kind else "",
    )


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"RST_{code}"
