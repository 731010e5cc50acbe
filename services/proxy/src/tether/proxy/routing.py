"""Routers: where each new request goes, and what its outcome teaches the balancer and metrics.

The common case is decided synchronously, inside the read that delivered the
request: a known destination, an endpoint picked, a pooled connection with room.
Anything that must wait (first lookup of an authority, connecting) moves to a
task bounded by the fail-fast timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Coroutine
from typing import Any, cast

import structlog
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from tether.proxy.core.balancer import EndpointLoad
from tether.proxy.core.connection import UpstreamConnection
from tether.proxy.core.exchange import Exchange
from tether.proxy.core.resolution import Address, Endpoint, Resolution, Status
from tether.proxy.discovery import DestinationClient
from tether.proxy.errors import AuthorityLimitError, ProxyError, UpstreamConnectError
from tether.proxy.metrics import Labels, MetricsRegistry, RouteHandle, dst_labels
from tether.proxy.pool import EndpointPool, Pools
from tether.proxy.transport import DownstreamProtocol

log = structlog.get_logger(__name__)

#: Latency charged to an endpoint that could not be connected to, so the balancer avoids it.
CONNECT_FAILURE_PENALTY = 5.0


class RouteFailure(ProxyError):
    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


class _RouteState:
    __slots__ = ("load", "metrics")

    def __init__(self, load: EndpointLoad[Address] | None, metrics: RouteHandle) -> None:
        self.load = load
        self.metrics = metrics


class _BaseRouter:
    def __init__(
        self, *, direction: str, pools: Pools, registry: MetricsRegistry, fail_fast_timeout: float
    ) -> None:
        self.direction = direction
        self.pools = pools
        self.registry = registry
        self.fail_fast_timeout = fail_fast_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    # ExchangeListener
    def response_started(self, exchange: Exchange, now: float) -> None:
        load = cast(_RouteState, exchange.route_state).load
        if load is not None:
            load.observe(now - exchange.started_at, now)

    def exchange_finished(self, exchange: Exchange, now: float) -> None:
        state = cast(_RouteState, exchange.route_state)
        if state.load is not None:
            state.load.finished()
        metrics = state.metrics
        reset = exchange.reset_code
        if reset is not None and reset != ErrorCodes.NO_ERROR and not exchange.failed_by_proxy:
            metrics.failed(_error_name(reset))
        elif exchange.status:
            metrics.response(exchange.status, exchange.grpc_status, (now - exchange.started_at) * 1000.0)
        else:
            metrics.failed("no_response")

    def _attach(
        self,
        exchange: Exchange,
        connection: UpstreamConnection,
        pool: EndpointPool,
        load: EndpointLoad[Address] | None,
        metrics: RouteHandle,
        now: float,
    ) -> None:
        exchange.route_state = _RouteState(load, metrics)
        exchange.listener = self
        metrics.request()
        if load is not None:
            load.started()
        pool.last_used = now
        try:
            exchange.attach(connection, now)
        except ProtocolError:
            exchange.fail(503, "upstream refused a new stream", now)

    def _plain_metrics(self, exchange: Exchange) -> RouteHandle:
        return self.registry.route(self.direction, _authority_text(exchange))

    def _fail(self, exchange: Exchange, metrics: RouteHandle, http_status: int, message: str) -> None:
        if exchange.closed:
            return
        exchange.route_state = _RouteState(None, metrics)
        exchange.listener = self
        metrics.request()
        exchange.fail(http_status, message, _now())

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
                load.observe(CONNECT_FAILURE_PENALTY, _now())
            log.warning("upstream_connect_failed", direction=self.direction, error=str(exc))
            self._fail(exchange, metrics, 502, str(exc))
            return
        if not exchange.closed:
            self._attach(exchange, connection, pool, load, metrics, _now())

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
    ) -> None:
        super().__init__(
            direction="outbound", pools=pools, registry=registry, fail_fast_timeout=fail_fast_timeout
        )
        self.discovery = discovery
        self._labels: dict[Address, tuple[Endpoint, Labels]] = {}
        self._literals: dict[bytes, Address | None] = {}

    def route(self, exchange: Exchange) -> None:
        now = exchange.started_at
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
                    pool = self.pools.get(load.key)
                    connection = pool.ready()
                    if connection is not None:
                        metrics = self._metrics(resolution, load.key)
                        self._attach(exchange, connection, pool, load, metrics, now)
                        return
        if status is Status.NOT_IN_MESH:
            target = self._fallback_target(exchange)
            if target is not None:
                pool = self.pools.get(target)
                connection = pool.ready()
                if connection is not None:
                    self._attach(exchange, connection, pool, None, self._plain_metrics(exchange), now)
                    return
        self._spawn(self._route_slowly(exchange))

    def _fallback_target(self, exchange: Exchange) -> Address | None:
        """The original destination, else the authority itself when it is an IP address."""
        original = _original_dst(exchange)
        if original is not None:
            return original
        authority = exchange.authority
        literals = self._literals
        if authority in literals:
            return literals[authority]
        if len(literals) >= 1024:
            literals.clear()
        target = literals[authority] = _literal_address(authority)
        return target

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
                load = resolution.balancer.pick(_now())
                if load is None:
                    raise RouteFailure(503, "no endpoints available")
                return self.pools.get(load.key), load, self._metrics(resolution, load.key)
        target = self._fallback_target(exchange)
        if target is None:
            raise RouteFailure(502, "authority not in the mesh and no original destination")
        return self.pools.get(target), None, self._plain_metrics(exchange)

    def _metrics(self, resolution: Resolution, address: Address) -> RouteHandle:
        endpoint = resolution.endpoints.get(address)
        cached = self._labels.get(address)
        if cached is None or cached[0] is not endpoint:
            cached = self._labels[address] = (endpoint or Endpoint(address), _endpoint_labels(endpoint))
        return self.registry.route(self.direction, resolution.authority, cached[1])

    def forget(self, addresses: list[Address]) -> None:
        """Endpoints left every set: retire their connections once in-flight requests finish."""
        for address in addresses:
            self._labels.pop(address, None)
            self.pools.retire(address)


class InboundRouter(_BaseRouter):
    """Routes requests arriving for this pod to the local application's original port."""

    def __init__(
        self, *, app_host: str, pools: Pools, registry: MetricsRegistry, fail_fast_timeout: float
    ) -> None:
        super().__init__(
            direction="inbound", pools=pools, registry=registry, fail_fast_timeout=fail_fast_timeout
        )
        self.app_host = app_host

    def route(self, exchange: Exchange) -> None:
        metrics = self._plain_metrics(exchange)
        original = _original_dst(exchange)
        if original is None:
            self._fail(exchange, metrics, 502, "no original destination port")
            return
        pool = self.pools.get((self.app_host, original[1]))
        connection = pool.ready()
        if connection is not None:
            self._attach(exchange, connection, pool, None, metrics, exchange.started_at)
        else:
            self._spawn(self._connect_slowly(exchange, pool, metrics))

    async def _connect_slowly(self, exchange: Exchange, pool: EndpointPool, metrics: RouteHandle) -> None:
        try:
            async with asyncio.timeout(self.fail_fast_timeout):
                await self._connect_and_attach(exchange, pool, None, metrics)
        except TimeoutError:
            self._fail(exchange, metrics, 503, "timed out connecting to the application")
        except Exception:
            log.exception("routing_failed", direction=self.direction)
            self._fail(exchange, metrics, 502, "proxy routing error")


def _now() -> float:
    from tether.proxy.transport import monotonic

    return monotonic()


def _authority_text(exchange: Exchange) -> str:
    return exchange.authority.decode("utf-8", "replace")


def _original_dst(exchange: Exchange) -> Address | None:
    protocol = exchange.downstream.context
    if isinstance(protocol, DownstreamProtocol):
        return protocol.original_dst()
    return None


def _literal_address(authority: bytes) -> Address | None:
    host, _, port = authority.decode("ascii", "replace").rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


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
