"""HTTP/2 conformance cases: h2spec's case list, one to one, written from what each case sends and expects.

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
    COMPRESSION_ERROR,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
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


# ==================================================================================================
# generic: h2spec's tests that a server accepts what a client may send
# ==================================================================================================


async def _preface_answered_with_settings(client: RawH2Client) -> None:
    client.send(PREFACE, settings_frame((INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)))
    event = await next_event(client)
    if not isinstance(event, SettingsFrame) or "ACK" in event.flags:
        _fail(client, "the server's SETTINGS (no ACK) as its first frame")


@case(
    "generic/1/1", "3.4", "a client preface is answered with the server's own SETTINGS first", handshake=False
)
async def generic_1_1(client: RawH2Client, authority: str) -> None:
    await _preface_answered_with_settings(client)


@case("generic/2/1", "5.1", "PRIORITY on an idle stream is accepted (a PING is still answered)")
async def generic_2_1(client: RawH2Client, authority: str) -> None:
    client.send(priority_frame(1, 0, 255), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/2/2", "5.1", "WINDOW_UPDATE on a half-closed (remote) stream lets the response's DATA flow")
async def generic_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    client.send(headers_frame(1, encode(client, request(authority))), window_update_frame(1, 1))
    await frame_of(client, DataFrame)


@case("generic/2/3", "5.1", "PRIORITY on a half-closed (remote) stream is accepted (DATA still flows)")
async def generic_2_3(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    client.send(
        headers_frame(1, encode(client, request(authority))),
        priority_frame(1, 0, 255),
        window_update_frame(1, 1),
    )
    await frame_of(client, DataFrame)


@case(
    "generic/2/4", "5.1", "RST_STREAM on a half-closed (remote) stream is accepted (PING answered or close)"
)
async def generic_2_4(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), rst_stream_frame(1, CANCEL), ping_frame()
    )
    await ping_ack_or_close(client, bytes(8))


@case("generic/2/5", "5.1", "PRIORITY on a closed stream is accepted (a PING is still answered)")
async def generic_2_5(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(priority_frame(1, 0, 255), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/3.1/1", "6.1", "a request body in one DATA frame is accepted")
async def generic_3_1_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/3.1/2", "6.1", "a request body in two DATA frames is accepted")
async def generic_3_1_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test"),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/3.1/3", "6.1", "a padded DATA frame is accepted")
async def generic_3_1_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True, padding=bytes(5)),
    )
    await headers_on(client, 1)


@case("generic/3.2/1", "6.2", "a request in one HEADERS frame is answered")
async def generic_3_2_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


@case("generic/3.2/2", "6.2", "a padded HEADERS frame is accepted")
async def generic_3_2_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), pad_length=8))
    await headers_on(client, 1)


@case(
    "generic/3.2/3",
    "6.2",
    "a HEADERS frame carrying the (deprecated, still parsed) priority fields is accepted",
)
async def generic_3_2_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), priority=(0, 255, False)))
    await headers_on(client, 1)


async def _priority_then_request(
    client: RawH2Client, authority: str, on: int, depends_on: int, weight: int, exclusive: bool
) -> None:
    client.send(
        priority_frame(on, depends_on, weight, exclusive),
        headers_frame(1, encode(client, request(authority))),
    )
    await headers_on(client, 1)


@case("generic/3.3/1", "6.3", "PRIORITY with the lowest weight (1) before a request is accepted")
async def generic_3_3_1(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 0, False)


@case("generic/3.3/2", "6.3", "PRIORITY with the highest weight (256) before a request is accepted")
async def generic_3_3_2(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 255, False)


@case("generic/3.3/3", "6.3", "PRIORITY making stream 3 depend on stream 1 is accepted")
async def generic_3_3_3(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 3, 1, 0, False)


@case("generic/3.3/4", "6.3", "PRIORITY with the exclusive bit is accepted")
async def generic_3_3_4(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 1, 0, 0, True)


@case("generic/3.3/5", "6.3", "PRIORITY on idle stream 3, then a request on the lower stream 1, is answered")
async def generic_3_3_5(client: RawH2Client, authority: str) -> None:
    await _priority_then_request(client, authority, 3, 0, 255, False)


@case("generic/3.4/1", "6.4", "RST_STREAM on an open stream is accepted (PING answered or close)")
async def generic_3_4_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        ping_frame(),
    )
    await ping_ack_or_close(client, bytes(8))


@case("generic/3.5/1", "6.5", "SETTINGS with every defined parameter is acknowledged")
async def generic_3_5_1(client: RawH2Client, authority: str) -> None:
    client.send(
        settings_frame(
            (HEADER_TABLE_SIZE, 4096),
            (ENABLE_PUSH, 1),
            (MAX_CONCURRENT_STREAMS, 100),
            (INITIAL_WINDOW_SIZE, 65535),
            (MAX_FRAME_SIZE, 16384),
            (MAX_HEADER_LIST_SIZE, 100),
        )
    )
    await settings_ack(client)


@case("generic/3.7/1", "6.7", "PING is answered with a PING ACK carrying the same data")
async def generic_3_7_1(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case(
    "generic/3.8/1", "6.8", "GOAWAY from the client is accepted (a PING answered, or the connection closed)"
)
async def generic_3_8_1(client: RawH2Client, authority: str) -> None:
    client.send(goaway_frame(0, NO_ERROR, b"h2spec"), ping_frame(opaque(b"h2spec")))
    await ping_ack_or_close(client, opaque(b"h2spec"))


@case("generic/3.9/1", "6.9", "WINDOW_UPDATE for the connection is accepted")
async def generic_3_9_1(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 1), ping_frame())
    await ping_ack(client, bytes(8))


@case("generic/3.9/2", "6.9", "WINDOW_UPDATE on a stream with a request in flight is accepted")
async def generic_3_9_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), window_update_frame(1, 1))
    await headers_on(client, 1)


@case("generic/3.10/1", "6.10", "a header block split over HEADERS and one CONTINUATION is accepted")
async def generic_3_10_1(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(headers_frame(1, block[:5], end_headers=False), continuation_frame(1, block[5:]))
    await headers_on(client, 1)


@case("generic/3.10/2", "6.10", "a header block split over HEADERS and two CONTINUATIONs is accepted")
async def generic_3_10_2(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(
        headers_frame(1, block[:5], end_headers=False),
        continuation_frame(1, block[5:10], end_headers=False),
        continuation_frame(1, block[10:]),
    )
    await headers_on(client, 1)


@case("generic/4/1", "8.1", "a GET request is answered")
async def generic_4_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


@case("generic/4/2", "8.1", "a HEAD request is answered")
async def generic_4_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority, "HEAD"))))
    await headers_on(client, 1)


@case("generic/4/3", "8.1", "a POST request with a body is answered")
async def generic_4_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test", end_stream=True),
    )
    await headers_on(client, 1)


@case("generic/4/4", "8.1", "a POST request with a body and trailers is answered")
async def generic_4_4(client: RawH2Client, authority: str) -> None:
    headers = [*request(authority, "POST"), (b"trailer", b"x-test")]
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        data_frame(1, b"test"),
        headers_frame(1, encode(client, [(b"x-test", b"ok")])),
    )
    await headers_on(client, 1)


def _hpack_case(case_id: str, description: str, representation: bytes, *, before: bool = False) -> None:
    """A request whose field block also carries ``representation`` (after the request's fields, or
    before them for table size updates); it must be answered."""

    @case(case_id, "4.3", description)
    async def run(client: RawH2Client, authority: str) -> None:
        block = encode(client, request(authority))
        client.send(headers_frame(1, representation + block if before else block + representation))
        await headers_on(client, 1)


# The string literals h2spec uses: names user-agent and x-test, value "h2spec", plain or Huffman-coded.
_NAME_USER_AGENT = b"\x0auser-agent"
_NAME_USER_AGENT_HUFFMAN = b"\x87\xb5\x05\xb1\x61\xcc\x5a\x93"
_NAME_X_TEST = b"\x06x-test"
_NAME_X_TEST_HUFFMAN = b"\x85\xf2\xb2\x4a\x84\xff"
_VALUE_H2SPEC = b"\x06h2spec"
_VALUE_H2SPEC_HUFFMAN = b"\x84\x9c\x48\xac\xa4"

_hpack_case("generic/5/1", "an indexed field (static index 58, RFC 7541 §6.1) is accepted", b"\xba")
_hpack_case(
    "generic/5/2",
    "a literal with incremental indexing, Huffman-coded new name (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/3",
    "a literal with incremental indexing, new name (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/4",
    "a literal with incremental indexing, new name x-test (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_X_TEST + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/5",
    "a literal with incremental indexing, Huffman-coded new name x-test (RFC 7541 §6.2.1), is accepted",
    b"\x40" + _NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/6",
    "a literal without indexing, new name (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/7",
    "a literal without indexing, Huffman-coded new name (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/8",
    "a literal without indexing, new name x-test (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_X_TEST + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/9",
    "a literal without indexing, Huffman-coded new name x-test (RFC 7541 §6.2.2), is accepted",
    b"\x00" + _NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/10",
    "a never-indexed literal, new name (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_USER_AGENT + _VALUE_H2SPEC,
)
_hpack_case(
    "generic/5/11",
    "a never-indexed literal, Huffman-coded new name (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_USER_AGENT_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
# h2spec sends the same octets for its cases 12 and 13 (both Huffman-coded x-test).
_hpack_case(
    "generic/5/12",
    "a never-indexed literal, Huffman-coded new name x-test (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)
_hpack_case(
    "generic/5/13",
    "a never-indexed literal, Huffman-coded new name x-test, again (RFC 7541 §6.2.3), is accepted",
    b"\x10" + _NAME_X_TEST_HUFFMAN + _VALUE_H2SPEC_HUFFMAN,
)


@case("generic/5/14", "4.3.1", "a dynamic table size update (to 128, RFC 7541 §6.3) is accepted")
async def generic_5_14(client: RawH2Client, authority: str) -> None:
    client.encoder.header_table_size = 128  # the encoder starts its next block with the update
    client.send(headers_frame(1, encode(client, request(authority))))
    await headers_on(client, 1)


# Two updates at the start of one block: to 128 (0x3f 0x61), then to 4,096 (0x3f 0xe1 0x1f).
_hpack_case(
    "generic/5/15",
    "two dynamic table size updates starting a block (RFC 7541 §4.2) are accepted",
    b"\x3f\x61\x3f\xe1\x1f",
    before=True,
)


# ==================================================================================================
# http2: RFC 7540's requirements, by section
# ==================================================================================================


@case("http2/3.5/1", "3.4", "the server's preface (a SETTINGS frame) comes first", handshake=False)
async def http2_3_5_1(client: RawH2Client, authority: str) -> None:
    await _preface_answered_with_settings(client)


@case(
    "http2/3.5/2",
    "3.4",
    "an invalid connection preface is a connection error PROTOCOL_ERROR",
    handshake=False,
)
async def http2_3_5_2(client: RawH2Client, authority: str) -> None:
    client.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    await connection_error(client, PROTOCOL_ERROR, bare_close=True)  # §3.4: GOAWAY MAY be omitted


_UNKNOWN_FRAME = raw_frame(0x16, 0, 0, bytes(8))


@case("http2/4.1/1", "4.1", "a frame of unknown type is ignored (a PING is still answered)")
async def http2_4_1_1(client: RawH2Client, authority: str) -> None:
    client.send(_UNKNOWN_FRAME, ping_frame())
    await ping_ack(client, bytes(8))


@case("http2/4.1/2", "4.1", "undefined flags on a PING are ignored (it is answered)")
async def http2_4_1_2(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0x16, 0, bytes(8)))
    await frame_of(client, PingFrame)


@case("http2/4.1/3", "4.1", "the reserved bit of the stream identifier is ignored (a PING is answered)")
async def http2_4_1_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0x16, 0x80000000, bytes(8)))
    await frame_of(client, PingFrame)


@case("http2/4.2/1", "4.2", "a DATA frame of 2^14 octets (the default maximum) is accepted")
async def http2_4_2_1(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"x" * size, end_stream=True),
    )
    await headers_on(client, 1)


@case("http2/4.2/2", "4.2", "a DATA frame over SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR")
async def http2_4_2_2(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"x" * (size + 1), end_stream=True),
    )
    await stream_error(client, FRAME_SIZE_ERROR)


@case(
    "http2/4.2/3",
    "4.2",
    "a HEADERS frame over SETTINGS_MAX_FRAME_SIZE is a connection error FRAME_SIZE_ERROR",
)
async def http2_4_2_3(client: RawH2Client, authority: str) -> None:
    block = encode(client, [*request(authority), *filler(5)])
    client.send(headers_frame(1, block))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/4.3/1", "4.3", "a field block that cannot be decoded is a connection error COMPRESSION_ERROR")
async def http2_4_3_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x40"))
    await connection_error(client, COMPRESSION_ERROR)


@case(
    "http2/4.3/2", "4.3", "PRIORITY between HEADERS and its CONTINUATION is a connection error PROTOCOL_ERROR"
)
async def http2_4_3_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False, end_headers=False),
        priority_frame(1, 0, 255),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/4.3/3",
    "4.3",
    "HEADERS on another stream inside a header block is a connection error PROTOCOL_ERROR",
)
async def http2_4_3_3(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False, end_headers=False),
        headers_frame(3, encode(client, headers)),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


# --- 5.1 stream states ---


@case("http2/5.1/1", "5.1", "DATA on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_1(client: RawH2Client, authority: str) -> None:
    client.send(data_frame(1, b"test", end_stream=True))
    await stream_error(client, PROTOCOL_ERROR, STREAM_CLOSED)


@case("http2/5.1/2", "5.1", "RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_2(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(1, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/3", "5.1", "WINDOW_UPDATE on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_3(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(1, 100))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/4", "5.1", "CONTINUATION on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_5_1_4(client: RawH2Client, authority: str) -> None:
    client.send(continuation_frame(1, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/5.1/5", "5.1", "DATA on a half-closed (remote) stream is a stream error STREAM_CLOSED")
async def http2_5_1_5(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), data_frame(1, b"test", end_stream=True))
    await stream_error(client, STREAM_CLOSED)


@case("http2/5.1/6", "5.1", "HEADERS on a half-closed (remote) stream is a stream error STREAM_CLOSED")
async def http2_5_1_6(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(headers_frame(1, encode(client, headers)), headers_frame(1, encode(client, headers)))
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/7",
    "5.1",
    "CONTINUATION on a half-closed (remote) stream is an error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_7(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(headers_frame(1, block), continuation_frame(1, block))
    await stream_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1/8", "5.1", "DATA after the client's RST_STREAM is a stream error STREAM_CLOSED")
async def http2_5_1_8(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        data_frame(1, b"test", end_stream=True),
    )
    await stream_error(client, STREAM_CLOSED)


@case("http2/5.1/9", "5.1", "HEADERS after the client's RST_STREAM is a stream error STREAM_CLOSED")
async def http2_5_1_9(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        rst_stream_frame(1, CANCEL),
        headers_frame(1, encode(client, headers)),
    )
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/10",
    "5.1",
    "CONTINUATION after the client's RST_STREAM is an error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_10(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        rst_stream_frame(1, CANCEL),
        continuation_frame(1, encode(client, filler(1))),
    )
    await stream_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case("http2/5.1/11", "5.1", "DATA on a stream closed by END_STREAM both ways is an error STREAM_CLOSED")
async def http2_5_1_11(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(data_frame(1, b"test", end_stream=True))
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/12",
    "5.1",
    "HEADERS on a stream closed by END_STREAM both ways is a connection error STREAM_CLOSED",
)
async def http2_5_1_12(client: RawH2Client, authority: str) -> None:
    frame = headers_frame(1, encode(client, request(authority)))
    client.send(frame)
    await stream_closed(client)
    client.send(frame)  # the same octets again, as h2spec does
    await connection_error(client, STREAM_CLOSED)


@case(
    "http2/5.1/13",
    "5.1",
    "CONTINUATION on a closed stream is a connection error STREAM_CLOSED or PROTOCOL_ERROR",
)
async def http2_5_1_13(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))))
    await stream_closed(client)
    client.send(continuation_frame(1, encode(client, filler(1))))
    await connection_error(client, STREAM_CLOSED, PROTOCOL_ERROR)


@case(
    "http2/5.1.1/1", "5.1.1", "a client stream with an even identifier is a connection error PROTOCOL_ERROR"
)
async def http2_5_1_1_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(2, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/5.1.1/2",
    "5.1.1",
    "a stream identifier below one already used is a connection error PROTOCOL_ERROR",
)
async def http2_5_1_1_2(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(headers_frame(5, encode(client, headers)), headers_frame(3, encode(client, headers)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/5.1.2/1",
    "5.1.2",
    "one stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused (PROTOCOL_ERROR or REFUSED_STREAM)",
)
async def http2_5_1_2_1(client: RawH2Client, authority: str) -> None:
    limit = client.server_settings.get(MAX_CONCURRENT_STREAMS)
    if limit is None:  # h2spec would skip the case; a server that advertises no limit fails it here
        raise AssertionError("the server advertised no SETTINGS_MAX_CONCURRENT_STREAMS")
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    block = encode(client, request(authority))  # one block, sent on every stream, as h2spec does
    client.send(b"".join(headers_frame(1 + 2 * i, block) for i in range(limit + 1)))
    await stream_error(client, PROTOCOL_ERROR, REFUSED_STREAM)


# (http2/5.3.1/1 and /2: INAPPLICABLE.)


_INVALID_PING = raw_frame(PING, 0, 3, bytes(8))


@case(
    "http2/5.4.1/1", "5.4.1", "after a connection error (PING on stream 3) the server closes the connection"
)
async def http2_5_4_1_1(client: RawH2Client, authority: str) -> None:
    client.send(_INVALID_PING)
    await connection_closed(client)


@case(
    "http2/5.4.1/2",
    "5.4.1",
    "a connection error (PING on stream 3) is announced with GOAWAY first",
    strict=True,
)
async def http2_5_4_1_2(client: RawH2Client, authority: str) -> None:
    client.send(_INVALID_PING)
    if await first_frame(client, GoAwayFrame) is None:
        _fail(client, "a GOAWAY (PROTOCOL_ERROR) before the connection closes")


@case("http2/5.5/1", "5.5", "an unknown extension frame is discarded (a PING is still answered)")
async def http2_5_5_1(client: RawH2Client, authority: str) -> None:
    client.send(_UNKNOWN_FRAME, ping_frame())
    await ping_ack(client, bytes(8))


@case(
    "http2/5.5/2",
    "5.5",
    "an unknown extension frame inside a header block is a connection error PROTOCOL_ERROR",
)
async def http2_5_5_2(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), end_headers=False), _UNKNOWN_FRAME)
    await connection_error(client, PROTOCOL_ERROR)


# --- 6 frame definitions ---


@case("http2/6.1/1", "6.1", "DATA on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_1_1(client: RawH2Client, authority: str) -> None:
    client.send(data_frame(0, b"test", end_stream=True))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.1/2",
    "6.1",
    "DATA on a stream neither open nor half-closed (local) is a stream error STREAM_CLOSED",
)
async def http2_6_1_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST"))), data_frame(1, b"test", end_stream=True)
    )
    await stream_error(client, STREAM_CLOSED)


@case(
    "http2/6.1/3", "6.1", "DATA whose padding is as long as its payload is a connection error PROTOCOL_ERROR"
)
async def http2_6_1_3(client: RawH2Client, authority: str) -> None:
    headers = [*request(authority, "POST"), (b"content-length", b"4")]
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False),
        raw_frame(DATA, PADDED | END_STREAM, 1, b"\x06Test"),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/1", "6.2", "PRIORITY after HEADERS without END_HEADERS is a connection error PROTOCOL_ERROR")
async def http2_6_2_1(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False, end_headers=False),
        priority_frame(1, 0, 255),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.2/2",
    "6.2",
    "HEADERS on another stream after HEADERS without END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_2_2(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    client.send(
        headers_frame(1, encode(client, headers), end_stream=False, end_headers=False),
        headers_frame(3, encode(client, headers)),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/3", "6.2", "HEADERS on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_2_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(0, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.2/4", "6.2", "HEADERS whose padding exceeds its payload is a PROTOCOL_ERROR")
async def http2_6_2_4(client: RawH2Client, authority: str) -> None:
    block = encode(client, request(authority))
    client.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, bytes([len(block) + 2]) + block))
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/6.3/1", "6.3", "PRIORITY on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_3_1(client: RawH2Client, authority: str) -> None:
    client.send(priority_frame(0, 0, 255))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.3/2", "6.3", "PRIORITY of 4 octets is a stream error FRAME_SIZE_ERROR")
async def http2_6_3_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), raw_frame(PRIORITY, 0, 1, b"\x80\x00\x00\x01")
    )
    await stream_error(client, FRAME_SIZE_ERROR)


@case("http2/6.4/1", "6.4", "RST_STREAM on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_4_1(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(0, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.4/2", "6.4", "RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR")
async def http2_6_4_2(client: RawH2Client, authority: str) -> None:
    client.send(rst_stream_frame(1, CANCEL))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.4/3", "6.4", "RST_STREAM of 3 octets is a FRAME_SIZE_ERROR")
async def http2_6_4_3(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority))), raw_frame(RST_STREAM, 0, 1, bytes(3)))
    await stream_error(client, FRAME_SIZE_ERROR)


@case("http2/6.5/1", "6.5", "a SETTINGS ACK with a payload is a connection error FRAME_SIZE_ERROR")
async def http2_6_5_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, ACK, 0, b"\x00"))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/6.5/2", "6.5", "SETTINGS on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 1, b"\x00\x03\x00\x00\x00\x64"))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5/3", "6.5", "SETTINGS of a length not a multiple of 6 is a FRAME_SIZE_ERROR (or PROTOCOL_ERROR)"
)
async def http2_6_5_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 0, b"\x00\x03\x00"))
    await stream_error(client, PROTOCOL_ERROR, FRAME_SIZE_ERROR)


@case("http2/6.5.2/1", "6.5.2", "SETTINGS_ENABLE_PUSH of 2 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_1(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((ENABLE_PUSH, 2)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5.2/2", "6.5.2", "SETTINGS_INITIAL_WINDOW_SIZE of 2^31 is a connection error FLOW_CONTROL_ERROR"
)
async def http2_6_5_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 2**31)))
    await connection_error(client, FLOW_CONTROL_ERROR)


@case("http2/6.5.2/3", "6.5.2", "SETTINGS_MAX_FRAME_SIZE of 16,383 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_3(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((MAX_FRAME_SIZE, 16383)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.5.2/4", "6.5.2", "SETTINGS_MAX_FRAME_SIZE of 2^24 is a connection error PROTOCOL_ERROR")
async def http2_6_5_2_4(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((MAX_FRAME_SIZE, 2**24)))
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.5.2/5",
    "6.5.2",
    "a SETTINGS parameter of unknown identifier is ignored (a PING is still answered)",
)
async def http2_6_5_2_5(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((0xFF, 1)), ping_frame())
    await ping_ack(client, bytes(8))


async def _request_under_window(client: RawH2Client, authority: str, *values: int) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE set to each of ``values`` in one frame, acknowledged; then a request
    whose first DATA frame must be exactly the last value's size (1)."""
    client.send(settings_frame(*((INITIAL_WINDOW_SIZE, value) for value in values)))
    await settings_ack(client)
    client.send(headers_frame(1, encode(client, request(authority))))
    await data_of_length(client, 1, 1)


