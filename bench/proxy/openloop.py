"""An open-loop HTTP/2 (h2c, prior knowledge) load generator that really offers its rate.

Request ``i`` is scheduled at the absolute time ``t0 + i / rate`` (never relative to the previous send, so
the schedule cannot slip) and its latency runs FROM ITS SCHEDULED TIME to the end of its response: a late
generator, a full stream limit or a stalled path all show up as latency instead of hiding it (free of
coordinated omission). The time each request really went out is recorded too (its send delay, which
includes any wait behind the stream limit).

The clock is a periodic ``timerfd`` (CLOCK_MONOTONIC, absolute start, 1/rate interval, timer slack 1 ns)
read from the event loop: each expiry count says how many scheduled times have passed, so a late wake-up
sends every request that is due, each still timed from its own slot. uvloop's own timers have millisecond
granularity, which would add up to a millisecond of send delay at random; ``--timer loop`` uses them
anyway (with the same catch-up), for comparison.

GET ``url`` over ``--connections`` connections (requests round-robin; beyond the server's
MAX_CONCURRENT_STREAMS they queue, still timed from their slot). ``-H 'name: value'`` as h2load takes it
(``-H ':authority: host:port'`` overrides the authority). Prints one JSON object: p50/p99/max latency
(ms), samples, failed (non-200, reset or unanswered), offered_rps (from the real send times), send-delay
p50/p99/max; the first ``--warmup-fraction`` of the requests are left out of all of it. ``--requests FILE``
writes every request as TSV (after a ``# t0_monotonic_ns`` line): index, scheduled µs from t0, send delay
µs, latency µs (-1 unanswered), status (0 for none), connection.

Run with the venv's Python inside the client's network namespace (bench/proxy/run.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import uvloop

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000
_TFD_NONBLOCK = 0o4000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29
_MAX_WINDOW = 2**31 - 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(ns: int) -> _Timespec:
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def periodic_timerfd(start_ns: int, interval_ns: int) -> int:
    """A non-blocking timerfd that first expires at ``start_ns`` (CLOCK_MONOTONIC, the clock of
    ``time.monotonic_ns``), then every ``interval_ns``; reading it gives the expiries since the last read."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)  # wake at the expiry, not up to 50 µs after it
    fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC | _TFD_NONBLOCK))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create")
    spec = _Itimerspec(_timespec(interval_ns), _timespec(start_ns))
    if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "timerfd_settime")
    return fd


def parse_header(text: str) -> tuple[bytes, bytes]:
    """``name: value`` as h2load's ``-H``; a pseudo-header's name keeps its leading colon."""
    split = text.find(":", 1 if text.startswith(":") else 0)
    if split <= 0:
        raise argparse.ArgumentTypeError(f"not a header (name: value): {text!r}")
    return text[:split].strip().lower().encode(), text[split + 1 :].strip().encode()


class Run:
    """The schedule and what happened to each request (flat arrays: no object per request)."""

    def __init__(self, count: int, interval_ns: int) -> None:
        self.count = count
        self.interval_ns = interval_ns
        self.t0 = 0
        self.sent = array("q", bytes(8 * count))  # send time (ns), 0 until sent
        self.done = array("q", bytes(8 * count))  # end of response (ns), 0 until answered
        self.status = array("H", bytes(2 * count))  # :status, 0 for none (reset, refused, unanswered)
        self.connection = array("H", bytes(2 * count))
        self.next = 0  # the next request to send
        self.outstanding = 0  # sent or queued, not yet finished
        self.finished = asyncio.Event()
        self.all_scheduled = False

    def scheduled(self, index: int) -> int:
        return self.t0 + index * self.interval_ns

    def finish(self, index: int, when: int, status: int) -> None:
        self.done[index] = when
        self.status[index] = status
        self.outstanding -= 1
        if self.all_scheduled and self.outstanding == 0:
            self.finished.set()


