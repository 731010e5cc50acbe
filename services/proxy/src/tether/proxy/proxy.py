"""The proxy process: listeners, routers, dialers, discovery, identity and metrics wired together."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable

import structlog

from tether.proxy.config import PROXY_ADMIN_PORT, PROXY_CONTROL_PORT, ProxyConfig
from tether.proxy.core.abuse import ClientLimits
from tether.proxy.core.conninfo import (
    DISABLED,
    LOOPBACK,
    NO_TLS_FROM_REMOTE,
    NOT_PROVIDED_BY_DISCOVERY,
)
from tether.proxy.detection import Detector
from tether.proxy.dialer import Dialer
from tether.proxy.discovery import DestinationClient, StreamOpener
from tether.proxy.dstclient import DestinationStreams
from tether.proxy.grpc_h2 import GrpcChannel
from tether.proxy.identity import KeyMaker, ProxyIdentity, read_proxy_trust_anchors
from tether.proxy.inbound import InboundAcceptor, InboundPolicy
from tether.proxy.metrics import MetricsRegistry
from tether.proxy.origdst import LocalAddresses, original_destination
from tether.proxy.pool import Pools
from tether.proxy.reporter import TapCallback, TelemetryReporter
from tether.proxy.reporting import Reporting, own_labels, reporting_for
from tether.proxy.routing import InboundRouter, OutboundRouter
from tether.proxy.tcp import TcpRelays
from tether.proxy.transport import Flusher, ListenerContext, OriginalDstResolver
from tether.shared.config import parse_hostport
from tether.shared.keygen import make_key_and_csr_in_helper
from tether.shared.listen import bind_failure
from tether.shared.supervisor import SupervisedTask, Supervisor

log = structlog.get_logger(__name__)

#: The housekeeping pass's period at most (seconds): it also times out silent handshakes and resets
#: abandoned upstream streams once old enough, both of which want second-level precision.
_SWEEP_INTERVAL = 1.0
#: How long a stopping proxy waits for telemetry to acknowledge its last report (within the shutdown grace).
FINAL_REPORT_TIMEOUT = 1.0


class Proxy:
    """One sidecar proxy. Usable in-process: ``await start()``, ``await stop()``.

    ``original_dst`` and ``destination_streams`` replace SO_ORIGINAL_DST and the
    gRPC Destination client, for running without iptables or a control plane.
    Long-lived tasks start through ``supervisor`` (the process runtime's); without one the
    proxy keeps its own, and a failed critical task sets ``shutdown_requested``.
    ``clock`` is the monotonic clock the data path sees; ``key_maker`` makes the key and CSR (by default in
    a forked helper). ``on_tap`` receives the tap subscriptions telemetry sends (see reporter.py).
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        original_dst: OriginalDstResolver = original_destination,
        inbound_original_dst: OriginalDstResolver | None = None,
        destination_streams: StreamOpener | None = None,
        supervisor: Supervisor | None = None,
        clock: Callable[[], float] = time.monotonic,
        key_maker: KeyMaker = make_key_and_csr_in_helper,
        on_tap: TapCallback | None = None,
    ) -> None:
        self.config = config
        self._on_tap = on_tap
        self.reporting: Reporting | None = None
        self._key_maker = key_maker
        self.clock = clock
        self._original_dst = original_dst
        self._inbound_original_dst = inbound_original_dst or original_dst
        self._is_local_address = LocalAddresses()
        self._destination_streams = destination_streams
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor(lambda _name, _exc: self.shutdown_requested.set())
        self.registry = MetricsRegistry(idle_timeout=max(config.idle_timeout, 60.0))
        self.identity: ProxyIdentity | None = None
        self.discovery: DestinationClient | None = None
        self._grpc_streams: DestinationStreams | None = None
        self._outbound_servers: list[asyncio.Server] = []
        self._acceptor: InboundAcceptor | None = None
        self._contexts: list[ListenerContext] = []
        self._sweeper: SupervisedTask | None = None
        self.shutdown_requested = asyncio.Event()
        self._built = False  # pools and routers exist (start got past building them)
        self._started = False
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        clock = self.clock
        if not config.identity.disabled:
            self.identity = ProxyIdentity(
                config.identity.workload_identity(),
                read_proxy_trust_anchors(config.identity.trust_anchors),
                identity_addr=config.identity.addr,
                identity_server_name=config.identity.server_name,
                token_file=config.identity.token_file,
                spawn=self.supervisor.spawn,
                connect_timeout=config.connect_timeout,
                key_maker=self._key_maker,
            )
            await self.identity.start()
        else:
            log.warning(
                "identity_disabled",
                effect="no mTLS: all traffic is plaintext, labelled tls=disabled; no telemetry reports",
            )
        identity = self.identity
        # Why a connection has no mesh TLS: identity is off here, or the peer could not offer it.
        disabled = identity is None
        outbound_no_tls = DISABLED if disabled else NOT_PROVIDED_BY_DISCOVERY
        inbound_no_tls = DISABLED if disabled else NO_TLS_FROM_REMOTE
        loopback_no_tls = DISABLED if disabled else LOOPBACK
        flusher = Flusher(loop)
        self.outbound_dialer = Dialer(
            flusher=flusher,
            registry=self.registry,
            direction="outbound",
            clock=clock,
            connect_timeout=config.connect_timeout,
            mesh_tls=identity.client_context if identity is not None else lambda _alpn: None,
            no_tls_reason=outbound_no_tls,
        )
        self.inbound_dialer = inbound_dialer = Dialer(
            flusher=flusher,
            registry=self.registry,
            direction="inbound",
            clock=clock,
            connect_timeout=config.connect_timeout,
            no_tls_reason=loopback_no_tls,
        )
        self.outbound_pools = Pools(dialer=self.outbound_dialer, clock=clock)
        self.inbound_pools = Pools(dialer=inbound_dialer, clock=clock)
        self.outbound_router = OutboundRouter(
            discovery=None,
            pools=self.outbound_pools,
            registry=self.registry,
            fail_fast_timeout=config.fail_fast_timeout,
            clock=clock,
            mesh_tls=identity is not None,
            no_tls_reason=outbound_no_tls,
        )
        opener = self._destination_streams
        if opener is None and config.destination_addr:
            channel_tls = (
                (lambda: identity.control_plane_tls(config.destination_server_name))
                if identity is not None
                else (lambda: None)
            )
            self._grpc_streams = DestinationStreams(
                GrpcChannel(
                    config.destination_addr,
                    spawn=self.supervisor.spawn,
                    tls=channel_tls,
                    connect_timeout=config.connect_timeout,
                ),
                config.context_token,
            )
            opener = self._grpc_streams.open
        if opener is not None:
            self.discovery = DestinationClient(
                opener,
                spawn=self.supervisor.spawn,
                on_removed=self.outbound_router.forget,
                max_authorities=config.max_authorities,
                clock=clock,
            )
            self.outbound_router.discovery = self.discovery
        outbound_host, outbound_port = parse_hostport(config.outbound_addr)
        inbound_host, inbound_port = parse_hostport(config.inbound_addr)
        self.inbound_policy = InboundPolicy(
            require_identity=config.inbound_policy == "all-authenticated",
            ports=config.require_identity_ports,
            probe_ports=config.probe_ports,
            probe_paths=config.probe_path_pairs(),
        )
        self.inbound_router = InboundRouter(
            pools=self.inbound_pools,
            registry=self.registry,
            fail_fast_timeout=config.fail_fast_timeout,
            clock=clock,
            proxy_ports=self._own_ports(),
            app_host=config.inbound_app_host,
            app_port=config.inbound_app_port,
            probe_only_paths=self.inbound_policy.probe_only_paths,
        )
        h2 = config.h2
        limits = ClientLimits(
            max_concurrent_streams=config.max_concurrent_streams,
            max_header_count=h2.max_header_count,
            max_header_list_size=h2.max_header_list_bytes,
            handshake_timeout=h2.handshake_timeout,
            max_connections=h2.max_connections,
            reset_burst=h2.reset_burst,
            reset_rate=h2.reset_rate,
            max_queued_control_replies=h2.max_queued_control_replies,
            control_frame_rate=h2.control_frame_rate,
            max_consecutive_empty_frames=h2.max_consecutive_empty_frames,
            max_priority_per_stream=h2.max_priority_per_stream,
            max_window_updates_per_data=h2.max_window_updates_per_data,
        )
        outbound = ListenerContext(
            direction="outbound",
            flusher=flusher,
            router=self.outbound_router,
            registry=self.registry,
            clock=clock,
            original_dst=self._original_dst,
            no_tls_reason=loopback_no_tls,
            limits=limits,
        )
        inbound = ListenerContext(
            direction="inbound",
            flusher=flusher,
            router=self.inbound_router,
            registry=self.registry,
            clock=clock,
            original_dst=self._inbound_original_dst,
            is_local_address=self._is_local_address,
            no_tls_reason=inbound_no_tls,
            limits=limits,
        )
        self._contexts = [outbound, inbound]
        self.outbound_relays = TcpRelays(
            direction="outbound",
            route=self.outbound_router,
            dialer=self.outbound_dialer,
            registry=self.registry,
            clock=clock,
            idle_timeout=config.tcp_idle_timeout,
            connect_timeout=config.connect_timeout,
        )
        self.inbound_relays = TcpRelays(
            direction="inbound",
            route=self.inbound_router,
            dialer=inbound_dialer,
            registry=self.registry,
            clock=clock,
            idle_timeout=config.tcp_idle_timeout,
            connect_timeout=config.connect_timeout,
        )
        outbound_detector = Detector(
            outbound,
            self.outbound_relays,
            timeout=config.detect_timeout,
            opaque_ports=config.opaque_ports,
            opaque_hint=self.outbound_router.opaque_hint,
            opaque_lookup=self.outbound_router.opaque_lookup,
            tunnels=True,
        )
        inbound_detector = Detector(
            inbound, self.inbound_relays, timeout=config.detect_timeout, opaque_ports=config.opaque_ports
        )
        self._built = True
        self.registry.add_collector(self._render_limits)
        outbound_sockets = listen_dual_stack(
            "--outbound-addr", config.outbound_addr, outbound_host, outbound_port
        )
        self._outbound_servers = [
            await loop.create_server(outbound_detector.protocol, sock=sock, backlog=1024)
            for sock in outbound_sockets
        ]
        listening = listen_dual_stack("--inbound-addr", config.inbound_addr, inbound_host, inbound_port)
        resolve_inbound = self._inbound_original_dst

        def original_port(sock: socket.socket) -> int:
            original = resolve_inbound(sock)
            return original[1] if original is not None else int(sock.getsockname()[1])

        self._acceptor = InboundAcceptor(
            inbound,
            listening,
            spawn=self.supervisor.spawn,
            local_identity=identity.identity.dns_name if identity is not None else None,
            server_context=identity.server_context if identity is not None else lambda: None,
            policy=self.inbound_policy,
            original_port=original_port,
            detector=inbound_detector,
            detect_timeout=config.detect_timeout,
        )
        self._acceptor.start()
        self._sweeper = self.supervisor.spawn("proxy-sweeper", self._sweep)
        self._start_reporting()
        self._started = True
        log.info(
            "proxy_started",
            outbound_port=self.outbound_port,
            inbound_port=self.inbound_port,
            destination=config.destination_addr or None,
            identity=identity.identity.dns_name if identity is not None else None,
        )

    def _start_reporting(self) -> None:
        identity = self.identity
        labels = own_labels(self.config, identity)
        for router in (self.outbound_router, self.inbound_router):
            router.own_labels = labels
            router.local_identity = identity.identity.dns_name if identity is not None else ""
        if identity is None or not self.config.telemetry_addr:
            return  # telemetry accepts only mTLS clients (said at start: identity_disabled)
        spawn = self.supervisor.spawn
        reporting = reporting_for(
            self.config, identity, self.registry, spawn, clock=self.clock, on_tap=self._on_tap
        )
        self.reporting = reporting
        self.outbound_router.taps = self.inbound_router.taps = reporting.taps
        self.registry.add_collector(reporting.render_metrics)
        reporting.start(spawn)

    @property
    def reporter(self) -> TelemetryReporter | None:
        return self.reporting.reporter if self.reporting is not None else None

    def _own_ports(self) -> set[int]:
        config = self.config
        ports = {PROXY_CONTROL_PORT, PROXY_ADMIN_PORT}
        for addr in (config.outbound_addr, config.inbound_addr, config.admin_addr):
            ports.add(parse_hostport(addr)[1])
        return ports - {0}

    @property
    def outbound_port(self) -> int:
        assert self._outbound_servers
        return int(self._outbound_servers[0].sockets[0].getsockname()[1])

    @property
    def inbound_port(self) -> int:
        assert self._acceptor is not None
        return self._acceptor.port

    def ready(self) -> bool:
        """Serving, and (unless identity is disabled) holding a valid certificate."""
        if not self._started or self._stopping:
            return False
        return self.identity is None or self.identity.ready()

    def render_metrics(self) -> str:
        return self.registry.render(self.clock())

    async def _sweep(self) -> None:
        # One periodic pass instead of a timer per connection: an idle client is
        # closed between one and one-and-a-quarter timeouts after its last stream.
        config = self.config
        interval = min(config.idle_timeout / 4, config.downstream_idle_timeout / 4, _SWEEP_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            for context in self._contexts:
                context.close_idle(now, config.downstream_idle_timeout)
            self.outbound_relays.close_idle(now)
            self.inbound_relays.close_idle(now)
            timeout = config.idle_timeout
            if self.discovery is not None:
                self.discovery.evict_idle(now, timeout)
            self.outbound_dialer.expire_orphans(now)
            self.inbound_dialer.expire_orphans(now)
            self.outbound_pools.evict_idle(now, timeout)
            self.inbound_pools.evict_idle(now, timeout)
            self.registry.expire(now)
            if self.reporting is not None:
                self.reporting.expire(now)

    def _render_limits(self) -> str:
        dialers = (("outbound", self.outbound_dialer), ("inbound", self.inbound_dialer))
        lines = [
            "# HELP proxy_downstream_idle_closed_total Client connections closed after the idle timeout.",
            "# TYPE proxy_downstream_idle_closed_total counter",
            *(
                f'proxy_downstream_idle_closed_total{{direction="{context.direction}"}} {context.idle_closed}'
                for context in self._contexts
            ),
            "# HELP proxy_h2_abuse_total Client connections cut off (GOAWAY ENHANCE_YOUR_CALM), by class.",
            "# TYPE proxy_h2_abuse_total counter",
            *(
                f'proxy_h2_abuse_total{{direction="{context.direction}",reason="{reason}"}} {count}'
                for context in self._contexts
                for reason, count in sorted(context.abuse.items())
            ),
            "# HELP proxy_downstream_connections_refused_total Client connections refused at the limit.",
            "# TYPE proxy_downstream_connections_refused_total counter",
            *(
                f'proxy_downstream_connections_refused_total{{direction="{context.direction}"}} '
                f"{context.refused_over_limit}"
                for context in self._contexts
            ),
            "# HELP proxy_downstream_handshake_timeout_total Client connections closed without a preface.",
            "# TYPE proxy_downstream_handshake_timeout_total counter",
            *(
                f'proxy_downstream_handshake_timeout_total{{direction="{context.direction}"}} '
                f"{context.silent_closed}"
                for context in self._contexts
            ),
            "# HELP proxy_upstream_abandoned_reset_total Upstream streams whose client went away before the"
            " response, reset once old enough not to look like a rapid reset.",
            "# TYPE proxy_upstream_abandoned_reset_total counter",
            *(
                f'proxy_upstream_abandoned_reset_total{{direction="{direction}"}} {dialer.orphans_reset}'
                for direction, dialer in dialers
            ),
            "# HELP proxy_upstream_abandoned_streams Upstream streams left to finish whose client left.",
            "# TYPE proxy_upstream_abandoned_streams gauge",
            *(
                f'proxy_upstream_abandoned_streams{{direction="{direction}"}} {dialer.orphan_count()}'
                for direction, dialer in dialers
            ),
            "# HELP proxy_identity_mismatch_total Connections refused: the peer's certificate named another"
            " identity than expected.",
            "# TYPE proxy_identity_mismatch_total counter",
            f'proxy_identity_mismatch_total{{peer="endpoint"}} {self.outbound_dialer.identity_mismatches}',
            "# HELP proxy_inbound_proxy_port_refused_total Inbound requests refused for targeting a port of"
            " the proxy itself.",
            "# TYPE proxy_inbound_proxy_port_refused_total counter",
            f"proxy_inbound_proxy_port_refused_total {self.inbound_router.refused_proxy_port}",
            "# HELP proxy_inbound_not_local_refused_total Inbound requests and connections refused: their"
            " original destination was another host, not this pod (the proxy is not a relay).",
            "# TYPE proxy_inbound_not_local_refused_total counter",
            f"proxy_inbound_not_local_refused_total {self.inbound_router.refused_not_local}",
            "# HELP proxy_inbound_not_a_probe_refused_total Plaintext refused on a probe-only port: not a"
            " GET or HEAD of a probe's path.",
            "# TYPE proxy_inbound_not_a_probe_refused_total counter",
            f"proxy_inbound_not_a_probe_refused_total {self.inbound_router.refused_not_probe}",
        ]
        if self.identity is not None:
            mismatches = self.identity.identity_mismatches
            lines.append(f'proxy_identity_mismatch_total{{peer="identity"}} {mismatches}')
        if self._grpc_streams is not None:
            mismatches = self._grpc_streams.channel.identity_mismatches
            lines.append(f'proxy_identity_mismatch_total{{peer="destination"}} {mismatches}')
        if self.reporter is not None:
            mismatches = self.reporter.channel.identity_mismatches
            lines.append(f'proxy_identity_mismatch_total{{peer="telemetry"}} {mismatches}')
        if self.discovery is not None:
            lines += [
                "# HELP proxy_authorities_resolved Distinct authorities being resolved now.",
                "# TYPE proxy_authorities_resolved gauge",
                f"proxy_authorities_resolved {len(self.discovery)}",
                "# HELP proxy_authority_limit_rejected_total Requests refused for a new authority (cap).",
                "# TYPE proxy_authority_limit_rejected_total counter",
                f"proxy_authority_limit_rejected_total {self.discovery.rejected}",
            ]
        lines += self._protocol_lines()
        text = "\n".join(lines) + "\n"
        if self._acceptor is not None:
            text += self._acceptor.render_metrics()
        if self.identity is not None:
            text += self.identity.render_metrics()
        return text

    def _protocol_lines(self) -> list[str]:
        relays = (self.outbound_relays, self.inbound_relays)
        return [
            "# HELP proxy_protocol_detected_total Client connections by the protocol detected (or known).",
            "# TYPE proxy_protocol_detected_total counter",
            *(
                f'proxy_protocol_detected_total{{direction="{c.direction}",protocol="{protocol}"}} {count}'
                for c in self._contexts
                for protocol, count in sorted(c.detected.items())
            ),
            "# HELP proxy_http1_rejected_total HTTP/1.1 requests refused before routing (request smuggling"
            " defences, malformed requests), by reason; the connection is closed.",
            "# TYPE proxy_http1_rejected_total counter",
            *(
                f'proxy_http1_rejected_total{{direction="{context.direction}",reason="{reason}"}} {count}'
                for context in self._contexts
                for reason, count in sorted(context.h1_refused.items())
            ),
            "# HELP proxy_tcp_forward_failed_total TCP connections not forwarded, by reason.",
            "# TYPE proxy_tcp_forward_failed_total counter",
            *(
                f'proxy_tcp_forward_failed_total{{direction="{r.direction}",reason="{reason}"}} {count}'
                for r in relays
                for reason, count in sorted(r.failed.items())
            ),
            "# HELP proxy_tcp_idle_closed_total TCP connections closed after the TCP idle timeout.",
            "# TYPE proxy_tcp_idle_closed_total counter",
            *(f'proxy_tcp_idle_closed_total{{direction="{r.direction}"}} {r.idle_closed}' for r in relays),
        ]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, GOAWAY every client, wait up to ``grace`` seconds for in-flight requests."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        for server in self._outbound_servers:
            server.close()
        if self._acceptor is not None:
            await self._acceptor.stop()
        for context in self._contexts:
            context.drain()
        if self._started:
            deadline = self.clock() + grace
            while any(context.connections for context in self._contexts) and self.clock() < deadline:
                await asyncio.sleep(0.01)
        for context in self._contexts:
            for protocol in list(context.connections):
                if protocol.transport is not None:
                    protocol.transport.abort()
        if self._built:
            # TCP streams have no way to be told to go elsewhere: they end with the proxy.
            self.outbound_relays.close_all()
            self.inbound_relays.close_all()
        # The requests just drained are counted: report them before the report stream goes.
        await self._release(flush_timeout=min(grace, FINAL_REPORT_TIMEOUT))
        log.info("proxy_stopped")

    async def _release(self, flush_timeout: float = 0.0) -> None:
        if self._sweeper is not None:
            await self._sweeper.stop()
        if self.reporting is not None:
            await self.reporting.stop(flush_timeout)
        if self._built:
            await self.outbound_router.close()
            await self.inbound_router.close()
            self.outbound_pools.close()
            self.inbound_pools.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self._grpc_streams is not None:
            await self._grpc_streams.close()
        if self.identity is not None:
            await self.identity.stop()
        if self._own_supervisor:
            await self.supervisor.stop()
        for server in self._outbound_servers:
            await server.wait_closed()


#: The IPv6 address that goes with an IPv4 listening address: interception redirects IPv6 connections to
#: the same port on the IPv6 loopback (outbound) or the pod's IPv6 address (inbound).
_IPV6_COMPANION = {"127.0.0.1": "::1", "0.0.0.0": "::"}


def listen_dual_stack(option: str, addr: str, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``, plus the IPv6 companion of a loopback or wildcard IPv4 address
    on the same port where this host has IPv6 (skipped, and said so once, where it has not)."""
    sockets: list[socket.socket] = []
    try:
        first = socket.create_server((host, port), backlog=1024, reuse_port=False)
    except OSError as exc:
        raise bind_failure(option, addr, exc) from None
    first.setblocking(False)
    sockets.append(first)
    companion = _IPV6_COMPANION.get(host)
    if companion is not None:
        bound_port = int(first.getsockname()[1])
        try:
            second = socket.create_server(
                (companion, bound_port), family=socket.AF_INET6, backlog=1024, reuse_port=False
            )
        except OSError as exc:
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                first.close()
                raise bind_failure(option, f"[{companion}]:{bound_port}", exc) from None
            log.info(
                "ipv6_listener_skipped",
                option=option,
                address=f"[{companion}]:{bound_port}",
                reason=exc.strerror or type(exc).__name__,
            )
        else:
            second.setblocking(False)
            sockets.append(second)
    return sockets
