"""What an abusive HTTP/2 client costs the forwarding core: each class of abuse cut off at its documented
limit (GOAWAY ENHANCE_YOUR_CALM with the class as debug data), nothing of it forwarded upstream.

The guard is tested alone (time passed in), then the connection frame by frame with raw hyperframe/hpack
bytes. tests/proxy/test_h2_attacks.py runs the same attacks over sockets against running proxies.
"""

from __future__ import annotations

import pytest
from h2rig import CANCEL, GET_REQUEST, GRPC_REQUEST, PREFACE, Peer, Rig, Router, Scheduler, of_type
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tether.proxy.core.abuse import (
    CONTINUATION_FLOOD,
    CONTROL_FLOOD,
    EMPTY_FRAMES,
    OVERSIZED_HEADERS,
    PREMATURE_RESET_AGE,
    PRIORITY_FLOOD,
    RAPID_RESET,
    WINDOW_UPDATE_FLOOD,
    AbuseGuard,
    ClientLimits,
)
from tether.proxy.core.connection import DownstreamConnection

ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 11, 1
DEFAULTS = ClientLimits()

# --- the guard alone -------------------------------------------------------------------------------


def test_premature_resets_draw_from_a_bucket_that_refills_over_time() -> None:
    guard = AbuseGuard(ClientLimits(reset_burst=3, reset_rate=2.0), now=0.0)
    assert [guard.premature_reset(0.0) for _ in range(3)] == [None] * 3
    assert guard.premature_reset(0.0) == RAPID_RESET
    fresh = AbuseGuard(ClientLimits(reset_burst=3, reset_rate=2.0), now=0.0)
    for _ in range(3):
        fresh.premature_reset(0.0)
    assert fresh.premature_reset(0.5) is None  # one token back after half a second at 2/s
    assert fresh.premature_reset(0.5) == RAPID_RESET


def test_control_frames_are_capped_by_rate_and_by_replies_the_peer_does_not_read() -> None:
    by_rate = AbuseGuard(ClientLimits(max_queued_control_replies=5, control_frame_rate=1.0), now=0.0)
    assert [by_rate.control_frame(True, 0.0) for _ in range(5)] == [None] * 5
    assert by_rate.control_frame(True, 0.0) == CONTROL_FLOOD

    unread = AbuseGuard(ClientLimits(max_queued_control_replies=5, control_frame_rate=1e9), now=0.0)
    for step in range(5):
        assert unread.control_frame(False, step) is None
    unread.drained()  # the peer read its replies: the queue is empty again
    for step in range(5):
        assert unread.control_frame(False, 10.0 + step) is None
    assert unread.control_frame(False, 20.0) == CONTROL_FLOOD


def test_only_consecutive_empty_frames_count() -> None:
    guard = AbuseGuard(ClientLimits(max_consecutive_empty_frames=1), now=0.0)
    assert guard.data_frame(empty=True) is None
    assert guard.data_frame(empty=False) is None
    assert guard.data_frame(empty=True) is None
    assert guard.data_frame(empty=True) == EMPTY_FRAMES


def test_priority_frames_are_allowed_per_stream_opened() -> None:
    guard = AbuseGuard(ClientLimits(max_priority_per_stream=2), now=0.0)
    assert [guard.priority_frame(), guard.priority_frame()] == [None, None]
    guard.stream_opened()
    assert [guard.priority_frame(), guard.priority_frame()] == [None, None]
    assert guard.priority_frame() == PRIORITY_FLOOD


def test_window_updates_are_allowed_per_stream_and_per_data_frame_sent() -> None:
    guard = AbuseGuard(ClientLimits(max_window_updates_per_data=10), now=0.0)
    assert guard.window_update(data_frames_sent=0) is None  # the connection window, widened at start
    assert guard.window_update(data_frames_sent=1) is None  # 1 + 2 * 10 allowed now
    assert all(guard.window_update(data_frames_sent=1) is None for _ in range(19))
    assert guard.window_update(data_frames_sent=1) == WINDOW_UPDATE_FLOOD


def test_a_guard_remembers_the_first_reason_it_tripped_for() -> None:
    guard = AbuseGuard(ClientLimits(max_consecutive_empty_frames=0, max_priority_per_stream=1), now=0.0)
    assert guard.data_frame(empty=True) == EMPTY_FRAMES
    guard.priority_frame()
    assert guard.priority_frame() == PRIORITY_FLOOD
    assert guard.tripped == EMPTY_FRAMES


# --- the connection -------------------------------------------------------------------------------


def cut_off_for(rig: Rig) -> str:
    """Why the client was cut off: GOAWAY ENHANCE_YOUR_CALM was sent (with the reason as its debug data
    when the proxy's guard, not h2 itself, tripped), and the connection closes."""
    (goaway,) = of_type(rig.to_client(), GoAwayFrame)
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert rig.down.closing and rig.down.abuse is not None
    debug = bytes(goaway.additional_data).decode()
    assert debug in ("", rig.down.abuse)
    return rig.down.abuse


