"""Opaque TCP through real proxies in network namespaces: Redis, PostgreSQL and the applications' own TLS
(tests/netns/mesh_pods.py: the real control plane as processes, real proxy processes).

``server`` is a meshed pod running Debian's ``redis-server`` (6379) and PostgreSQL (5432, initdb'd by the
test with trust authentication), both opaque ports by default, and an HTTPS server (tests/netns/h1_app.py
with a certificate from a CA the test makes) on 8443. ``client`` is a meshed pod whose ``redis-cli``,
``psql`` and ``curl`` dial the services' virtual addresses or the server pod's address. ``outside`` has no
proxy: an external HTTPS API the client pod calls, and an unmeshed client of the server pod's HTTPS server.

mTLS between the proxies is read from their TCP metrics (Linkerd's names): the client proxy's outbound
``peer="dst"`` series with ``tls="true"`` and the server's identity as ``server_id``, the server proxy's
inbound ``peer="src"`` series with ``tls="true"`` and the client's identity as ``client_id``.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from h1_app import FIXED_BODY
from mesh_pods import MeshPods, Pod, ServicePort, eventually, make_test_ca, sample

pytestmark = pytest.mark.netns

REDIS_PORT, REDIS_VIP = 6379, "10.96.0.11"
POSTGRES_PORT, POSTGRES_VIP = 5432, "10.96.0.12"
HTTPS_PORT, HTTPS_VIP = 8443, "10.96.0.16"
EXTERNAL_PORT = 9443
HTTPS_NAME, EXTERNAL_NAME = "https-app.test", "external.test"


def postgres_binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    assert found, f"{name} not found: apt-get install -y postgresql"
    return found


def tools_missing() -> list[str]:
    wanted = ["redis-server", "redis-cli", "psql", "curl"]
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and shutil.which("initdb") is None:
        missing.append("initdb")
    return missing


def start_postgres(mesh: MeshPods, pod: Pod) -> None:
    """initdb as the postgres user into the topology's directory (trust authentication), then the server
    listening on the pod's address."""
    user = pwd.getpwnam("postgres")
    data = mesh.directory / "pgdata"
    data.mkdir(mode=0o700)
    os.chown(data, user.pw_uid, user.pw_gid)
    as_postgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    initdb = [postgres_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
    subprocess.run(
        [*as_postgres, *initdb, "--no-locale", "-E", "UTF8"],
        check=True,
        capture_output=True,
        cwd=data,
    )
    # Trust every address: connections arrive from the inbound proxy, at the pod's own address.
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 0.0.0.0/0 trust\n")
    mesh.app(
        pod,
        "postgres",
        [
            *as_postgres,
            postgres_binary("postgres"), "-D", str(data), "-k", str(data), "-p", str(POSTGRES_PORT),
            "-c", f"listen_addresses={pod.ip}", "-c", "fsync=off", "-c", "logging_collector=off",
        ],
        ready_text="database system is ready to accept connections",
    )  # fmt: skip


@pytest.fixture(scope="module")
def mesh(netns_supported: None) -> Iterator[MeshPods]:
    missing = tools_missing()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not found: apt-get install -y redis-server redis-tools postgresql curl"
        )
    with MeshPods.open() as mesh:
        server = mesh.pod("server")
        mesh.pod("client")
        outside = mesh.outside()
        ca, issued = make_test_ca(
            mesh.directory / "tls", (HTTPS_NAME, server.ip), (EXTERNAL_NAME, outside.ip)
        )
        (mesh.directory / "tls").chmod(0o755)
        mesh.app(
            server,
            "redis",
            [
                *("redis-server", "--port", str(REDIS_PORT), "--bind", server.ip, "--save", ""),
                *("--appendonly", "no", "--protected-mode", "no", "--dir", str(mesh.directory)),
            ],
            ready_text="Ready to accept connections",
        )
        start_postgres(mesh, server)
        mesh.h1_app(server, "https", HTTPS_PORT, tls=issued[HTTPS_NAME])
        mesh.h1_app(outside, "external", EXTERNAL_PORT, tls=issued[EXTERNAL_NAME])
        mesh.service("redis", REDIS_VIP, ServicePort("redis", REDIS_PORT, opaque=True), endpoints=[server])
        mesh.service(
            "postgres", POSTGRES_VIP, ServicePort("pg", POSTGRES_PORT, opaque=True), endpoints=[server]
        )
        mesh.service("https", HTTPS_VIP, ServicePort("https", HTTPS_PORT), endpoints=[server])
        mesh.start()
        mesh.files["test-ca"] = ca
        yield mesh


