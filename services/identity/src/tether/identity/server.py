"""The gRPC edge of the identity service and the asyncio plumbing around the pure core.

The server's own TLS certificate is issued by the loaded issuer for the identity
`identity.<namespace>.serviceaccount.identity.<trust-domain>` (ServiceAccount `identity` in the control
plane namespace); clients verify it against the trust anchors with that name as the TLS target name.
Whenever the issuer changes the server issues itself a new serving certificate with a fresh key and new
handshakes use it. Before any valid issuer is loaded it serves an untrusted placeholder certificate, so
clients fail the handshake (UNAVAILABLE) rather than trust anything.
"""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp

from tether.identity.ca import Authority, AuthorityState, IssuerFiles, Outcome, read_issuer_files
from tether.identity.certifier import Certifier, CertifierSettings, CertifyObserver, CertifyRequest
from tether.identity.errors import Rejection
from tether.identity.issuance import issue_leaf
from tether.identity.observe import IdentityMetrics
from tether.identity.tokens import TokenVerifier
from tether.shared.grpcserver import start_grpc_server
from tether.shared.grpctls import ReloadableServerCredentials
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.keygen import placeholder_key_pair
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.supervisor import SupervisedTask, TaskFactory
from tether.shared.tls import KeyPair

log = structlog.get_logger(__name__)

SERVING_SERVICEACCOUNT = "identity"
_MAX_MESSAGE_BYTES = 64 * 1024


def serving_identity(namespace: str, trust_domain: str) -> WorkloadIdentity:
    """The identity this service presents to its clients."""
    return WorkloadIdentity(SERVING_SERVICEACCOUNT, namespace, trust_domain)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str
    files: IssuerFiles
    namespace: str = "tether"
    reload_interval: float = 1.0
    serving_lifetime: timedelta = timedelta(hours=24)
    max_concurrent_rpcs: int = 2048
    grpc_options: tuple[tuple[str, int], ...] = field(default_factory=tuple)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def serving_key_pair(
    authority: Authority, identity: WorkloadIdentity, now: datetime, lifetime: timedelta
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_leaf(authority.issuer, key.public_key(), identity, now, lifetime)
    chain = [leaf.certificate_der, *leaf.chain_der]
    chain_pem = b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in chain
    )
    return KeyPair(key_pem=_key_pem(key), chain_pem=chain_pem)


# Peer strings repeat for every request on a connection: parse each once.
@functools.lru_cache(maxsize=4096)
def peer_address(peer: str) -> str:
    """The IP address part of a gRPC peer string such as `ipv4:10.0.0.1:5000` or `ipv6:%5B::1%5D:5000`."""
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return host.strip("[]") or rest
    return peer


