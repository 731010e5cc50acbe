"""HTTP/1.1 through real proxies in network namespaces: the kubelet's probes, curl and httpx, WebSocket, and
discovery by address (tests/netns/mesh_pods.py: the real control plane as processes, real proxy processes).

``client`` is a meshed pod whose applications (curl, httpx, websockets, run inside its namespace) dial a
service's name (resolved to its virtual address) or an address; its outbound proxy intercepts them.
``server`` is a meshed pod running tests/netns/h1_app.py on 8080 and a WebSocket echo on 8765 behind its
inbound proxy. ``strict`` is a meshed pod whose proxy refuses plaintext (``--inbound-policy
all-authenticated``) except on its probe port. ``outside`` has no proxy: it plays the kubelet, and runs a
second h1_app.py that the same requests reach directly, for the "equal" comparisons (the same status, body
bytes and header fields in order with names compared case-insensitively; hop-by-hop fields and Date aside).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator

import httpx
import pytest
from h1_app import FIXED_BODY, pattern_digest
from mesh_pods import (
    H1_APP,
    CurlResult,
    Exchange,
    MeshPods,
    Pod,
    authority,
    inside,
    open_socket,
    read_until_closed,
    sample,
)
from netns_harness import OUTBOUND_PORT

pytestmark = pytest.mark.netns

WEB_PORT = 8080
WEB_VIP = "10.96.0.10"
WEB = authority("web", WEB_PORT)
WEB_HOST = WEB.rsplit(":", 1)[0]
WS_PORT = 8765
WS_VIP = "10.96.0.13"
PROBE_PORT, OTHER_PORT = 8080, 8081
UPLOAD_BYTES = 10 * 1024 * 1024
STREAM_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def mesh(netns_supported: None) -> Iterator[MeshPods]:
    with MeshPods.open() as mesh:
        server = mesh.pod("server")
        mesh.pod("client")
        strict = mesh.pod(
            "strict",
            *("--inbound-policy", "all-authenticated", "--probe-ports", str(PROBE_PORT)),
            *("--probe-paths", f"{PROBE_PORT}:/healthz"),
        )
        outside = mesh.outside()
        mesh.h1_app(server, "web", WEB_PORT)
        mesh.app(server, "ws", [sys.executable, str(H1_APP), "ws", "--port", str(WS_PORT)])
        mesh.h1_app(strict, "web", PROBE_PORT, OTHER_PORT)
        mesh.h1_app(outside, "direct", WEB_PORT)
        mesh.service("web", WEB_VIP, WEB_PORT, endpoints=[server])
        mesh.service("ws", WS_VIP, WS_PORT, endpoints=[server])
        (mesh.directory / "upload.bin").write_bytes(os.urandom(UPLOAD_BYTES))
        mesh.start()
        yield mesh


def pods(mesh: MeshPods) -> tuple[Pod, Pod, Pod]:
    return mesh.pods["client"], mesh.pods["server"], mesh.pods["outside"]


def through_pair(mesh: MeshPods, *args: str, paths: list[str]) -> CurlResult:
    """curl in the client pod to the web service by name (its virtual address, as cluster DNS would say)."""
    client = mesh.pods["client"]
    urls = [f"http://{WEB}{path}" for path in paths]
    return mesh.curl(client, "--resolve", f"{WEB}:{WEB_VIP}", *args, urls=urls)


def direct(mesh: MeshPods, *args: str, paths: list[str]) -> CurlResult:
    """The same curl in the outside namespace, to h1_app.py there: the same Host, no proxy anywhere."""
    outside = mesh.pods["outside"]
    urls = [f"http://{WEB}{path}" for path in paths]
    return mesh.curl(outside, "--resolve", f"{WEB}:{outside.ip}", *args, urls=urls)


def assert_equal(proxied: Exchange, plain: Exchange) -> None:
    assert proxied.comparable() == plain.comparable(), (
        f"through the proxies: {proxied.status} {proxied.headers}\ndirect: {plain.status} {plain.headers}"
    )


def echoed_header(seen: dict[str, object], name: str) -> list[str]:
    headers = seen["headers"]
    assert isinstance(headers, list)
    return [str(value) for key, value in headers if str(key).lower() == name]


def test_kubelet_probe_reaches_the_app_through_the_inbound_proxy(mesh: MeshPods) -> None:
    """curl from ``outside`` (the kubelet, no proxy) GETs the server pod's HTTP/1.1 port: the real inbound
    proxy process takes the connection (iptables) and the real h1_app.py answers."""
    _, server, outside = pods(mesh)
    before = sample(server.metrics(), "tcp_open_total", direction="inbound", peer="src")
    result = mesh.curl(outside, urls=[f"http://{server.ip}:{WEB_PORT}/healthz"])
    probe = result.only()
    assert probe.status == 200, result.explain()
    seen = json.loads(probe.body)
    assert (seen["method"], seen["target"]) == ("GET", "/healthz")
    # The app was reached by the inbound proxy from inside the pod, not by the kubelet's own connection.
    assert seen["peer"].rsplit(":", 1)[0] == server.ip, seen
    assert sample(server.metrics(), "tcp_open_total", direction="inbound", peer="src") == before + 1


def test_probe_port_stays_plaintext_under_all_authenticated(mesh: MeshPods) -> None:
    """The real proxy with ``--inbound-policy all-authenticated --probe-ports 8080``: the kubelet's plaintext
    probe (curl from ``outside``) still gets h1_app.py's answer on 8080, while plaintext to 8081 is refused
    and never reaches the app."""
    mesh.require("tether-proxy --probe-ports")
    outside, strict = mesh.pods["outside"], mesh.pods["strict"]
    (app,) = strict.apps
    result = mesh.curl(outside, urls=[f"http://{strict.ip}:{PROBE_PORT}/healthz"])
    probe = result.only()
    assert probe.status == 200, result.explain()
    assert json.loads(probe.body)["target"] == "/healthz"

    seen_before = len(app.records())
    other = mesh.curl(outside, urls=[f"http://{strict.ip}:{OTHER_PORT}/private"])
    refused = other.returncode != 0 or (len(other.exchanges) == 1 and other.exchanges[0].status == 403)
    assert refused, other.explain()
    assert [r for r in app.records()[seen_before:] if r.get("port") == OTHER_PORT] == []


def test_plaintext_on_a_probe_port_may_only_probe(mesh: MeshPods) -> None:
    """With ``--probe-paths 8080:/healthz`` the probe port is no way around all-authenticated: plaintext may
    GET or HEAD /healthz (query ignored) and nothing else; the rest is 403 and never reaches the app."""
    mesh.require("tether-proxy --probe-paths")
    outside, strict = mesh.pods["outside"], mesh.pods["strict"]
    (app,) = strict.apps
    base = f"http://{strict.ip}:{PROBE_PORT}"
    assert mesh.curl(outside, "--head", urls=[f"{base}/healthz?verbose=1"]).only().status == 200
    seen_before = len(app.records())
    for args, path in (((), "/private"), (("-X", "POST", "-d", "x"), "/healthz"), ((), "/healthz/../admin")):
        answer = mesh.curl(outside, *args, urls=[base + path])
        assert answer.only().status == 403, answer.explain()
        reason = dict(answer.only().headers).get("tether-proxy-error", "")
        assert "only for the kubelet's probes" in reason, answer.explain()
    # Nor a raw stream: bytes that are not HTTP are not relayed to the application.
    with open_socket(outside.namespace, strict.ip, PROBE_PORT) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        received, _closed = read_until_closed(raw)
    assert b"HTTP/1.1 200" not in received
    assert [r for r in app.records()[seen_before:] if r.get("port") == PROBE_PORT] == []
    assert sample(strict.metrics(), "proxy_inbound_not_a_probe_refused_total") >= 3


def test_get_and_head_through_the_pair_equal_direct(mesh: MeshPods) -> None:
    """curl in the client pod → outbound proxy → mTLS → inbound proxy → h1_app.py: GET and HEAD responses
    equal curl's against h1_app.py directly (mixed-case and repeated fields, Content-Length kept on HEAD)."""
    proxied, plain = through_pair(mesh, paths=["/fixed"]), direct(mesh, paths=["/fixed"])
    assert proxied.only().status == 200, proxied.explain()
    assert proxied.only().body == FIXED_BODY
    assert_equal(proxied.only(), plain.only())

    proxied, plain = through_pair(mesh, "--head", paths=["/fixed"]), direct(mesh, "--head", paths=["/fixed"])
    head, plain_head = proxied.only(), plain.only()
    head.body = plain_head.body = b""  # curl writes a HEAD's header block to -o
    assert head.status == 200 and head.header("content-length") == str(len(FIXED_BODY)), proxied.explain()
    assert_equal(head, plain_head)


