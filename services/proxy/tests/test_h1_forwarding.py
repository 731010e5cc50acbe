"""HTTP/1.1 through the forwarding core, no sockets: an h11 client and server on the outside, the proxy's
HTTP/1.1 connections and exchanges in the middle, an HTTP/2 peer (hyperframe/hpack) where a hop is HTTP/2.
What is asserted is what would be on the wire."""

from __future__ import annotations

from typing import Any

import h11
from h2rig import Peer, Router, Scheduler, data_of, of_type
from hyperframe.frame import DataFrame, HeadersFrame

from tether.proxy.core.abuse import ClientLimits
from tether.proxy.core.connection import UpstreamConnection
from tether.proxy.core.h1codec import ORIG_PROTO_HEADER, READ_BUFFER_HIGH
from tether.proxy.core.h1connection import H1DownstreamConnection, H1UpstreamConnection

LIMITS = ClientLimits(max_concurrent_streams=100)


class Reads:
    """The I/O layer's read switch, recorded."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


class H1Client:
    """An h11 client: what it sends is bytes for the proxy, what it receives is parsed into events."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)

    def send(self, *events: Any) -> bytes:
        return b"".join(self.h11.send(event) or b"" for event in events)

    def receive(self, data: bytes) -> list[Any]:
        if data:  # (empty would mean the connection closed)
            self.h11.receive_data(data)
        events: list[Any] = []
        while True:
            event = self.h11.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                return events
            events.append(event)


def downstream() -> tuple[H1DownstreamConnection, Router, Reads]:
    router = Router()
    conn = H1DownstreamConnection(Scheduler(), router, limits=LIMITS)
    reads = Reads()
    conn.reads = reads
    return conn, router, reads


def h2_upstream() -> tuple[UpstreamConnection, Peer]:
    up, server = UpstreamConnection(Scheduler()), Peer()
    up.receive_data(Peer.settings(), 0.0)
    server.receive(up.data_to_send())
    up.receive_data(Peer.settings_ack(), 0.0)
    return up, server


def test_a_chunked_request_over_http2_and_the_response_back_as_http1_keeping_the_connection() -> None:
    down, router, _ = downstream()
    client = H1Client()
    request = h11.Request(
        method="POST", target="/upload", headers=[("Host", "web:80"), ("Transfer-Encoding", "chunked")]
    )
    down.receive_data(client.send(request, h11.Data(data=b"hello "), h11.Data(data=b"world")), 0.0)
    (exchange,) = router.exchanges
    assert exchange.authority == b"web:80" and exchange.protocol == "http/1.1"
    up, server = h2_upstream()
    exchange.attach(up, 0.0)
    down.receive_data(client.send(h11.EndOfMessage()), 0.0)
    frames = server.receive(up.data_to_send())
    (headers,) = of_type(frames, HeadersFrame)
    assert headers.decoded[:4] == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"web:80"),
        (b":path", b"/upload"),
    ]
    assert not any(name == b"transfer-encoding" for name, _ in headers.decoded)  # hop-by-hop
    assert data_of(frames, headers.stream_id) == b"hello world"
    assert "END_STREAM" in of_type(frames, DataFrame)[-1].flags
    sid = headers.stream_id
    up.receive_data(
        server.headers(sid, [(b":status", b"201"), (b"x-a", b"1")]) + server.data(sid, b"ok"), 0.0
    )
    up.receive_data(server.data(sid, b"!", end=True), 0.0)
    events = client.receive(down.data_to_send())
    response, *body, end = events
    assert response.status_code == 201 and (b"x-a", b"1") in response.headers
    assert (b"transfer-encoding", b"chunked") in response.headers  # no length known: chunked
    assert b"".join(bytes(e.data) for e in body) == b"ok!" and isinstance(end, h11.EndOfMessage)
    assert not down.closing and exchange.closed
    # Kept alive: the next request on the same connection is a new exchange.
    client.h11.start_next_cycle()
    down.receive_data(
        client.send(h11.Request(method="GET", target="/next", headers=[("Host", "web:80")])), 0.0
    )
    down.receive_data(client.send(h11.EndOfMessage()), 0.0)
    assert len(router.exchanges) == 2 and router.exchanges[1].downstream_sid == 3