@case("http2/6.5.3/1", "6.5.3", "two SETTINGS_INITIAL_WINDOW_SIZE values in one frame are applied in order")
async def http2_6_5_3_1(client: RawH2Client, authority: str) -> None:
    await _request_under_window(client, authority, 100, 1)


@case("http2/6.5.3/2", "6.5.3", "SETTINGS without ACK is acknowledged")
async def http2_6_5_3_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((ENABLE_PUSH, 0)))
    await settings_ack(client)


@case("http2/6.7/1", "6.7", "PING is answered with a PING ACK carrying the same data")
async def http2_6_7_1(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case("http2/6.7/2", "6.7", "a PING ACK from the client is not answered (the next PING's ACK comes first)")
async def http2_6_7_2(client: RawH2Client, authority: str) -> None:
    client.send(ping_frame(opaque(b"invalid"), ack=True), ping_frame(opaque(b"h2spec")))
    await ping_ack(client, opaque(b"h2spec"))


@case("http2/6.7/3", "6.7", "PING on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_7_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0, 1, bytes(8)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.7/4", "6.7", "PING of 6 octets is a connection error FRAME_SIZE_ERROR")
async def http2_6_7_4(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(PING, 0, 0, bytes(6)))
    await connection_error(client, FRAME_SIZE_ERROR)


@case("http2/6.8/1", "6.8", "GOAWAY on stream 1 is a connection error PROTOCOL_ERROR")
async def http2_6_8_1(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(GOAWAY, 0, 1, bytes(8)))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.9/1", "6.9", "WINDOW_UPDATE of 0 for the connection is a connection error PROTOCOL_ERROR")
async def http2_6_9_1(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 0))
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.9/2", "6.9", "WINDOW_UPDATE of 0 on a stream is a stream error PROTOCOL_ERROR")
async def http2_6_9_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False), window_update_frame(1, 0)
    )
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/6.9/3", "6.9", "WINDOW_UPDATE of 3 octets is a connection error FRAME_SIZE_ERROR")
async def http2_6_9_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    await connection_error(client, FRAME_SIZE_ERROR)


