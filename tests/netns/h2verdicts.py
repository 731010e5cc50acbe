"""HTTP/2 conformance: h2spec's case list, one to one, written from what each case sends and expects.

This module holds the table and the verdicts; the cases are in h2spec_generic, h2spec_http2 and
h2spec_hpack, and h2conformance gathers them in h2spec's order.

Mirrored: summerwind/h2spec at af83a65f0b62 (2022-06-25), whose source holds 147 cases: ``generic`` 44,
``http2`` 95 (one of them, http2/5.4.1/2, runs only under h2spec's ``--strict``) and ``hpack`` 8. Each case
here has h2spec's id (``<suite>/<section>/<n>``: ``http2`` sections are RFC 7540's, ``hpack`` sections RFC
7541's, ``generic`` sections h2spec's own outline), the RFC 9113 section that now holds the requirement
(several moved: RFC 7540 §8.1.2.x header rules are RFC 9113 §8.2/§8.3, §3.5 is §3.4, §8.2 is §8.4), a line
saying what it checks, and a coroutine doing it over a :class:`RawH2Client` (nothing here uses h2, so the
client shares no code with the proxy under test). ``INAPPLICABLE`` lists the cases RFC 9113 retired, with
the clause that retires them.

The verdicts are h2spec's (its spec/verifier.go); these are the alternatives each one accepts:

* ``connection_error(codes)``: a GOAWAY with one of ``codes``, or the connection closing (EOF or reset),
  even after a GOAWAY with another code.
* ``stream_error(codes)``: the same, or a RST_STREAM with one of ``codes`` on any stream.
* ``connection_closed``: the connection closing; ``stream_closed``: a DATA or HEADERS frame with END_STREAM,
  or a RST_STREAM with NO_ERROR.
* ``headers_on`` / ``settings_ack`` / ``ping_ack`` / ``first_frame`` / ``data_of_length``: the first frame of
  that type to arrive must be the expected one (frames of other types are skipped).
* ``ping_ack_or_close``: the matching PING ACK, or the connection closing.

Any verdict fails once a read waits ``TIMEOUT`` (h2spec's default, 2 s) for nothing, or when the connection
ended before it (h2spec's ``conn.Closed``). A pass that h2spec accepts but RFC 9113 words differently (a
close after a GOAWAY with another code, or with no GOAWAY at all) is returned by :func:`run_case` as a note.

Like h2spec's client, the one here sends SETTINGS_INITIAL_WINDOW_SIZE 65,535 in its preface, waits until
both SETTINGS were acknowledged, encodes headers with one HPACK context per connection, and returns flow
control credit only once a window it counts from 65,535 is used up. Where h2spec first measures the body of
``/`` and skips a flow-control case when it is too short, the case here requires the body instead: the target
application answers ``/`` with a JSON document of over a hundred bytes. Likewise http2/5.1.2/1, which h2spec
skips for a server advertising no SETTINGS_MAX_CONCURRENT_STREAMS, fails here (the proxy always advertises
one). h2spec's own skips are its only outcomes not mirrored.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from h2raw import (
    CANCEL,
    NO_ERROR,
    PREFACE,
    Header,
    RawH2Client,
    header_list,
    raw_frame,
)
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

#: h2spec's default timeout: how long one read waits for the next frame.
TIMEOUT = 2.0
#: Bound on one verdict however busy the server keeps the connection (h2spec has none).
MAX_VERDICT_WAIT = 10.0
#: h2spec's default --max-header-length: the value length of its filler header fields.
MAX_HEADER_LEN = 4000
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
PATH = "/"
H2SPEC_REVISION = "af83a65f0b6273ef38bf778d400d98892e7653d8"
#: The header the proxy explains its own error responses in (shown in failure messages).
PROXY_ERROR_HEADER = b"tether-proxy-error"

# Frame types and flags (RFC 9113 §6), for frames built byte by byte.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 2, 3, 4, 5, 6, 7
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS parameters (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

Runner = Callable[[RawH2Client, str], Awaitable[None]]
F = TypeVar("F", bound=Frame)


@dataclass(frozen=True)
class Case:
    """One h2spec case: ``run(client, authority)`` raises AssertionError when the server fails it."""

    id: str
    #: The RFC 9113 section holding the requirement, e.g. "6.5.3".
    section: str
    description: str
    run: Runner
    #: Whether ``run`` expects a client that completed h2spec's handshake (else: a bare connection).
    handshake: bool = True
    #: One of h2spec's --strict cases (a SHOULD rather than a MUST).
    strict: bool = False


CASES: list[Case] = []


def case(
    case_id: str, section: str, description: str, *, handshake: bool = True, strict: bool = False
) -> Callable[[Runner], Runner]:
    def register(run: Runner) -> Runner:
        CASES.append(Case(case_id, section, description, run, handshake, strict))
        return run

    return register


#: h2spec's groups and how many cases each holds (its source at H2SPEC_REVISION, strict cases included).
H2SPEC_GROUPS: dict[str, int] = {
    "generic/1": 1,
    "generic/2": 5,
    "generic/3.1": 3,
    "generic/3.2": 3,
    "generic/3.3": 5,
    "generic/3.4": 1,
    "generic/3.5": 1,
    "generic/3.7": 1,
    "generic/3.8": 1,
    "generic/3.9": 2,
    "generic/3.10": 2,
    "generic/4": 4,
    "generic/5": 15,
    "http2/3.5": 2,
    "http2/4.1": 3,
    "http2/4.2": 3,
    "http2/4.3": 3,
    "http2/5.1": 13,
    "http2/5.1.1": 2,
    "http2/5.1.2": 1,
    "http2/5.3.1": 2,
    "http2/5.4.1": 2,
    "http2/5.5": 2,
    "http2/6.1": 3,
    "http2/6.2": 4,
    "http2/6.3": 2,
    "http2/6.4": 3,
    "http2/6.5": 3,
    "http2/6.5.2": 5,
    "http2/6.5.3": 2,
    "http2/6.7": 4,
    "http2/6.8": 1,
    "http2/6.9": 3,
    "http2/6.9.1": 3,
    "http2/6.9.2": 3,
    "http2/6.10": 6,
    "http2/7": 2,
    "http2/8.1": 1,
    "http2/8.1.2": 1,
    "http2/8.1.2.1": 4,
    "http2/8.1.2.2": 2,
    "http2/8.1.2.3": 7,
    "http2/8.1.2.6": 2,
    "http2/8.2": 1,
    "hpack/2.3.3": 2,
    "hpack/4.2": 1,
    "hpack/5.2": 3,
    "hpack/6.1": 1,
    "hpack/6.3": 1,
}


def h2spec_ids() -> list[str]:
    return [f"{group}/{n}" for group, count in H2SPEC_GROUPS.items() for n in range(1, count + 1)]


#: Cases RFC 9113 makes inapplicable: id -> (the RFC 9113 clause, why).
INAPPLICABLE: dict[str, tuple[str, str]] = {
    "http2/5.3.1/1": (
        "RFC 9113 §5.3.2",
        "RFC 9113 deprecates RFC 7540's priority signalling and keeps only the fields' format and the "
        "handling listed in §6.2/§6.3; the RFC 7540 §5.3.1 rule that a HEADERS frame making its stream "
        "depend on itself is a stream error of type PROTOCOL_ERROR is not part of RFC 9113",
    ),
    "http2/5.3.1/2": (
        "RFC 9113 §5.3.2, §6.3",
        "same deprecation for the PRIORITY frame: §6.3 keeps only its stream identifier (0x0 is a "
        "connection error) and length (5 octets) rules and says it does not affect any stream's state; "
        "the self-dependency stream error of RFC 7540 §5.3.1 is gone",
    ),
}


# --- frames, byte by byte -------------------------------------------------------------------------


def settings_frame(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    payload = b"".join(ident.to_bytes(2, "big") + value.to_bytes(4, "big") for ident, value in pairs)
    return raw_frame(SETTINGS, ACK if ack else 0, 0, payload)


def headers_frame(
    stream_id: int,
    block: bytes,
    *,
    end_stream: bool = True,
    end_headers: bool = True,
    pad_length: int | None = None,
    priority: tuple[int, int, bool] | None = None,
) -> bytes:
    """HEADERS; ``priority`` is (stream dependency, weight octet, exclusive)."""
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    payload = b""
    if pad_length is not None:
        flags |= PADDED
        payload += bytes([pad_length])
    if priority is not None:
        flags |= PRIORITY_FLAG
        depends_on, weight, exclusive = priority
        payload += (depends_on | (0x80000000 if exclusive else 0)).to_bytes(4, "big") + bytes([weight])
    payload += block + bytes(pad_length or 0)
    return raw_frame(HEADERS, flags, stream_id, payload)


def data_frame(
    stream_id: int, data: bytes, *, end_stream: bool = False, padding: bytes | None = None
) -> bytes:
    flags = END_STREAM if end_stream else 0
    if padding is None:
        return raw_frame(DATA, flags, stream_id, data)
    return raw_frame(DATA, flags | PADDED, stream_id, bytes([len(padding)]) + data + padding)


def continuation_frame(stream_id: int, block: bytes, *, end_headers: bool = True) -> bytes:
    return raw_frame(CONTINUATION, END_HEADERS if end_headers else 0, stream_id, block)


def priority_frame(stream_id: int, depends_on: int = 0, weight: int = 255, exclusive: bool = False) -> bytes:
    dependency = depends_on | (0x80000000 if exclusive else 0)
    return raw_frame(PRIORITY, 0, stream_id, dependency.to_bytes(4, "big") + bytes([weight]))


def rst_stream_frame(stream_id: int, code: int = CANCEL) -> bytes:
    return raw_frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def ping_frame(opaque: bytes = bytes(8), *, ack: bool = False) -> bytes:
    return raw_frame(PING, ACK if ack else 0, 0, opaque)


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return raw_frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return raw_frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def push_promise_frame(stream_id: int, promised_stream_id: int, block: bytes) -> bytes:
    return raw_frame(PUSH_PROMISE, END_HEADERS, stream_id, promised_stream_id.to_bytes(4, "big") + block)


def opaque(text: bytes) -> bytes:
    """PING data as h2spec writes it: ``text`` zero-padded to 8 octets."""
    return text.ljust(8, b"\0")


# --- header lists ----------------------------------------------------------------------------------


def request(authority: str, method: str = "GET") -> list[Header]:
    """h2spec's common request header list (plaintext: scheme http)."""
    return [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":path", PATH.encode()),
        (b":authority", authority.encode()),
    ]


