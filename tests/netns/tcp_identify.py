"""A TCP server that tells each client which port accepted it, and a client that records the answers.

``serve PORT...`` listens on every address at each port and prints ``ready``. Each accepted connection gets
one JSON line: the accepting port, the connection's original destination (SO_ORIGINAL_DST, set when an
iptables REDIRECT rewrote it) and the client's address. ``connect HOST:PORT...`` prints, per target, the
line the server sent, or ``{"error": ...}``. Standard library only: it runs inside namespaces as any UID.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from functools import partial
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_destination(sock: socket.socket) -> str | None:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return f"{socket.inet_ntoa(packed)}:{port}"


async def serve(ports: list[int]) -> None:
    async def answer(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        original = original_destination(sock)
        redirected = original is not None and original != f"{local[0]}:{local[1]}"
        reply = {
            "port": port,
            "original_dst": original if redirected else None,
            "peer": f"{peer[0]}:{peer[1]}",
        }
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    servers = []
    for port in ports:
        servers.append(await asyncio.start_server(partial(answer, port), "0.0.0.0", port, reuse_address=True))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def dial(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        reply: dict[str, Any] = json.loads(line) if line else {"error": "closed without an answer"}
    except (OSError, TimeoutError) as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    reply["target"] = target
    return reply


async def connect(targets: list[str]) -> None:
    for target in targets:
        print(json.dumps(await dial(target)), flush=True)


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "serve":
        asyncio.run(serve([int(port) for port in args]))
    elif command == "connect":
        asyncio.run(connect(args))
    else:
        raise SystemExit(f"unknown command {command!r}: use serve PORT... or connect HOST:PORT...")


if __name__ == "__main__":
    main()
