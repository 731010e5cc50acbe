"""A plaintext HTTP/2 application and client that know nothing about proxies (h2 library, blocking sockets).

``serve PORT [HOST]`` answers every request with JSON describing what it saw: the :authority and :path, the
address it was reached at and the peer that connected (a HEAD request gets the headers only);
``/status/NNN`` answers with status NNN. It prints ``ready`` once listening. ``get URL...`` sends each
request on one connection and prints one JSON line per response: its status and decoded JSON body (or the
error).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events


def _address(sockaddr: Any) -> str:
    return f"{sockaddr[0]}:{sockaddr[1]}"


def _decoded(headers: Iterable[tuple[bytes, bytes]] | None) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in headers or []}


def _answer(conn: socket.socket) -> None:
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    seen = {"local": _address(conn.getsockname()), "peer": _address(conn.getpeername())}
    with conn:
        while data := conn.recv(65536):
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if not isinstance(event, h2.events.RequestReceived):
                    continue
                headers = _decoded(event.headers)
                path = headers.get(":path", "/")
                status = int(path.split("/")[2]) if path.startswith("/status/") else 200
                body = json.dumps({"authority": headers.get(":authority"), "path": path, **seen}).encode()
                response = [(":status", str(status)), ("content-type", "application/json")]
                head = headers.get(":method") == "HEAD"  # a HEAD response has no content
                h2conn.send_headers(
                    event.stream_id, [*response, ("content-length", str(len(body)))], end_stream=head
                )
                if not head:
                    h2conn.send_data(event.stream_id, body, end_stream=True)
            conn.sendall(h2conn.data_to_send())


def serve(port: int, host: str = "0.0.0.0") -> None:
    listener = socket.create_server((host, port))
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def get(urls: list[str]) -> None:
    first = urlsplit(urls[0])
    authority = first.netloc
    sock = socket.create_connection((first.hostname or "", first.port or 80), timeout=10)
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2conn.initiate_connection()
    sock.sendall(h2conn.data_to_send())
    with sock:
        for url in urls:
            stream_id = h2conn.get_next_available_stream_id()
            path = urlsplit(url).path or "/"
            request = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)]
            h2conn.send_headers(stream_id, request, end_stream=True)
            sock.sendall(h2conn.data_to_send())
            result: dict[str, Any] = {"url": url}
            body = b""
            done = False
            while not done:
                data = sock.recv(65536)
                if not data:
                    result["error"] = "connection closed"
                    break
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                        result["status"] = int(_decoded(event.headers)[":status"])
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                        body += event.data or b""
                        h2conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                        done = True
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                        result["error"] = f"stream reset: {event.error_code!r}"
                        done = True
                sock.sendall(h2conn.data_to_send())
            if body:
                result["body"] = json.loads(body)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "serve":
        serve(int(arguments[0]), *arguments[1:])
    else:
        get(arguments)