def filler(count: int) -> list[Header]:
    """``count`` header fields of MAX_HEADER_LEN octets each."""
    return [(f"x-dummy{i}".encode(), b"x" * MAX_HEADER_LEN) for i in range(count)]


def encode(client: RawH2Client, headers: Sequence[Header]) -> bytes:
    """A field block from the connection's own HPACK context (so later blocks may refer to it)."""
    block: bytes = client.encoder.encode(list(headers))
    return block


# --- reading, as h2spec does -----------------------------------------------------------------------


@dataclass
class _ConnState:
    windows: dict[int, int] = field(default_factory=lambda: {0: DEFAULT_WINDOW})
    #: Set once the connection closed or a read timed out: every later verdict fails (h2spec's Closed).
    ended: str | None = None
    #: What arrived, in words, for failure messages.
    seen: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: How many frames of each kind (type, :status, END_STREAM) arrived, for long failure messages.
    kinds: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


_STATES: weakref.WeakKeyDictionary[RawH2Client, _ConnState] = weakref.WeakKeyDictionary()


def _state(client: RawH2Client) -> _ConnState:
    state = _STATES.get(client)
    if state is None:
        state = _STATES[client] = _ConnState()
    return state


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"0x{code:x}")


def describe(frame: Frame) -> str:
    flags = ",".join(sorted(frame.flags))
    flags = f" [{flags}]" if flags else ""
    if isinstance(frame, GoAwayFrame):
        debug = bytes(frame.additional_data)
        extra = f" {debug!r}" if debug else ""
        return f"GOAWAY({error_name(frame.error_code)}, last stream {frame.last_stream_id}{extra})"
    if isinstance(frame, RstStreamFrame):
        return f"RST_STREAM(stream {frame.stream_id}, {error_name(frame.error_code)})"
    if isinstance(frame, HeadersFrame):
        fields = dict(header_list(frame))
        status, why = fields.get(b":status"), fields.get(PROXY_ERROR_HEADER)
        shown = f", :status {status.decode()}" if status else ""
        shown += f", {PROXY_ERROR_HEADER.decode()}: {why.decode(errors='replace')}" if why else ""
        return f"HEADERS(stream {frame.stream_id}{shown}){flags}"
    if isinstance(frame, DataFrame):
        return f"DATA(stream {frame.stream_id}, {frame.body_len} octets){flags}"
    if isinstance(frame, SettingsFrame):
        return f"SETTINGS({dict(frame.settings)}){flags}"
    if isinstance(frame, PingFrame):
        return f"PING({bytes(frame.opaque_data)!r}){flags}"
    if isinstance(frame, WindowUpdateFrame):
        return f"WINDOW_UPDATE(stream {frame.stream_id}, +{frame.window_increment})"
    return f"{type(frame).__name__}(stream {frame.stream_id}){flags}"


