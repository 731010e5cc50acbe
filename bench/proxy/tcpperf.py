"""The TCP scenarios' source/sink (``serve``) and client (``transfer``): blocking sockets, a thread per
connection, 1 MiB reads and writes, so that neither end is the bottleneck of a proxied transfer.

``serve PORT``: prints ``ready`` once listening on every address; on each connection reads one line,
``PUT <n>`` (it reads ``n`` bytes, then answers ``OK``) or ``GET <n>`` (it sends ``n`` bytes), then waits for
the client to close. Neither side relies on a half-close, which a proxy cannot pass on over mesh TLS.

``transfer HOST PORT up|down BYTES``: one connection, one transfer; prints JSON with the bytes moved and the
seconds from before ``connect`` to the ``OK`` (up) or the last byte (down).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

CHUNK = 1 << 20
PATTERN = bytes(range(256)) * (CHUNK // 256)


def send_bytes(sock: socket.socket, count: int) -> None:
    view = memoryview(PATTERN)
    while count > 0:
        sent = sock.send(view[: min(count, CHUNK)])
        count -= sent


def receive_bytes(sock: socket.socket, count: int) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while count > 0:
        got = sock.recv_into(view, min(count, CHUNK))
        if got == 0:
            raise ConnectionError(f"closed with {count} bytes still to come")
        count -= got


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("closed before a full line")
        line += byte
    return line.strip()


def answer(sock: socket.socket) -> None:
    with sock:
        try:
            verb, count = read_line(sock).split()
            if verb == b"PUT":
                receive_bytes(sock, int(count))
                sock.sendall(b"OK\n")
            elif verb == b"GET":
                send_bytes(sock, int(count))
            while sock.recv(CHUNK):  # until the client closes
                pass
        except (OSError, ValueError):
            pass


def serve(port: int) -> None:
    listener = socket.create_server(("0.0.0.0", port), backlog=128)
    print("ready", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=answer, args=(sock,), daemon=True).start()


def transfer(host: str, port: int, direction: str, count: int) -> dict[str, float]:
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=120) as sock:
        if direction == "up":
            sock.sendall(f"PUT {count}\n".encode())
            send_bytes(sock, count)
            if read_line(sock) != b"OK":
                raise ConnectionError("the server did not answer OK")
        else:
            sock.sendall(f"GET {count}\n".encode())
            receive_bytes(sock, count)
        seconds = time.perf_counter() - started
    return {"bytes": count, "seconds": seconds}


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 2:
        serve(int(argv[1]))
        return 0
    if argv[:1] == ["transfer"] and len(argv) == 5 and argv[3] in ("up", "down"):
        print(json.dumps(transfer(argv[1], int(argv[2]), argv[3], int(argv[4]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