def ca_file(mesh: MeshPods) -> Path:
    return mesh.files["test-ca"]


class MtlsCounters:
    """The TCP series that show mTLS between the client's and the server's proxies."""

    def __init__(self, client: Pod, server: Pod) -> None:
        self.client, self.server = client, server

    def read(self) -> tuple[float, float, float, float]:
        outbound, inbound = self.client.metrics(), self.server.metrics()
        dst = {"direction": "outbound", "peer": "dst", "tls": "true", "server_id": str(self.server.identity)}
        src = {"direction": "inbound", "peer": "src", "tls": "true", "client_id": str(self.client.identity)}
        return (
            sample(outbound, "tcp_open_total", **dst),
            sample(outbound, "tcp_read_bytes_total", **dst),
            sample(inbound, "tcp_open_total", **src),
            sample(inbound, "tcp_read_bytes_total", **src),
        )

    def wait_grown(self, before: tuple[float, float, float, float], connections: int) -> None:
        """Wait until both proxies counted ``connections`` more mTLS connections, and bytes on them."""

        def grown() -> bool:
            now = self.read()
            return (
                now[0] >= before[0] + connections
                and now[1] > before[1]
                and now[2] >= before[2] + connections
                and now[3] > before[3]
            )

        try:
            eventually(grown, 5.0, f"{connections} more mTLS connections between the proxies")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {before} then {self.read()}") from None


def pods(mesh: MeshPods) -> tuple[Pod, Pod, Pod]:
    return mesh.pods["client"], mesh.pods["server"], mesh.pods["outside"]


def test_redis_cli_through_the_pair_with_mtls(mesh: MeshPods) -> None:
    """Debian's redis-cli in the client pod against Debian's redis-server in the server pod, through both
    real proxies (6379: opaque by default, no detection): by the service's virtual address and by the pod's
    address, each connection carried over mTLS between the proxies (TCP metrics)."""
    mesh.require("registry addresses")
    client, server, _ = pods(mesh)
    counters = MtlsCounters(client, server)
    before = counters.read()
    cli = ["redis-cli", "-p", str(REDIS_PORT)]
    assert client.namespace.run([*cli, "-h", REDIS_VIP, "SET", "mesh", "opaque tcp"]).stdout.strip() == "OK"
    assert client.namespace.run([*cli, "-h", REDIS_VIP, "GET", "mesh"]).stdout.strip() == "opaque tcp"
    assert client.namespace.run([*cli, "-h", server.ip, "PING"]).stdout.strip() == "PONG"
    counters.wait_grown(before, 3)


def test_psql_through_the_pair_with_mtls(mesh: MeshPods) -> None:
    """Debian's psql in the client pod against a real PostgreSQL in the server pod (5432: opaque by
    default), through both real proxies by the service's virtual address: a table is created, filled and
    read back, over mTLS between the proxies (TCP metrics)."""
    mesh.require("registry addresses")
    client, server, _ = pods(mesh)
    counters = MtlsCounters(client, server)
    before = counters.read()
    env = dict(os.environ, PGCONNECT_TIMEOUT="5")
    psql = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", POSTGRES_VIP, "-p", str(POSTGRES_PORT)]
    statements = (
        "create table mesh (n int)",
        "insert into mesh select generate_series(1, 1000)",
        "select sum(n) from mesh",
    )
    commands = [part for statement in statements for part in ("-c", statement)]
    done = client.namespace.run(
        [*psql, "-U", "postgres", "-d", "postgres", *commands], env=env, check=False, timeout=20
    )
    assert done.returncode == 0, f"psql exited {done.returncode}: {done.stderr}"
    assert done.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 1000", "500500"], done.stdout
    counters.wait_grown(before, 1)


