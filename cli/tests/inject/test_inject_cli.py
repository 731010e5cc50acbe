"""``tether inject``'s command line: input from stdin, one-line errors (exit 2, nothing on stdout), and the
trust anchors read from the cluster's ConfigMap when ``--trust-anchors`` is not given.

The cluster is emulated: a loopback HTTP server speaking the Kubernetes API's wire protocol for the one
request the CLI makes (``GET /api/v1/namespaces/tether/configmaps/tether-trust-roots``: the ConfigMap as
JSON, or a ``Status`` 404), reached through a kubeconfig with a bearer token, as a real cluster would be.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from inject.kit import ANCHORS, CORPUS, VERSION, inject, injected_pods, tether

from tether.cli.inject.config import quantity
from tether.shared.kube_testing import EmulatedApiServer, Request, status

CONFIGMAP_PATH = "/api/v1/namespaces/tether/configmaps/tether-trust-roots"


class FakeCluster:
    def __init__(self) -> None:
        self.configmap: dict[str, str] | None = {"ca-bundle.crt": ANCHORS.read_text()}
        self.server = EmulatedApiServer(self._answer, keep_alive=False, poll_interval=0.02)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(path, Authorization header) of each request received."""
        return [(r.path, r.headers.get("authorization", "")) for r in self.server.requests]

    def _answer(self, request: Request) -> tuple[int, object]:
        if request.path == CONFIGMAP_PATH and self.configmap is not None:
            return 200, {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "tether-trust-roots", "namespace": "tether", "resourceVersion": "7"},
                "data": self.configmap,
            }
        return 404, status(404, "NotFound", 'configmaps "tether-trust-roots" not found')

    @property
    def url(self) -> str:
        return self.server.url

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "user-token-123"}}],
                    "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "ctx",
                }
            )
        )
        return path


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    with fake.server:
        yield fake


def test_trust_anchors_come_from_the_clusters_configmap(cluster: FakeCluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "config")
    manifest = str(CORPUS / "list.yaml")
    result = tether("inject", manifest, "--kubeconfig", str(kubeconfig), "--proxy-version", VERSION)
    assert result.code == 0, result.err
    assert result.out == inject(manifest).out
    assert cluster.requests == [(CONFIGMAP_PATH, "Bearer user-token-123")]  # read once for two workloads


def test_no_configmap_in_the_cluster_is_one_line(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.configmap = None
    kubeconfig = cluster.kubeconfig(tmp_path / "config")
    result = tether("inject", str(CORPUS / "list.yaml"), "--kubeconfig", str(kubeconfig))
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        f"tether: error: ConfigMap tether/tether-trust-roots does not exist in the cluster at {cluster.url}; "
        "install the control plane (tether install | kubectl apply -f -) and let its bootstrap Job run\n"
    )


def test_nothing_to_inject_needs_no_cluster(tmp_path: Path) -> None:
    """No workload, or only uninjecting: the trust anchors are never read, so no kubeconfig is needed."""
    missing = str(tmp_path / "no-kubeconfig")
    for argv in (
        ("inject", str(CORPUS / "non-workloads.yaml"), "--kubeconfig", missing),
        ("inject", "--uninject", str(CORPUS / "already-injected.yaml"), "--kubeconfig", missing),
    ):
        assert tether(*argv).code == 0


def test_reads_stdin() -> None:
    text = (CORPUS / "udp-only.yaml").read_text()
    result = tether("inject", "-", "--trust-anchors", str(ANCHORS), stdin=text)
    assert result.code == 0
    assert result.out == text
    assert result.err.startswith("document 1: deployment/statsd skipped: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Service\n---\nkind: Deployment\nmetadata:\n  name: x\n   bad: indent\n",
            "tether: error: stdin: document 2, line 6: mapping values are not allowed here; "
            "fix the YAML (documents are separated by --- lines)\n",
        ),
        (
            "---\n# only a comment\n---\nkind: Pod\nkind: Pod\n",
            "tether: error: stdin: document 1, line 5: while constructing a mapping key 'kind' is given "
            "twice; fix the YAML (documents are separated by --- lines)\n",
        ),
        (
            "kind: Deployment\nspec: {template: {spec: {containers: [{name: a, image: b}]}}}\n"
            "metadata: {name: web, annotations: {config.tether.io/opaque-ports: '80,http'}}\n",
            "tether: error: stdin: document 1: deployment/web: annotation config.tether.io/opaque-ports: "
            "'http' is not a port or a range like 4000-4100; fix or remove the annotation\n",
        ),
        (
            "kind: Pod\nspec: {containers: [{name: a, image: b}]}\n"
            "metadata: {name: p, annotations: {config.tether.io/proxy-cpu-request: '2', "
            "config.tether.io/proxy-cpu-limit: 500m}}\n",
            "tether: error: stdin: document 1: pod/p: annotation config.tether.io/proxy-cpu-request: 2 is "
            "above the limit 500m; fix or remove the annotation\n",
        ),
        (
            "kind: Pod\nspec: {containers: [{name: a, image: b}]}\n"
            "metadata: {name: p, annotations: {tether.io/inject: 'no'}}\n",
            "tether: error: stdin: document 1: pod/p: annotation tether.io/inject: 'no' is not enabled or "
            "disabled; fix or remove the annotation\n",
        ),
    ],
)
def test_invalid_input_is_one_line_naming_the_document(text: str, expected: str) -> None:
    result = tether("inject", "-", "--trust-anchors", str(ANCHORS), stdin=text)
    assert (result.code, result.out, result.err) == (2, "", expected)