def _kind(frame: Frame) -> str:
    kind = type(frame).__name__.removesuffix("Frame")
    if isinstance(frame, HeadersFrame):
        status = dict(header_list(frame)).get(b":status")
        kind += f" {status.decode()}" if status else ""
    return kind + (" END_STREAM" if "END_STREAM" in frame.flags else "")


CLOSED, TIMED_OUT = "closed", "timeout"
Event = Frame | str


async def next_event(client: RawH2Client) -> Event:
    """The next frame, or CLOSED, or TIMED_OUT after TIMEOUT seconds without one (h2spec's WaitEvent).
    DATA is credited back the way h2spec does it (see the module docstring)."""
    state = _state(client)
    try:
        frame = await client.next_frame(TIMEOUT)
    except TimeoutError:
        state.ended = TIMED_OUT
        state.seen.append(f"(nothing for {TIMEOUT:g} s)")
        return TIMED_OUT
    if frame is None:
        state.ended = CLOSED
        state.seen.append("(connection closed)")
        return CLOSED
    description = describe(frame)
    state.seen.append(description)
    kind = _kind(frame)
    state.kinds[kind] += 1
    state.examples.setdefault(kind, description)
    if isinstance(frame, DataFrame) and frame.body_len:
        for stream_id in (frame.stream_id, 0):
            window = state.windows.get(stream_id, DEFAULT_WINDOW) - frame.body_len
            if window <= 0:
                increment = DEFAULT_WINDOW - window
                client.send(window_update_frame(stream_id, increment))
                window += increment
            state.windows[stream_id] = window
    return frame


