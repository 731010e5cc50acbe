"""Protocol detection edge cases against real proxy processes, on both listeners (tests/netns/mesh_pods.py).

Both proxies run with ``--detect-timeout 0.5``; the server pod's also lists 2525 among its opaque ports (as
the pod annotation would), where destination announces it as opaque to clients (registry ``opaque: true``).
``server`` runs tests/netns/tcp_apps.py (an echo on 7000; a banner-first server, as SMTP or MySQL, on 3306
and 2525) and tests/netns/h2_app.py on 8082. Clients are sockets opened inside the client pod (to a
service's virtual address: the outbound proxy) or inside ``outside`` (to the server pod's address: the
inbound proxy).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from h2raw import PREFACE, RawH2Client, get
from hyperframe.frame import SettingsFrame
from mesh_pods import (
    DEFAULT_OPAQUE_PORTS,
    H2_APP,
    TCP_APPS,
    MeshPods,
    Pod,
    ServicePort,
    authority,
    eventually,
    open_socket,
    read_until_closed,
    sample,
)

pytestmark = pytest.mark.netns

DETECT_TIMEOUT = 0.5
ECHO_PORT, ECHO_VIP = 7000, "10.96.0.14"
BANNER_PORT, BANNER_VIP = 3306, "10.96.0.15"  # MySQL's: opaque by default
MAIL_PORT, MAIL_VIP = 2525, "10.96.0.16"  # opaque only because destination (and the pod's proxy) say so
H2_PORT, H2_VIP = 8082, "10.96.0.17"
BANNER = b"220 banner-first server ready\r\n"
SIDES = ["outbound", "inbound"]


@pytest.fixture(scope="module")
def mesh(netns_supported: None) -> Iterator[MeshPods]:
    detect = ("--detect-timeout", str(DETECT_TIMEOUT))
    opaque = ",".join(str(port) for port in (*DEFAULT_OPAQUE_PORTS, MAIL_PORT))
    with MeshPods.open() as mesh:
        server = mesh.pod("server", *detect, "--opaque-ports", opaque)
        mesh.pod("client", *detect)
        mesh.outside()
        mesh.app(server, "echo", [sys.executable, str(TCP_APPS), "echo", str(ECHO_PORT)])
        banner = BANNER.decode().strip()
        mesh.app(
            server,
            "banner",
            [sys.executable, str(TCP_APPS), "banner", str(BANNER_PORT), str(MAIL_PORT), "--text", banner],
        )
        mesh.app(server, "h2", [sys.executable, str(H2_APP), "serve", str(H2_PORT)])
        mesh.service("echo", ECHO_VIP, ECHO_PORT, endpoints=[server])
        mesh.service("banner", BANNER_VIP, BANNER_PORT, endpoints=[server])
        mesh.service("mail", MAIL_VIP, ServicePort("smtp", MAIL_PORT, opaque=True), endpoints=[server])
        mesh.service("h2", H2_VIP, H2_PORT, endpoints=[server])
        mesh.start()
        yield mesh


def connect(mesh: MeshPods, side: str, vip: str, port: int) -> socket.socket:
    """From the client pod to the service's virtual address, or from outside to the server pod's address."""
    if side == "outbound":
        return open_socket(mesh.pods["client"].namespace, vip, port)
    return open_socket(mesh.pods["outside"].namespace, mesh.pods["server"].ip, port)


def recv_exactly(sock: socket.socket, size: int, timeout: float) -> bytes:
    data = b""
    sock.settimeout(timeout)
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def mtls_opens(client: Pod, server: Pod) -> float:
    return sample(
        client.metrics(),
        "tcp_open_total",
        direction="outbound",
        peer="dst",
        tls="true",
        server_id=str(server.identity),
    )


@pytest.mark.parametrize("side", SIDES)
def test_one_byte_then_silence_is_forwarded_as_tcp_after_the_detect_timeout(
    mesh: MeshPods, side: str
) -> None:
    """A client of the echo server (tcp_apps.py) sends ``G`` (which could start an HTTP request) and waits:
    the real proxy gives up detecting after its timeout and forwards the connection as TCP, the byte intact,
    and what follows passes in order."""
    mesh.require("tether-proxy --detect-timeout")
    client, server = mesh.pods["client"], mesh.pods["server"]
    opens = mtls_opens(client, server)
    with connect(mesh, side, ECHO_VIP, ECHO_PORT) as sock:
        started = time.monotonic()
        sock.sendall(b"G")
        assert recv_exactly(sock, 1, timeout=8 * DETECT_TIMEOUT) == b"G"
        elapsed = time.monotonic() - started
        assert elapsed >= DETECT_TIMEOUT * 0.9, f"echoed after {elapsed:.3f} s: no detection wait at all?"
        rest = b"ET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 64
        sock.sendall(rest)
        assert recv_exactly(sock, len(rest), timeout=5) == rest
    if side == "outbound":  # to a meshed endpoint: over mTLS between the proxies
        eventually(lambda: mtls_opens(client, server) > opens, 5.0, "an mTLS connection to the server")


@pytest.mark.parametrize("side", SIDES)
def test_tcp_half_close_crosses_the_proxies(mesh: MeshPods, side: str) -> None:
    """Opaque TCP keeps half-close: a client of the echo server sends its data and shuts down its write
    side; through the real proxy (or pair) the server sees the end of the stream, echoes everything back and
    half-closes in turn, which reaches the client as the end of the echo."""
    data = b"\x00not http\x00" + bytes(range(256)) * 256
    with connect(mesh, side, ECHO_VIP, ECHO_PORT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        echoed, closed = read_until_closed(sock, timeout=5.0)
    assert echoed == data, f"{len(echoed)} of {len(data)} bytes echoed"
    assert closed, "the echo server's half-close did not come through"


@pytest.mark.parametrize(
    ("side", "vip", "port"),
    [
        ("outbound", BANNER_VIP, BANNER_PORT),
        ("inbound", BANNER_VIP, BANNER_PORT),
        ("outbound", MAIL_VIP, MAIL_PORT),
        ("inbound", MAIL_VIP, MAIL_PORT),
    ],
    ids=[
        "outbound-3306-default",
        "inbound-3306-default",
        "outbound-2525-announced",
        "inbound-2525-configured",
    ],
)
def test_server_speaks_first_port_gets_the_banner_at_once(
    mesh: MeshPods, side: str, vip: str, port: int
) -> None:
    """A client that sends nothing to a banner-first server (tcp_apps.py) on an opaque port (3306 by the
    proxy's defaults; 2525 announced as opaque by destination to the client's proxy, and configured with
    ``--opaque-ports`` on the server's): the real proxy skips detection, so the banner arrives well before
    the detect timeout would have passed on any hop."""
    mesh.require("tether-proxy --detect-timeout", "tether-proxy --opaque-ports")
    if port == MAIL_PORT:
        mesh.require("registry opaque ports")
    with connect(mesh, side, vip, port) as sock:
        started = time.monotonic()
        banner = recv_exactly(sock, len(BANNER), timeout=5)
        elapsed = time.monotonic() - started
        assert banner == BANNER
        assert elapsed < DETECT_TIMEOUT, f"the banner took {elapsed:.3f} s: the proxy waited to detect"
        sock.sendall(b"QUIT\r\n")
        assert recv_exactly(sock, 6, timeout=5) == b"QUIT\r\n"


@pytest.mark.parametrize("side", SIDES)
async def test_http2_preface_split_into_single_bytes(mesh: MeshPods, side: str) -> None:
    """The HTTP/2 preface and SETTINGS written one byte per write (TCP_NODELAY, a few ms apart, so the
    proxy reads them piecemeal) to the real proxy: it still detects HTTP/2 and h2_app.py answers."""
    server = mesh.pods["server"]
    sock = connect(mesh, side, H2_VIP, H2_PORT)
    target = authority("h2", H2_PORT) if side == "outbound" else f"{server.ip}:{H2_PORT}"
    sock.setblocking(False)
    client = await RawH2Client.over(sock)
    try:
        for byte in PREFACE + SettingsFrame(0).serialize():
            client.send(bytes([byte]))
            await client.flush()
            await asyncio.sleep(0.004)  # pacing, so that each byte is its own segment
        while True:
            frame = await client.next_frame(5.0)
            assert frame is not None, "the proxy closed the connection after the split preface"
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                client.send(client.settings(ack=True))
                break
        response = await client.request(get(target, "/split"), timeout=10.0)
        assert response.status == 200, response
        seen = json.loads(response.body)
        assert (seen["authority"], seen["path"]) == (target, "/split")
        assert seen["local"] == f"{server.ip}:{H2_PORT}"
    finally:
        await client.close()
