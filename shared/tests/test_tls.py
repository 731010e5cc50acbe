"""TLS helpers: TLS 1.3-only ssl contexts over a real loopback socket, and reloadable gRPC credentials."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import distributions
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.shared import GRPC_TLS13_ONLY_CIPHER_SUITES
from tether.shared.grpctls import ReloadableServerCredentials
from tether.shared.tls import KeyPair, client_ssl_context, server_ssl_context


def _self_signed(name: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(key_pem=key_pem, chain_pem=certificate.public_bytes(serialization.Encoding.PEM))


async def test_tls13_only_contexts_with_client_certificates() -> None:
    server_pair, client_pair = _self_signed("server.test"), _self_signed("client.test")
    seen: list[tuple[str | None, object]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        seen.append((tls.version(), tls.getpeercert()))
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_ssl_context(server_pair, client_ca_pem=client_pair.chain_pem)
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        context = client_ssl_context(server_pair.chain_pem, client_pair)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="server.test"
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()

        tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.load_verify_locations(cadata=server_pair.chain_pem.decode())
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=tls12, server_hostname="server.test")
    assert seen[0][0] == "TLSv1.3" and seen[0][1]


def test_key_pair_repr_hides_the_key() -> None:
    pair = _self_signed("server.test")
    assert "PRIVATE" not in repr(pair)


async def test_reloadable_credentials_serve_new_pair_on_new_connections() -> None:
    first, second = _self_signed("server.test"), _self_signed("server.test")
    credentials = ReloadableServerCredentials(first)
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", credentials.grpc_credentials())
    await server.start()
    try:

        def peer_certificate() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            import socket

            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

        def pem_to_der(pem: bytes) -> bytes:
            return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)

        assert await asyncio.to_thread(peer_certificate) == pem_to_der(first.chain_pem)
        credentials.update(second)
        assert await asyncio.to_thread(peer_certificate) == pem_to_der(second.chain_pem)
        assert credentials.current == second
    finally:
        await server.stop(0)


# gRPC in a Tether process is TLS 1.3 only. grpcio cannot set a minimum TLS version, so tether.shared sets the
# one knob its core reads when grpc is imported (GRPC_SSL_CIPHER_SUITES); it only counts when set before a
# process's first `import grpc`, so these tests run real processes.

SERVER = textwrap.dedent(
    """
    import sys
    from concurrent import futures
    from pathlib import Path

    from tether.shared.grpctls import grpc_server_credentials
    from tether.shared.tls import KeyPair

    import grpc

    folder = Path(sys.argv[1])
    pair = KeyPair(key_pem=(folder / "key.pem").read_bytes(), chain_pem=(folder / "cert.pem").read_bytes())
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(pair))
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    """
)

#: Imports an entry point's module with a finder that notes, when ``grpc`` is first imported, whether
#: the knob already held Tether's value; prints ``unused`` when the module never loads grpc.
PROBE = textwrap.dedent(
    """
    import importlib, os, sys

    class Watch:
        seen = None

        def find_spec(self, name, path=None, target=None):
            if name == "grpc" and Watch.seen is None:
                Watch.seen = os.environ.get("GRPC_SSL_CIPHER_SUITES")
            return None

    sys.meta_path.insert(0, Watch())
    importlib.import_module(sys.argv[1])
    print("unused" if Watch.seen is None else Watch.seen)
    """
)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    pair = _self_signed("tls13.test")
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    (tmp_path / "cert.pem").write_bytes(pair.chain_pem)
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(10)


def _handshake(port: int, version: ssl.TLSVersion) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the version is under test here, not the chain
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = version
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="tls13.test") as tls,
    ):
        return tls.version()


def test_a_grpc_server_in_a_tether_process_refuses_tls12(tls_server: int) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server, ssl.TLSVersion.TLSv1_2)
    assert _handshake(tls_server, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def _tether_entry_modules() -> list[str]:
    modules = {
        entry.module
        for dist in distributions()
        for entry in dist.entry_points
        if entry.group == "console_scripts" and entry.module.startswith("tether.")
    }
    return sorted(modules)


def test_the_entry_points_are_found() -> None:
    # The parametrised test below is only as good as this list.
    services = ("destination", "identity", "telemetry", "public_api", "proxy")
    assert {f"tether.{name}.__main__" for name in services} <= set(_tether_entry_modules())


@pytest.mark.parametrize("module", _tether_entry_modules())
def test_every_entry_point_sets_tls13_only_before_grpc_loads(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=60, check=True
    )
    seen = done.stdout.strip().splitlines()[-1]
    assert seen in {"unused", GRPC_TLS13_ONLY_CIPHER_SUITES}, f"{module}: grpc loaded with suites {seen!r}"