def _fail(client: RawH2Client, expected: str) -> NoReturn:
    seen = _state(client).seen
    shown = ", ".join(seen[-15:]) if seen else "nothing"
    if len(seen) > 15:
        state = _state(client)
        summary = "; ".join(
            f"{kind}: {count}, the first {state.examples[kind]}" for kind, count in state.kinds.most_common(6)
        )
        shown = f"{len(seen)} frames and events (by kind: {summary}); the last 15: {shown}"
    raise AssertionError(f"expected {expected}; received: {shown}")


def _codes(codes: Sequence[int]) -> str:
    return " or ".join(error_name(code) for code in codes)


class _Deadline:
    def __init__(self) -> None:
        self._at = asyncio.get_running_loop().time() + MAX_VERDICT_WAIT

    def over(self) -> bool:
        return asyncio.get_running_loop().time() > self._at


async def _error(
    client: RawH2Client, codes: Sequence[int], *, stream: bool, bare_close: bool = False
) -> None:
    state = _state(client)
    deadline = _Deadline()
    other: str | None = None
    while state.ended is None and not deadline.over():
        event = await next_event(client)
        if event == CLOSED:
            kind = "stream or connection" if stream else "connection"
            if other is not None:
                state.notes.append(
                    f"the server closed the connection after {other}, where a {kind} error "
                    f"{_codes(codes)} was expected (h2spec accepts any close)"
                )
            elif not stream and not bare_close:
                state.notes.append(
                    f"the server closed the connection without a GOAWAY ({_codes(codes)} expected; "
                    "RFC 9113 §5.4.1: it SHOULD send one first)"
                )
            return
        if isinstance(event, GoAwayFrame) or (stream and isinstance(event, RstStreamFrame)):
            if event.error_code in codes:
                return
            other = describe(event)
    what = "RST_STREAM or GOAWAY" if stream else "GOAWAY"
    _fail(client, f"{what} with {_codes(codes)}, or the connection closed")


async def connection_error(client: RawH2Client, *codes: int, bare_close: bool = False) -> None:
    """h2spec's VerifyConnectionError. ``bare_close``: RFC 9113 lets the server omit GOAWAY here (so a
    close without one is not even noted)."""
    await _error(client, codes, stream=False, bare_close=bare_close)


async def stream_error(client: RawH2Client, *codes: int) -> None:
    """h2spec's VerifyStreamError: a connection error is as good."""
    await _error(client, codes, stream=True)


async def connection_closed(client: RawH2Client) -> None:
    """h2spec's VerifyConnectionClose."""
    state = _state(client)
    deadline = _Deadline()
    while state.ended is None and not deadline.over():
        if await next_event(client) == CLOSED:
            return
    _fail(client, "the connection closed")


