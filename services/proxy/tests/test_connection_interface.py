"""The exchange acts on its connections only through their stream operations (core.streams): it never
touches a connection's protocol state machine or stream bookkeeping. Checked statically, and the operations
themselves on both HTTP/2 and HTTP/1.1 connections."""

from __future__ import annotations

import ast
from pathlib import Path

import h11
import pytest
from h2rig import GET_REQUEST, Rig, Router, Scheduler, of_type
from hyperframe.frame import DataFrame, HeadersFrame

from tether.proxy.core import exchange as exchange_module
from tether.proxy.core.abuse import ClientLimits
from tether.proxy.core.connection import DownstreamConnection, UpstreamConnection
from tether.proxy.core.h1connection import H1DownstreamConnection, H1UpstreamConnection
from tether.proxy.core.streams import Http2Connection

#: A connection's own state: its state machine (``h2``, or an HTTP/1.1 codec) and its bookkeeping.
CONNECTION_INTERNALS = frozenset(
    {"h2", "exchanges", "blocked", "idle_since", "data_frames_sent", "orphans", "_scheduled", "_scheduler"}
)
#: What the exchange may call on a connection of either protocol.
STREAM_OPERATIONS = (
    "open_stream",
    "send_headers",
    "send_window",
    "max_frame_size",
    "send_data",
    "end_stream",
    "reset",
    "acknowledge",
    "wait_to_send",
    "release",
    "stream_released",
    "mark_dirty",
)
CONNECTION_CLASSES = (DownstreamConnection, UpstreamConnection, H1DownstreamConnection, H1UpstreamConnection)


def test_the_exchange_never_touches_a_connections_internals() -> None:
    source = Path(exchange_module.__file__).read_text()
    touched = sorted(
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr in CONNECTION_INTERNALS
    )
    why = "exchange.py must use the connections' stream operations (core.streams)"
    assert not touched, f"{why}: {', '.join(touched)}"


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda cls: cls.__name__)
def test_every_connection_class_offers_the_stream_operations(cls: type[Http2Connection]) -> None:
    missing = [name for name in STREAM_OPERATIONS if not hasattr(cls, name)]
    assert not missing


def test_open_stream_sends_the_headers_and_gives_the_stream_to_the_exchange_until_release() -> None:
    rig = Rig()
    first, second = rig.request(1, GET_REQUEST, end=True), rig.request(3, GET_REQUEST, end=True)
    scheduled = len(rig.scheduler.scheduled)
    up = rig.up
    assert up.open_stream(first, GET_REQUEST, end_stream=True) == 1
    assert up.open_stream(second, GET_REQUEST, end_stream=False) == 3
    assert len(rig.scheduler.scheduled) == scheduled + 1  # asked for a flush (once)
    (one, three) = of_type(rig.to_server(), HeadersFrame)
    assert one.decoded == GET_REQUEST and "END_STREAM" in one.flags and "END_STREAM" not in three.flags
    assert up.exchanges == {1: first, 3: second}
    up.wait_to_send(3, second)
    up.release(3, 5.0)
    assert up.exchanges == {1: first} and not up.blocked


def test_send_data_counts_the_frames_the_peers_window_updates_are_measured_against() -> None:
    rig = Rig()
    exchange = rig.request(1, GET_REQUEST)
    up = rig.up
    sid = up.open_stream(exchange, GET_REQUEST, end_stream=False)
    sent = up.data_frames_sent
    assert up.send_window(sid) == 65_535 and up.max_frame_size == 16_384
    up.send_data(sid, b"abc", False)
    up.send_data(sid, b"def", True)
    assert up.data_frames_sent == sent + 2
    frames = of_type(rig.to_server(), DataFrame, sid)
    assert [bytes(f.data) for f in frames] == [b"abc", b"def"] and "END_STREAM" in frames[-1].flags
    assert up.send_window(sid) == 65_535 - 6


def test_releasing_a_downstream_stream_restarts_the_idle_clock() -> None:
    rig = Rig()
    exchange = rig.request(1, GET_REQUEST, end=True)
    rig.down.wait_to_send(1, exchange)
    rig.down.release(1, 42.0)
    assert not rig.down.exchanges and not rig.down.blocked and rig.down.idle_since == 42.0


def test_an_http1_connections_idle_clock_restarts_when_its_exchange_finishes() -> None:
    down = H1DownstreamConnection(Scheduler(), router := Router(), limits=ClientLimits(), now=0.0)
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/", headers=[("Host", "web:80")])
    down.receive_data(client.send(request) + client.send(h11.EndOfMessage()), 1.0)
    (exchange,) = router.exchanges
    assert not down.close_if_idle(100.0, idle_timeout=10.0)  # a request is open
    exchange.fail(503, "no endpoints", 50.0)
    assert exchange.closed and down.idle_since == 50.0
    assert not down.close_if_idle(59.9, idle_timeout=10.0)
    assert down.close_if_idle(60.0, idle_timeout=10.0)


def test_an_http1_upstream_opens_one_request_per_stream_number() -> None:
    down = DownstreamConnection(Scheduler(), Router())
    up = H1UpstreamConnection(Scheduler())
    server = h11.Connection(h11.SERVER)
    exchange = exchange_module.Exchange(down, 1, GET_REQUEST, 0.0)
    assert up.open_stream(exchange, GET_REQUEST, end_stream=True) == 1
    assert up.exchanges == {1: exchange}
    server.receive_data(up.data_to_send())
    assert isinstance(server.next_event(), h11.Request)
    assert up.send_window(1) > 0 and up.max_frame_size > 0
    up.release(1, 3.0)
    assert not up.exchanges