def test_invalid_flags_and_files_are_one_line(tmp_path: Path) -> None:
    manifest = str(CORPUS / "list.yaml")
    not_pem = tmp_path / "anchors.pem"
    not_pem.write_text("hello\n")
    cases = [
        (
            ("--trust-anchors", str(tmp_path / "missing.pem")),
            "--trust-anchors " + str(tmp_path / "missing.pem"),
        ),
        (("--trust-anchors", str(not_pem)), f"--trust-anchors {not_pem} holds no PEM certificate"),
        (("--trust-anchors", str(ANCHORS), "--proxy-memory-limit", "lots"), "--proxy-memory-limit: 'lots'"),
        (("--trust-anchors", str(ANCHORS), "--destination-addr", "nowhere"), "--destination-addr: expected"),
        (
            ("--trust-anchors", str(ANCHORS), "--registry", "Bad Registry"),
            "--registry: Expected `str` matching",
        ),
    ]
    for flags, cause in cases:
        result = tether("inject", manifest, *flags)
        assert result.code == 2, result.err
        assert result.out == ""
        assert result.err.startswith(f"tether: error: {cause}") and result.err.count("\n") == 1, result.err
    missing = tether("inject", str(tmp_path / "none.yaml"), "--trust-anchors", str(ANCHORS))
    assert (missing.code, missing.err) == (
        2,
        f"tether: error: {tmp_path / 'none.yaml'} cannot be read: No such file or directory; "
        "give a readable file, or - for stdin\n",
    )


def test_flags_choose_the_image_addresses_and_trust_domain() -> None:
    result = tether(
        "inject",
        str(CORPUS / "list.yaml"),
        "--trust-anchors",
        str(ANCHORS),
        "--registry",
        "registry.internal:5000/mesh",
        "--proxy-version",
        "0.2.0-rc.1",
        "--trust-domain",
        "prod.example.com",
        "--telemetry-addr",
        "",
    )
    assert result.code == 0, result.err
    pod = injected_pods(result.out)[0]
    proxy = pod.container("tether-proxy")
    assert (
        proxy["image"]
        == pod.container("tether-init")["image"]
        == "registry.internal:5000/mesh/proxy:0.2.0-rc.1"
    )
    env = pod.environment(proxy)
    assert env["TETHER_PROXY_IDENTITY_NAME"] == "emoji.emojivoto.serviceaccount.identity.prod.example.com"
    assert env["TETHER_PROXY_DESTINATION_SERVER_NAME"].endswith(
        ".tether.serviceaccount.identity.prod.example.com"
    )
    assert env["TETHER_PROXY_TELEMETRY_ADDR"] == ""
    assert pod.metadata["annotations"]["tether.io/proxy-version"] == "0.2.0-rc.1"


def test_the_default_proxy_version_is_the_clis() -> None:
    from tether.shared.runtime import package_version

    result = tether("inject", str(CORPUS / "list.yaml"), "--trust-anchors", str(ANCHORS))
    version = package_version("tether-cli")
    assert injected_pods(result.out)[0].container("tether-proxy")["image"].endswith(f"/proxy:{version}")


def test_quantities_compare_as_kubernetes_compares_them() -> None:
    assert quantity("1") == quantity("1000m") > quantity("999m")
    assert quantity("1Gi") == 1024 * quantity("1Mi") and quantity("1G") == quantity("1e9")
    assert quantity("0.5") == quantity("500m")
    for bad in ("", "1.2.3", "-1", "5 Mi", "1Kb"):
        with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
            quantity(bad)


def test_containers_running_as_the_proxy_uid_are_reported() -> None:
    text = (
        "kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {runAsUser: 2102}\n"
        "  containers: [{name: a, image: b}, {name: c, image: d, securityContext: {runAsUser: 1000}}]\n"
    )
    result = tether("inject", "-", "--trust-anchors", str(ANCHORS), stdin=text)
    assert result.err == (
        "document 1: pod/p injected (native sidecar; a run as the proxy's UID 2102: "
        "their traffic bypasses it)\n"
    )