async def stream_closed(client: RawH2Client) -> None:
    """h2spec's VerifyStreamClose: some stream ended (END_STREAM, or RST_STREAM NO_ERROR)."""
    state = _state(client)
    deadline = _Deadline()
    while state.ended is None and not deadline.over():
        event = await next_event(client)
        if isinstance(event, DataFrame | HeadersFrame) and "END_STREAM" in event.flags:
            return
        if isinstance(event, RstStreamFrame) and event.error_code == NO_ERROR:
            return
    _fail(client, "a stream to end (END_STREAM, or RST_STREAM NO_ERROR)")


async def first_frame(client: RawH2Client, kind: type[F]) -> F | None:
    """h2spec's WaitEventByType: the first frame of ``kind``, or None if the connection ended first."""
    state = _state(client)
    deadline = _Deadline()
    while state.ended is None and not deadline.over():
        event = await next_event(client)
        if isinstance(event, kind):
            return event
    return None


async def frame_of(client: RawH2Client, kind: type[Frame]) -> None:
    """h2spec's VerifyEventType."""
    if await first_frame(client, kind) is None:
        _fail(client, f"a {kind.__name__}")


async def headers_on(client: RawH2Client, stream_id: int) -> None:
    """h2spec's VerifyHeadersFrame: the first HEADERS frame is on ``stream_id``."""
    frame = await first_frame(client, HeadersFrame)
    if frame is None or frame.stream_id != stream_id:
        _fail(client, f"a HEADERS frame on stream {stream_id}")


async def settings_ack(client: RawH2Client) -> None:
    """h2spec's VerifySettingsFrameWithAck: the first SETTINGS frame is an ACK."""
    frame = await first_frame(client, SettingsFrame)
    if frame is None or "ACK" not in frame.flags:
        _fail(client, "a SETTINGS frame with ACK")


async def ping_ack(client: RawH2Client, data: bytes) -> None:
    """h2spec's VerifyPingFrameWithAck: the first PING frame is the ACK of ``data``."""
    frame = await first_frame(client, PingFrame)
    if frame is None or "ACK" not in frame.flags or bytes(frame.opaque_data) != data:
        _fail(client, f"a PING ACK carrying {data!r}")


async def ping_ack_or_close(client: RawH2Client, data: bytes) -> None:
    """h2spec's VerifyPingFrameOrConnectionClose."""
    state = _state(client)
    deadline = _Deadline()
    while state.ended is None and not deadline.over():
        event = await next_event(client)
        if event == CLOSED:
            return
        if isinstance(event, PingFrame) and "ACK" in event.flags and bytes(event.opaque_data) == data:
            return
    _fail(client, f"a PING ACK carrying {data!r}, or the connection closed")


async def data_of_length(client: RawH2Client, stream_id: int, length: int) -> None:
    """The first DATA frame (on any stream, as h2spec reads it) is ``length`` octets long."""
    frame = await first_frame(client, DataFrame)
    if frame is None or frame.body_len != length:
        _fail(client, f"a DATA frame of {length} octet(s) on stream {stream_id}")


async def handshake(client: RawH2Client) -> None:
    """h2spec's client handshake: preface, SETTINGS_INITIAL_WINDOW_SIZE 65,535, both SETTINGS acknowledged."""
    try:
        others = await client.handshake_acked(TIMEOUT, INITIAL_WINDOW_SIZE=DEFAULT_WINDOW)
    except (ConnectionError, TimeoutError) as exc:
        raise AssertionError(f"h2spec's handshake failed: {type(exc).__name__}: {exc}") from exc
    _state(client).seen.extend(f"{describe(frame)} (during the handshake)" for frame in others)


async def run_case(entry: Case, client: RawH2Client, authority: str) -> list[str]:
    """Run one case on a fresh connection; AssertionError if it fails, else the notes on what h2spec
    tolerated."""
    if entry.handshake:
        await handshake(client)
    await entry.run(client, authority)
    return list(_state(client).notes)


async def preface_answered_with_settings(client: RawH2Client) -> None:
    client.send(PREFACE, settings_frame((INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)))
    event = await next_event(client)
    if not isinstance(event, SettingsFrame) or "ACK" in event.flags:
        _fail(client, "the server's SETTINGS (no ACK) as its first frame")


#: "x-test", Huffman-coded with its length prefix (RFC 7541 §5.2), as h2spec's header blocks carry it.
NAME_X_TEST_HUFFMAN = b"\x85\xf2\xb2\x4a\x84\xff"
