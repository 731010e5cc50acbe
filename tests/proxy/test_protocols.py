"""HTTP/1.1 and opaque TCP through a pair of meshed proxies, in-process: real proxies, the real identity and
destination services, real TLS, and applications that speak HTTP/1.1 (h11) and raw TCP on loopback.

The client's outbound proxy routes an HTTP/1.1 request by its ``Host`` through discovery to the server pod
and carries it over the mesh's mTLS HTTP/2 connection; the server's inbound proxy restores HTTP/1.1 for
the application. A protocol switch (``Upgrade``) gets an mTLS connection of its own and becomes a byte
tunnel. Opaque TCP to a pod address is routed by discovery (by address) and carried over mTLS too.
"""

from __future__ import annotations

import asyncio

import h11
from proxy_mesh import NAMESPACE, Mesh, Pod, metric, ready_pod


class H1App:
    """An HTTP/1.1 server (h11) that records each request and answers with what it saw; ``Upgrade:
    echo`` gets a 101 and then every byte echoed back. Plus a plain TCP echo server (``tcp_port``)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.port = 0
        self.tcp_port = 0
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        http = await asyncio.start_server(self._serve_http, self.host, 0)
        tcp = await asyncio.start_server(self._serve_tcp, self.host, 0)
        self._servers = [http, tcp]
        self.port = http.sockets[0].getsockname()[1]
        self.tcp_port = tcp.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = [(bytes(n), bytes(v)) for n, v in request.headers]
                self.requests.append((bytes(request.method), bytes(request.target), headers, body))
                if dict(headers).get(b"upgrade") == b"echo":
                    writer.write(
                        conn.send(h11.InformationalResponse(status_code=101, headers=[(b"upgrade", b"echo")]))
                    )
                    leftover, _ = conn.trailing_data
                    writer.write(bytes(leftover))
                    while data := await reader.read(65536):
                        writer.write(data)
                    break
                answer = b"%s %s %d bytes" % (request.method, request.target, len(body))
                writer.write(
                    conn.send(
                        h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(answer))])
                    )
                )
                writer.write(conn.send(h11.Data(data=answer)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
        writer.close()


async def server_pod(meshed: Mesh, app_port_of: str = "port") -> tuple[Pod, H1App]:
    host = f"127.0.0.{meshed._next_host}"
    app = H1App(host)
    await app.start()
    pod = await ready_pod(meshed, None, meshed=True, serviceaccount="web", app_port=getattr(app, app_port_of))
    assert pod.host == host
    await meshed.register("web", [pod])
    return pod, app


async def exchange(host: str, port: int, raw: bytes, until: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        received = b""
        async with asyncio.timeout(10):
            while until not in received:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
        return received
    finally:
        writer.close()


async def test_http1_rides_the_mesh_http2_connection_and_reaches_the_app_as_http1(meshed: Mesh) -> None:
    server, app = await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    name = f"web.{NAMESPACE}.svc.cluster.local:8080"
    raw = (
        f"POST /upload HTTP/1.1\r\nHost: {name}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        f"GET /second HTTP/1.1\r\nHost: {name}\r\n\r\n"
    ).encode()
    received = await exchange(client.host, client.proxy.outbound_port, raw, b"/second 0 bytes")
    assert received.count(b"HTTP/1.1 200 OK") == 2, received
    assert b"POST /upload 11 bytes" in received and b"GET /second 0 bytes" in received
    (method, target, headers, body), (_, second_target, _, _) = app.requests
    assert (method, target, body) == (b"POST", b"/upload", b"hello world")
    assert second_target == b"/second"
    fields = dict(headers)
    assert fields[b"host"] == name.encode()
    assert b"tether-orig-proto" not in fields  # restored, not passed on
    assert fields[b"tether-client-id"] == client.identity.encode()  # type: ignore[union-attr]
    # Over the mesh: the client proxy's one h2 mTLS connection, labelled with the client's protocol.
    assert metric(client, "request_total", direction="outbound", protocol="http/1.1", tls="true") == 2
    assert metric(server, "request_total", direction="inbound", protocol="http/1.1", tls="true") == 2
    assert metric(client, "tcp_open_total", direction="outbound", peer="dst", tls="true") == 1


async def test_an_upgrade_gets_its_own_mtls_connection_and_becomes_a_tunnel(meshed: Mesh) -> None:
    server, app = await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    name = f"web.{NAMESPACE}.svc.cluster.local:8080"
    raw = f"GET /ws HTTP/1.1\r\nHost: {name}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nping-1".encode()
    reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
    try:
        writer.write(raw)
        received = b""
        async with asyncio.timeout(10):
            while b"ping-1" not in received:
                received += await reader.read(65536)
            assert received.startswith(b"HTTP/1.1 101 "), received
            writer.write(b"ping-2")
            while b"ping-2" not in received:
                received += await reader.read(65536)
    finally:
        writer.close()
    ((_, target, headers, _),) = app.requests
    assert target == b"/ws" and dict(headers)[b"upgrade"] == b"echo"
    assert metric(client, "response_total", direction="outbound", status_code="101") == 1
    assert metric(server, "tcp_open_total", direction="inbound", peer="src", tls="true") >= 1


async def test_opaque_tcp_to_a_pod_address_is_discovered_and_carried_over_mtls(meshed: Mesh) -> None:
    server, _ = await server_pod(meshed, "tcp_port")
    # The client's app connects to the server pod's address (no name anywhere); its proxy asks discovery
    # by address and dials the endpoint with mTLS.
    client = await ready_pod(
        meshed,
        meshed=True,
        serviceaccount="client",
        original_dst=(server.host, server.endpoint_port),
        opaque_ports=(server.endpoint_port,),
    )
    payload = bytes(range(256)) * 4096  # 1 MiB, both ways
    reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
    try:
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
    finally:
        writer.close()
    assert echoed == payload
    assert metric(client, "tcp_open_total", direction="outbound", peer="dst", tls="true") == 1
    assert (
        metric(client, "tcp_open_total", direction="outbound", peer="dst", server_id=server.identity or "")
        == 1
    )
    assert metric(server, "tcp_read_bytes_total", direction="inbound", peer="src", tls="true") >= len(payload)


async def test_a_client_that_half_closes_after_its_request_still_gets_the_response(meshed: Mesh) -> None:
    """``printf 'GET ...' | nc``: the request, then FIN; the answer comes back, then the close."""
    _server, app = await server_pod(meshed)
    client = await ready_pod(meshed, meshed=True, serviceaccount="client")
    name = f"web.{NAMESPACE}.svc.cluster.local:8080"
    reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
    try:
        writer.write(f"GET /half HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        writer.write_eof()
        received = await asyncio.wait_for(reader.read(-1), 10)  # to the proxy's close
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"GET /half 0 bytes"), received
    assert [target for _, target, _, _ in app.requests] == [b"/half"]


async def test_a_tcp_half_close_crosses_the_mesh_tls_and_the_answer_comes_back(meshed: Mesh) -> None:
    """The client sends, then FIN; the application sees the end of the stream (it echoes until then and
    closes), so the client reads everything to the close: TLS 1.3 half-close (close_notify) between the
    proxies, which asyncio's own TLS transport cannot do."""
    server, _ = await server_pod(meshed, "tcp_port")
    client = await ready_pod(
        meshed,
        meshed=True,
        serviceaccount="client",
        original_dst=(server.host, server.endpoint_port),
        opaque_ports=(server.endpoint_port,),
    )
    reader, writer = await asyncio.open_connection(client.host, client.proxy.outbound_port)
    try:
        writer.write(b"request, then FIN")
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 10)  # EOF only once the app closed
    finally:
        writer.close()
    assert echoed == b"request, then FIN"
    assert metric(client, "tcp_open_total", direction="outbound", peer="dst", tls="true") == 1