@case(
    "http2/6.9.1/1", "6.9.1", "with SETTINGS_INITIAL_WINDOW_SIZE 1 the response's first DATA frame is 1 octet"
)
async def http2_6_9_1_1(client: RawH2Client, authority: str) -> None:
    await _request_under_window(client, authority, 1)


@case(
    "http2/6.9.1/2",
    "6.9.1",
    "a connection window grown beyond 2^31-1 is answered with GOAWAY FLOW_CONTROL_ERROR",
)
async def http2_6_9_1_2(client: RawH2Client, authority: str) -> None:
    client.send(window_update_frame(0, 2**31 - 1), window_update_frame(0, 2**31 - 1))
    frame = await first_frame(client, GoAwayFrame)
    if frame is None or frame.error_code != FLOW_CONTROL_ERROR:
        _fail(client, "GOAWAY with FLOW_CONTROL_ERROR")


@case(
    "http2/6.9.1/3",
    "6.9.1",
    "a stream window grown beyond 2^31-1 is answered with RST_STREAM FLOW_CONTROL_ERROR",
)
async def http2_6_9_1_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_stream=False),
        window_update_frame(1, 2**31 - 1),
        window_update_frame(1, 2**31 - 1),
    )
    frame = await first_frame(client, RstStreamFrame)
    if frame is None or frame.stream_id != 1 or frame.error_code != FLOW_CONTROL_ERROR:
        _fail(client, "RST_STREAM on stream 1 with FLOW_CONTROL_ERROR")


