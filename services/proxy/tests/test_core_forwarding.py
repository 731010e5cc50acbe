"""The forwarding core driven frame by frame: raw HTTP/2 bytes in, raw bytes out, no sockets.

A client peer and a server peer are built from hyperframe and hpack directly (not h2), so what is
asserted is what would be on the wire.
"""

from __future__ import annotations

import pytest
from h2rig import (
    CANCEL,
    GET_REQUEST,
    GRPC_REQUEST,
    INTERNAL_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Peer,
    Rig,
    Router,
    Scheduler,
    data_of,
    of_type,
)
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from tether.proxy.core.abuse import PREMATURE_RESET_AGE
from tether.proxy.core.connection import INITIAL_STREAM_LIMIT, DownstreamConnection, UpstreamConnection
from tether.proxy.core.h2conn import CONNECTION_WINDOW, STREAM_WINDOW


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_unary_grpc_call_is_forwarded_with_headers_body_and_trailers_intact(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"\x00\x00\x00\x00\x05hello", end=True))
    upstream = rig.to_server()
    (headers,) = of_type(upstream, HeadersFrame, exchange.upstream_sid)
    assert headers.decoded == GRPC_REQUEST  # te: trailers and grpc-timeout pass through unchanged
    assert data_of(upstream, 1) == b"\x00\x00\x00\x00\x05hello"
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags

    rig.from_server(
        rig.server.headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        + rig.server.data(1, b"\x00\x00\x00\x00\x02ok")
        + rig.server.headers(
            1, [(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-trailer-bin", b"AAEC")], end=True
        )
    )
    downstream = rig.to_client()
    response_headers, trailers = of_type(downstream, HeadersFrame, 1)
    assert response_headers.decoded == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert data_of(downstream, 1) == b"\x00\x00\x00\x00\x02ok"
    assert trailers.decoded == [(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-trailer-bin", b"AAEC")]
    assert "END_STREAM" in trailers.flags
    assert exchange.closed
    assert exchange.status == 200 and exchange.grpc_status == 0
    assert not rig.down.exchanges and not rig.up.exchanges


def test_streams_are_multiplexed_and_responses_reach_their_own_stream(rig: Rig) -> None:
    first = rig.routed(1, GET_REQUEST, end=True)
    second = rig.routed(3, GET_REQUEST, end=True)
    third = rig.routed(5, GET_REQUEST, end=True)
    rig.to_server()
    up_ids = [first.upstream_sid, second.upstream_sid, third.upstream_sid]
    assert up_ids == [1, 3, 5]
    # Responses arrive interleaved and out of order.
    rig.from_server(
        rig.server.headers(5, [(b":status", b"200")])
        + rig.server.headers(1, [(b":status", b"404")])
        + rig.server.data(5, b"five-")
        + rig.server.data(1, b"one", end=True)
        + rig.server.headers(3, [(b":status", b"503")], end=True)
        + rig.server.data(5, b"done", end=True)
    )
    downstream = rig.to_client()
    statuses = {f.stream_id: dict(f.decoded)[b":status"] for f in of_type(downstream, HeadersFrame)}
    assert statuses == {1: b"404", 3: b"503", 5: b"200"}
    assert data_of(downstream, 1) == b"one"
    assert data_of(downstream, 5) == b"five-done"
    assert all(e.closed for e in (first, second, third))


def test_request_body_waits_for_the_servers_window_and_is_acknowledged_only_when_forwarded(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    body = bytes(range(256)) * 800  # 204,800 bytes: more than the server's 65,535-byte window
    rig.to_proxy(rig.client.chunks(1, body, end=True))
    upstream = rig.to_server()
    assert len(data_of(upstream, 1)) == 65_535
    assert exchange.request.buffered == len(body) - 65_535
    # Nothing beyond what was forwarded is credited back to the client.
    assert not of_type(rig.to_client(), WindowUpdateFrame, 1)
    assert rig.down.h2.remote_flow_control_window(1) == STREAM_WINDOW - len(body)

    rig.from_server(rig.server.window_update(0, len(body)) + rig.server.window_update(1, len(body)))
    upstream = rig.to_server()
    assert data_of(rig.server.frames, 1) == body
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags
    assert exchange.request.buffered == 0
    # Now forwarded, the bytes are credited back to the client (h2 batches credit in half windows).
    credited = sum(f.window_increment for f in of_type(rig.to_client(), WindowUpdateFrame, 1))
    assert STREAM_WINDOW // 2 <= credited <= len(body)


def test_slow_client_holds_back_the_server(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    body = b"x" * 200_000
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.chunks(1, body, end=True))
    downstream = rig.to_client()
    # The client's default window is 65,535 bytes: the rest waits in the proxy, unacknowledged.
    assert len(data_of(downstream, 1)) == 65_535
    assert exchange.response.buffered == len(body) - 65_535
    assert not of_type(rig.to_server(), WindowUpdateFrame, 1)

    rig.to_proxy(rig.client.window_update(0, 70_000) + rig.client.window_update(1, 70_000))
    assert len(data_of(rig.to_client(), 1)) == 70_000
    assert exchange.response.buffered == len(body) - 135_535

    rig.to_proxy(rig.client.window_update(0, 100_000) + rig.client.window_update(1, 100_000))
    rig.to_client()
    assert data_of(rig.client.frames, 1) == body
    assert exchange.closed


def test_padding_is_credited_back_even_while_the_data_waits(rig: Rig) -> None:
    rig.from_server(Peer.settings(INITIAL_WINDOW_SIZE=0))  # the server accepts no DATA yet
    exchange = rig.routed(1, GRPC_REQUEST)
    frames = 600
    rig.to_proxy(b"".join(rig.client.data(1, b"abc", pad=255) for _ in range(frames)))
    assert data_of(rig.to_server(), 1) == b""
    assert exchange.request.buffered == 3 * frames
    # Padding (and its length byte) is never forwarded, so it is credited at once, while
    # the data waits (h2 sends credit in half-window steps).
    credited = sum(f.window_increment for f in of_type(rig.to_client(), WindowUpdateFrame, 1))
    assert STREAM_WINDOW // 2 <= credited <= 256 * frames


def test_client_reset_cancels_the_upstream_stream_with_the_same_code(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.now = PREMATURE_RESET_AGE
    rig.to_proxy(rig.client.rst(1, CANCEL))
    (reset,) = of_type(rig.to_server(), RstStreamFrame, exchange.upstream_sid)
    assert reset.error_code == CANCEL
    assert exchange.closed and exchange.reset_code == CANCEL
    # A late response for the cancelled stream is dropped, and its bytes credited.
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"late"))
    assert not of_type(rig.to_client(), HeadersFrame, 1)


def test_client_reset_of_a_started_response_is_passed_upstream_at_once(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.from_server(rig.server.headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")]))
    rig.to_proxy(rig.client.rst(1, CANCEL))
    (reset,) = of_type(rig.to_server(), RstStreamFrame, exchange.upstream_sid)
    assert reset.error_code == CANCEL and not rig.up.orphans


def test_a_young_stream_its_client_resets_is_left_to_finish_and_its_response_discarded(rig: Rig) -> None:
    """Resetting a stream younger than PREMATURE_RESET_AGE on a shared connection is what a server's
    rapid-reset defence counts; the proxy lets the stream finish instead."""
    exchanges = [rig.routed(sid, GET_REQUEST, end=True) for sid in (1, 3, 5)]
    rig.to_server()
    rig.to_proxy(b"".join(rig.client.rst(sid, CANCEL) for sid in (1, 3, 5)))
    assert all(exchange.closed and exchange.reset_code == CANCEL for exchange in exchanges)
    assert not of_type(rig.to_server(), RstStreamFrame)
    assert set(rig.up.orphans) == {1, 3, 5}
    body = b"x" * 200_000
    for sid in (1, 3, 5):
        rig.from_server(
            rig.server.headers(sid, [(b":status", b"200")]) + rig.server.chunks(sid, body, end=True)
        )
    assert not of_type(rig.to_client(), HeadersFrame)
    assert not rig.up.orphans
    # What the discarded responses carried is credited back to the server (in half-window steps).
    credited = sum(f.window_increment for f in of_type(rig.to_server(), WindowUpdateFrame, 0))
    assert credited >= CONNECTION_WINDOW // 2


def test_an_abandoned_stream_is_reset_once_it_is_old_enough(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)  # its request body never ends: the server would wait forever
    rig.to_server()
    rig.down.connection_lost(rig.now)
    assert not of_type(rig.to_server(), RstStreamFrame)
    assert rig.up.expire_orphans(PREMATURE_RESET_AGE / 2) == 0
    assert rig.up.expire_orphans(PREMATURE_RESET_AGE) == 1
    (reset,) = of_type(rig.to_server(), RstStreamFrame, exchange.upstream_sid)
    assert reset.error_code == CANCEL and not rig.up.orphans


def test_an_abandoned_upload_answered_by_the_server_keeps_its_slot_until_reset(rig: Rig) -> None:
    """The client left mid-request; the server answered in full. Our side of the stream is still open, so it
    still counts against the server's concurrency limit until it is reset (once old enough)."""
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.down.connection_lost(rig.now)
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"done", end=True))
    assert set(rig.up.orphans) == {exchange.upstream_sid}
    assert not of_type(rig.to_server(), RstStreamFrame)
    assert rig.up.expire_orphans(PREMATURE_RESET_AGE) == 1
    (reset,) = of_type(rig.to_server(), RstStreamFrame, exchange.upstream_sid)
    assert reset.error_code == CANCEL
    assert all(stream.closed for stream in rig.up.h2.streams.values())


def test_a_new_upstream_connection_opens_at_most_100_streams_before_the_servers_settings() -> None:
    up = UpstreamConnection(Scheduler())
    router_rig = Rig()
    assert up.has_capacity
    for sid in range(1, 2 * INITIAL_STREAM_LIMIT, 2):
        router_rig.request(sid, GET_REQUEST, end=True).attach(up, 0.0)
    assert len(up.exchanges) == INITIAL_STREAM_LIMIT and not up.has_capacity
    up.receive_data(Peer.settings(MAX_CONCURRENT_STREAMS=1000), 0.0)
    assert up.has_capacity


def test_abandoned_streams_hold_their_upstream_slot_until_they_end(rig: Rig) -> None:
    rig.from_server(Peer.settings(MAX_CONCURRENT_STREAMS=1))
    rig.to_server()
    rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.to_proxy(rig.client.rst(1, CANCEL))
    assert not rig.up.has_capacity
    rig.from_server(rig.server.headers(1, [(b":status", b"204")], end=True))
    assert rig.up.has_capacity


def test_client_reset_before_routing_completes_leaves_nothing_to_attach(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.rst(1, CANCEL))
    assert exchange.closed
    exchange.attach(rig.up, rig.now)  # the router finishing late is harmless
    assert not of_type(rig.to_server(), HeadersFrame)


@pytest.mark.parametrize("code", [CANCEL, REFUSED_STREAM, INTERNAL_ERROR])
def test_server_reset_reaches_the_client_with_the_same_code(rig: Rig, code: int) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_server()
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.rst(1, code))
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 1)
    assert reset.error_code == code
    assert exchange.closed


def test_server_answering_early_gets_its_full_response_delivered_before_the_reset(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"partial body"))
    rig.to_server()
    rig.from_server(
        rig.server.headers(1, [(b":status", b"200")])
        + rig.server.data(1, b"answer", end=True)
        + rig.server.rst(1, NO_ERROR)
    )
    downstream = rig.to_client()
    assert data_of(downstream, 1) == b"answer"
    (reset,) = of_type(downstream, RstStreamFrame, 1)
    assert reset.error_code == NO_ERROR
    assert downstream.index(reset) > downstream.index(of_type(downstream, DataFrame, 1)[-1])
    assert exchange.closed


def test_server_goaway_refuses_unprocessed_streams_and_lets_the_others_finish(rig: Rig) -> None:
    kept = rig.routed(1, GET_REQUEST, end=True)
    refused = rig.routed(3, GET_REQUEST, end=True)
    rig.to_server()
    rig.from_server(Peer.goaway(last_stream_id=1))
    assert not rig.up.has_capacity
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 3)
    assert reset.error_code == REFUSED_STREAM
    assert refused.closed and not kept.closed
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"ok", end=True))
    assert data_of(rig.to_client(), 1) == b"ok"
    assert kept.closed
    # With nothing left in flight the drained connection closes itself.
    assert rig.up.closing
    assert of_type(rig.to_server(), GoAwayFrame)


