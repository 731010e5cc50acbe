"""The shop's applications. They know nothing of the mesh: plain grpcio, http.server and sockets, dialling
``<service>.shop.svc.cluster.local:<port>`` as any Kubernetes application would.

* ``web`` (HTTP/1.1, ThreadingHTTPServer): ``GET /chain?id=N`` asks ``books`` (gRPC) and answers JSON with
  who served each hop and the ``tether-client-id`` each hop saw; ``GET /echo`` answers the request's own
  headers; ``GET /healthz``. A second listener on 127.0.0.1 only (``--secret-port``) answers a secret: what
  a pod keeps to itself, which the inbound proxy must never relay to.
* ``books`` (gRPC, grpcio): ``/shop.Books/Get`` counts the book in Redis (``INCR`` over a plain TCP
  connection per thread) and answers JSON with its pod name and the caller's ``tether-client-id``.
* ``idle``: a pod's main process doing nothing (load generators and probes are exec'd into such pods).

Run as scripts (``python e2e_apps.py web ...``); every message to the harness is one line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CLIENT_ID = "tether-client-id"
BOOKS_GET = "/shop.Books/Get"
SECRET = b"the pod's own secret\n"


def pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def _stop_on_sigterm(stop: threading.Event) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())


# --- web -------------------------------------------------------------------------------------------


def web(port: int, books: str, secret_port: int, books_timeout: float) -> None:
    import grpc

    channel = grpc.insecure_channel(books)
    get_book = channel.unary_unary(BOOKS_GET)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._reply(200, b"ok\n", "text/plain")
            elif url.path == "/echo":
                headers = [[name.lower(), value] for name, value in self.headers.items()]
                self._reply(200, json.dumps({"pod": pod_name(), "headers": headers}).encode())
            elif url.path == "/chain":
                book = (parse_qs(url.query).get("id") or ["1"])[0]
                try:
                    raw = get_book(json.dumps({"id": book}).encode(), timeout=books_timeout)
                except grpc.RpcError as error:
                    message = {"error": f"books: {error.code().name}: {error.details()}"}
                    self._reply(502, json.dumps(message).encode())
                    return
                answer = json.loads(raw)
                reply = {
                    "served_by": {"web": pod_name(), "books": answer["pod"]},
                    "client_id": {"web": self.headers.get(CLIENT_ID), "books": answer["client_id"]},
                    "count": answer["count"],
                }
                self._reply(200, json.dumps(reply).encode())
            else:
                self._reply(404, b'{"error": "not found"}')

        def log_message(self, format: str, *args: Any) -> None:
            return None

    class Secret(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(SECRET)))
            self.end_headers()
            self.wfile.write(SECRET)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    secret = ThreadingHTTPServer(("127.0.0.1", secret_port), Secret)
    threading.Thread(target=secret.serve_forever, daemon=True).start()
    stop = threading.Event()
    _stop_on_sigterm(stop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    server.shutdown()
    channel.close()


# --- books -----------------------------------------------------------------------------------------


class Redis:
    """One plain RESP connection per thread (``INCR`` only): what a Redis client library does."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.local = threading.local()

    def incr(self, key: str) -> int:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = socket.create_connection(self.address, timeout=5)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local.connection = connection
            self.local.reader = connection.makefile("rb")
        try:
            connection.sendall(f"INCR {key}\r\n".encode())
            line = self.local.reader.readline()
        except OSError:
            self.local.connection = None
            connection.close()
            raise
        if not line.startswith(b":"):
            self.local.connection = None
            connection.close()
            raise OSError(f"redis answered {line[:100]!r}")
        return int(line[1:])


def _health_server(port: int) -> ThreadingHTTPServer:
    """``GET /healthz`` on ``port``: started once the service it speaks for is serving."""

    class Health(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("0.0.0.0", port), Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def books(port: int, redis: str, health_port: int) -> None:
    import grpc

    host, _, redis_port = redis.rpartition(":")
    store = Redis(host, int(redis_port))

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        book = json.loads(request).get("id", "1")
        try:
            count = store.incr(f"book:{book}")
        except OSError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"redis: {error}")
        answer = {"pod": pod_name(), "client_id": metadata.get(CLIENT_ID), "count": count}
        return json.dumps(answer).encode()

    handler = grpc.method_handlers_generic_handler(
        "shop.Books", {"Get": grpc.unary_unary_rpc_method_handler(get)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    # A readiness probe of the application itself: a TCP probe would pass as soon as the pod's inbound
    # proxy accepts (iptables hands it every connection), before this server listens.
    health = _health_server(health_port)
    stop = threading.Event()
    _stop_on_sigterm(stop)
    print("ready", flush=True)
    stop.wait()
    health.shutdown()
    # As a grpcio server does on SIGTERM: finish what is in flight, refuse what is new.
    server.stop(grace=5).wait()


def idle() -> None:
    stop = threading.Event()
    _stop_on_sigterm(stop)
    print("ready", flush=True)
    stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    web_args = commands.add_parser("web")
    web_args.add_argument("--port", type=int, default=8080)
    web_args.add_argument("--books", default="books.shop.svc.cluster.local:9090")
    web_args.add_argument("--secret-port", type=int, default=7070)
    web_args.add_argument("--books-timeout", type=float, default=1.5)
    books_args = commands.add_parser("books")
    books_args.add_argument("--port", type=int, default=9090)
    books_args.add_argument("--redis", default="redis.shop.svc.cluster.local:6379")
    books_args.add_argument("--health-port", type=int, default=9091)
    commands.add_parser("idle")
    args = parser.parse_args()
    if args.command == "web":
        web(args.port, args.books, args.secret_port, args.books_timeout)
    elif args.command == "books":
        books(args.port, args.redis, args.health_port)
    else:
        idle()


if __name__ == "__main__":
    main()