@case(
    "http2/6.9.2/1",
    "6.9.2",
    "raising SETTINGS_INITIAL_WINDOW_SIZE from 0 to 1 mid-stream lets 1 octet of DATA out",
)
async def http2_6_9_2_1(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 0)))
    await settings_ack(client)
    client.send(
        headers_frame(1, encode(client, request(authority))), settings_frame((INITIAL_WINDOW_SIZE, 1))
    )
    await data_of_length(client, 1, 1)


@case("http2/6.9.2/2", "6.9.2", "a window made negative by SETTINGS is tracked: +2 after -1 lets 1 octet out")
async def http2_6_9_2_2(client: RawH2Client, authority: str) -> None:
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 3)))
    await settings_ack(client)
    client.send(headers_frame(1, encode(client, request(authority))))
    await frame_of(client, DataFrame)  # the 3 octets the window allows
    client.send(settings_frame((INITIAL_WINDOW_SIZE, 2)))  # the stream's window is now -1
    await settings_ack(client)
    client.send(window_update_frame(1, 2))
    await data_of_length(client, 1, 1)


@case(
    "http2/6.9.2/3", "6.9.2", "SETTINGS_INITIAL_WINDOW_SIZE of 2^31 is a connection error FLOW_CONTROL_ERROR"
)
async def http2_6_9_2_3(client: RawH2Client, authority: str) -> None:
    client.send(raw_frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"))
    await connection_error(client, FLOW_CONTROL_ERROR)


@case("http2/6.10/1", "6.10", "HEADERS followed by two CONTINUATION frames is accepted")
async def http2_6_10_1(client: RawH2Client, authority: str) -> None:
    client.send(headers_frame(1, encode(client, request(authority)), end_headers=False))
    client.send(continuation_frame(1, encode(client, filler(1)), end_headers=False))
    client.send(continuation_frame(1, encode(client, filler(1))))
    await headers_on(client, 1)


@case(
    "http2/6.10/2",
    "6.10",
    "DATA after a CONTINUATION without END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False, end_headers=False),
        continuation_frame(1, encode(client, filler(1)), end_headers=False),
        data_frame(1, b"test", end_stream=True),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case("http2/6.10/3", "6.10", "CONTINUATION on stream 0 is a connection error PROTOCOL_ERROR")
async def http2_6_10_3(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_headers=False),
        continuation_frame(0, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/4", "6.10", "CONTINUATION after HEADERS with END_HEADERS is a connection error PROTOCOL_ERROR"
)
async def http2_6_10_4(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority))), continuation_frame(1, encode(client, filler(1)))
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/5",
    "6.10",
    "CONTINUATION after a CONTINUATION with END_HEADERS is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_5(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority)), end_headers=False),
        continuation_frame(1, encode(client, filler(1))),
        continuation_frame(1, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


@case(
    "http2/6.10/6",
    "6.10",
    "DATA between HEADERS without END_HEADERS and its CONTINUATION is a connection error PROTOCOL_ERROR",
)
async def http2_6_10_6(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False, end_headers=False),
        data_frame(1, b"test", end_stream=True),
        continuation_frame(1, encode(client, filler(1)), end_headers=False),
        continuation_frame(0, encode(client, filler(1))),
    )
    await connection_error(client, PROTOCOL_ERROR)