def rapid_resets(peer: Peer, first: int, count: int) -> bytes:
    return b"".join(
        peer.headers(sid, GET_REQUEST, end=True) + peer.rst(sid, CANCEL)
        for sid in range(first, first + 2 * count, 2)
    )


def test_streams_opened_and_reset_in_one_read_never_reach_the_router() -> None:
    rig = Rig()
    rig.to_proxy(rapid_resets(rig.client, 1, 50))
    assert not rig.router.exchanges
    assert not of_type(rig.to_client(), GoAwayFrame)


def test_rapid_reset_beyond_the_burst_is_cut_off_and_nothing_reaches_upstream() -> None:
    rig = Rig(ClientLimits(reset_burst=DEFAULTS.reset_burst))
    rig.to_proxy(rapid_resets(rig.client, 1, DEFAULTS.reset_burst))
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(rapid_resets(rig.client, 2 * DEFAULTS.reset_burst + 1, 1))
    assert cut_off_for(rig) == RAPID_RESET and rig.down.abuse == RAPID_RESET
    assert not rig.router.exchanges and not rig.to_server()
    rig.to_proxy(rig.client.headers(9999, GET_REQUEST, end=True))  # ignored from now on
    assert not rig.router.exchanges and not rig.to_client()


def test_resets_of_old_or_answered_streams_are_ordinary_cancellations() -> None:
    rig = Rig(ClientLimits(reset_burst=1))
    for sid in (1, 3, 5):
        rig.routed(sid, GRPC_REQUEST)
    rig.routed(7, GRPC_REQUEST)
    rig.to_server()
    rig.from_server(rig.server.headers(7, [(b":status", b"200")]))
    rig.to_proxy(rig.client.rst(7, CANCEL))  # its response had started
    rig.now = PREMATURE_RESET_AGE
    rig.to_proxy(b"".join(rig.client.rst(sid, CANCEL) for sid in (1, 3, 5)))  # old enough
    assert not of_type(rig.to_client(), GoAwayFrame) and rig.down.abuse is None


def test_ping_flood_is_cut_off_after_the_documented_burst() -> None:
    rig = Rig()
    used = 2  # the client's SETTINGS and its ACK of ours, in the handshake
    pings = [
        PingFrame(0, opaque_data=b"%08d" % n).serialize() for n in range(DEFAULTS.max_queued_control_replies)
    ]
    rig.to_proxy(b"".join(pings[: DEFAULTS.max_queued_control_replies - used]))
    answered = of_type(rig.to_client(), PingFrame)
    assert len(answered) == DEFAULTS.max_queued_control_replies - used and not rig.down.closing
    rig.to_proxy(pings[0])
    assert cut_off_for(rig) == CONTROL_FLOOD


def test_a_ping_flood_in_one_write_gets_no_more_than_the_burst_answered() -> None:
    """h2 answers PINGs as it parses a read: the guard must stop it at the frame that passes the limit."""
    rig = Rig()
    rig.to_proxy(
        PingFrame(0, opaque_data=b"12345678").serialize() * (5 * DEFAULTS.max_queued_control_replies)
    )
    frames = rig.to_client()
    assert len(of_type(frames, PingFrame)) <= DEFAULTS.max_queued_control_replies
    (goaway,) = of_type(frames, GoAwayFrame)
    assert goaway.error_code == ENHANCE_YOUR_CALM and bytes(goaway.additional_data) == CONTROL_FLOOD.encode()
    assert rig.down.abuse == CONTROL_FLOOD and rig.down.closing


def test_frames_on_a_reset_stream_count_as_control_frames_for_their_replies() -> None:
    rig = Rig()
    rig.routed(1, GRPC_REQUEST)
    rig.to_proxy(rig.client.rst(1, CANCEL))
    rig.to_client()
    late = DataFrame(1, data=b"x").serialize()
    rig.to_proxy(late * (2 * DEFAULTS.max_queued_control_replies))
    frames = rig.to_client()
    assert len(of_type(frames, RstStreamFrame, 1)) <= DEFAULTS.max_queued_control_replies
    (goaway,) = of_type(frames, GoAwayFrame)
    assert goaway.error_code == ENHANCE_YOUR_CALM and rig.down.abuse == CONTROL_FLOOD


def test_settings_flood_is_cut_off_after_the_documented_burst() -> None:
    rig = Rig()
    settings = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 10}).serialize()
    rig.to_proxy(settings * (DEFAULTS.max_queued_control_replies - 2))
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(settings)
    assert cut_off_for(rig) == CONTROL_FLOOD


def test_empty_data_frames_are_cut_off() -> None:
    rig = Rig()
    rig.routed(1, GRPC_REQUEST)
    empty = DataFrame(1, data=b"").serialize()
    rig.to_proxy(empty * DEFAULTS.max_consecutive_empty_frames)
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(empty)
    assert cut_off_for(rig) == EMPTY_FRAMES


def test_priority_flood_is_cut_off() -> None:
    rig = Rig()
    priority = PriorityFrame(1, depends_on=0, stream_weight=16).serialize()
    rig.to_proxy(priority * DEFAULTS.max_priority_per_stream)
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(priority)
    assert cut_off_for(rig) == PRIORITY_FLOOD


