"""A steady load of gRPC calls and the application that answers them: plain grpcio, nothing of the mesh.

``steady_load.py serve --port P --name NAME [--delay-ms MS]``: a gRPC server whose one method
(``/e2e.Steady/Call``, raw bytes) answers with its own NAME (the pod's) after MS, so the client learns which
endpoint took each call. It prints ``ready`` once listening.

``steady_load.py load --target HOST:PORT --rate R --deadline D --out FILE``: calls at a fixed rate (open
loop: call ``i`` starts at ``t0 + i / R`` whatever the earlier ones are doing, as independent users would),
each with deadline D, until SIGTERM; one JSON line per finished call in FILE:
``{"seq", "start", "end", "code", "backend", "detail"}`` with ``start``/``end`` on the system-wide
monotonic clock (``time.monotonic()`` in any process on the machine, so the test's fault times compare
directly), ``code`` the gRPC status name, ``backend`` the answering server's NAME. On SIGTERM it stops
starting calls, waits for those in flight (their deadlines bound that), writes
``{"stopped": true, "sent": N}`` and exits 0. It prints ``ready`` once its first call succeeded.

:class:`LoadLog` reads FILE (from the test process); :class:`RunningLoad` runs the client in a pod of the
e2e cluster (exec'd into it, as ``kubectl exec`` would) and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from tether.shared.testing import eventually_sync

if TYPE_CHECKING:  # the harness side only; the script itself runs inside pods without it
    from e2e_cluster import Cluster, Pod
    from mesh_pods import Process

METHOD = "/e2e.Steady/Call"
#: Calls taken by one write of the record file (and the longest a finished call waits to be written).
FLUSH_EVERY = 0.2


def _identity(data: bytes) -> bytes:
    return data


async def serve(port: int, name: str, delay: float) -> None:
    answer = name.encode()

    async def call(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        if delay:
            await asyncio.sleep(delay)  # work that takes time keeps calls in flight, as real ones are
        return answer

    handler = grpc.method_handlers_generic_handler(
        "e2e.Steady",
        {"Call": grpc.unary_unary_rpc_method_handler(call, _identity, _identity)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def load(target: str, rate: float, deadline: float, out: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # No proxy from the environment, no retries beyond grpcio's transparent ones: a plain application.
    options = [("grpc.enable_http_proxy", 0)]
    finished: list[dict[str, Any]] = []
    in_flight: set[asyncio.Task[None]] = set()
    announced = False
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

        async def one(seq: int) -> None:
            nonlocal announced
            start = time.monotonic()
            record: dict[str, Any] = {"seq": seq, "start": start}
            try:
                answer = await call(b"", timeout=deadline)
                record.update(code="OK", backend=answer.decode())
                if not announced:
                    announced = True
                    print("ready", flush=True)
            except grpc.aio.AioRpcError as error:
                record.update(code=error.code().name, detail=(error.details() or "")[:200])
            record["end"] = time.monotonic()
            finished.append(record)

        with out.open("a") as handle:

            def flush() -> None:
                if finished:
                    handle.write("".join(json.dumps(record) + "\n" for record in finished))
                    handle.flush()
                    finished.clear()

            t0 = time.monotonic()
            seq = 0
            next_flush = t0 + FLUSH_EVERY
            while not stop.is_set():
                now = time.monotonic()
                due = t0 + seq / rate
                if due <= now:
                    task = loop.create_task(one(seq))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    seq += 1
                    continue
                if now >= next_flush:
                    flush()
                    next_flush = now + FLUSH_EVERY
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(due, next_flush) - now)
            if in_flight:
                await asyncio.wait(in_flight)
            flush()
            handle.write(json.dumps({"stopped": True, "sent": seq}) + "\n")


@dataclass(frozen=True)
class Call:
    seq: int
    start: float
    end: float
    code: str
    backend: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


class LoadLog:
    """What one load client wrote: its finished calls, and how many it sent once it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[list[Call], int | None]:
        calls: list[Call] = []
        sent = None
        if not self.path.exists():
            return calls, sent
        for line in self.path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line being written
            entry = json.loads(line)
            if entry.get("stopped"):
                sent = int(entry["sent"])
                continue
            calls.append(
                Call(
                    entry["seq"],
                    entry["start"],
                    entry["end"],
                    entry["code"],
                    entry.get("backend", ""),
                    entry.get("detail", ""),
                )
            )
        return calls, sent

    def calls(self) -> list[Call]:
        return self.read()[0]