def test_proxy_drain_sends_goaway_finishes_open_streams_and_refuses_new_ones(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.down.start_drain()
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.last_stream_id == 1 and goaway.error_code == NO_ERROR
    rig.to_proxy(rig.client.headers(3, GET_REQUEST, end=True))
    (reset,) = of_type(rig.to_client(), RstStreamFrame, 3)
    assert reset.error_code == REFUSED_STREAM
    assert len(rig.router.exchanges) == 1
    assert not rig.down.closing
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"bye", end=True))
    assert data_of(rig.to_client(), 1) == b"bye"
    assert exchange.closed and rig.down.closing


def test_client_goaway_lets_in_flight_streams_finish(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.to_proxy(Peer.goaway(last_stream_id=0))
    assert not rig.down.closing
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"ok", end=True))
    assert data_of(rig.to_client(), 1) == b"ok"
    assert exchange.closed and rig.down.closing


@pytest.mark.parametrize(
    "bad_header",
    [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"X-Upper", b"1"),
        (b"x-bad", b"a\r\nb"),
    ],
)
def test_malformed_response_resets_only_its_stream_and_answers_502(
    rig: Rig, bad_header: tuple[bytes, bytes]
) -> None:
    """RFC 9113 §8.1.1/§8.2.2: a response with connection-specific or invalid fields is malformed, a
    stream error. The upstream connection carries other clients' streams, so it must survive."""
    rig.routed(1, GET_REQUEST, end=True)
    rig.routed(3, GET_REQUEST, end=True)
    rig.routed(5, GRPC_REQUEST)
    rig.to_server()
    rig.from_server(rig.server.headers(1, [(b":status", b"200"), bad_header], end=True))
    rig.from_server(rig.server.headers(5, [(b":status", b"200"), bad_header]))
    upstream = rig.to_server()
    assert not of_type(upstream, GoAwayFrame)
    assert not of_type(upstream, RstStreamFrame, 1)  # that response ended its stream: nothing to reset
    (reset,) = of_type(upstream, RstStreamFrame, 5)  # this one is still open: reset, not left hanging
    assert reset.error_code == PROTOCOL_ERROR
    downstream = rig.to_client()
    (answer,) = of_type(downstream, HeadersFrame, 1)
    assert (b":status", b"502") in answer.decoded
    (grpc_answer,) = of_type(downstream, HeadersFrame, 5)
    assert (b"grpc-status", b"14") in grpc_answer.decoded
    rig.from_server(rig.server.headers(3, [(b":status", b"200")]) + rig.server.data(3, b"ok", end=True))
    assert data_of(rig.to_client(), 3) == b"ok"
    assert not rig.up.closing


