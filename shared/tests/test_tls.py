"""TLS helpers: TLS 1.3-only ssl contexts over a real loopback socket, and reloadable gRPC credentials."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
