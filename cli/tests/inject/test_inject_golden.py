"""``tether inject`` over a corpus of real-world manifests (corpus/), compared with golden files (golden/:
the injected YAML and the report). ``TETHER_UPDATE_GOLDEN=1`` rewrites the goldens; review their diff.

Every output is also checked for what must hold whatever the goldens say: injecting again changes nothing,
``--uninject`` gives the input back, documents that are not injected pass through byte for byte, every
document validates against Kubernetes 1.37's schemas (kubernetes-validate, strict), and the injected
containers pass the hardening policy of the control plane's manifests.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
from inject.kit import CORPUS, FILES, GOLDEN, Pod, documents, inject, injected_pods, objects, tether

from tether.cli.inject import documents as docs

# Untyped: imported as a module object, so that mypy needs no stubs for it.
kubernetes_validate: Any = importlib.import_module("kubernetes_validate")
LEGACY = ("cronjob-and-job.yaml", "deployment-multi-container.yaml")
K8S_VERSION = "1.37.0"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TETHER_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file:\n{text}"


@pytest.mark.parametrize("name", FILES)
def test_inject_matches_golden(name: str) -> None:
    result = inject(CORPUS / name)
    assert result.code == 0, result.err
    golden(name, result.out)
    golden(name.removesuffix(".yaml") + ".report.txt", result.err)


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_mode_matches_golden(name: str) -> None:
    result = inject(CORPUS / name, "--sidecar-mode", "legacy")
    assert result.code == 0, result.err
    golden(name.removesuffix(".yaml") + ".legacy.yaml", result.out)
    for pod in injected_pods(result.out):
        assert [c["name"] for c in pod.spec["initContainers"]][:1] == ["tether-init"]
        assert "tether-proxy" not in [c["name"] for c in pod.spec["initContainers"]]
        assert pod.spec["containers"][-1]["name"] == "tether-proxy"
        assert "restartPolicy" not in pod.spec["containers"][-1]
    if name.startswith("cronjob"):
        assert "POST http://127.0.0.1:4191/shutdown" in result.err


def _raw_documents(text: str) -> list[str]:
    return [d.raw for d in docs.split(text) if not d.empty]


@pytest.mark.parametrize("name", FILES)
def test_injecting_twice_changes_nothing(name: str) -> None:
    once = inject(CORPUS / name).out
    path = GOLDEN / name
    twice = inject(path)
    assert twice.code == 0
    assert twice.out == once
    assert "injected (" not in twice.err
    for pod in injected_pods(once):
        assert f"{pod.workload['kind'].lower()}/" in twice.err


@pytest.mark.parametrize("name", FILES)
def test_uninject_gives_back_the_input(name: str) -> None:
    original = (CORPUS / name).read_text()
    injected = inject(CORPUS / name).out
    result = tether("inject", "--uninject", "-", stdin=injected)
    assert result.code == 0, result.err
    # Uninjecting what was never injected changes nothing at all; already injected input is uninjected.
    baseline = tether("inject", "--uninject", str(CORPUS / name)).out
    if not injected_pods(original):
        assert baseline == original
    assert documents(result.out) == documents(baseline)
    assert injected_pods(result.out) == []
    # Documents that injection did not touch come back exactly as written, comments and quotes included.
    for before, after, mid in zip(
        _raw_documents(original), _raw_documents(result.out), _raw_documents(injected), strict=True
    ):
        if before == mid and not injected_pods(before):
            assert after == before


def test_uninject_is_exact_for_kubectl_style_yaml() -> None:
    """list.yaml is written as kubectl prints (block style, double quotes): the round trip is byte for byte,
    and empty values the input held (initContainers: [], annotations: {}) come back as they were."""
    for name in ("list.yaml", "pod-and-replicaset.yaml"):
        injected = inject(CORPUS / name).out
        back = tether("inject", "--uninject", "-", stdin=injected).out
        if name == "list.yaml":
            assert back == (CORPUS / name).read_text()
        assert documents(back) == documents((CORPUS / name).read_text())


def test_non_workload_documents_pass_through_byte_for_byte() -> None:
    text = (CORPUS / "non-workloads.yaml").read_text()
    result = inject(CORPUS / "non-workloads.yaml")
    assert result.out == text
    assert result.err.count(" unchanged\n") == 4


@pytest.mark.parametrize("name", FILES)
def test_output_validates_against_the_kubernetes_schemas(name: str) -> None:
    for mode in ("native", "legacy"):
        for obj in objects(inject(CORPUS / name, "--sidecar-mode", mode).out):
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a custom resource: no schema in Kubernetes itself
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _policy_violations(pod: Pod, container: dict[str, Any]) -> list[str]:
    name, problems = container["name"], []
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                problems.append(f"{name}: no {kind}.{resource}")
    context = container.get("securityContext", {})
    expected = {
        "runAsNonRoot": True,
        "runAsUser": 2102,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    problems += [
        f"{name}: {key} is not {value}" for key, value in expected.items() if context.get(key) != value
    ]
    if context.get("seccompProfile") != {"type": "RuntimeDefault"}:
        problems.append(f"{name}: seccomp is not RuntimeDefault")
    capabilities = context.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"]:
        problems.append(f"{name}: capabilities are not dropped")
    added = sorted(capabilities.get("add", []))
    if added != (["NET_ADMIN", "NET_RAW"] if name == "tether-init" else []):
        problems.append(f"{name}: adds capabilities {added}")
    if name == "tether-proxy":
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in container:
                problems.append(f"{name}: no {probe}")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if ports.get("tether-admin") != 4191:
            problems.append(f"{name}: admin port 4191 is not named tether-admin")
    return problems


@pytest.mark.parametrize("name", FILES)
def test_injected_containers_pass_the_hardening_policy(name: str) -> None:
    for mode in ("native", "legacy"):
        pods = injected_pods(inject(CORPUS / name, "--sidecar-mode", mode).out)
        problems = [
            problem
            for pod in pods
            for container in (pod.container("tether-init"), pod.container("tether-proxy"))
            for problem in _policy_violations(pod, container)
        ]
        assert problems == []


def test_skips_say_why_and_leave_the_document_alone() -> None:
    for name, reason in (
        ("daemonsets.yaml", "daemonset/node-exporter skipped: hostNetwork: true"),
        ("udp-only.yaml", "deployment/statsd skipped: only non-TCP ports (8125/UDP)"),
        ("overrides.yaml", "deployment/legacy-ftp skipped: tether.io/inject: disabled"),
        ("already-injected.yaml", "deployment/web skipped: already injected"),
    ):
        result = inject(CORPUS / name)
        assert reason in result.err
        raw_in, raw_out = _raw_documents((CORPUS / name).read_text()), _raw_documents(result.out)
        skipped = [i for i, line in enumerate(result.err.splitlines()) if " skipped: " in line]
        assert skipped and all(raw_in[i] == raw_out[i] for i in skipped)


def test_the_corpus_covers_every_workload_kind_and_both_goldens_exist() -> None:
    kinds = {obj["kind"] for name in FILES for obj in objects((CORPUS / name).read_text())}
    assert {
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "Pod",
        "List",
    } <= kinds | {d.get("kind") for name in FILES for d in documents((CORPUS / name).read_text())}
    assert sorted(p.name for p in GOLDEN.glob("*.yaml")) == sorted(
        FILES + [n.removesuffix(".yaml") + ".legacy.yaml" for n in LEGACY]
    )
