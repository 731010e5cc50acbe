"""A fault-injecting TCP relay: a middlebox on the path to one endpoint (this kernel has no ``tc netem``).

Run it inside a namespace: ``fault_relay.py --listen IP:PORT --upstream IP:PORT --control SOCKET``. Every
connection accepted on ``--listen`` is relayed byte for byte to ``--upstream`` (TLS passes through
untouched: the relay sees only ciphertext, as a network path would), and faults are switched on and off
over a Unix socket (a file, so the test process reaches it from any namespace), one JSON object a line:

* ``{"mode": "pass"}``: relay as fast as it can.
* ``{"mode": "latency", "ms": 80}``: hold every chunk ``ms`` before passing it on, both directions, order
  kept (a slow link or a slow host; throughput is not capped).
* ``{"mode": "hang"}``: a hung host: connections are still accepted (the kernel would), nothing is passed
  on either way, old connections or new, and nothing is closed; ``pass`` resumes them where they stopped.
* ``{"reset": true}``: every open connection is aborted with a TCP RST on both sides, at once; new ones are
  relayed again as the mode says.
* ``{"stats": true}``: counts only.

Every command is answered with the counts: ``{"mode", "accepted", "open", "reset", "up_bytes",
"down_bytes"}``. The process prints ``ready`` once listening and runs until killed. :class:`RelayControl`
is the test side's client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 65536
#: Bytes held per direction before the relay stops reading (the peer then sees TCP back-pressure).
HELD_LIMIT = 1 << 20


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, and drops whatever was still queued.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Counts:
    accepted: int = 0
    reset: int = 0
    up_bytes: int = 0
    down_bytes: int = 0


class Relay:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.latency = 0.0
        self.counts = Counts()
        #: Set while bytes may flow (cleared by ``hang``).
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        mode = request.get("mode")
        if mode is not None:
            if mode not in ("pass", "latency", "hang"):
                return {"error": f"unknown mode {mode!r}"}
            self.mode = mode
            self.latency = float(request.get("ms", 0)) / 1000.0 if mode == "latency" else 0.0
            if mode == "hang":
                self.flowing.clear()
            else:
                self.flowing.set()
        if request.get("reset"):
            for downstream, upstream in list(self._open):
                _abort_with_reset(downstream)
                if upstream is not None:
                    _abort_with_reset(upstream)
                self.counts.reset += 1
            self._open.clear()
        return {"mode": self.mode, "open": len(self._open), **vars(self.counts)}

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.accepted += 1
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._open.add(pair)
        try:
            await self.flowing.wait()  # a hung host answers nothing, not even by connecting onwards
            if pair not in self._open:
                return  # reset while waiting
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._open.discard(pair)
            _abort_with_reset(writer)
            return
        self._open.discard(pair)
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, "up_bytes"), self._pipe(up_reader, writer, "down_bytes")
            )
        finally:
            self._open.discard(pair)
            for end in (writer, up_writer):
                end.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        """One direction: read, hold each chunk as the mode says (in order), write; pass a FIN or RST on."""
        held: collections.deque[tuple[float, bytes]] = collections.deque()
        held_bytes = 0
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()
        ended = broken = False

        async def read() -> None:
            nonlocal held_bytes, ended, broken
            last_due = 0.0
            try:
                while data := await reader.read(CHUNK):
                    # Never before an earlier chunk: a latency that drops must not reorder the stream.
                    last_due = max(time.monotonic() + self.latency, last_due)
                    held.append((last_due, data))
                    held_bytes += len(data)
                    arrived.set()
                    if held_bytes >= HELD_LIMIT:
                        room.clear()
                        await room.wait()
            except OSError:
                broken = True
            ended = True
            arrived.set()

        reading = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                while not held:
                    if ended:
                        if broken:  # a reset passes on as a reset, a FIN as a FIN
                            _abort_with_reset(writer)
                            return
                        with contextlib.suppress(OSError):
                            if writer.can_write_eof():
                                writer.write_eof()
                        return
                    arrived.clear()
                    await arrived.wait()
                due, data = held[0]
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.flowing.wait()
                held.popleft()
                held_bytes -= len(data)
                if held_bytes < HELD_LIMIT:
                    room.set()
                writer.write(data)
                setattr(self.counts, counter, getattr(self.counts, counter) + len(data))
                await writer.drain()
        except OSError:
            return
        finally:
            reading.cancel()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], control: Path) -> None:
    relay = Relay(upstream)
    server = await asyncio.start_server(relay.accept, *listen, reuse_address=True, backlog=1024)

    async def control_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while line := await reader.readline():
                try:
                    answer = relay.command(json.loads(line))
                except (ValueError, TypeError) as exc:
                    answer = {"error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        writer.close()

    control.unlink(missing_ok=True)
    controller = await asyncio.start_unix_server(control_connection, str(control))
    print("ready", flush=True)
    async with server, controller:
        await asyncio.Event().wait()


class RelayControl:
    """The test's side: send commands to a running relay's control socket (blocking; one connection each,
    so it can be used from any thread)."""

    def __init__(self, control: Path) -> None:
        self.path = control

    def send(self, **command: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.path))
            sock.sendall(json.dumps(command).encode() + b"\n")
            line = sock.makefile("rb").readline()
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise ValueError(f"the relay refused {command}: {answer['error']}")
        return answer

    def passing(self) -> dict[str, Any]:
        return self.send(mode="pass")

    def latency(self, ms: float) -> dict[str, Any]:
        return self.send(mode="latency", ms=ms)

    def hang(self) -> dict[str, Any]:
        return self.send(mode="hang")

    def reset(self) -> dict[str, Any]:
        return self.send(reset=True)

    def stats(self) -> dict[str, Any]:
        return self.send(stats=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--listen", required=True, help="IP:PORT to accept on")
    parser.add_argument("--upstream", required=True, help="IP:PORT to relay to")
    parser.add_argument("--control", required=True, type=Path, help="Unix socket for commands")
    args = parser.parse_args()
    asyncio.run(serve(_split(args.listen), _split(args.upstream), args.control))


if __name__ == "__main__":
    main()
