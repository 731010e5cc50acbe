"""The identity service inside the shared runtime (NATS, admin port, graceful shutdown)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from tether.identity.config import IdentityConfig
from tether.identity.errors import ConfigurationError
from tether.identity.observe import CertifyReporter, EventPublisher, IdentityMetrics
from tether.identity.server import IdentityServer
from tether.identity.tokens import TokenVerifier
from tether.identity.tokens.local import LocalTokenVerifier, load_token_key
from tether.shared.runtime import Context, Service


def build_verifier(config: IdentityConfig) -> TokenVerifier:
    if config.token_verifier == "local":
        try:
            pem = Path(config.token_key).read_bytes()
        except OSError as error:
            raise ConfigurationError(f"cannot read token key {config.token_key}: {error.strerror}") from None
        return LocalTokenVerifier(load_token_key(pem), config.trust_domain)
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from tether.identity.tokens.kubernetes import KubernetesTokenVerifier, api_client_for

    if config.kubernetes_api == "in-cluster":
        configuration = k8s.Configuration()
        # Reads the mounted ServiceAccount token (refreshed as it rotates) and the API server's address.
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        api_client = k8s.ApiClient(configuration)
    else:
        api_client = api_client_for(config.kubernetes_api, None, None)
    return KubernetesTokenVerifier(api_client, config.trust_domain)


class IdentityService(Service):
    def __init__(self, config: IdentityConfig) -> None:
        self._config = config
        self._server: IdentityServer | None = None
        self._events: EventPublisher | None = None
        self._verifier: TokenVerifier | None = None

    async def start(self, ctx: Context) -> None:
        metrics = IdentityMetrics(REGISTRY)
        self._events = EventPublisher(ctx.bus.publish, metrics)
        self._events.start()
        self._verifier = build_verifier(self._config)
        self._server = IdentityServer(
            self._config.certifier_settings(),
            self._config.server_settings(),
            self._verifier,
            CertifyReporter(ctx.instance, metrics, self._events),
            metrics,
        )
        await self._server.start()

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._events is not None:
            await self._events.stop()
        if self._verifier is not None:
            await self._verifier.close()

    def ready(self) -> bool:
        return self._server is not None and self._server.ready()