def test_no_content_through_the_pair_equals_direct(mesh: MeshPods) -> None:
    """A 204 from h1_app.py through both real proxies: no body, no Content-Length, as directly."""
    proxied, plain = through_pair(mesh, paths=["/status/204"]), direct(mesh, paths=["/status/204"])
    response = proxied.only()
    assert response.status == 204 and response.body == b"", proxied.explain()
    assert response.header("content-length") is None
    assert_equal(response, plain.only())


def test_streamed_chunked_response_through_the_pair_equals_direct(mesh: MeshPods) -> None:
    """8 MiB streamed by h1_app.py in chunks arrives whole through both real proxies, as directly."""
    path = f"/stream/{STREAM_BYTES}"
    proxied, plain = through_pair(mesh, paths=[path]), direct(mesh, paths=[path])
    response = proxied.only()
    assert response.status == 200, proxied.explain()
    assert len(response.body) == STREAM_BYTES
    assert hashlib.sha256(response.body).hexdigest() == pattern_digest(STREAM_BYTES)
    assert_equal(response, plain.only())


def test_chunked_upload_of_10_mib_through_the_pair_equals_direct(mesh: MeshPods) -> None:
    """curl POSTs 10 MiB with ``Transfer-Encoding: chunked`` through both real proxies: h1_app.py receives
    every byte (its digest in the answer), and the answer equals the direct one."""
    upload = mesh.directory / "upload.bin"
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    args = ("-H", "Transfer-Encoding: chunked", "-H", "Expect:", "--data-binary", f"@{upload}")
    proxied, plain = through_pair(mesh, *args, paths=["/upload"]), direct(mesh, *args, paths=["/upload"])
    response = proxied.only()
    assert response.status == 200, proxied.explain()
    assert json.loads(response.body) == {"length": UPLOAD_BYTES, "sha256": digest}
    assert_equal(response, plain.only())