class Connection(asyncio.Protocol):
    """One h2c connection; requests beyond the peer's stream limit wait in ``queue`` (in order)."""

    def __init__(self, run: Run, number: int, headers: list[tuple[bytes, bytes]]) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.run = run
        self.number = number
        self.headers = headers
        self.streams: dict[int, int] = {}  # stream id -> request index
        self.queue: deque[int] = deque()
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.lost = False
        self.unacked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _MAX_WINDOW})
        self.h2.increment_flow_control_window(_MAX_WINDOW - 65535)
        self.transport.write(self.h2.data_to_send())

    def send(self, index: int) -> None:
        """Send request ``index`` now, or queue it behind the peer's stream limit."""
        if self.lost:
            self.run.finish(index, 0, 0)
            return
        h2c = self.h2
        if self.queue or h2c.open_outbound_streams >= h2c.remote_settings.max_concurrent_streams:
            self.queue.append(index)
            return
        self._send(index)

    def _send(self, index: int) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, self.headers, end_stream=True)
        self.streams[stream_id] = index
        self.run.connection[index] = self.number
        assert self.transport is not None
        data = self.h2.data_to_send()
        self.run.sent[index] = time.monotonic_ns()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # when the bytes reached us: the end of every response in them
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._fail_all()
            assert self.transport is not None
            self.transport.close()
            return
        run, streams = self.run, self.streams
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                index = streams.get(event.stream_id)
                if index is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            run.status[index] = int(value)
                            break
            elif isinstance(event, h2.events.DataReceived):
                self.unacked += event.flow_controlled_length
            elif isinstance(event, h2.events.StreamEnded):
                index = streams.pop(event.stream_id, None)
                if index is not None:
                    run.finish(index, now, run.status[index])
            elif isinstance(event, h2.events.StreamReset):
                index = streams.pop(event.stream_id, None)
                if index is not None:
                    run.finish(index, now, 0)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fail_all()
        if self.unacked > 2**30:  # the windows start at 2^31 - 1: top them up now and then
            self.h2.increment_flow_control_window(self.unacked)
            self.unacked = 0
        h2c = self.h2
        limit = h2c.remote_settings.max_concurrent_streams
        while self.queue and h2c.open_outbound_streams < limit:
            self._send(self.queue.popleft())
        out = h2c.data_to_send()
        if out:
            assert self.transport is not None
            self.transport.write(out)

    def _fail_all(self) -> None:
        self.lost = True
        for index in list(self.streams.values()) + list(self.queue):
            self.run.finish(index, 0, 0)
        self.streams.clear()
        self.queue.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection closed before SETTINGS: {exc}"))
        self._fail_all()


def percentile(ordered: Sequence[int], fraction: float) -> int:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summarise(run: Run, warmup_fraction: float) -> dict[str, Any]:
    first = int(run.count * warmup_fraction)
    latencies: list[int] = []
    delays: list[int] = []
    failed = 0
    for index in range(first, run.count):
        scheduled = run.scheduled(index)
        if run.sent[index]:
            delays.append(run.sent[index] - scheduled)
        if run.status[index] == 200 and run.done[index]:
            latencies.append(run.done[index] - scheduled)
        else:
            failed += 1
    latencies.sort()
    delays.sort()
    sent = sorted(run.sent[index] for index in range(first, run.count) if run.sent[index])
    offered = (len(sent) - 1) / max((sent[-1] - sent[0]) / 1e9, 1e-9) if len(sent) > 1 else 0.0

    def ms(value: float) -> float:
        return round(value / 1e6, 4)

    summary: dict[str, Any] = {
        "samples": len(latencies),
        "failed": failed,
        "offered_rps": round(offered, 1),
        "send_delay_p50": ms(percentile(delays, 0.5)) if delays else 0.0,
        "send_delay_p99": ms(percentile(delays, 0.99)) if delays else 0.0,
        "send_delay_max": ms(delays[-1]) if delays else 0.0,
    }
    if latencies:
        summary.update(
            p50=ms(percentile(latencies, 0.5)),
            p99=ms(percentile(latencies, 0.99)),
            p999=ms(percentile(latencies, 0.999)),
            max=ms(latencies[-1]),
            mean=ms(sum(latencies) / len(latencies)),
        )
    return summary


