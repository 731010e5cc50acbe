"""Automatic mTLS between proxies, with the real identity and destination services and grpcio apps.

Every pod's proxy gets its certificate from the real identity service (in-process, local tokens); the real
destination service, itself serving TLS with its own mesh certificate, announces each endpoint's identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_harness import identity_of
from proxy_mesh import NAMESPACE, Mesh, Pod, authority, metric, ready_pod, unary

from tether.proxy.tlsconfig import server_context
from tether.shared.grpc_certify import GrpcCertify
from tether.shared.keygen import make_key_and_csr
from tether.shared.natsserver import free_port
from tether.shared.testing import eventually
from tether.shared.tls import KeyPair


async def test_meshed_pods_talk_mtls_with_the_expected_identities(meshed: Mesh) -> None:
    server = await ready_pod(meshed, "echo", meshed=True)
    client = await ready_pod(meshed, meshed=True, serviceaccount="web")
    await meshed.register("echo", [server])
    client_id = identity_of("web", NAMESPACE).dns_name
    server_id = identity_of("echo", NAMESPACE).dns_name
    async with client.channel(authority("echo")) as channel:
        call = unary(channel)
        assert await call(b"echo:hi", timeout=10) == b"echo:hi"
        # The application learns who called it from the inbound proxy; a header the client sends itself
        # is dropped first.
        assert await call(b"whoami", timeout=5) == client_id.encode()
        spoofed = await call(b"whoami", timeout=5, metadata=(("tether-client-id", "root.kube-system"),))
        assert spoofed == client_id.encode()
    assert metric(server, "request_total", direction="inbound", tls="true", client_id=client_id) == 3
    assert metric(client, "request_total", direction="outbound", tls="true", server_id=server_id) == 3
    assert metric(client, "tcp_open_total", direction="outbound", peer="dst", tls="true") == 1
    assert metric(server, "tcp_open_total", direction="inbound", peer="src", tls="true") == 1
    assert metric(client, "identity_cert_refresh_count") >= 1
    assert metric(client, "identity_cert_expiration_timestamp_seconds") > datetime.now(UTC).timestamp()


async def _impostor(mesh: Mesh, holding: str) -> tuple[asyncio.Server, int, list[int]]:
    """A TLS server with a genuine mesh certificate for ``holding``, answering any SNI (as an attacker
    would, unlike a Tether proxy); it counts the TLS sessions that reached it."""
    harness = mesh.identity
    assert harness is not None
    identity = identity_of(holding, NAMESPACE)
    key = make_key_and_csr(identity)
    anchors = harness.trust_anchors.read_bytes()
    certify = GrpcCertify(harness.addr, anchors, harness.server_name)
    issued = await certify(identity, harness.token_file(identity).read_bytes(), key.csr_der)
    await certify.close()
    chain = "".join(ssl.DER_cert_to_PEM_cert(der) for der in (issued.leaf_der, *issued.intermediates_der))
    context = server_context(anchors, KeyPair(key_pem=key.key_pem, chain_pem=chain.encode()), ["h2"])
    sessions: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.99", 0, ssl=context)
    return server, int(server.sockets[0].getsockname()[1]), sessions


async def test_a_server_holding_another_identity_is_refused_and_counted(meshed: Mesh) -> None:
    client = await ready_pod(meshed, meshed=True, serviceaccount="web")
    server, port, sessions = await _impostor(meshed, holding="impostor")
    try:
        # Destination says "echo" is served at that address by the echo identity.
        meshed.registry_file.write_text(
            "services:\n  - namespace: test\n    name: echo\n    ports: [{name: grpc, port: 8080}]\n"
            f"    endpoints:\n      - address: 127.0.0.99\n        port: {port}\n"
            f"        identity: {identity_of('echo', NAMESPACE).dns_name}\n"
        )
        await meshed.wait_served("echo", {("127.0.0.99", port)})
        async with client.channel(authority("echo")) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await unary(channel)(b"echo:hi", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sessions, "the handshake itself succeeded: the chain is the mesh's"
        assert metric(client, "proxy_identity_mismatch_total", peer="endpoint") >= 1
        assert metric(client, "request_total", direction="outbound", tls="true") >= 1
    finally:
        server.close()


async def test_a_proxy_refuses_tls_for_a_name_that_is_not_its_own(meshed: Mesh) -> None:
    """A meshed client sent to a proxy that holds another identity: refused at the server side."""
    other = await ready_pod(meshed, "echo", meshed=True, serviceaccount="other")
    client = await ready_pod(meshed, meshed=True, serviceaccount="web")
    other.identity = identity_of("echo", NAMESPACE).dns_name  # what destination will announce
    await meshed.register("echo", [other])
    async with client.channel(authority("echo")) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(channel)(b"echo:hi", timeout=5)
    # Not its name, so not mesh TLS: the application's own, relayed untouched (and the app, an h2c server,
    # fails the handshake).
    assert metric(other, "proxy_protocol_detected_total", direction="inbound", protocol="opaque") >= 1
    assert other.app is not None and other.app.calls == 0


async def test_plaintext_clients_are_labelled_and_refused_when_identity_is_required(meshed: Mesh) -> None:
    open_server = await ready_pod(meshed, "open", meshed=True)
    strict_server = await ready_pod(meshed, "strict", meshed=True, inbound_policy="all-authenticated")

    def unmeshed(pod: Pod) -> grpc.aio.Channel:
        """A client without a proxy of its own, dialling the pod (and redirected to its inbound proxy)."""
        return grpc.aio.insecure_channel(f"{pod.host}:{pod.proxy.inbound_port}")

    async with unmeshed(open_server) as channel:
        assert await unary(channel)(b"whoami", timeout=10) == b"-"
    plain = {"direction": "inbound", "tls": "no_identity", "no_tls_reason": "no_tls_from_remote"}
    assert metric(open_server, "request_total", **plain) == 1
    async with unmeshed(strict_server) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(channel)(b"echo:hi", timeout=5)
    assert metric(strict_server, "inbound_connections_refused_total", reason="identity_required") >= 1
    assert strict_server.app is not None and strict_server.app.calls == 0
    # Per port: plaintext refused on a listed application port only.
    guarded_port = free_port()
    guarded = await ready_pod(
        meshed, "guarded", meshed=True, app_port=guarded_port, require_identity_ports=(guarded_port,)
    )
    other = await ready_pod(meshed, "other", meshed=True, require_identity_ports=(guarded_port,))
    async with unmeshed(guarded) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(channel)(b"echo:hi", timeout=5)
    async with unmeshed(other) as channel:
        assert await unary(channel)(b"whoami", timeout=10) == b"-"
    assert metric(guarded, "inbound_connections_refused_total", reason="identity_required") >= 1


def _foreign_client_certificate(identity: str) -> tuple[bytes, bytes]:
    """A leaf for ``identity`` signed by a CA this mesh does not trust: (chain PEM, key PEM)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "not the mesh")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem


