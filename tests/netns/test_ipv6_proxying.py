"""IPv6 through the proxies, end to end: a client pod and a server pod on a dual-stack link, each with
``tether-proxy init`` (IPv4 and IPv6 rules) and a real ``tether-proxy run`` (identity and discovery off:
original destinations, plaintext). curl speaks HTTP/1.1 to the server's IPv6 address, and a TCP client
sends bytes to an echo server there; both cross the client's outbound proxy (its ``[::1]`` listener) and
the server's inbound proxy (its ``[::]`` listener), as the proxies' metrics show."""

from __future__ import annotations

import socket
import sys

import pytest
from netns_harness import (
    NetnsHarness,
    ipv6_unavailable_reason,
    link_dual_stack,
    proxy_init,
    proxy_metrics,
    start_tether_proxy,
)
from test_interception import sample

pytestmark = pytest.mark.netns

HTTP_PORT = 8080
ECHO_PORT = 6379  # an opaque port by default: relayed as TCP without waiting for detection


@pytest.fixture
def ipv6(netns_supported: None) -> None:
    reason = ipv6_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


HTTP = r"""
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{self.path} from {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = Server(("::", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"""

ECHO = r"""
import socket, sys, threading
server = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6)
print("ready", flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


def test_http1_and_tcp_over_ipv6_cross_both_proxies(netns: NetnsHarness, ipv6: None) -> None:
    client, server = netns.namespace("cli6"), netns.namespace("srv6")
    link = link_dual_stack(netns, client, server)
    server_ip = link.right_ipv6
    server.spawn([sys.executable, "-c", HTTP, str(HTTP_PORT)], ready_line="ready")
    server.spawn([sys.executable, "-c", ECHO, str(ECHO_PORT)], ready_line="ready")
    for namespace in (client, server):
        proxy_init(namespace, "--ipv6", "on")
        start_tether_proxy(namespace)

    done = client.run(["curl", "-sS", "--max-time", "10", "-g", f"http://[{server_ip}]:{HTTP_PORT}/hello?v6"])
    # The application sees the inbound proxy's connection (from the pod's own IPv6 address, not ::1).
    assert done.stdout == f"/hello?v6 from {server_ip}", done.stdout

    with client.open_socket(server_ip, ECHO_PORT, timeout=10) as conn:
        conn.setblocking(True)
        conn.settimeout(10)
        conn.sendall(b"over ipv6")
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    assert received == b"over ipv6"

    outbound, inbound = proxy_metrics(client), proxy_metrics(server)
    assert sample(outbound, "request_total", direction="outbound", protocol="http/1.1") == 1
    assert sample(inbound, "request_total", direction="inbound", protocol="http/1.1") == 1
    assert sample(outbound, "tcp_open_total", direction="outbound", peer="dst") >= 2  # HTTP and TCP
    assert sample(inbound, "proxy_protocol_detected_total", direction="inbound", protocol="opaque") == 1
