"""The one Kubernetes API client factory, for every component that talks to the API server.

Configuration comes from :class:`tether.shared.config.KubeOptions` (a component's ``kube`` options): an
explicit ``--kube-api-url``, else the in-cluster ServiceAccount (token refreshed as it rotates), else a
kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``). Missing configuration is a
:class:`SetupError` whose remedy each component words for its own options; an API server that does not
answer within ``--kube-connect-timeout`` is a :class:`FatalError`.

The ``kubernetes`` package is imported lazily: it costs about half a second, and processes that never talk
to Kubernetes (the local mesh) never pay it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import structlog

from tether.shared.aio import in_daemon_thread
from tether.shared.backoff import Backoff
from tether.shared.config import KubeOptions
from tether.shared.errors import FatalError, SetupError

log = structlog.get_logger(__name__)


class KubeSettings(msgspec.Struct, frozen=True, kw_only=True):
    api_url: str = ""
    kubeconfig: str = ""
    context: str = ""
    connect_timeout: float | None = 60.0
    # Only with an explicit api_url: a bearer token to present (tests, or a token minted for the purpose).
    bearer_token: str = ""

    @classmethod
    def from_config(cls, options: KubeOptions) -> KubeSettings:
        return cls(
            api_url=options.api_url,
            kubeconfig=options.kubeconfig,
            context=options.context,
            connect_timeout=options.connect_timeout or None,
        )

    def __repr__(self) -> str:
        return f"KubeSettings(api_url={self.api_url!r}, kubeconfig={self.kubeconfig!r})"


def kube_remedy(alternative: str) -> str:
    """What a component without Kubernetes configuration can do: the shared options, or ``alternative``
    (in the component's own terms, e.g. "use --source local")."""
    shared = "run inside a cluster, give a kubeconfig (KUBECONFIG or --kubeconfig) or --kube-api-url"
    return f"{shared}, or {alternative}"


def api_client(settings: KubeSettings, *, remedy: str) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``settings``; raises SetupError when there is no configuration.

    ``remedy`` says what the user can do then (for a service, :func:`kube_remedy`).
    """
    from kubernetes import client as kube_client
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    configuration = kube_client.Configuration()
    if settings.api_url:
        configuration.host = settings.api_url
        if settings.bearer_token:
            configuration.api_key = {"authorization": settings.bearer_token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return kube_client.ApiClient(configuration)
    load_incluster: Any = kube_config.load_incluster_config
    load_kubeconfig: Any = kube_config.load_kube_config
    if not settings.kubeconfig:
        try:
            load_incluster(client_configuration=configuration)
            return kube_client.ApiClient(configuration)
        except ConfigException:
            pass  # not in a cluster: try a kubeconfig
    try:
        load_kubeconfig(
            config_file=settings.kubeconfig or None,
            context=settings.context or None,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if settings.kubeconfig:
            raise SetupError(
                f"--kubeconfig {settings.kubeconfig} is not a usable kubeconfig ({detail})",
                "point --kubeconfig at a working kubeconfig (`kubectl --kubeconfig FILE version` checks "
                f"one), or {remedy}",
            ) from None
        cause = f"no Kubernetes configuration: not running in a cluster, and no usable kubeconfig ({detail})"
        raise SetupError(cause, remedy) from None
    return kube_client.ApiClient(configuration)


def api_host(client: Any) -> str:
    return str(client.configuration.host)


async def wait_reachable(client: Any, timeout: float | None, *, what_to_check: str) -> None:
    """Wait until the API server answers ``GET /version`` (readable by any client); FatalError after
    ``timeout`` seconds (None: forever), naming the server and what to check."""
    from kubernetes import client as kube_client
    from kubernetes.client.exceptions import ApiException

    version_api = kube_client.VersionApi(client)
    backoff = Backoff(0.2, 5.0)
    started = time.monotonic()
    host = api_host(client)
    while True:
        try:
            await in_daemon_thread(lambda: version_api.get_code(_request_timeout=(3, 5)))
            return
        except ApiException as exc:
            if exc.status:
                return  # it answered: reachable (what this client may do is the caller's business)
            error = f"ApiException: {exc.reason}"
        except Exception as exc:
            error = _root_cause(exc)
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            raise FatalError(
                f"the Kubernetes API at {host} did not answer within {timeout:g}s ({error})", what_to_check
            )
        delay = backoff.next()
        if timeout is not None:
            delay = min(delay, max(0.0, timeout - elapsed))
        log.warning("kube_api_unreachable", api=host, error=error, retry_in=round(delay, 2))
        await asyncio.sleep(delay)


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a client error, short: urllib3 wraps "connection refused" in a retry error
    around a connection error, each repeating the request."""
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # "<urllib3.connection.HTTPConnection object at 0x…>: Failed to establish a new connection: [Errno 111]
    # Connection refused": the last clause is the cause.
    return text.rsplit(": ", 1)[-1][:200] if ": " in text else text[:200]
