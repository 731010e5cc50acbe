"""Request smuggling over the wire against real proxy processes, on both listeners (tests/netns/mesh_pods.py).

Each request of the corpus is written in one piece on a raw socket: from the client pod to the web service's
virtual address (intercepted into its outbound proxy), and from ``outside`` to the server pod's address
(intercepted into its inbound proxy). Each is refused with its 4xx (501 for a transfer coding the proxy does
not know), the connection is closed after that one response, and nothing reaches the application:
tests/netns/h1_app.py records every connection that delivers a byte and every request head, and after each
case a well-formed marker request through the same listener must be the only thing it saw since.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mesh_pods import App, MeshPods, Pod, authority, eventually, open_socket, read_until_closed

pytestmark = pytest.mark.netns

WEB_PORT = 8080
WEB_VIP = "10.96.0.10"
WEB = authority("web", WEB_PORT)


@dataclass(frozen=True)
class Case:
    name: str
    #: The request; ``{host}`` stands for the Host field's value.
    request: bytes
    statuses: frozenset[int]

    def wire(self, host: str) -> bytes:
        return self.request.replace(b"{host}", host.encode())


def post(*fields: str, body: bytes = b"") -> bytes:
    head = "".join(f"{field}\r\n" for field in ("POST /upload HTTP/1.1", "Host: {host}", *fields))
    return head.encode() + b"\r\n" + body


CHUNKED = "Transfer-Encoding: chunked"
BAD_REQUEST = frozenset({400})
# The body a smuggler hides behind the framing its target and the proxy read differently.
SMUGGLED = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
FILLER = "x" * 1000

CORPUS = [
    Case("cl-and-te", post("Content-Length: 4", CHUNKED, body=SMUGGLED), BAD_REQUEST),
    Case("te-and-cl", post(CHUNKED, "Content-Length: 4", body=SMUGGLED), BAD_REQUEST),
    Case(
        "duplicate-cl", post("Content-Length: 5", "Content-Length: 41", body=b"hello" + SMUGGLED), BAD_REQUEST
    ),
    Case("cl-list", post("Content-Length: 5, 41", body=b"hello" + SMUGGLED), BAD_REQUEST),
    Case("cl-not-digits", post("Content-Length: +5", body=b"hello"), BAD_REQUEST),
    Case("obs-fold", post("Content-Length: 5", "X-Folded: first", " continued", body=b"hello"), BAD_REQUEST),
    Case(
        "obs-fold-te", post("Content-Length: 5", "Transfer-Encoding:", " chunked", body=SMUGGLED), BAD_REQUEST
    ),
    Case(
        "space-before-colon",
        post("Transfer-Encoding : chunked", "Content-Length: 5", body=SMUGGLED),
        BAD_REQUEST,
    ),
    Case("cr-in-value", post("X-Bad: a\rb", "Content-Length: 5", body=b"hello"), BAD_REQUEST),
    Case("chunk-size-zz", post(CHUNKED, body=b"zz\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    Case("chunk-size-negative", post(CHUNKED, body=b"-1\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    Case("chunk-size-0x", post(CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST),
    Case(
        "chunk-size-overflow", post(CHUNKED, body=b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n"), BAD_REQUEST
    ),
    Case("unknown-te", post("Transfer-Encoding: xchunked", body=SMUGGLED), frozenset({501})),
    Case("chunked-not-last", post("Transfer-Encoding: chunked, gzip", body=SMUGGLED), frozenset({400, 501})),
    Case(
        "oversized-request-line",
        b"GET /" + b"a" * (9 * 1024) + b" HTTP/1.1\r\nHost: {host}\r\n\r\n",
        frozenset({400, 414, 431}),
    ),
    Case(
        "oversized-headers",
        b"GET / HTTP/1.1\r\nHost: {host}\r\n"
        + b"".join(f"X-Filler-{index}: {FILLER}\r\n".encode() for index in range(70))
        + b"\r\n",
        frozenset({431}),
    ),
]


@pytest.fixture(scope="module")
def mesh(netns_supported: None) -> Iterator[MeshPods]:
    with MeshPods.open() as mesh:
        server = mesh.pod("server")
        mesh.pod("client")
        mesh.outside()
        mesh.h1_app(server, "web", WEB_PORT)
        mesh.service("web", WEB_VIP, WEB_PORT, endpoints=[server])
        mesh.start()
        yield mesh


@dataclass
class Listener:
    """Where a request is written from, and what it carries as Host."""

    pod: Pod
    address: str
    host: str


def listener(mesh: MeshPods, side: str) -> Listener:
    if side == "outbound":
        return Listener(mesh.pods["client"], WEB_VIP, WEB)
    server = mesh.pods["server"]
    return Listener(mesh.pods["outside"], server.ip, f"{server.ip}:{WEB_PORT}")


def exchange(place: Listener, request: bytes) -> tuple[bytes, bool]:
    sock = open_socket(place.pod.namespace, place.address, WEB_PORT)
    with sock:
        sock.sendall(request)
        return read_until_closed(sock, timeout=5.0)


def statuses(response: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", response)]


def unrelated(app: App, since: int, marker: str) -> list[dict[str, object]]:
    """What the app recorded since ``since`` other than the marker request (and its connection)."""
    others = []
    for record in app.records()[since:]:
        if record.get("target") == marker:
            continue
        if record.get("kind") == "connection" and str(record.get("first_bytes", "")).startswith(
            f"GET {marker} "
        ):
            continue
        others.append(record)
    return others


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
@pytest.mark.parametrize("side", ["outbound", "inbound"])
def test_smuggling_attempt_is_refused_and_never_reaches_the_app(
    mesh: MeshPods, side: str, case: Case
) -> None:
    """One request of the corpus, written in one piece into the real ``side`` proxy process: one 4xx
    answer, the connection closed, nothing at h1_app.py (a marker request through the same listener is the
    only thing it saw since)."""
    place = listener(mesh, side)
    (app,) = mesh.pods["server"].apps
    since = len(app.records())

    response, closed = exchange(place, case.wire(place.host))
    seen = statuses(response)
    assert seen and seen[0] in case.statuses, (
        f"answered {response[:300]!r}, expected one of {set(case.statuses)}"
    )
    assert len(seen) == 1, f"more than one response: {response[:600]!r}"
    assert closed, f"the proxy kept the connection open after {seen[0]}"

    marker = f"/marker/{side}/{case.name}"
    answer, _ = exchange(
        place, f"GET {marker} HTTP/1.1\r\nHost: {place.host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert statuses(answer)[:1] == [200], f"the marker request got {answer[:300]!r}"
    eventually(
        lambda: any(r.get("target") == marker for r in app.records()[since:]), 5.0, "the marker at the app"
    )
    assert unrelated(app, since, marker) == [], "the refused request reached the application"
