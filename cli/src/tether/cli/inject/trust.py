"""The mesh's trust anchors for injected proxies: a PEM file, or the cluster's ConfigMap
``tether/tether-trust-roots`` (key ``ca-bundle.crt``, written by the bootstrap Job)."""

from __future__ import annotations

import ssl

from tether.cli.inject.config import NAMESPACE, TRUST_ROOTS_CONFIGMAP, TRUST_ROOTS_KEY, InjectConfig
from tether.cli.inject.errors import BadTrustAnchors, InjectError
from tether.cli.inject.sidecar import TrustAnchors

_CONFIGMAP = f"ConfigMap {NAMESPACE}/{TRUST_ROOTS_CONFIGMAP}"
_INSTALL = "install the control plane (tether install | kubectl apply -f -) and let its bootstrap Job run"


def _checked(pem: bytes, where: str, remedy: str) -> str:
    try:
        text = pem.decode("ascii")
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise BadTrustAnchors(f"{where} holds no PEM certificate", remedy) from None
    if "PRIVATE KEY" in text:
        raise BadTrustAnchors(f"{where} holds a private key", "give the trust anchors' certificates only")
    return text


def from_file(path: str) -> TrustAnchors:
    remedy = f"give --trust-anchors the mesh's trust anchor bundle (PEM), e.g. the {_CONFIGMAP}'s"
    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as exc:
        raise BadTrustAnchors(f"--trust-anchors {path} cannot be read: {exc.strerror}", remedy) from None
    return TrustAnchors(_checked(pem, f"--trust-anchors {path}", remedy), path)


def from_cluster(config: InjectConfig) -> TrustAnchors:
    """Read with the caller's kubeconfig (``--kubeconfig``, ``--context``)."""
    from kubernetes import client as kube_client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from tether.shared.kube import KubeSettings, api_client, api_host

    settings = KubeSettings(kubeconfig=config.kubeconfig, context=config.kube_context)
    api = api_client(settings, remedy="pass the trust anchors with --trust-anchors FILE")
    host = api_host(api)
    try:
        configmap = kube_client.CoreV1Api(api).read_namespaced_config_map(
            TRUST_ROOTS_CONFIGMAP, NAMESPACE, _request_timeout=(5, 10)
        )
    except ApiException as exc:
        if exc.status == 404:
            raise InjectError(f"{_CONFIGMAP} does not exist in the cluster at {host}", _INSTALL) from None
        raise InjectError(
            f"reading {_CONFIGMAP} from {host} failed: {exc.status} {exc.reason}",
            "check your kubeconfig's access (kubectl get configmap -n tether), or pass --trust-anchors FILE",
        ) from None
    except (HTTPError, OSError) as exc:
        raise InjectError(
            f"the Kubernetes API at {host} cannot be reached ({type(exc).__name__})",
            "check the cluster and your kubeconfig, or pass --trust-anchors FILE",
        ) from None
    pem = (configmap.data or {}).get(TRUST_ROOTS_KEY)
    if not pem:
        raise InjectError(f"{_CONFIGMAP} has no key {TRUST_ROOTS_KEY}", _INSTALL)
    where = f"{_CONFIGMAP} in {host}"
    return TrustAnchors(_checked(pem.encode("ascii", "replace"), where, _INSTALL), where)


def load(config: InjectConfig) -> TrustAnchors:
    return from_file(config.trust_anchors) if config.trust_anchors else from_cluster(config)
