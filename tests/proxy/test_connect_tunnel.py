"""HTTP ``CONNECT`` from the application to its outbound proxy (what ``http_proxy`` makes curl or grpcio
send): a tunnel to its authority (one discovery knows, or the original destination only); what it carries
is detected, and HTTP inside is routed and measured as HTTP. Real proxies, the real identity and destination
services, real TLS, on loopback (see test_protocols.py)."""

from __future__ import annotations

import asyncio

from proxy_mesh import NAMESPACE, Mesh, metric, ready_pod
from test_protocols import exchange, server_pod


async def test_a_connect_to_a_meshed_name_is_tunnelled_over_mtls_to_the_server_app(meshed: Mesh) -> None:
    server, app = await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    name = f"web.{NAMESPACE}.svc.cluster.local:8080"
    reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
    try:
        writer.write(f"CONNECT {name} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: curl\r\n\r\n".encode())
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n", head
            # Inside the tunnel: the application's own HTTP/1.1, reaching the server pod's app as bytes.
            writer.write(b"GET /inside HTTP/1.1\r\nHost: web\r\n\r\n")
            received = b""
            while b"GET /inside 0 bytes" not in received:
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received
    assert [target for _, target, _, _ in app.requests] == [b"/inside"]
    # HTTP inside a tunnel is routed as HTTP to the tunnel's authority (whatever its Host says), over the
    # mesh's mTLS HTTP/2 connection, and measured: what makes grpc_proxy clients visible in tether stat.
    assert metric(client, "request_total", direction="outbound", protocol="http/1.1", tls="true") == 1
    assert (
        metric(client, "request_total", direction="outbound", authority=name, server_id=server.identity or "")
        == 1
    )
    assert metric(server, "request_total", direction="inbound", protocol="http/1.1", tls="true") == 1


async def test_a_connect_to_an_unknown_name_is_refused_and_closed(meshed: Mesh) -> None:
    await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    received = await exchange(client.host, client.proxy.outbound_port, raw, b"never sent")
    status = received.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 502 Bad Gateway"), received
    assert b"connection: close" in received.lower()
    assert received.endswith(b"\r\n\r\n")  # nothing after the refusal: the proxy closed the connection
    assert metric(client, "tcp_open_total", direction="outbound", peer="dst") == 0


async def test_a_connect_to_an_address_outside_the_mesh_is_no_open_relay(meshed: Mesh) -> None:
    await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    accepted: list[object] = []
    bystander = await asyncio.start_server(lambda _r, w: accepted.append(w), "127.0.0.250", 0)
    port = bystander.sockets[0].getsockname()[1]
    try:
        # A listening address discovery does not know and that is not the connection's original destination.
        raw = f"CONNECT 127.0.0.250:{port} HTTP/1.1\r\n\r\n".encode()
        received = await exchange(client.host, client.proxy.outbound_port, raw, b"never sent")
    finally:
        bystander.close()
    assert received.startswith(b"HTTP/1.1 403 Forbidden\r\n"), received
    assert accepted == []


async def test_a_malformed_connect_is_answered_400(meshed: Mesh) -> None:
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    received = await exchange(
        client.host, client.proxy.outbound_port, b"CONNECT no-port HTTP/1.1\r\n\r\n", b"never sent"
    )
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received