def test_window_update_flood_is_cut_off() -> None:
    rig = Rig()
    update = WindowUpdateFrame(0, window_increment=1).serialize()
    rig.to_proxy(update)  # widening the connection window once is what clients do
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(update)
    assert cut_off_for(rig) == WINDOW_UPDATE_FLOOD


def unfinished_block(peer: Peer, stream_id: int) -> bytes:
    return HeadersFrame(stream_id, data=peer.encoder.encode(GET_REQUEST)).serialize()


def test_a_header_block_growing_past_the_header_list_limit_is_cut_off_before_it_ends() -> None:
    rig = Rig()
    stuffing = ContinuationFrame(1, data=b"\x00" * 16_000).serialize()
    rig.to_proxy(unfinished_block(rig.client, 1) + stuffing * (DEFAULTS.max_header_list_size // 16_000))
    assert not of_type(rig.to_client(), GoAwayFrame)
    rig.to_proxy(stuffing)
    assert cut_off_for(rig) == CONTINUATION_FLOOD
    assert not rig.router.exchanges


def test_endless_empty_continuation_frames_are_cut_off() -> None:
    rig = Rig()
    rig.to_proxy(unfinished_block(rig.client, 1) + ContinuationFrame(1, data=b"").serialize() * 200)
    assert cut_off_for(rig) == CONTINUATION_FLOOD


def test_hpack_bomb_is_cut_off() -> None:
    """One 4 KB entry in the dynamic table, referenced by one-byte indices until it inflates past 64 KiB."""
    rig = Rig()
    encoder = Encoder()
    bomb = [(b"x-bomb", b"a" * 4000)] * (DEFAULTS.max_header_list_size // 4000 + 1)
    block = encoder.encode([*GET_REQUEST, *bomb])
    assert len(block) < 4200
    frame = HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"])
    rig.to_proxy(frame.serialize())
    assert cut_off_for(rig) == OVERSIZED_HEADERS
    assert not rig.router.exchanges


def test_too_many_header_fields_are_answered_431_without_routing() -> None:
    rig = Rig()
    fields = [(b"x-field-%d" % n, b"v") for n in range(DEFAULTS.max_header_count - len(GET_REQUEST) + 1)]
    rig.to_proxy(rig.client.headers(1, [*GET_REQUEST, *fields], end=True))
    (answer,) = of_type(rig.to_client(), HeadersFrame, 1)
    assert (b":status", b"431") in answer.decoded and not rig.router.exchanges
    rig.to_proxy(rig.client.headers(3, [*GET_REQUEST, *fields[:-1]], end=True))
    assert len(rig.router.exchanges) == 1  # exactly at the limit is fine


@pytest.mark.parametrize(
    "headers",
    [
        [*GET_REQUEST, (b":foo", b"bar")],  # unknown pseudo-header
        [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
        [(b"x-first", b"1"), *GET_REQUEST],  # pseudo-header after a regular one
        [*GET_REQUEST, (b":path", b"/again")],  # duplicated pseudo-header
        [*GET_REQUEST, (b"Upper", b"1")],  # uppercase name
        [*GET_REQUEST, (b"connection", b"close")],  # connection-specific
        [*GET_REQUEST, (b"te", b"gzip")],  # te other than "trailers"
        [*GET_REQUEST, (b"content-length", b"5"), (b"content-length", b"6")],  # conflicting lengths
        [*GET_REQUEST, (b"content-length", b"5x")],  # not a number
        [*GET_REQUEST, (b"x-bad", b"a\r\nb")],  # CR LF in a value
        [*GET_REQUEST, (b"x-bad", b" padded")],  # leading whitespace in a value
    ],
)
def test_malformed_requests_are_refused_and_never_routed(headers: list[tuple[bytes, bytes]]) -> None:
    rig = Rig()
    rig.to_proxy(rig.client.headers(1, headers, end=True))
    frames = rig.to_client()
    refused = [f.error_code for f in of_type(frames, RstStreamFrame, 1) + of_type(frames, GoAwayFrame)]
    assert refused and set(refused) == {PROTOCOL_ERROR}
    assert not rig.router.exchanges and rig.down.abuse is None


def test_a_client_that_never_completes_its_preface_is_closed_at_the_handshake_timeout() -> None:
    down = DownstreamConnection(Scheduler(), Router(), now=100.0)
    down.receive_data(PREFACE, 101.0)  # the magic, but never a SETTINGS frame
    assert not down.close_if_silent(100.0 + DEFAULTS.handshake_timeout - 0.1, DEFAULTS.handshake_timeout)
    assert down.close_if_silent(100.0 + DEFAULTS.handshake_timeout, DEFAULTS.handshake_timeout)
    assert down.closing


def test_a_client_that_completed_its_preface_is_not_timed_out() -> None:
    rig = Rig()
    assert not rig.down.close_if_silent(1e6, DEFAULTS.handshake_timeout)