async def _handshake(pod: Pod, context: ssl.SSLContext) -> None:
    """A TLS handshake with the pod's inbound listener naming its identity; raises when it fails."""
    assert pod.identity is not None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(pod.host, pod.proxy.inbound_port, ssl=context, server_hostname=pod.identity),
        10,
    )
    try:
        # TLS 1.3 reports a refused client certificate only after the handshake: read to see it.
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 5)
        if not data:
            raise ConnectionResetError("closed by the proxy")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_client_certificates_from_another_ca_and_old_tls_versions_are_refused(meshed: Mesh) -> None:
    server = await ready_pod(meshed, "echo", meshed=True)
    assert meshed.identity is not None
    anchors = meshed.identity.trust_anchors.read_bytes().decode()

    def context(maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
        made = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        made.check_hostname = False
        made.load_verify_locations(cadata=anchors)
        made.maximum_version = maximum
        made.set_alpn_protocols(["h2"])
        return made

    stranger = context()
    chain, key = _foreign_client_certificate(identity_of("web", NAMESPACE).dns_name)
    directory = meshed.tmp_path / "stranger"
    directory.mkdir()
    (directory / "chain.pem").write_bytes(chain)
    (directory / "key.pem").write_bytes(key)
    stranger.load_cert_chain(directory / "chain.pem", directory / "key.pem")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _handshake(server, stranger)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _handshake(server, context())  # no client certificate at all
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await _handshake(server, context(ssl.TLSVersion.TLSv1_2))
    await eventually(
        lambda: metric(server, "inbound_connections_refused_total", reason="tls_handshake_failed") >= 2,
        5.0,
        "refusals counted",
    )
    assert server.app is not None and server.app.calls == 0


async def test_tls_for_another_name_is_the_applications_own_and_not_terminated(meshed: Mesh) -> None:
    server = await ready_pod(meshed, "echo", meshed=True)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                server.host, server.proxy.inbound_port, ssl=probe, server_hostname="api.example.com"
            ),
            10,
        )
        writer.close()
    # Relayed to the application as TCP, untouched (the application, an h2c server, fails the handshake).
    assert metric(server, "proxy_protocol_detected_total", direction="inbound", protocol="opaque") == 1
    assert metric(server, "tcp_open_total", direction="inbound", peer="dst") >= 1


