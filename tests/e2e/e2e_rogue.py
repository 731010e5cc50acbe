"""What a workload gone rogue does, run inside its pod (exec'd): each command prints one JSON line.

* ``certify --identity NAME [--token-file F | --token T | --no-token] --trust-anchors CA --out DIR``: asks
  the identity service (its Service name, over TLS) for a certificate for NAME with a fresh key; prints
  ``{"code": "OK"|<gRPC status>, "detail"}`` and on success writes DIR/{cert.pem,key.pem}.
* ``tls-client --host H --port P --sni S [--cert C --key K]``: a TLS 1.3 client with ALPN h2 presenting C,
  then one gRPC call to books (``--path``); prints ``{"handshake", "answered", "client_id", "error"}``
  (``client_id``: the ``tether-client-id`` books answered it saw).
* ``serve-tls --port P --cert C --key K --record FILE``: a TLS server presenting C whatever the client asks
  for; one JSON line per connection in FILE (``sni``, ``handshake``, ``request_bytes``); prints ``ready``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IDENTITY_ADDR = "tether-identity.tether.svc.cluster.local:8080"
IDENTITY_SERVER = "identity.tether.serviceaccount.identity.cluster.local"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def certify(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from tether.shared.identity_names import parse_identity
    from tether.shared.keygen import make_key_and_csr
    from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc

    # The CSR is for what the rogue wants; parse_identity only checks the name's form.
    material = make_key_and_csr(parse_identity(args.identity))
    token = b""
    if args.token_file:
        token = Path(args.token_file).read_bytes().strip()
    elif args.token:
        token = args.token.encode()
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.trust_anchors).read_bytes())
    options = [("grpc.ssl_target_name_override", IDENTITY_SERVER)]
    with grpc.secure_channel(IDENTITY_ADDR, credentials, options=options) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)
        request = identity_pb2.CertifyRequest(
            identity=args.identity, token=token, certificate_signing_request=material.csr_der
        )
        try:
            response = stub.Certify(request, timeout=10)
        except grpc.RpcError as error:
            return {"code": error.code().name, "detail": error.details()}
    if not args.out:
        return {"code": "OK", "detail": ""}
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chain = [response.leaf_certificate, *response.intermediate_certificates]
    pem = b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in chain
    )
    (out / "cert.pem").write_bytes(pem)
    (out / "key.pem").write_bytes(material.key_pem)
    return {"code": "OK", "detail": ""}


def tls_client(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the rogue does not care who answers
    context.set_alpn_protocols(["h2"])
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    result: dict[str, Any] = {"handshake": False, "answered": False, "error": None}
    try:
        with (
            socket.create_connection((args.host, args.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=args.sni) as tls,
        ):
            result["handshake"] = True
            request = (
                _get(args.authority or args.sni, args.path)
                if args.get
                else _grpc_request(args.authority or args.sni, args.path)
            )
            tls.sendall(PREFACE + _frame(4, 0, 0, b"") + request)
            frames = _Frames(tls)
            for kind, flags, stream, payload in frames:
                if stream != 1:
                    continue
                if kind == 1:
                    result["answered"] = True
                elif kind == 0:
                    result["body"] = result.get("body", "") + payload.decode(errors="replace")
                if flags & 0x1 or kind == 3:  # END_STREAM, or RST_STREAM
                    break
            found = re.search(r'"client_id": ("[^"]*"|null)', result.get("body", ""))
            result["client_id"] = json.loads(found[1]) if found else None
    except (OSError, ssl.SSLError) as error:
        result["error"] = f"{type(error).__name__}: {error}"[:300]
    return result


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _grpc_request(authority: str, path: str) -> bytes:
    """HEADERS and DATA (END_STREAM) of one unary gRPC call on stream 1 (a JSON message, as books takes)."""
    from hpack import Encoder

    block = Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    message = b'{"id": "1"}'
    data = b"\x00" + len(message).to_bytes(4, "big") + message
    return _frame(1, 0x4, 1, block) + _frame(0, 0x1, 1, data)


def _get(authority: str, path: str) -> bytes:
    """A GET as a peer proxy sends an HTTP/1.1 client's request over the mesh (its protocol in a header)."""
    from hpack import Encoder

    block = Encoder().encode(
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("tether-orig-proto", "HTTP/1.1"),
        ]
    )
    return _frame(1, 0x5, 1, block)


class _Frames:
    """HTTP/2 frames read from a socket until it closes or times out: (type, flags, stream, payload)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def __iter__(self) -> Iterator[tuple[int, int, int, bytes]]:
        while True:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                head, payload = self.buffer[:9], self.buffer[9 : 9 + length]
                self.buffer = self.buffer[9 + length :]
                yield head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
            try:
                chunk = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not chunk:
                return
            self.buffer += chunk


def h2_frame_kinds(data: bytes) -> list[int]:
    """The frame types of an HTTP/2 client's byte stream (after its preface)."""
    data = data.removeprefix(PREFACE)
    kinds = []
    while len(data) >= 9:
        kinds.append(data[3])
        data = data[9 + int.from_bytes(data[:3], "big") :]
    return kinds


def serve_tls(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["h2", "http/1.1", "tether.tcp"])
    seen: dict[int, str | None] = {}

    def remember(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        seen[id(sock)] = name

    context.sni_callback = remember
    record = open(args.record, "a", encoding="utf-8")  # noqa: SIM115 - kept open while serving
    lock = threading.Lock()

    def handle(raw: socket.socket) -> None:
        entry: dict[str, Any] = {"handshake": False, "request_bytes": 0}
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                entry["handshake"] = True
                entry["sni"] = seen.get(id(tls))
                tls.settimeout(5)
                received = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                entry["request_bytes"] = len(received)
                # What an HTTP/2 client sent: its preface and SETTINGS are no request; HEADERS (1) would be.
                entry["frame_kinds"] = h2_frame_kinds(received)
        except (OSError, ssl.SSLError) as error:
            entry["error"] = f"{type(error).__name__}: {error}"[:200]
        with lock:
            record.write(json.dumps(entry) + "\n")
            record.flush()

    listener = socket.create_server(("0.0.0.0", args.port), reuse_port=False)
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=handle, args=(connection,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cert = commands.add_parser("certify")
    cert.add_argument("--identity", required=True)
    cert.add_argument("--token-file", default="")
    cert.add_argument("--token", default="")
    cert.add_argument("--no-token", action="store_true")
    cert.add_argument("--trust-anchors", required=True)
    cert.add_argument("--out", default="")
    client = commands.add_parser("tls-client")
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--sni", required=True)
    client.add_argument("--cert", default="")
    client.add_argument("--key", default="")
    client.add_argument("--path", default="/shop.Books/Get")
    client.add_argument("--authority", default="")
    client.add_argument("--get", action="store_true", help="a plain GET instead of a gRPC call")
    server = commands.add_parser("serve-tls")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--record", required=True)
    args = parser.parse_args()
    if args.command == "serve-tls":
        serve_tls(args)
        return
    result = certify(args) if args.command == "certify" else tls_client(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
