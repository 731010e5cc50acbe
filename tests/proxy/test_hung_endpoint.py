"""An endpoint that stops answering stops getting requests (regression tests found by the e2e data-plane
faults, tests/e2e/test_dataplane_faults.py).

Two bugs made a hung endpoint keep failing a share of the calls for as long as it hung:

* A request that ended without a response (here: at the client's deadline) taught the balancer nothing, so
  the endpoint's latency estimate kept decaying from the fast value it had before, and it kept winning about
  a quarter of the picks. It now counts as the time the endpoint held it.
* Even so, peak-EWMA tries a slow endpoint again once its estimate has decayed below the others' load, and
  against a host that hangs each such try is a failed request. An endpoint that left a request unanswered is
  now avoided until its connection answers a PING: at once for a live server, never for a hung host.

Real proxies, the real destination service, real grpcio applications; the hung host is a TCP forwarder in
front of one pod's inbound listener that stops passing bytes either way (as a frozen host or a black-holed
path would), while closing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from proxy_mesh import Mesh, Pod, authority, unary

WORKERS = 3


class Freezer:
    """A TCP forwarder to ``target``; ``freeze`` makes it hold every byte both ways, closing nothing."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._accept, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.flowing.clear()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    await self.flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Behind(Pod):
    """A pod as discovery lists it: at the forwarder's port instead of its own."""

    via: int = 0

    @property
    def endpoint_port(self) -> int:
        return self.via


async def calls_until(call: Any, stop_at: float, deadline: float) -> AsyncIterator[tuple[float, str]]:
    """Sequential calls until ``stop_at``: (when each started, who answered or how it failed)."""
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            answer = (await call(b"echo:x", timeout=deadline)).split(b":")[0].decode()
        except grpc.aio.AioRpcError as error:
            answer = error.code().name
        yield started, answer


async def test_an_endpoint_that_hangs_gets_no_more_requests_once_one_went_unanswered(mesh: Mesh) -> None:
    # Every call takes 0.1 s in the applications: calls are in flight on every endpoint, as under load.
    fast_a = await mesh.pod("fast-a", delay=0.1)
    fast_b = await mesh.pod("fast-b", delay=0.1)
    hung = await mesh.pod("hung", delay=0.1)
    freezer = Freezer((hung.host, hung.endpoint_port))
    via = await freezer.start(hung.host)
    behind = Behind(hung.host, hung.proxy, hung.runtime, hung.app, hung.identity, via)
    client = await mesh.pod()
    await mesh.register("echo", [fast_a, fast_b, behind])
    outcomes: list[tuple[float, str]] = []
    try:
        async with client.channel(authority("echo")) as channel:
            call = unary(channel)

            async def worker(stop_at: float, deadline: float) -> None:
                async for outcome in calls_until(call, stop_at, deadline):
                    outcomes.append(outcome)

            # Answering, it takes its share and the balancer learns how fast it is.
            await asyncio.gather(*(worker(time.monotonic() + 1.5, 1.0) for _ in range(WORKERS)))
            assert Counter(answer for _, answer in outcomes)["hung"] >= 3, outcomes
            outcomes.clear()
            freezer.freeze()
            frozen_at, deadline = time.monotonic(), 0.3
            await asyncio.gather(*(worker(frozen_at + 4.0, deadline) for _ in range(WORKERS)))
    finally:
        await freezer.close()
    seen = Counter(answer for _, answer in outcomes)
    assert set(seen) <= {"fast-a", "fast-b", "DEADLINE_EXCEEDED"}, seen
    # Only calls already on their way to it before the first deadline passed failed; none after.
    failed = [started - frozen_at for started, answer in outcomes if answer == "DEADLINE_EXCEEDED"]
    assert all(offset < deadline + 0.1 for offset in failed), (failed, seen)
    assert len(failed) <= WORKERS, seen
    assert seen["fast-a"] > 10 and seen["fast-b"] > 10, seen