def test_expect_100_continue_through_the_pair_equals_direct(mesh: MeshPods) -> None:
    """curl sends ``Expect: 100-continue`` and holds its body until a ``100 Continue`` arrives (up to 5 s):
    through both real proxies it gets one, and the final answer equals the direct one."""
    body = mesh.directory / "small.bin"
    body.write_bytes(os.urandom(256 * 1024))
    args = ("-H", "Expect: 100-continue", "--expect100-timeout", "5", "--data-binary", f"@{body}")
    proxied, plain = through_pair(mesh, *args, paths=["/upload"]), direct(mesh, *args, paths=["/upload"])
    response, plain_response = proxied.only(), plain.only()
    assert plain_response.informational == [100]
    assert response.informational == [100], proxied.explain()
    assert json.loads(response.body)["length"] == 256 * 1024
    assert_equal(response, plain_response)


def test_keep_alive_reuses_one_connection_through_the_pair(mesh: MeshPods) -> None:
    """Two requests on one curl invocation: curl reuses its connection to the outbound proxy (the proxy
    kept it open) and both answers equal the direct ones."""
    client = mesh.pods["client"]
    before = sample(client.metrics(), "tcp_open_total", direction="outbound", peer="src")
    paths = ["/fixed", "/status/204"]
    proxied, plain = through_pair(mesh, paths=paths), direct(mesh, paths=paths)
    assert proxied.returncode == 0 and len(proxied.exchanges) == 2, proxied.explain()
    assert "Re-using existing connection" in proxied.stderr, proxied.explain()
    for response, plain_response in zip(proxied.exchanges, plain.exchanges, strict=True):
        assert_equal(response, plain_response)
    assert sample(client.metrics(), "tcp_open_total", direction="outbound", peer="src") == before + 1