def test_request_trailers_are_forwarded(rig: Rig) -> None:
    rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"body") + rig.client.headers(1, [(b"x-checksum", b"42")], end=True))
    upstream = rig.to_server()
    trailers = of_type(upstream, HeadersFrame, 1)[-1]
    assert trailers.decoded == [(b"x-checksum", b"42")]
    assert "END_STREAM" in trailers.flags


def test_request_trailers_never_carry_a_client_written_tether_field(rig: Rig) -> None:
    rig.routed(1, GRPC_REQUEST)
    spoofed = [(b"tether-client-id", b"root.kube-system"), (b"x-checksum", b"42")]
    rig.to_proxy(rig.client.data(1, b"body") + rig.client.headers(1, spoofed, end=True))
    trailers = of_type(rig.to_server(), HeadersFrame, 1)[-1]
    assert trailers.decoded == [(b"x-checksum", b"42")]


def test_body_sent_before_routing_is_buffered_then_forwarded(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.data(1, b"early ") + rig.client.data(1, b"bytes", end=True))
    assert exchange.request.buffered == 11
    exchange.attach(rig.up, rig.now)
    upstream = rig.to_server()
    assert data_of(upstream, 1) == b"early bytes"
    assert "END_STREAM" in of_type(upstream, DataFrame, 1)[-1].flags


