"""A small mesh on loopback: real grpcio apps, real proxies, the real destination service and nats-server.

Each "pod" gets its own loopback address (127.0.0.N): its app and its proxy listen there. Without
iptables in the test, two things are emulated, faithfully to what interception would produce:

* the client app dials its proxy's outbound listener directly and names the service in :authority
  (with iptables it would dial the service address and be redirected, keeping the same :authority);
* an endpoint's registered port is its proxy's inbound listener, and that proxy is told the
  original destination port of the app (what SO_ORIGINAL_DST would report after the redirect).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from identity_harness import CONTROL_PLANE_NAMESPACE, IdentityHarness, identity_of
from prometheus_client import CollectorRegistry

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.proxy.config import ProxyConfig
from tether.proxy.proxy import Proxy
from tether.proxy.service import ProxyService
from tether.shared.config import IdentityClientConfig
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import KeyMaterial, make_key_and_csr
from tether.shared.natsserver import EmbeddedNats
from tether.shared.proto.destination.v1 import destination_pb2, destination_pb2_grpc
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually

NAMESPACE = "test"
MESSAGE_LIMIT = 16 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.enable_retries", 0),
]
SERVICE = "test.Echo"
DAY = timedelta(hours=24)


async def make_key_in_thread(identity: WorkloadIdentity) -> KeyMaterial:
    """In-process proxies share this process with grpcio, whose fork handlers can abort a forked key
    helper ("Check failed: next_worker->state == KICKED"): make the key in a thread instead."""
    return await asyncio.to_thread(make_key_and_csr, identity)


def authority(service: str, port: int = 8080) -> str:
    return f"{service}.{NAMESPACE}.svc.cluster.local:{port}"


class EchoApp:
    """A grpcio server with the four call shapes. Requests are raw bytes:

    * Unary: ``echo:<text>`` answers ``<name>:<text>``; ``sleep:<seconds>`` sleeps then answers;
      ``hold:`` waits until ``release`` is set, then answers;
      ``status:<CODE>`` aborts with that status; ``late:<seconds>`` sends its response headers at once and
      the message after that long; ``big:<n>`` answers n bytes; ``meta:`` returns the
      request's ``x-*`` metadata as initial and trailing metadata; anything else is echoed.
    * ServerStream: ``<count>:<size>`` yields count messages of size bytes.
    * ClientStream: answers the total size received and the number of messages.
    * Bidi: echoes every message back.
    """

    def __init__(self, name: str, host: str, delay: float = 0.0, port: int = 0) -> None:
        self.name = name
        self.host = host
        self.delay = delay
        self.port = port
        self.calls = 0
        self.in_flight = 0
        self.cancelled = 0
        self.cancelled_event = asyncio.Event()
        self.release = asyncio.Event()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Hang": grpc.unary_unary_rpc_method_handler(self.hang),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            verb, _, argument = request.partition(b":")
            if verb == b"sleep":
                await asyncio.sleep(float(argument))
            elif verb == b"hold":
                await self.release.wait()
            elif verb == b"late":
                await context.send_initial_metadata(())
                await asyncio.sleep(float(argument))
            elif verb == b"status":
                code = grpc.StatusCode[argument.decode()]
                await context.abort(code, f"asked for {argument.decode()}")
            elif verb == b"big":
                return b"b" * int(argument)
            elif verb == b"echo":
                return self.name.encode() + b":" + argument
            elif verb == b"whoami":
                # What the inbound proxy told the app about its client (tether-client-id), if anything.
                seen = dict(context.invocation_metadata() or ()).get("tether-client-id", "-")
                return str(seen).encode()
            elif verb == b"meta":
                echoed = tuple((k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-"))
                await context.send_initial_metadata(echoed)
                context.set_trailing_metadata((*echoed, ("x-trailer-only", "t")))
            return request
        finally:
            self.in_flight -= 1

    async def hang(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Waits until released or cancelled; counts cancellations."""
        self.calls += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancelled_event.set()
            raise
        return b"released"

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        count, _, size = request.partition(b":")
        for index in range(int(count)):
            yield index.to_bytes(4, "big") + b"s" * max(int(size) - 4, 0)

    async def client_stream(self, requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        total = 0
        messages = 0
        async for message in requests:
            total += len(message)
            messages += 1
        return f"{messages}:{total}".encode()

    async def bidi(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for message in requests:
            yield message


@dataclass
class Pod:
    """An app and its proxy on one loopback address."""

    host: str
    proxy: Proxy
    runtime: Runtime
    app: EchoApp | None = None
    #: The pod's mesh identity (None: its proxy runs without identity).
    identity: str | None = None

    @property
    def endpoint_port(self) -> int:
        return self.proxy.inbound_port

    def channel(self, target_authority: str) -> grpc.aio.Channel:
        """A client channel from this pod's app: through its outbound proxy to ``target_authority``."""
        return grpc.aio.insecure_channel(
            f"{self.host}:{self.proxy.outbound_port}",
            options=[*GRPC_OPTIONS, ("grpc.default_authority", target_authority)],
        )


@dataclass
class Mesh:
    tmp_path: Path
    nats: EmbeddedNats
    destination: Runtime | None = None
    destination_service: DestinationService | None = None
    pods: list[Pod] = field(default_factory=list)
    services: dict[str, list[Pod]] = field(default_factory=dict)
    apps: list[EchoApp] = field(default_factory=list)
    identity: IdentityHarness | None = None
    _next_host: int = 2

    @property
    def registry_file(self) -> Path:
        return self.tmp_path / "registry.yaml"

    @property
    def destination_addr(self) -> str:
        assert self.destination_service is not None
        return f"127.0.0.1:{self.destination_service.grpc_port}"

    async def start_identity(self, leaf_lifetime: timedelta = DAY) -> IdentityHarness:
        """The real identity service: proxies made meshed afterwards get certificates from it."""
        self.identity = IdentityHarness(self.tmp_path / "ca", leaf_lifetime=leaf_lifetime)
        await self.identity.start()
        return self.identity

    def identity_config(self, identity: WorkloadIdentity) -> IdentityClientConfig:
        """What ``tether inject`` would give a workload with ``identity``: name, token, anchors, identity."""
        harness = self.identity
        assert harness is not None, "start_identity() first"
        return IdentityClientConfig(
            name=identity.dns_name,
            addr=harness.addr,
            server_name=harness.server_name,
            trust_anchors=str(harness.trust_anchors),
            token_file=str(harness.token_file(identity, f"{identity.namespace}-{identity.serviceaccount}")),
        )

    def destination_identity(self) -> IdentityClientConfig:
        if self.identity is None:
            return IdentityClientConfig(disabled=True)
        return self.identity_config(identity_of("destination", CONTROL_PLANE_NAMESPACE))

    async def start_destination(self) -> None:
        self.write_registry()
        config = DestinationConfig(
            nats_url=self.nats.url,
            admin_addr="127.0.0.1:0",
            grpc_addr="127.0.0.1:0",
            source="local",
            registry_file=str(self.registry_file),
            registry_poll_interval=0.02,
            identity=self.destination_identity(),
            keepalive_interval=5.0,
            shutdown_grace=0.2,
        )
        self.destination_service = DestinationService(config, CollectorRegistry())
        self.destination = Runtime("destination", config, self.destination_service, version="test")
        await self.destination.start()
        await eventually(self.destination_service.ready, 10.0, "destination ready")

    async def stop_destination(self) -> None:
        assert self.destination is not None
        await self.destination.stop()

    def write_registry(self) -> None:
        lines = ["services:" if self.services else "services: []"]
        for name, pods in self.services.items():
            lines += [
                f"  - namespace: {NAMESPACE}",
                f"    name: {name}",
                "    ports: [{name: grpc, port: 8080}]",
            ]
            if pods:
                lines.append("    endpoints:")
            for index, pod in enumerate(pods):
                lines += [
                    f"      - address: {pod.host}",
                    f"        port: {pod.endpoint_port}",
                    f"        labels: {{pod: {name}-{index}, deployment: {name}}}",
                ]
                if pod.identity is not None:
                    lines.append(f"        identity: {pod.identity}")
        temporary = self.registry_file.with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(self.registry_file)

    def _host(self) -> str:
        host = f"127.0.0.{self._next_host}"
        self._next_host += 1
        return host

    async def pod(
        self,
        app_name: str | None = None,
        *,
        delay: float = 0.0,
        original_dst: tuple[str, int] | None = None,
        meshed: bool = False,
        serviceaccount: str | None = None,
        app_port: int = 0,
        **config: Any,
    ) -> Pod:
        """A pod: an app (when named) and its proxy. ``original_dst`` is what SO_ORIGINAL_DST would
        report for the pod's outbound connections (None: the app dialled the proxy directly)."""
        host = self._host()
        app = None
        if app_name is not None:
            app = EchoApp(app_name, host, delay, app_port)
            await app.start()
        if app is not None:
            app_port = app.port  # (without an app of ours, the inbound side forwards to ``app_port``)
        settings: dict[str, Any] = {
            "outbound_addr": f"{host}:0",
            "inbound_addr": f"{host}:0",
            "identity": IdentityClientConfig(disabled=True),
            "destination_server_name": identity_of("destination", CONTROL_PLANE_NAMESPACE).dns_name,
            "admin_addr": f"{host}:0",
            "destination_addr": self.destination_addr if self.destination_service else "",
            "pod_namespace": NAMESPACE,
            "fail_fast_timeout": 1.0,
            "connect_timeout": 0.5,
            "telemetry_addr": "",  # no telemetry service unless a test starts one
        }
        identity: WorkloadIdentity | None = None
        if meshed:
            identity = identity_of(serviceaccount or app_name or "client", NAMESPACE)
            settings["identity"] = self.identity_config(identity)
        settings.update(config)
        proxy_config = ProxyConfig(**settings)
        service = ProxyService(
            proxy_config,
            lambda config, supervisor: Proxy(
                config,
                original_dst=lambda _sock: original_dst,
                inbound_original_dst=lambda _sock: (host, app_port),
                supervisor=supervisor,
                key_maker=make_key_in_thread,
            ),
        )
        # The process runtime, in-process: admin listener, supervisor and shutdown as in production.
        runtime = Runtime("proxy", proxy_config, service, version="test")
        await runtime.start()
        assert service.proxy is not None
        pod = Pod(host, service.proxy, runtime, app, identity.dns_name if identity is not None else None)
        self.pods.append(pod)
        return pod

    def destination_channel(self) -> grpc.aio.Channel:
        """A client of the destination service: TLS verified as destination's identity when meshed."""
        if self.identity is None:
            return grpc.aio.insecure_channel(self.destination_addr)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.identity.trust_anchors.read_bytes())
        name = identity_of("destination", CONTROL_PLANE_NAMESPACE).dns_name
        return grpc.aio.secure_channel(
            self.destination_addr, credentials, options=[("grpc.ssl_target_name_override", name)]
        )

    async def register(self, service: str, pods: Sequence[Pod], timeout: float = 5.0) -> None:
        """Publish the service's endpoints and wait until the destination service serves exactly them."""
        self.services[service] = list(pods)
        self.write_registry()
        await self.wait_served(service, {(pod.host, pod.endpoint_port) for pod in pods}, timeout)

    async def wait_served(self, service: str, expected: set[tuple[str, int]], timeout: float = 5.0) -> None:
        """Wait until the destination service serves exactly ``expected`` for ``service``."""
        served: set[tuple[str, int]] = set()
        async with self.destination_channel() as channel:
            stub = destination_pb2_grpc.DestinationStub(channel)

            async def serves_expected() -> bool:
                nonlocal served
                call = stub.Get(destination_pb2.GetDestination(authority=authority(service)))
                first = await asyncio.wait_for(call.read(), timeout)
                call.cancel()
                served = {(str(ipaddress.IPv4Address(a.addr.ip.ipv4)), a.addr.port) for a in first.add.addrs}
                return served == expected and bool(expected or first.no_endpoints.exists)

            await eventually(
                serves_expected,
                timeout,
                lambda: f"destination to serve {expected} for {service} (it serves {served})",
                interval=0.01,
            )

    async def app(self, name: str) -> EchoApp:
        """An app outside the mesh (no proxy, not registered)."""
        app = EchoApp(name, self._host())
        await app.start()
        self.apps.append(app)
        return app

    async def close(self) -> None:
        for app in self.apps:
            await app.stop()
        for pod in self.pods:
            await pod.proxy.stop(grace=0.0)
            await pod.runtime.stop()
            if pod.app is not None:
                await pod.app.stop()
        if self.destination is not None:
            await self.destination.stop()


def unary(channel: grpc.aio.Channel, method: str = "Unary") -> Any:
    """A callable for one unary method of the echo app (requests and responses are raw bytes)."""
    return channel.unary_unary(f"/{SERVICE}/{method}")


def metric(pod: Pod, name: str, **labels: str) -> float:
    """The sum of ``name`` samples of the pod's proxy whose labels include ``labels``."""
    total = 0.0
    for line in pod.proxy.render_metrics().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


async def ready_pod(mesh: Mesh, app: str | None = None, **options: object) -> Pod:
    pod = await mesh.pod(app, **options)  # type: ignore[arg-type]
    await eventually(pod.runtime.ready, 15.0, f"{app or 'client'} proxy holds a certificate")
    return pod