def test_an_http1_request_to_a_meshed_endpoint_says_so_and_the_inbound_side_restores_it() -> None:
    """The outbound router adds ``tether-orig-proto``; an HTTP/1.1 upstream connection never sends it."""
    up = H1UpstreamConnection(Scheduler())
    server = h11.Connection(h11.SERVER)
    down, router, _ = downstream()
    client = H1Client()
    down.receive_data(
        client.send(
            h11.Request(method="HEAD", target="/x", headers=[("Host", "web:80")]), h11.EndOfMessage()
        ),
        0.0,
    )
    (exchange,) = router.exchanges
    exchange.request_headers = [*exchange.request_headers, (ORIG_PROTO_HEADER, b"HTTP/1.1")]
    exchange.attach(up, 0.0)
    server.receive_data(up.data_to_send())
    request = server.next_event()
    assert isinstance(request, h11.Request) and request.method == b"HEAD"
    assert [name for name, _ in request.headers] == [b"host"]
    assert isinstance(server.next_event(), h11.EndOfMessage)
    head = server.send(h11.Response(status_code=200, headers=[("Content-Length", "42")]))
    assert head is not None and server.send(h11.EndOfMessage()) == b""  # a HEAD response is its head alone
    up.receive_data(head, 0.0)
    (response, end) = client.receive(down.data_to_send())
    assert response.status_code == 200 and (b"content-length", b"42") in response.headers
    assert isinstance(end, h11.EndOfMessage)  # a HEAD response has no body, whatever its length says
    assert up.has_capacity  # the server kept the connection: it is reused for the next request


def test_a_smuggling_attempt_is_refused_before_routing_and_the_connection_closed() -> None:
    down, router, _ = downstream()
    down.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin",
        0.0,
    )
    assert router.exchanges == []
    assert down.refusal is not None and down.refusal.reason == "content_length_and_transfer_encoding"
    sent = down.data_to_send()
    assert sent.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in sent
    assert down.closing


def test_a_body_the_upstream_cannot_take_yet_pauses_reading_until_it_drains() -> None:
    down, router, reads = downstream()
    client = H1Client()
    body = b"x" * (4 * READ_BUFFER_HIGH)
    request = h11.Request(
        method="PUT", target="/", headers=[("Host", "web:80"), ("Content-Length", str(len(body)))]
    )
    down.receive_data(client.send(request), 0.0)
    (exchange,) = router.exchanges  # not attached yet: everything received is buffered
    down.receive_data(client.send(h11.Data(data=body)), 0.0)
    assert reads.paused and exchange.request.buffered == len(body)
    up, server = h2_upstream()
    exchange.attach(up, 0.0)  # 64 KiB of initial window: the rest waits for WINDOW_UPDATE
    server.receive(up.data_to_send())
    assert reads.paused
    up.receive_data(
        server.window_update(0, len(body)) + server.window_update(exchange.upstream_sid, len(body)), 0.0
    )
    assert not reads.paused and exchange.request.buffered == 0


def test_a_large_http2_response_reaches_the_http1_client_whole() -> None:
    """Far beyond one write's worth: the HTTP/1.1 side has no window to wait for."""
    down, router, _ = downstream()
    client = H1Client()
    down.receive_data(
        client.send(
            h11.Request(method="GET", target="/big", headers=[("Host", "web:80")]), h11.EndOfMessage()
        ),
        0.0,
    )
    (exchange,) = router.exchanges
    up, server = h2_upstream()
    exchange.attach(up, 0.0)
    (headers,) = of_type(server.receive(up.data_to_send()), HeadersFrame)
    sid = headers.stream_id
    body = bytes(range(256)) * 4096  # 1 MiB
    up.receive_data(server.headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(body))]), 0.0)
    received: list[Any] = []
    window = 128 * 1024  # half the proxy's stream window: sent in one go, within it once the last is acked
    for offset in range(0, len(body), window):
        last = offset + window >= len(body)
        up.receive_data(server.chunks(sid, body[offset : offset + window], end=last), 0.0)
        received += client.receive(down.data_to_send())
        frames = server.receive(up.data_to_send())  # the proxy's WINDOW_UPDATEs, as it hands data on
        assert not of_type(frames, HeadersFrame)
    got = b"".join(bytes(e.data) for e in received if isinstance(e, h11.Data))
    assert len(got) == len(body)
    assert got == body
    assert isinstance(received[-1], h11.EndOfMessage)