# --- 7 error codes ---


@case("http2/7/1", "7", "GOAWAY with an unknown error code has no special effect (PING answered or close)")
async def http2_7_1(client: RawH2Client, authority: str) -> None:
    client.send(goaway_frame(0, 0xFF), ping_frame(opaque(b"h2spec")))
    await ping_ack_or_close(client, opaque(b"h2spec"))


@case(
    "http2/7/2", "7", "RST_STREAM with an unknown error code has no special effect (PING answered or close)"
)
async def http2_7_2(client: RawH2Client, authority: str) -> None:
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        rst_stream_frame(1, 0xFF),
        ping_frame(),
    )
    await ping_ack_or_close(client, bytes(8))


# --- 8 HTTP message exchanges (RFC 9113 §8.1-§8.4) ---


async def _malformed_request(client: RawH2Client, headers: Sequence[Header]) -> None:
    client.send(headers_frame(1, encode(client, headers)))
    await stream_error(client, PROTOCOL_ERROR)


async def _post_then_trailers(client: RawH2Client, authority: str, trailers: Sequence[Header]) -> None:
    """A POST's body, then a second HEADERS without END_STREAM: malformed (PROTOCOL_ERROR)."""
    client.send(
        headers_frame(1, encode(client, request(authority, "POST")), end_stream=False),
        data_frame(1, b"test"),
        headers_frame(1, encode(client, trailers), end_stream=False),
    )
    await stream_error(client, PROTOCOL_ERROR)