class IdentityServicer(identity_pb2_grpc.IdentityServicer):
    def __init__(self, certifier: Certifier, metrics: IdentityMetrics) -> None:
        self._certifier = certifier
        self._metrics = metrics

    async def Certify(
        self, request: identity_pb2.CertifyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CertifyResponse:
        started = time.perf_counter()
        certify_request = CertifyRequest(
            identity=request.identity,
            token=request.token,
            csr_der=request.certificate_signing_request,
            peer=peer_address(context.peer()),
        )
        try:
            leaf = await self._certifier.certify(certify_request, datetime.now(UTC), time.monotonic())
        except Rejection as rejection:
            self._metrics.certify_seconds.observe(time.perf_counter() - started)
            await context.abort(grpc.StatusCode[rejection.status], rejection.message)
        except Exception as error:
            # No traceback: frames could carry the token. The type is enough to find the bug.
            log.error("certify_failed", error_type=type(error).__name__, peer=certify_request.peer)
            self._metrics.certify_seconds.observe(time.perf_counter() - started)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        response = identity_pb2.CertifyResponse(
            leaf_certificate=leaf.certificate_der,
            intermediate_certificates=leaf.chain_der,
            # X.509 times are whole seconds, so this is exact (and cheaper than Timestamp.FromDatetime).
            valid_until=Timestamp(seconds=int(leaf.not_after.timestamp())),
        )
        self._metrics.certify_seconds.observe(time.perf_counter() - started)
        return response


class IdentityServer:
    """Runs the Certify gRPC server and keeps the issuer (and its own serving certificate) current."""

    def __init__(
        self,
        certifier_settings: CertifierSettings,
        server_settings: ServerSettings,
        verifier: TokenVerifier,
        observer: CertifyObserver,
        metrics: IdentityMetrics,
    ) -> None:
        self._settings = server_settings
        self._trust_domain = certifier_settings.trust_domain
        self._metrics = metrics
        self._state = AuthorityState(certifier_settings.trust_domain)
        self._certifier = Certifier(certifier_settings, lambda: self._state.current, verifier, observer)
        self._identity = serving_identity(server_settings.namespace, certifier_settings.trust_domain)
        self._credentials = ReloadableServerCredentials(placeholder_key_pair(datetime.now(UTC)))
        self._serving_generation = 0
        self._serving_renew_at: datetime | None = None
        self._last_report: tuple[Outcome, str | None] | None = None
        self._load_error = ""
        self._status_listeners: list[Callable[[], None]] = []
        self._server: grpc.aio.Server | None = None
        self._reloader: SupervisedTask | None = None
        self.port = 0

    @property
    def identity(self) -> WorkloadIdentity:
        return self._identity

    @property
    def authority(self) -> Authority | None:
        return self._state.current

    def issuer_state(self) -> tuple[Authority | None, str]:
        """The issuer being served (None: none) and why the files last failed to load ("" if they loaded)."""
        return self._state.current, self._load_error

    def on_issuer_change(self, listener: Callable[[], None]) -> None:
        self._status_listeners.append(listener)

    def ready(self) -> bool:
        return self._server is not None and self._state.current is not None

    async def start(self, spawn: Callable[[str, TaskFactory], SupervisedTask]) -> int:
        """Load the issuer files, listen, keep reloading. Without a valid issuer it serves UNAVAILABLE."""
        self._report(*await self._observe())
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            *self._settings.grpc_options,
        ]
        servicer = IdentityServicer(self._certifier, self._metrics)
        self._server, self.port = await start_grpc_server(
            self._settings.listen,
            lambda server: identity_pb2_grpc.add_IdentityServicer_to_server(servicer, server),
            credentials=self._credentials.grpc_credentials(),
            extra_options=options,
            maximum_concurrent_rpcs=self._settings.max_concurrent_rpcs,
        )
        self._reloader = spawn("issuer-reload", self._reload_forever)
        log.info("identity_serving", port=self.port, serving_identity=self._identity.dns_name)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._reloader is not None:
            await self._reloader.stop()
        self._reloader = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def reload_now(self) -> None:
        self._report(*await self._observe())

    async def _observe(self) -> tuple[Outcome, str | None]:
        contents = await asyncio.to_thread(read_issuer_files, self._settings.files)
        now = datetime.now(UTC)
        observation = self._state.observe(contents, now)
        self._refresh_serving_certificate(now)
        return observation.outcome, observation.error

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_interval)
            try:
                await self.reload_now()
            except Exception as error:
                log.error("issuer_reload_crashed", error_type=type(error).__name__, error=str(error))

    def _report(self, outcome: Outcome, error: str | None) -> None:
        authority = self._state.current
        if outcome is Outcome.UNCHANGED:
            return
        self._load_error = "" if outcome is Outcome.LOADED else (error or "")
        for listener in self._status_listeners:
            listener()
        self._metrics.authority_changed(authority)
        if outcome is not Outcome.LOADED:
            self._metrics.issuer_reload_failures.inc()
        # The poller retries failed loads every interval: log a failure once, not every second.
        if (outcome, error) == self._last_report:
            return
        self._last_report = (outcome, error)
        if outcome is Outcome.LOADED and authority is not None:
            log.info(
                "issuer_loaded",
                generation=authority.generation,
                issuer=authority.issuer.certificate.subject.rfc4514_string(),
                issuer_fingerprint_sha256=authority.issuer.fingerprint_sha256,
                not_after=authority.issuer.not_after.isoformat(),
            )
        elif outcome is Outcome.KEPT_PREVIOUS:
            log.error("issuer_reload_failed_keeping_previous", error=error)
        else:
            log.error("issuer_unavailable", error=error)

    def _refresh_serving_certificate(self, now: datetime) -> None:
        authority = self._state.current
        if authority is None:
            return
        renew_due = self._serving_renew_at is not None and now >= self._serving_renew_at
        if authority.generation == self._serving_generation and not renew_due:
            return
        pair = serving_key_pair(authority, self._identity, now, self._settings.serving_lifetime)
        self._credentials.update(pair)
        self._serving_generation = authority.generation
        self._serving_renew_at = now + self._settings.serving_lifetime / 2
        log.info("serving_certificate_renewed", generation=authority.generation)
