"""``tether tap`` and ``tether endpoints`` with the caller's kubeconfig credentials, against an authorising
public API (``--authz kubernetes``).

The CLI runs as a user runs it (the installed ``tether``, a subprocess). The Kubernetes API cannot run
here: :mod:`tether.public_api.authz_testing` emulates its TokenReview and SubjectAccessReview endpoints'
wire protocol and RBAC's decision for the ClusterRole ``tether-tap``; the public API runs in the real runtime
over a real nats-server, and a stand-in for telemetry answers the tap over NATS as telemetry does. The
kubeconfigs are real ones read by the kubernetes client's loader: a static token, and an exec plugin (a tiny
script printing an ExecCredential, as cloud providers' plugins do).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tether.destination.config import DestinationConfig
from tether.destination.service import DestinationService
from tether.public_api.authz_testing import EmulatedAuthApi
from tether.public_api.config import PublicApiConfig
from tether.public_api.service import PublicApiService
from tether.public_api.testing import WEB_ID
from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.config import config_from
from tether.shared.events import TapEvent, TapRequest, TapRequestInit, TapResponseEnd
from tether.shared.natsserver import EmbeddedNats
from tether.shared.runtime import Runtime
from tether.shared.testing import eventually

TETHER = f"{sys.prefix}/bin/tether"
STATIC_TOKEN = "alice-static-token"
EXEC_TOKEN = "alice-exec-plugin-token"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cluster:
    addr: str
    kube: EmulatedAuthApi
    workdir: Path


async def tether(*args: str, env: dict[str, str] | None = None) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_") and k != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        TETHER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ | {"HOME": "/nonexistent"} | (env or {}),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return Result(process.returncode or 0, out.decode(), err.decode())


def _event(tap_id: str, end: bool) -> TapEvent:
    return TapEvent(
        tap_id=tap_id,
        replica="t1",
        namespace="shop",
        pod="web-1",
        direction="inbound",
        stream_id=1,
        at=datetime.now(UTC),
        source=None,
        destination=None,
        source_labels={},
        destination_labels={"deployment": "web"},
        source_identity="",
        destination_identity=WEB_ID,
        tls="true",
        request_init=None
        if end
        else TapRequestInit(method="GET", scheme="http", authority="web.shop:80", path="/orders"),
        response_end=TapResponseEnd(
            grpc_status=-1, since_request_init_us=900, response_bytes=2, reset_error_code=0
        )
        if end
        else None,
    )


@pytest.fixture
async def cluster(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Cluster]:
    kube = EmulatedAuthApi()
    kube.user(STATIC_TOKEN, "alice")
    kube.user(EXEC_TOKEN, "alice")
    kube.user("bob-token", "bob")
    kube.grant("alice", namespace="shop")
    kube.start()
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "web",
                        "ports": [{"name": "http", "port": 80, "target_port": 8080}],
                        "endpoints": [{"address": "10.0.0.1", "identity": WEB_ID}],
                    }
                ]
            }
        )
    )
    destination_config = config_from(
        DestinationConfig,
        "destination",
        {"nats_url": nats_server.url, "admin_addr": "127.0.0.1:0", "grpc_addr": "127.0.0.1:0"},
        {
            "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
        },
    )
    destination_service = DestinationService(destination_config)
    destination = Runtime("destination", destination_config, destination_service, version="9.9.9")
    await destination.start()
    config = config_from(
        PublicApiConfig,
        "public-api",
        {
            "nats_url": nats_server.url,
            "admin_addr": "127.0.0.1:0",
            "grpc_addr": "127.0.0.1:0",
            "destination_addr": f"127.0.0.1:{destination_service.grpc_port}",
            "destination_trust_anchors": "",
            "authz": "kubernetes",
            "kubeconfig": str(kube.kubeconfig(tmp_path / "public-api.kubeconfig")),
        },
        {},
    )
    service = PublicApiService(config)
    runtime = Runtime("public-api", config, service, version="9.9.9")
    telemetry = await Bus.connect(nats_server.url, name="telemetry-stand-in")

    async def on_request(request: TapRequest, _subject: str) -> None:
        # Telemetry's part: the matching proxy captured one request.
        if request.action == "start":
            for end in (False, True):
                await telemetry.publish(subjects.tap_events(request.tap_id), _event(request.tap_id, end))

    await telemetry.subscribe(subjects.TAP_REQUESTS, TapRequest, on_request)
    await runtime.start()
    try:
        yield Cluster(f"127.0.0.1:{service.port}", kube, tmp_path)
    finally:
        await runtime.stop()
        await destination.stop()
        await telemetry.close()
        kube.stop()


def _kubeconfig(path: Path, server: str, users: dict[str, dict[str, Any]], current: str) -> Path:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "prod", "cluster": {"server": server}}],
                "users": [{"name": name, "user": user} for name, user in users.items()],
                "contexts": [
                    {"name": name, "context": {"cluster": "prod", "user": name, "namespace": "shop"}}
                    for name in users
                ],
                "current-context": current,
            }
        )
    )
    return path


def _exec_plugin(workdir: Path, token: str, *, fail: bool = False) -> dict[str, Any]:
    """A kubeconfig user whose token comes from an exec plugin: a script printing an ExecCredential."""
    marker = workdir / "plugin-ran"
    script = workdir / ("failing-plugin.py" if fail else "plugin.py")
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
    }
    body = (
        "import sys\nsys.stderr.write('login required: run cloud-login first\\n')\nsys.exit(1)\n"
        if fail
        else (
            "import json, os, pathlib\n"
            f"pathlib.Path({str(marker)!r}).write_text(os.environ['KUBERNETES_EXEC_INFO'])\n"
            f"print(json.dumps({credential!r}))\n"
        )
    )
    script.write_text(body)
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }


def _tokens_reviewed(kube: EmulatedAuthApi) -> list[str]:
    return [r.body["spec"]["token"] for r in kube.requests if r.resource == "tokenreviews"]


async def test_tap_sends_a_static_token_from_the_kubeconfig(cluster: Cluster) -> None:
    config = _kubeconfig(
        cluster.workdir / "alice.kubeconfig",
        "https://kubernetes.example:6443",
        {"alice": {"token": STATIC_TOKEN}},
        "alice",
    )
    args = ["tap", "deploy/web", "-n", "shop", "--api-addr", cluster.addr, "--max-requests", "1"]
    result = await tether(*args, "--kubeconfig", str(config))
    assert result.code == 0, result.err
    assert "/orders" in result.out and result.out.count("\n") == 2, result.out
    assert _tokens_reviewed(cluster.kube) == [STATIC_TOKEN]

    # Without --kube (or --kubeconfig/--context) nothing is sent, even with KUBECONFIG set: the answer
    # says what to add, in one line.
    refused = await tether(*args, env={"KUBECONFIG": str(config)})
    assert refused.code == 1 and refused.out == ""
    [line] = refused.err.strip().splitlines()
    assert line.startswith("tether: error: the public API answered UNAUTHENTICATED"), line
    assert line.endswith("add --kube"), line
    assert _tokens_reviewed(cluster.kube) == [STATIC_TOKEN]


async def test_endpoints_sends_an_exec_plugins_token(cluster: Cluster) -> None:
    config = _kubeconfig(
        cluster.workdir / "exec.kubeconfig",
        "https://kubernetes.example:6443",
        {
            "cert-user": {"client-certificate-data": "", "client-key-data": ""},
            "alice-exec": _exec_plugin(cluster.workdir, EXEC_TOKEN),
        },
        "cert-user",
    )
    args = ["endpoints", "web.shop.svc.cluster.local:80", "--api-addr", cluster.addr]

    async def resolved() -> bool:
        result = await tether(*args, "--context", "alice-exec", env={"KUBECONFIG": str(config)})
        assert "UNAUTHENTICATED" not in result.err and "PERMISSION_DENIED" not in result.err, result.err
        return result.code == 0 and "10.0.0.1" in result.out

    await eventually(resolved, what="the endpoints of web.shop, asked with the exec plugin's token")
    assert set(_tokens_reviewed(cluster.kube)) == {EXEC_TOKEN}
    info = json.loads((cluster.workdir / "plugin-ran").read_text())
    assert (info["kind"], info["apiVersion"]) == ("ExecCredential", "client.authentication.k8s.io/v1")

    # --kube with the current context, whose user has a client certificate: nothing to send, exit 2.
    cert = await tether(*args, "--kube", env={"KUBECONFIG": str(config)})
    assert cert.code == 2
    [line] = cert.err.strip().splitlines()
    assert "has no bearer token" in line and "client certificate" in line, line


async def test_credential_errors_are_one_line(cluster: Cluster) -> None:
    failing = _kubeconfig(
        cluster.workdir / "failing.kubeconfig",
        "https://kubernetes.example:6443",
        {"alice": _exec_plugin(cluster.workdir, EXEC_TOKEN, fail=True)},
        "alice",
    )
    args = ["endpoints", "web.shop:80", "--api-addr", cluster.addr]
    result = await tether(*args, "--kubeconfig", str(failing))
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("tether: error: --kubeconfig: the user of kubeconfig"), line
    assert "exec plugin failed" in line and "login required" in line, line

    missing = await tether(*args, "--kubeconfig", str(cluster.workdir / "nope"))
    assert missing.code == 2
    [line] = missing.err.strip().splitlines()
    assert line.startswith("tether: error: --kubeconfig: cannot load kubeconfig"), line

    unknown_context = await tether(*args, "--kubeconfig", str(failing), "--context", "nope")
    assert unknown_context.code == 2 and "context nope" in unknown_context.err

    bob = _kubeconfig(
        cluster.workdir / "bob.kubeconfig",
        "https://kubernetes.example:6443",
        {"bob": {"token": "bob-token"}},
        "bob",
    )
    denied = await tether(
        "tap", "deploy/web", "-n", "shop", "--api-addr", cluster.addr, "--kubeconfig", str(bob)
    )
    assert denied.code == 1
    [line] = denied.err.strip().splitlines()
    assert "PERMISSION_DENIED" in line and 'user "bob" may not watch' in line and "tether-tap" in line, line
    assert not cluster.kube.requests or all(
        r.resource in ("tokenreviews", "subjectaccessreviews", "/version") for r in cluster.kube.requests
    )