def test_the_app_sees_the_request_as_sent_and_the_client_identity(mesh: MeshPods) -> None:
    """What h1_app.py saw of a curl request through both real proxies: method, target, Host and the
    client's own fields; not the hop-by-hop ones (RFC 9110 §7.6.1); and ``tether-client-id``, the client's
    identity as the inbound proxy verified it over mTLS."""
    client = mesh.pods["client"]
    extra = ["-H", "X-Custom: Kept", "-H", "Connection: X-Hop", "-H", "X-Hop: dropped"]
    result = through_pair(mesh, *extra, "-H", "Proxy-Connection: keep-alive", paths=["/echo?q=1"])
    response = result.only()
    assert response.status == 200, result.explain()
    seen = json.loads(response.body)
    assert (seen["method"], seen["target"]) == ("GET", "/echo?q=1")
    assert echoed_header(seen, "host") == [WEB]
    assert echoed_header(seen, "x-custom") == ["Kept"]
    assert echoed_header(seen, "x-hop") == [] and echoed_header(seen, "proxy-connection") == []
    assert echoed_header(seen, "tether-client-id") == [client.identity]


def test_a_client_id_written_by_the_client_never_reaches_the_app(mesh: MeshPods) -> None:
    """``tether-client-id`` fields a client writes itself, in any case, are dropped by the inbound proxy:
    through the pair the app sees only the identity the proxy verified; in plaintext from an unmeshed pod,
    none at all."""
    client, server, outside = pods(mesh)
    spoofed = ("-H", "Tether-Client-Id: root.kube-system", "-H", "TETHER-CLIENT-ID: admin")
    meshed = through_pair(mesh, *spoofed, paths=["/echo"])
    assert meshed.only().status == 200, meshed.explain()
    assert echoed_header(json.loads(meshed.only().body), "tether-client-id") == [client.identity]
    plain = mesh.curl(outside, *spoofed, urls=[f"http://{server.ip}:{WEB_PORT}/echo"])
    assert plain.only().status == 200, plain.explain()
    assert echoed_header(json.loads(plain.only().body), "tether-client-id") == []


def test_unmeshed_destination_through_the_outbound_proxy_equals_direct(mesh: MeshPods) -> None:
    """curl in the client pod to h1_app.py in ``outside`` (no proxy there, not in the registry): the outbound
    proxy forwards HTTP/1.1 to the original destination; GET and a chunked POST equal the direct ones."""
    client, _, outside = pods(mesh)
    upload = mesh.directory / "upload.bin"
    args = ("-H", "Transfer-Encoding: chunked", "-H", "Expect:", "--data-binary", f"@{upload}")
    for extra, path in (((), "/fixed"), (args, "/upload")):
        url = f"http://{outside.ip}:{WEB_PORT}{path}"
        proxied = mesh.curl(client, *extra, urls=[url])
        plain = mesh.curl(outside, *extra, urls=[url])
        assert proxied.only().status == 200, proxied.explain()
        assert_equal(proxied.only(), plain.only())


def _httpx_session(host: str) -> tuple[list[Exchange], set[str]]:
    """Five requests on one httpx client (Host: the web service): GET, HEAD, 204, a 10 MiB chunked POST
    (a generator body), a streamed response. The responses, and the local addresses they came over."""
    upload = os.urandom(UPLOAD_BYTES)

    def chunks() -> Iterator[bytes]:
        for offset in range(0, len(upload), 256 * 1024):
            yield upload[offset : offset + 256 * 1024]

    exchanges: list[Exchange] = []
    connections: set[str] = set()
    base = f"http://{host}:{WEB_PORT}"
    with httpx.Client(trust_env=False, timeout=30.0, headers={"Host": WEB}) as session:
        for method, path, content in (
            ("GET", "/fixed", None),
            ("HEAD", "/fixed", None),
            ("GET", "/status/204", None),
            ("POST", "/upload", chunks()),
            ("GET", f"/stream/{STREAM_BYTES}", None),
        ):
            response = session.request(method, base + path, content=content)
            stream = response.extensions["network_stream"]
            connections.add("{}:{}".format(*stream.get_extra_info("client_addr")))
            fields = [
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers.raw
            ]
            exchanges.append(Exchange(response.status_code, fields, response.content))
    upload_answer = json.loads(exchanges[3].body)
    assert upload_answer == {"length": UPLOAD_BYTES, "sha256": hashlib.sha256(upload).hexdigest()}
    exchanges[3].body = b""  # the uploads are random: compared through their digests above
    return exchanges, connections


