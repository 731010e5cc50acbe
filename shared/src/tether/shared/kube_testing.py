"""Test support for emulating the Kubernetes API server's wire protocol: the pieces every emulator repeats.

No Kubernetes API server can run in the tests, so each test that needs one runs a small emulator of the
requests its component makes. What they all share is here: the API's ``Status`` body (:func:`status`), and
:class:`EmulatedApiServer`, a loopback HTTP server in a thread that reads each request (:class:`Request`),
records it, and writes the JSON answer (or a watch's chunked stream, :class:`Watch`) its ``answer`` gives.
What an emulator answers, and how it authorises and records what it sees, stays with the emulator.

Kept in the library (like :mod:`tether.shared.testing`) because the tests of several packages use it;
nothing in a production code path imports it, and it imports no component.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` object (``kind: Status``, ``status: Failure``), the body of every API error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = dict(details)
    return body


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the emulator received it."""

    method: str
    #: The request target: path and query, as sent.
    target: str
    #: Header names in lower case (a repeated field: its last value).
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (a repeated one: its last value)."""
        return {key: values[-1] for key, values in parse_qs(urlsplit(self.target).query).items()}

    def json(self) -> Any:
        """The body as JSON; ``None`` without one."""
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class Watch:
    """An answer that is a watch: ``200`` and a chunked stream of ``events`` (``{"type": ..., "object": ...}``
    each, one JSON line per chunk), written as the iterable yields them and ended when it is exhausted."""

    events: Iterable[Mapping[str, Any]]


#: An answer: an HTTP status and its JSON body, or a watch stream.
Answer = tuple[int, Any] | Watch


class EmulatedApiServer:
    """A loopback HTTP server, in a daemon thread, answering every request with ``answer(request)``.

    ``keep_alive`` serves HTTP/1.1 with persistent connections, as the API server serves a client's
    connection pool; without it each connection carries one request (HTTP/1.0), so that once stopped the
    server answers nothing more, not even on a connection a client kept. Every request is recorded in
    :attr:`requests`, before it is answered.
    """

    def __init__(
        self, answer: Callable[[Request], Answer], *, keep_alive: bool = True, poll_interval: float = 0.05
    ) -> None:
        self.requests: list[Request] = []
        self._answer = answer
        self._lock = threading.Lock()
        self._poll_interval = poll_interval
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            # Head and body go out in two writes: without this, each response waits out a delayed ACK.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {key.lower(): value for key, value in self.headers.items()}
                request = Request(self.command, self.path, headers, body)
                with emulator._lock:
                    emulator.requests.append(request)
                answer = emulator._answer(request)
                if isinstance(answer, Watch):
                    _stream(self, answer.events)
                else:
                    _send(self, *answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A kept connection's thread waits for the client's next request: stop() must not wait for it.
        self._server.daemon_threads = keep_alive
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        """Serves from now on; the server's URL."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self._poll_interval,), daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> EmulatedApiServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _send(handler: BaseHTTPRequestHandler, code: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _stream(handler: BaseHTTPRequestHandler, events: Iterable[Mapping[str, Any]]) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.flush()
    with contextlib.suppress(OSError):  # the client may have gone first
        for event in events:
            data = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
    handler.close_connection = True