@case("http2/8.1/1", "8.1", "a second HEADERS without END_STREAM is a stream error PROTOCOL_ERROR")
async def http2_8_1_1(client: RawH2Client, authority: str) -> None:
    await _post_then_trailers(client, authority, [(b"x-test", b"ok")])


@case("http2/8.1.2/1", "8.2.1", "an uppercase field name makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b"X-TEST", b"ok")])


@case("http2/8.1.2.1/1", "8.3", "an unknown pseudo-header field makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_1_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b":test", b"ok")])


@case(
    "http2/8.1.2.1/2",
    "8.3",
    "a response pseudo-header field in a request makes it malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_1_2(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b":status", b"200")])


@case(
    "http2/8.1.2.1/3", "8.3", "a pseudo-header field in trailers makes the request malformed (PROTOCOL_ERROR)"
)
async def http2_8_1_2_1_3(client: RawH2Client, authority: str) -> None:
    await _post_then_trailers(client, authority, [(b":method", b"POST")])


@case(
    "http2/8.1.2.1/4",
    "8.3",
    "a pseudo-header field after a regular one makes the request malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_1_4(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [(b"x-test", b"ok"), *request(authority)])


@case("http2/8.1.2.2/1", "8.2.2", "a connection-specific field makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_2_1(client: RawH2Client, authority: str) -> None:
    await _malformed_request(client, [*request(authority), (b"connection", b"keep-alive")])


@case("http2/8.1.2.2/2", "8.2.2", 'TE other than "trailers" makes the request malformed (PROTOCOL_ERROR)')
async def http2_8_1_2_2_2(client: RawH2Client, authority: str) -> None:
    await _malformed_request(
        client, [*request(authority), (b"trailers", b"test"), (b"te", b"trailers, deflate")]
    )


@case("http2/8.1.2.3/1", "8.3.1", "an empty :path makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_1(client: RawH2Client, authority: str) -> None:
    method, scheme, _, host = request(authority)
    await _malformed_request(client, [method, scheme, (b":path", b""), host])


@case(
    "http2/8.1.2.3/2",
    "8.3.1",
    "a request without :method (nor :scheme, as h2spec sends it) is malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_3_2(client: RawH2Client, authority: str) -> None:
    _, _, path, host = request(authority)
    await _malformed_request(client, [path, host])


@case("http2/8.1.2.3/3", "8.3.1", "a request without :scheme is malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_3(client: RawH2Client, authority: str) -> None:
    method, _, path, host = request(authority)
    await _malformed_request(client, [method, path, host])


@case("http2/8.1.2.3/4", "8.3.1", "a request without :path is malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_4(client: RawH2Client, authority: str) -> None:
    method, scheme, _, host = request(authority)
    await _malformed_request(client, [method, scheme, host])


@case("http2/8.1.2.3/5", "8.3", "a duplicated :method makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_5(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[0]])


@case("http2/8.1.2.3/6", "8.3", "a duplicated :scheme makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_6(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[1]])


@case("http2/8.1.2.3/7", "8.3", "a duplicated :path makes the request malformed (PROTOCOL_ERROR)")
async def http2_8_1_2_3_7(client: RawH2Client, authority: str) -> None:
    headers = request(authority)
    await _malformed_request(client, [*headers, headers[2]])


async def _content_length_mismatch(client: RawH2Client, authority: str, *bodies: bytes) -> None:
    headers = [*request(authority, "POST"), (b"content-length", b"1")]
    client.send(headers_frame(1, encode(client, headers), end_stream=False))
    client.send(*(data_frame(1, body, end_stream=i == len(bodies) - 1) for i, body in enumerate(bodies)))
    await stream_error(client, PROTOCOL_ERROR)


@case(
    "http2/8.1.2.6/1",
    "8.1.1",
    "content-length other than the DATA payload makes the request malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_6_1(client: RawH2Client, authority: str) -> None:
    await _content_length_mismatch(client, authority, b"test")


@case(
    "http2/8.1.2.6/2",
    "8.1.1",
    "content-length other than the sum of several DATA payloads is malformed (PROTOCOL_ERROR)",
)
async def http2_8_1_2_6_2(client: RawH2Client, authority: str) -> None:
    await _content_length_mismatch(client, authority, b"test", b"test")


@case("http2/8.2/1", "8.4", "PUSH_PROMISE from a client is a connection error PROTOCOL_ERROR")
async def http2_8_2_1(client: RawH2Client, authority: str) -> None:
    client.send(push_promise_frame(1, 3, encode(client, request(authority))))
    await connection_error(client, PROTOCOL_ERROR)


# ==================================================================================================
# hpack: RFC 7541's decoding errors, each a connection error COMPRESSION_ERROR (RFC 9113 §4.3)
# ==================================================================================================


def _hpack_error_case(
    case_id: str, section: str, description: str, representation: bytes, *, before: bool = False
) -> None:
    @case(case_id, section, description)
    async def run(client: RawH2Client, authority: str) -> None:
        block = encode(client, request(authority))
        client.send(headers_frame(1, representation + block if before else block + representation))
        await connection_error(client, COMPRESSION_ERROR)


_hpack_error_case(
    "hpack/2.3.3/1",
    "4.3",
    "an indexed field beyond both tables (index 70, RFC 7541 §2.3.3) is a decoding error",
    b"\xc6",
)
_hpack_error_case(
    "hpack/2.3.3/2",
    "4.3",
    "a literal whose name index is beyond both tables (70, RFC 7541 §2.3.3) is a decoding error",
    b"\x7f\x07\x00",
)
_hpack_error_case(
    "hpack/4.2/1",
    "4.3",
    "a dynamic table size update at the end of a block (RFC 7541 §4.2) is a decoding error",
    b"\x21",
)
_hpack_error_case(
    "hpack/5.2/1",
    "4.3",
    "a Huffman string padded with more than 7 bits (RFC 7541 §5.2) is a decoding error",
    b"\x00" + _NAME_X_TEST_HUFFMAN + b"\x84\x49\x50\x9f\xff",
)
_hpack_error_case(
    "hpack/5.2/2",
    "4.3",
    "a Huffman string padded with zero bits (RFC 7541 §5.2) is a decoding error",
    b"\x00" + _NAME_X_TEST_HUFFMAN + b"\x83\x49\x50\x90",
)
_hpack_error_case(
    "hpack/5.2/3",
    "4.3",
    "a Huffman string containing the EOS symbol (RFC 7541 §5.2) is a decoding error",
    b"\x00" + _NAME_X_TEST_HUFFMAN + b"\x87\x49\x51\xff\xff\xff\xfa\x7f",
)
_hpack_error_case(
    "hpack/6.1/1", "4.3", "an indexed field with index 0 (RFC 7541 §6.1) is a decoding error", b"\x80"
)


@case(
    "hpack/6.3/1",
    "4.3.1",
    "a table size update above SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §6.3) is a decoding error",
)
async def hpack_6_3_1(client: RawH2Client, authority: str) -> None:
    size = client.server_settings.get(HEADER_TABLE_SIZE, 4096) + 1
    block = encode(client, request(authority))
    client.send(headers_frame(1, _integer(size, 5, 0x20) + block))
    await connection_error(client, COMPRESSION_ERROR)


def _integer(value: int, prefix_bits: int, pattern: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with an N-bit prefix, OR-ed with the representation's pattern."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([pattern | value])
    out = [pattern | limit]
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


_ORDER = {case_id: n for n, case_id in enumerate(h2spec_ids())}
CASES.sort(key=lambda entry: _ORDER[entry.id])
