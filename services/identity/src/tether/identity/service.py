"""The identity service inside the shared runtime (NATS, admin port, supervision, graceful shutdown)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from tether.identity.ca import AuthorityState, Outcome, read_issuer_files
from tether.identity.config import IdentityConfig
from tether.identity.errors import ConfigurationError
from tether.identity.issuer_status import IssuerStatusReporter
from tether.identity.observe import CertifyReporter, EventPublisher, IdentityMetrics
from tether.identity.server import IdentityServer
from tether.identity.tokens import TokenVerifier
from tether.identity.tokens.local import LocalTokenVerifier, load_token_key
from tether.shared.runtime import Context, Service


def local_verifier(config: IdentityConfig) -> LocalTokenVerifier:
    """The ``local`` verifier from ``--token-key``; ConfigurationError names the file and the fix."""
    try:
        pem = Path(config.token_key).read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"--token-key {config.token_key} cannot be read: {error.strerror}",
            "write it with 'tether-identity bootstrap --out DIR' or point --token-key at it",
        ) from None
    try:
        key = load_token_key(pem)
    except ConfigurationError as error:
        raise ConfigurationError(f"--token-key {config.token_key}: {error.cause}", error.remedy) from None
    return LocalTokenVerifier(key, config.trust_domain)


async def build_verifier(config: IdentityConfig) -> TokenVerifier:
    """The configured token verifier; raises ConfigurationError / FatalError naming what is wrong."""
    if config.token_verifier == "local":
        return local_verifier(config)
    from tether.identity.tokens.kubernetes import KubernetesTokenVerifier
    from tether.shared.kube import KubeSettings, api_client, kube_remedy, wait_reachable

    settings = KubeSettings.from_config(config.kube)
    client = api_client(
        settings,
        remedy=kube_remedy("use --token-verifier local"),
    )
    await wait_reachable(
        client,
        settings.connect_timeout,
        what_to_check="check --kube-api-url or the kubeconfig, and that the API server is up",
    )
    return KubernetesTokenVerifier(client, config.trust_domain)


async def check_issuer_files(config: IdentityConfig) -> None:
    """Raise ConfigurationError unless the trust anchors, issuer certificate and key make a valid issuer."""
    files = config.server_settings().files
    contents = await asyncio.to_thread(read_issuer_files, files)
    observation = AuthorityState(config.trust_domain).observe(contents, datetime.now(UTC))
    if observation.outcome is not Outcome.LOADED:
        raise ConfigurationError(
            f"the issuer files cannot be used: {observation.error} (--trust-anchors {files.trust_anchors}, "
            f"--issuer-certificate {files.issuer_certificate}, --issuer-key {files.issuer_key})",
            "create them with 'tether-identity bootstrap --out DIR' or point those options at them",
        )


class IdentityService(Service):
    def __init__(self, config: IdentityConfig) -> None:
        self._config = config
        self._server: IdentityServer | None = None
        self._events: EventPublisher | None = None
        self._verifier: TokenVerifier | None = None

    async def prepare(self) -> None:
        """The token verifier (key file, or the Kubernetes API) and the issuer files, before NATS."""
        self._verifier = await build_verifier(self._config)
        await check_issuer_files(self._config)

    async def start(self, ctx: Context) -> None:
        metrics = IdentityMetrics(REGISTRY)
        if self._verifier is None:
            self._verifier = await build_verifier(self._config)
        self._events = EventPublisher(ctx.bus.publish, metrics)
        self._events.start(ctx.spawn)
        self._server = IdentityServer(
            self._config.certifier_settings(),
            self._config.server_settings(),
            self._verifier,
            CertifyReporter(ctx.instance, metrics, self._events),
            metrics,
        )
        await self._server.start(ctx.spawn)
        status = IssuerStatusReporter(ctx.instance, self._events, self._server.issuer_state)
        self._server.on_issuer_change(status.changed)
        ctx.spawn("issuer-status", status.run)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._events is not None:
            await self._events.stop()
        if self._verifier is not None:
            await self._verifier.close()

    def ready(self) -> bool:
        return self._server is not None and self._server.ready()
