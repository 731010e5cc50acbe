"""Tiny TCP applications for the opaque-TCP and detection tests (blocking sockets, a thread per connection).

``echo PORT...``: sends back every byte it receives; when the client half-closes, it half-closes too.
``banner PORT... --text T``: a server-speaks-first protocol (as SMTP or MySQL): the moment a connection is
accepted it sends ``T`` and a CRLF, then echoes like ``echo``.
Both print ``ready`` once listening on every port (all addresses).
"""

from __future__ import annotations

import argparse
import socket
import threading


def _echo(sock: socket.socket, banner: bytes) -> None:
    with sock:
        try:
            if banner:
                sock.sendall(banner)
            while data := sock.recv(65536):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["echo", "banner"])
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--text", default="")
    args = parser.parse_args()
    banner = (args.text + "\r\n").encode() if args.command == "banner" else b""

    def accept_forever(listener: socket.socket) -> None:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_echo, args=(sock, banner), daemon=True).start()

    for port in args.ports:
        listener = socket.create_server(("0.0.0.0", port), backlog=128)
        threading.Thread(target=accept_forever, args=(listener,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