def test_failed_grpc_request_gets_a_trailers_only_unavailable(rig: Rig) -> None:
    exchange = rig.request(1, GRPC_REQUEST, end=True)
    exchange.fail(503, "no endpoints available", rig.now)
    (headers,) = of_type(rig.to_client(), HeadersFrame, 1)
    fields = dict(headers.decoded)
    assert fields[b":status"] == b"200"
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"grpc-message"] == b"no endpoints available"
    assert "END_STREAM" in headers.flags
    assert exchange.closed


def test_failed_http_request_gets_503_and_its_unread_body_is_refused(rig: Rig) -> None:
    exchange = rig.request(1, [(b":method", b"POST"), *GET_REQUEST[1:]])
    rig.to_proxy(rig.client.data(1, b"unread"))
    exchange.fail(503, "no endpoints available", rig.now)
    downstream = rig.to_client()
    (headers,) = of_type(downstream, HeadersFrame, 1)
    assert dict(headers.decoded)[b":status"] == b"503"
    (reset,) = of_type(downstream, RstStreamFrame, 1)
    assert reset.error_code == NO_ERROR


def test_upstream_lost_before_response_answers_unavailable(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST, end=True)
    rig.up.connection_lost(rig.now)
    (headers,) = of_type(rig.to_client(), HeadersFrame, 1)
    assert dict(headers.decoded)[b"grpc-status"] == b"14"
    assert exchange.closed


