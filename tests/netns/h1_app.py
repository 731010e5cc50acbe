"""A plaintext (or TLS) HTTP/1.1 application that knows nothing about proxies: h11 on blocking sockets, one
thread per connection, keep-alive. And a WebSocket echo server (the ``websockets`` package).

``serve --port P [--port P2 ...] [--host H] [--record FILE] [--tls-cert C --tls-key K]`` prints ``ready``
once listening. Every connection that delivers a byte, every request head and every body it receives is
appended to ``--record`` as one JSON line, before anything is answered: a test can tell that nothing reached
the application (no new line) whatever the proxy in front of it did. Routes (any method):

* ``/fixed``: a fixed text body with headers whose case, order and repetition a proxy must keep
  (``HEAD /fixed``: the same headers, no body);
* ``/status/NNN``: that status and an empty body (no body at all for 204 and 304);
* ``/stream/N``: N bytes of a repeating pattern, chunked, in 64 KiB chunks;
* ``/upload``: the request body's length and SHA-256 as JSON (``Expect: 100-continue`` is answered with a
  ``100 Continue`` before the body is read, as on every route);
* anything else: JSON echo of what the application saw (method, target, header fields in order, body length
  and digest, the local and peer addresses).

``ws --port P [--host H]``: a WebSocket echo server (text and binary messages sent back as they came).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import h11

FIXED_BODY = b"".join(b"line %04d of the fixed body\n" % index for index in range(200))
STREAM_CHUNK = 64 * 1024
#: A request head (line + fields) the application accepts: more than the proxy's limits, so that the
#: proxy, not the application, is what refuses oversized requests.
MAX_HEAD_BYTES = 1024 * 1024


def pattern(size: int) -> Iterator[bytes]:
    """``size`` bytes of a repeating, position-dependent pattern, in STREAM_CHUNK pieces."""
    block = bytes(range(256)) * (STREAM_CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(STREAM_CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    return digest.hexdigest()


class Recorder:
    """Appends one JSON line per event to a file (or nowhere), flushed at once, from any thread."""

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 (process lifetime)
        self._lock = threading.Lock()

    def __call__(self, **event: Any) -> None:
        if self._file is None:
            return
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def _address(sockaddr: Any) -> str:
    return f"{sockaddr[0]}:{sockaddr[1]}"


def _common_headers(content_type: str) -> list[tuple[str, str]]:
    return [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", "h1-app"),
        ("Content-Type", content_type),
    ]


class Connection:
    def __init__(self, sock: socket.socket, record: Recorder, number: int, port: int) -> None:
        self.sock = sock
        self.record = record
        self.number = number
        self.port = port
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.local = _address(sock.getsockname())
        self.peer = _address(sock.getpeername())
        self.seen_bytes = False

    def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = self.sock.recv(65536)
            if data and not self.seen_bytes:
                self.seen_bytes = True
                self.record(
                    kind="connection",
                    conn=self.number,
                    port=self.port,
                    peer=self.peer,
                    first_bytes=data[:200].decode("latin-1"),
                )
            self.h11.receive_data(data)

    def serve(self) -> None:
        try:
            while True:
                if not self.one_exchange():
                    return
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                else:
                    return
        except h11.RemoteProtocolError as exc:
            self.record(kind="error", conn=self.number, port=self.port, error=str(exc))
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    self.send(
                        h11.Response(status_code=exc.error_status_hint, headers=[("Content-Length", "0")])
                    )
                    self.send(h11.EndOfMessage())
                except (h11.LocalProtocolError, OSError):
                    pass
        except OSError:
            pass
        finally:
            self.sock.close()

    def one_exchange(self) -> bool:
        event = self.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request), event
        method = event.method.decode()
        target = event.target.decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers.raw_items()
        ]
        self.record(
            kind="request", conn=self.number, port=self.port, method=method, target=target, headers=headers,
            peer=self.peer, http_version=event.http_version.decode(),
        )  # fmt: skip
        waited_for_100 = self.h11.they_are_waiting_for_100_continue
        if waited_for_100:
            self.send(h11.InformationalResponse(status_code=100, headers=[]))
        digest = hashlib.sha256()
        length = 0
        while True:
            part = self.next_event()
            if isinstance(part, h11.Data):
                digest.update(part.data)
                length += len(part.data)
            elif isinstance(part, h11.EndOfMessage):
                break
            elif isinstance(part, h11.ConnectionClosed):
                self.record(kind="truncated", conn=self.number, port=self.port, target=target, length=length)
                return False
        body_seen = {"length": length, "sha256": digest.hexdigest()}
        self.record(kind="body", conn=self.number, port=self.port, target=target, **body_seen)
        self.respond(method, target, headers, body_seen, waited_for_100)
        return True

    def respond(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body_seen: dict[str, Any],
        waited_for_100: bool,
    ) -> None:
        path = target.split("?", 1)[0]
        head = method == "HEAD"
        if path == "/fixed":
            self.send(
                h11.Response(
                    status_code=200,
                    headers=[
                        *_common_headers("text/plain; charset=utf-8"),
                        ("X-Mixed-Case", "Kept As Sent"),
                        ("Set-Cookie", "first=1; Path=/"),
                        ("x-lower", "lower"),
                        ("Set-Cookie", "second=2; Path=/"),
                        ("Cache-Control", "no-store"),
                        ("Content-Length", str(len(FIXED_BODY))),
                    ],
                )
            )
            if not head:
                self.send(h11.Data(data=FIXED_BODY))
            self.send(h11.EndOfMessage())
            return
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            extra = [] if status in (204, 304) or 100 <= status < 200 else [("Content-Length", "0")]
            self.send(h11.Response(status_code=status, headers=[*_common_headers("text/plain"), *extra]))
            self.send(h11.EndOfMessage())
            return
        if path.startswith("/stream/"):
            size = int(path.split("/")[2])
            self.send(h11.Response(status_code=200, headers=_common_headers("application/octet-stream")))
            if not head:
                for piece in pattern(size):
                    self.send(h11.Data(data=piece))
            self.send(h11.EndOfMessage())
            return
        if path == "/upload":
            body = json.dumps(body_seen, sort_keys=True).encode()
        else:
            body = json.dumps(
                {
                    "method": method,
                    "target": target,
                    "headers": headers,
                    "body": body_seen,
                    "expect_100": waited_for_100,
                    "local": self.local,
                    "peer": self.peer,
                },
                sort_keys=True,
            ).encode()
        self.send(
            h11.Response(
                status_code=200,
                headers=[*_common_headers("application/json"), ("Content-Length", str(len(body)))],
            )
        )
        if not head:
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())


def serve(ports: list[int], host: str, record: Recorder, tls: ssl.SSLContext | None) -> None:
    counter = iter(range(1, 1 << 62))
    lock = threading.Lock()

    def accept_forever(listener: socket.socket, port: int) -> None:
        while True:
            sock, _ = listener.accept()
            with lock:
                number = next(counter)
            threading.Thread(target=handle, args=(sock, number, port), daemon=True).start()

    def handle(sock: socket.socket, number: int, port: int) -> None:
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                record(kind="tls_error", conn=number, port=port, error=str(exc))
                sock.close()
                return
        Connection(sock, record, number, port).serve()

    listeners = [socket.create_server((host, port), backlog=128) for port in ports]
    for listener, port in zip(listeners, ports, strict=True):
        threading.Thread(target=accept_forever, args=(listener, port), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def serve_websocket(port: int, host: str) -> None:
    from websockets.sync.server import ServerConnection
    from websockets.sync.server import serve as ws_serve

    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(message)

    with ws_serve(echo, host, port, max_size=None) as server:
        print("ready", flush=True)
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve", "ws"])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--record")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    if args.command == "ws":
        serve_websocket(args.port[0], args.host)
        return
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    serve(args.port, args.host, Recorder(args.record), tls)


if __name__ == "__main__":
    main()