def test_httpx_through_the_pair_equals_direct(mesh: MeshPods) -> None:
    """httpx (one client, keep-alive) in the client pod through both real proxies to h1_app.py: GET, HEAD,
    204, a 10 MiB chunked upload and an 8 MiB streamed response equal the same session run directly, and
    all five went over one connection."""
    client, _, outside = pods(mesh)
    proxied, proxied_connections = inside(client.namespace, lambda: _httpx_session(WEB_VIP))
    plain, _ = inside(outside.namespace, lambda: _httpx_session(outside.ip))
    assert [r.status for r in proxied] == [200, 200, 204, 200, 200]
    for response, plain_response in zip(proxied, plain, strict=True):
        assert_equal(response, plain_response)
    assert len(proxied_connections) == 1, proxied_connections


def test_websocket_echo_through_the_pair(mesh: MeshPods) -> None:
    """The ``websockets`` client in the client pod, to the WebSocket echo server (``websockets``) in the
    server pod by the service's name: the Upgrade crosses both real proxies, then text and binary messages
    (up to 1 MiB) come back as sent."""
    from websockets.sync.client import connect

    client = mesh.pods["client"]

    def talk() -> list[str | bytes]:
        sock = socket.create_connection((WS_VIP, WS_PORT), timeout=10)
        received: list[str | bytes] = []
        messages: list[str | bytes] = ["hello", os.urandom(1024 * 1024), "ünïcode ✓", b"\x00" * 10]
        with connect(
            f"ws://{authority('ws', WS_PORT)}/echo", sock=sock, open_timeout=10, max_size=None
        ) as ws:
            for message in messages:
                ws.send(message)
                received.append(ws.recv(timeout=10))
        assert received == messages
        return received

    assert len(inside(client.namespace, talk)) == 4


def test_service_and_pod_addresses_route_by_discovery_with_mtls(mesh: MeshPods) -> None:
    """No name anywhere: curl in the client pod to the service's virtual address and to the server pod's
    address. The real outbound proxy resolves each address with the real destination service (registry
    ``addresses:``; a pod address resolves to its endpoint) and dials the server's proxy over mTLS: the app
    sees the client's identity, and the client proxy counts the requests under the server's identity."""
    mesh.require("registry addresses")
    client, server, _ = pods(mesh)
    before = sample(
        client.metrics(), "request_total", direction="outbound", tls="true", server_id=str(server.identity)
    )
    for host in (WEB_VIP, server.ip):
        result = mesh.curl(client, urls=[f"http://{host}:{WEB_PORT}/echo"])
        response = result.only()
        assert response.status == 200, result.explain()
        seen = json.loads(response.body)
        assert echoed_header(seen, "host") == [f"{host}:{WEB_PORT}"]
        assert echoed_header(seen, "tether-client-id") == [client.identity], seen
    metrics = client.metrics()
    assert (
        sample(metrics, "request_total", direction="outbound", tls="true", server_id=str(server.identity))
        >= before + 2
    )
    assert sample(
        metrics,
        "tcp_open_total",
        direction="outbound",
        peer="dst",
        tls="true",
        server_id=str(server.identity),
    )


def test_topology_outbound_listener_and_direct_baseline(mesh: MeshPods) -> None:
    """Sanity of the topology: the client pod's proxy process listens on the outbound port the iptables rules
    redirect to, and h1_app.py in ``outside`` answers curl directly (the baseline of every comparison)."""
    client = mesh.pods["client"]
    assert (
        inside(client.namespace, lambda: socket.create_connection(("127.0.0.1", OUTBOUND_PORT), 2).close())
        is None
    )
    result = direct(mesh, paths=["/fixed"])
    assert result.only().status == 200 and result.only().body == FIXED_BODY, result.explain()
