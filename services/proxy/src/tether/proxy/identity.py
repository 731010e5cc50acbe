"""The proxy's identity: its key, its certificate from the identity service, and the TLS contexts built on it.

At start a helper process makes a P-256 key and a CSR (the proxy itself never loads cryptography; the key
reaches it over a pipe and lives only in memory). Certify goes over the proxy's own gRPC client, TLS-verified
as the identity service's identity, with the token read from its file on every call. Each certificate
rebuilds the contexts: new connections use it at once, established ones keep theirs. Without a valid
certificate (none yet, or the last one expired) the contexts are None: no mesh TLS is offered or accepted
with an expired certificate, and the proxy is not ready.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from tether.proxy.errors import GrpcCallError
from tether.proxy.grpc_h2 import GrpcChannel
from tether.proxy.tlsconfig import ALPN_H2, MESH_ALPN, ClientTls, client_context, server_context
from tether.shared.certmanager import (
    CertificateManager,
    CertifyFailed,
    Issued,
    certify_request,
    issued_from,
    read_token_file,
)
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import KeyMaterial, make_key_and_csr_in_helper
from tether.shared.proto.identity.v1 import identity_pb2
from tether.shared.supervisor import SupervisedTask
from tether.shared.tls import KeyPair, read_trust_anchors

CERTIFY_PATH = b"/tether.identity.v1.Identity/Certify"
CERTIFY_TIMEOUT = 10.0

_GRPC_CODES = {3: "invalid_argument", 4: "deadline_exceeded", 7: "permission_denied", 8: "resource_exhausted"}
_GRPC_CODES |= {13: "internal", 14: "unavailable", 16: "unauthenticated"}

# Makes the key and CSR. The default forks a helper; a process that also runs grpcio (a test running proxies
# in-process) must not fork (grpcio's fork handlers abort the child), so it passes an in-process maker.
KeyMaker = Callable[[WorkloadIdentity], Awaitable[KeyMaterial]]


def read_proxy_trust_anchors(path: str) -> bytes:
    return read_trust_anchors(
        "--identity-trust-anchors",
        path,
        "mount the trust anchors there, or pass --identity-disabled to run without mTLS",
    )


class ProxyIdentity:
    def __init__(
        self,
        identity: WorkloadIdentity,
        trust_anchors_pem: bytes,
        *,
        identity_addr: str,
        identity_server_name: str,
        token_file: str,
        spawn: Callable[..., SupervisedTask],
        connect_timeout: float,
        clock: Callable[[], float] = time.time,
        key_maker: KeyMaker = make_key_and_csr_in_helper,
    ) -> None:
        self.identity = identity
        self._key_maker = key_maker
        self.trust_anchors_pem = trust_anchors_pem
        self._clock = clock
        self._spawn = spawn
        self._token_file = token_file
        self._anchors_only = client_context(trust_anchors_pem, None, [ALPN_H2])
        self._channel = GrpcChannel(
            identity_addr,
            spawn=spawn,
            tls=lambda: ClientTls(self._anchors_only, identity_server_name),
            connect_timeout=connect_timeout,
        )
        self._clients: dict[str, ssl.SSLContext] = {}
        self._server: ssl.SSLContext | None = None
        self.manager: CertificateManager | None = None
        self._task: SupervisedTask | None = None

    async def start(self) -> None:
        """Make the key (helper process), then keep a certificate; the first may take a while to come."""
        key = await self._key_maker(self.identity)
        self.manager = CertificateManager(
            self.identity,
            key,
            self._certify,
            read_token_file(self._token_file),
            self._install,
            clock=self._clock,
        )
        self._task = self._spawn("identity-certificate", self.manager.run)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
        await self._channel.close()

    def ready(self) -> bool:
        return self.manager is not None and self.manager.ready()

    @property
    def identity_mismatches(self) -> int:
        """Connections to the identity service refused: it presented another identity than expected."""
        return self._channel.identity_mismatches

    def control_plane_tls(self, server_name: str) -> ClientTls:
        """For the proxy's control-plane links (destination): the server must be ``server_name``; the
        proxy needs no certificate of its own for them, so discovery works before its first one."""
        return ClientTls(self._anchors_only, server_name)

    def client_context(self, alpn: str = ALPN_H2) -> ssl.SSLContext | None:
        """For dialling meshed peers, asking for ``alpn`` (one of MESH_ALPN): presents our certificate
        while it is valid."""
        return self._clients.get(alpn) if self.ready() else None

    def server_context(self) -> ssl.SSLContext | None:
        """For terminating meshed peers' TLS: None while we hold no valid certificate."""
        return self._server if self.ready() else None

    def _install(self, pair: KeyPair) -> None:
        # One client context per protocol: ALPN is set per context, and each tells the peer what follows.
        self._clients = {alpn: client_context(self.trust_anchors_pem, pair, [alpn]) for alpn in MESH_ALPN}
        self._server = server_context(self.trust_anchors_pem, pair, MESH_ALPN)

    async def _certify(self, identity: WorkloadIdentity, token: bytes, csr_der: bytes) -> Issued:
        request = certify_request(identity, token, csr_der).SerializeToString()
        try:
            raw = await self._channel.unary(CERTIFY_PATH, request, CERTIFY_TIMEOUT)
            response = identity_pb2.CertifyResponse.FromString(raw)
        except GrpcCallError as exc:
            raise CertifyFailed(_GRPC_CODES.get(exc.code, f"grpc_{exc.code}"), exc.message) from None
        except DecodeError:
            raise CertifyFailed("internal", "the identity service sent an undecodable response") from None
        return issued_from(response)

    def render_metrics(self) -> str:
        manager = self.manager
        expiry = manager.not_after if manager is not None else 0.0
        refreshes = manager.lifecycle.refreshes if manager is not None else 0
        failures = manager.lifecycle.failures if manager is not None else 0
        return (
            "# HELP identity_cert_expiration_timestamp_seconds NotAfter of the proxy's current certificate.\n"
            "# TYPE identity_cert_expiration_timestamp_seconds gauge\n"
            f"identity_cert_expiration_timestamp_seconds {expiry:.3f}\n"
            "# HELP identity_cert_refresh_count Certificates received from the identity service.\n"
            "# TYPE identity_cert_refresh_count counter\n"
            f"identity_cert_refresh_count {refreshes}\n"
            "# HELP identity_cert_refresh_failures_total Certify attempts that failed.\n"
            "# TYPE identity_cert_refresh_failures_total counter\n"
            f"identity_cert_refresh_failures_total {failures}\n"
        )