def write_requests(run: Run, path: str) -> None:
    with open(path, "w") as out:
        out.write(f"# t0_monotonic_ns {run.t0}\n")  # CLOCK_MONOTONIC of request 0's slot
        out.write("index\tscheduled_us\tsend_delay_us\tlatency_us\tstatus\tconnection\n")
        for index in range(run.count):
            scheduled = run.scheduled(index)
            sent, done = run.sent[index], run.done[index]
            delay = (sent - scheduled) // 1000 if sent else -1
            latency = (done - scheduled) // 1000 if done else -1
            out.write(
                f"{index}\t{(scheduled - run.t0) // 1000}\t{delay}\t{latency}\t{run.status[index]}"
                f"\t{run.connection[index]}\n"
            )


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(args.url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"only http:// URLs (h2c prior knowledge): {args.url}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    extra: list[tuple[bytes, bytes]] = list(args.header or [])
    authority = next((value for name, value in extra if name == b":authority"), None)
    if authority is None:
        authority = parts.netloc.encode()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", path.encode()),
    ]
    headers += [(name, value) for name, value in extra if name != b":authority"]

    interval_ns = round(1e9 / args.rate)
    run = Run(max(1, int(args.rate * args.seconds)), interval_ns)
    connections: list[Connection] = []
    for number in range(args.connections):
        _, protocol = await loop.create_connection(
            functools.partial(Connection, run, number, headers), parts.hostname, port
        )
        connections.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in connections)), timeout=10)

    gc.collect()
    gc.freeze()
    gc.disable()  # the generator's own collections would show as latency; a short run needs none
    run.t0 = time.monotonic_ns() + 20_000_000
    count, width = run.count, len(connections)

    def send_due(now: int) -> None:
        due = min(count, (now - run.t0) // interval_ns + 1)
        while run.next < due:
            index = run.next
            run.next += 1
            run.outstanding += 1
            connections[index % width].send(index)
        if run.next >= count:
            run.all_scheduled = True
            if run.outstanding == 0:
                run.finished.set()

    all_sent = loop.create_future()
    if args.timer == "timerfd":
        fd = periodic_timerfd(run.t0, interval_ns)

        def on_timer() -> None:
            try:
                os.read(fd, 8)
            except BlockingIOError:
                return
            send_due(time.monotonic_ns())
            if run.all_scheduled:
                loop.remove_reader(fd)
                all_sent.set_result(None)

        loop.add_reader(fd, on_timer)
    else:
        monotonic_offset = loop.time() - time.monotonic()  # loop.time() is not time.monotonic() in uvloop

        def on_tick() -> None:
            send_due(time.monotonic_ns())
            if run.all_scheduled:
                all_sent.set_result(None)
            else:
                loop.call_at(run.scheduled(run.next) / 1e9 + monotonic_offset, on_tick)

        loop.call_at(run.t0 / 1e9 + monotonic_offset, on_tick)
    await all_sent
    if args.timer == "timerfd":
        os.close(fd)
    with contextlib.suppress(TimeoutError):  # whatever is still out then counts as failed
        await asyncio.wait_for(run.finished.wait(), timeout=args.timeout)
    gc.enable()
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    if args.requests:
        write_requests(run, args.requests)
    summary = summarise(run, args.warmup_fraction)
    summary.update(
        rate=args.rate,
        connections=args.connections,
        timer=args.timer,
        requests=run.count,
        t0_monotonic_ns=run.t0,  # CLOCK_MONOTONIC of request 0's slot, to line the run up with others
        unanswered=sum(1 for i in range(run.count) if not run.done[i]),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="http://host:port/path (h2c prior knowledge)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the schedule (default 5)")
    parser.add_argument("-c", "--connections", type=int, default=1, help="connections, round-robin (1)")
    parser.add_argument(
        "-H", "--header", type=parse_header, action="append", help="'name: value' (':authority: h:p')"
    )
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.1, help="leading share of requests left out (0.1)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="wait this long for the last answers")
    parser.add_argument("--timer", choices=("timerfd", "loop"), default="timerfd", help="the send clock")
    parser.add_argument("--requests", help="write every request (TSV) to this file")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.connections < 1:
        parser.error("--rate must be > 0 and --connections >= 1")
    summary = uvloop.run(measure(args))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0 if summary.get("samples") else 1


if __name__ == "__main__":
    sys.exit(main())