async def test_an_identity_service_presenting_another_identity_is_refused(meshed: Mesh) -> None:
    """Certify goes only to the identity service the proxy was told to expect: one answering with another
    name's certificate gets no CSR, the proxy stays not ready (it holds no certificate) and counts it."""
    me = identity_of("web", NAMESPACE)
    expecting = msgspec.structs.replace(
        meshed.identity_config(me), server_name=identity_of("not-identity", "tether").dns_name
    )
    fooled = await meshed.pod(meshed=True, serviceaccount="web", identity=expecting)
    await eventually(
        lambda: metric(fooled, "proxy_identity_mismatch_total", peer="identity") >= 1, 10, "a refused Certify"
    )
    assert not fooled.runtime.ready()
    assert metric(fooled, "identity_cert_refresh_count") == 0


async def test_the_destination_stream_is_tls_with_the_destinations_identity(meshed: Mesh) -> None:
    server = await ready_pod(meshed, "echo", meshed=True)
    await meshed.register("echo", [server])
    trusting = await ready_pod(meshed, meshed=True, serviceaccount="web")
    fooled = await ready_pod(
        meshed,
        meshed=True,
        serviceaccount="web",
        destination_server_name=identity_of("not-destination", "tether").dns_name,
    )
    async with trusting.channel(authority("echo")) as channel:
        assert await unary(channel)(b"echo:ok", timeout=10) == b"echo:ok"
    async with fooled.channel(authority("echo")) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await unary(channel)(b"echo:ok", timeout=5)
    assert metric(fooled, "proxy_identity_mismatch_total", peer="destination") >= 1
    # Nothing in plaintext: the destination's listener does not speak h2c at all.
    with socket.create_connection(("127.0.0.1", int(meshed.destination_addr.rpartition(":")[2]))) as raw:
        raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(OSError):
            reply = raw.recv(100)
            assert not reply.startswith(b"\x00\x00"), "destination answered plaintext HTTP/2"


async def test_not_ready_until_the_first_certificate_arrives(meshed: Mesh) -> None:
    assert meshed.identity is not None
    await meshed.identity.stop()
    pod = await meshed.pod("echo", meshed=True)
    await eventually(lambda: metric(pod, "identity_cert_refresh_failures_total") >= 2, 10.0, "retries")
    assert not pod.runtime.ready()
    await meshed.identity.start()
    await eventually(pod.runtime.ready, 20.0, "ready once identity answers")