def test_upstream_lost_mid_stream_delivers_what_arrived_then_unavailable(rig: Rig) -> None:
    rig.routed(1, GRPC_REQUEST, end=True)
    rig.to_server()
    rig.from_server(
        rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"\x00\x00\x00\x00\x01a")
    )
    rig.up.connection_lost(rig.now)
    downstream = rig.to_client()
    assert data_of(downstream, 1) == b"\x00\x00\x00\x00\x01a"
    trailers = of_type(downstream, HeadersFrame, 1)[-1]
    assert dict(trailers.decoded)[b"grpc-status"] == b"14"
    assert "END_STREAM" in trailers.flags


def test_client_disconnect_cancels_every_upstream_stream(rig: Rig) -> None:
    rig.routed(1, GET_REQUEST, end=True)
    rig.routed(3, GET_REQUEST)
    rig.to_server()
    rig.now = PREMATURE_RESET_AGE
    rig.down.connection_lost(rig.now)
    resets = of_type(rig.to_server(), RstStreamFrame)
    assert {(f.stream_id, f.error_code) for f in resets} == {(1, CANCEL), (3, CANCEL)}
    assert not rig.up.exchanges


def test_malformed_request_is_rejected_without_reaching_the_router(rig: Rig) -> None:
    rig.to_proxy(rig.client.headers(1, [(b":method", b"GET"), (b"connection", b"close")], end=True))
    assert not rig.router.exchanges
    frames = rig.to_client()
    assert of_type(frames, RstStreamFrame, 1) or of_type(frames, GoAwayFrame)