def test_tls_to_an_external_server_passes_through_the_outbound_proxy_untouched(mesh: MeshPods) -> None:
    """curl in the client pod calls an HTTPS server in ``outside`` (h1_app.py with a certificate from the
    test's own CA): the real outbound proxy intercepts the connection and forwards the TLS bytes as they are
    (curl verifies the server's own certificate against the test CA, which nothing in the mesh holds)."""
    client, _, outside = pods(mesh)
    (external,) = outside.apps
    before = sample(client.metrics(), "tcp_open_total", direction="outbound", peer="src")
    result = mesh.curl(
        client,
        "--cacert", str(ca_file(mesh)), "--resolve", f"{EXTERNAL_NAME}:{EXTERNAL_PORT}:{outside.ip}",
        urls=[f"https://{EXTERNAL_NAME}:{EXTERNAL_PORT}/fixed"],
    )  # fmt: skip
    response = result.only()
    assert response.status == 200 and response.body == FIXED_BODY, result.explain()
    assert f"subject: CN={EXTERNAL_NAME}" in result.stderr and "SSL certificate verify ok" in result.stderr
    assert "issuer: CN=Tether protocol tests CA" in result.stderr
    # It went through the proxy (not around it), and the server saw the client pod's address.
    assert sample(client.metrics(), "tcp_open_total", direction="outbound", peer="src") >= before + 1
    assert [r["peer"].rsplit(":", 1)[0] for r in external.requests()][-1] == client.ip


def test_https_server_in_a_meshed_pod_answers_an_unmeshed_curl(mesh: MeshPods) -> None:
    """curl in ``outside`` (no proxy) to the HTTPS server in the server pod: the real inbound proxy takes
    the connection, sees TLS that is not for its own identity and forwards it untouched to h1_app.py."""
    _, server, outside = pods(mesh)
    before = sample(server.metrics(), "tcp_open_total", direction="inbound", peer="src")
    result = mesh.curl(
        outside,
        "--cacert", str(ca_file(mesh)), "--resolve", f"{HTTPS_NAME}:{HTTPS_PORT}:{server.ip}",
        urls=[f"https://{HTTPS_NAME}:{HTTPS_PORT}/echo"],
    )  # fmt: skip
    response = result.only()
    assert response.status == 200, result.explain()
    assert f"subject: CN={HTTPS_NAME}" in result.stderr and "SSL certificate verify ok" in result.stderr
    seen = json.loads(response.body)
    assert seen["peer"].rsplit(":", 1)[0] == server.ip, seen  # reached through the inbound proxy
    assert sample(server.metrics(), "tcp_open_total", direction="inbound", peer="src") == before + 1


def test_https_between_meshed_pods_rides_mtls_untouched(mesh: MeshPods) -> None:
    """curl in the client pod to the HTTPS server in the server pod by the service's virtual address: the
    application's TLS is opaque to both real proxies, which carry it inside their own mTLS (TCP metrics),
    and curl still verifies the server's own certificate."""
    mesh.require("registry addresses")
    client, server, _ = pods(mesh)
    counters = MtlsCounters(client, server)
    before = counters.read()
    result = mesh.curl(
        client,
        "--cacert", str(ca_file(mesh)), "--resolve", f"{HTTPS_NAME}:{HTTPS_PORT}:{HTTPS_VIP}",
        urls=[f"https://{HTTPS_NAME}:{HTTPS_PORT}/fixed"],
    )  # fmt: skip
    response = result.only()
    assert response.status == 200 and response.body == FIXED_BODY, result.explain()
    assert f"subject: CN={HTTPS_NAME}" in result.stderr and "SSL certificate verify ok" in result.stderr
    counters.wait_grown(before, 1)