class RunningLoad:
    """``load`` exec'd into ``pod`` (its network namespace, user and environment) for as long as it runs."""

    def __init__(
        self, cluster: Cluster, pod: Pod, target: str, *, rate: float, deadline: float, name: str
    ) -> None:
        self.out = pod.directory / f"steady-{name}.jsonl"
        self.log = LoadLog(self.out)
        argv = [sys.executable, str(Path(__file__).resolve()), "load", "--target", target]
        argv += ["--rate", f"{rate:g}", "--deadline", f"{deadline:g}", "--out", str(self.out)]
        self.process: Process = cluster.exec(pod, argv, log_name=f"steady-{name}")
        self.started = time.monotonic()

        def succeeded() -> bool:
            if "ready" in self.process.log.read_text(errors="replace").split():
                return True
            assert self.process.popen.poll() is None, f"the load client exited\n{self.process.describe()}"
            return False

        eventually_sync(succeeded, 30, lambda: f"a call to succeed\n{self.process.describe()}", 0.05)
        self.stopped: float | None = None

    def calls(self) -> list[Call]:
        return self.log.calls()

    def finished(self, until: float, deadline: float) -> list[Call]:
        """Every call so far, once all those started before ``until`` ended (waits for ``until`` first;
        ``deadline``, the calls' own, bounds the wait for those in flight)."""
        time.sleep(max(0.0, until - time.monotonic()))
        started = 0

        def all_ended() -> list[Call] | None:
            nonlocal started
            calls = self.calls()
            started = sum(1 for call in calls if call.start < until)
            last = max((call.seq for call in calls if call.start < until), default=-1)
            return calls if started == last + 1 else None

        return eventually_sync(
            all_ended, deadline + 5, lambda: f"the calls started before {until} to end ({started} did)", 0.05
        )

    def stop(self) -> list[Call]:
        """SIGTERM; every call sent, once those in flight ended (their deadline bounds the wait)."""
        popen = self.process.popen
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        code = popen.wait(timeout=60)
        if self.stopped is None:
            self.stopped = time.monotonic()
        calls, sent = self.log.read()
        assert code == 0 and sent == len(calls), (
            f"the load client exited {code}, {sent} sent, {len(calls)} recorded\n{self.process.describe()}"
        )
        return calls


def started_between(calls: Iterable[Call], since: float, until: float = float("inf")) -> list[Call]:
    return [call for call in calls if since <= call.start < until]


def failures(calls: Iterable[Call]) -> list[Call]:
    return [call for call in calls if not call.ok]


def describe(failed: Iterable[Call], limit: int = 10) -> str:
    """The first failed calls, for assertion messages."""
    lines = [f"#{c.seq} at {c.start:.3f} (+{c.end - c.start:.3f} s): {c.code} {c.detail}" for c in failed]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    served = commands.add_parser("serve")
    served.add_argument("--port", type=int, required=True)
    served.add_argument("--name", required=True)
    served.add_argument("--delay-ms", type=float, default=0.0, help="time each call takes")
    loaded = commands.add_parser("load")
    loaded.add_argument("--target", required=True)
    loaded.add_argument("--rate", type=float, required=True)
    loaded.add_argument("--deadline", type=float, required=True)
    loaded.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.port, args.name, args.delay_ms / 1000.0))
    else:
        asyncio.run(load(args.target, args.rate, args.deadline, args.out))


if __name__ == "__main__":
    main()