def test_garbage_closes_the_connection_with_goaway(rig: Rig) -> None:
    rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.now = PREMATURE_RESET_AGE
    rig.to_proxy(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE with 0 increment
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.error_code == PROTOCOL_ERROR
    assert rig.down.closing and rig.down.error is not None
    (reset,) = of_type(rig.to_server(), RstStreamFrame, 1)
    assert reset.error_code == CANCEL


def test_ping_is_answered_by_the_proxy(rig: Rig) -> None:
    frame = PingFrame(0)
    frame.opaque_data = b"12345678"
    rig.to_proxy(bytes(frame.serialize()))
    (pong,) = of_type(rig.to_client(), PingFrame)
    assert "ACK" in pong.flags and pong.opaque_data == b"12345678"


def test_writes_stop_while_the_transport_is_backed_up(rig: Rig) -> None:
    exchange = rig.routed(1, GET_REQUEST, end=True)
    rig.to_server()
    rig.down.set_writable(False, rig.now)
    rig.from_server(rig.server.headers(1, [(b":status", b"200")]) + rig.server.data(1, b"held", end=True))
    assert data_of(rig.to_client(), 1) == b""
    assert exchange.response.buffered == 4
    rig.down.set_writable(True, rig.now)
    assert data_of(rig.to_client(), 1) == b"held"
    assert exchange.closed


def test_output_is_scheduled_once_per_connection_until_drained(rig: Rig) -> None:
    rig.scheduler.scheduled.clear()
    rig.routed(1, GET_REQUEST, end=True)
    rig.routed(3, GET_REQUEST, end=True)
    assert rig.scheduler.scheduled.count(rig.up) == 1
    rig.to_server()
    rig.routed(5, GET_REQUEST, end=True)
    assert rig.scheduler.scheduled.count(rig.up) == 2


def test_connection_without_streams_is_closed_with_goaway_at_the_idle_timeout(rig: Rig) -> None:
    rig.to_proxy(rig.client.headers(1, GET_REQUEST)[:5])  # half a frame header: no stream yet
    assert not rig.down.close_if_idle(9.9, idle_timeout=10.0)
    assert not rig.down.closing
    assert rig.down.close_if_idle(10.0, idle_timeout=10.0)
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 0
    assert rig.down.closing
    assert not rig.down.close_if_idle(20.0, idle_timeout=10.0)  # counted once


def test_connection_that_never_sent_its_preface_is_closed_without_goaway() -> None:
    down = DownstreamConnection(Scheduler(), Router(), now=5.0)
    client = Peer()
    client.receive(down.data_to_send())
    down.receive_data(PREFACE[:10], 6.0)
    assert not down.close_if_idle(14.9, idle_timeout=10.0)
    assert down.close_if_idle(15.0, idle_timeout=10.0)
    assert down.closing
    assert not of_type(client.receive(down.data_to_send()), GoAwayFrame)


def test_open_stream_keeps_the_connection_and_its_end_restarts_the_idle_clock(rig: Rig) -> None:
    exchange = rig.routed(1, GRPC_REQUEST, end=True)
    rig.to_server()
    assert not rig.down.close_if_idle(100.0, idle_timeout=10.0)
    rig.now = 100.0
    rig.from_server(rig.server.headers(1, [(b":status", b"200")], end=True))
    assert exchange.closed
    assert not rig.down.close_if_idle(109.9, idle_timeout=10.0)
    assert rig.down.close_if_idle(110.0, idle_timeout=10.0)
    assert of_type(rig.to_client(), GoAwayFrame)
