"""Issuer rotation without restart, while a client certifies in a loop over real gRPC/TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509

from tether.shared.identity_names import WorkloadIdentity
from tether.shared.testing import eventually as poll

WEB = WorkloadIdentity("web", "shop", "cluster.local")


def _signed_by(leaf_der: bytes, issuer: x509.Certificate) -> bool:
    try:
        x509.load_der_x509_certificate(leaf_der).verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


async def test_rotation_under_load(start_identity: Any, ca: Any, csr_for: Any, mint: Any) -> None:
    running = await start_identity()
    old_issuer = ca.issuer.certificate
    new_issuer = ca.new_issuer()
    running.secrets.add_private_key(new_issuer.key)
    token = mint(WEB)
    _, csr = csr_for(WEB)
    leaves: list[tuple[float, bytes]] = []
    failures: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def certify_forever() -> None:
        while not stop.is_set():
            try:
                response = await running.certify(WEB.dns_name, token, csr)
                leaves.append((asyncio.get_running_loop().time(), response.leaf_certificate))
            except grpc.aio.AioRpcError as error:
                failures.append(error.code())

    clients = [asyncio.create_task(certify_forever()) for _ in range(4)]
    try:
        await poll(lambda: len(leaves) >= 20)
        rotated_at = asyncio.get_running_loop().time()
        ca.write(issuer=new_issuer)
        await poll(lambda: bool(leaves) and _signed_by(leaves[-1][1], new_issuer.certificate), timeout=5.0)
        switched_at = asyncio.get_running_loop().time()
        count = len(leaves)
        await poll(lambda: len(leaves) >= count + 20)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert switched_at - rotated_at < 5.0
    assert all(code == grpc.StatusCode.UNAVAILABLE for code in failures), failures
    # Once the new issuer is in use, every later leaf chains to it.
    after_switch = [der for at, der in leaves if at > switched_at]
    assert after_switch and all(_signed_by(der, new_issuer.certificate) for der in after_switch)
    assert any(_signed_by(der, old_issuer) for _, der in leaves)
    assert running.server.authority is not None and running.server.authority.generation == 2

    # New connections get a serving certificate from the new issuer.
    serving: x509.Certificate | None = None

    async def reissued() -> bool:
        nonlocal serving
        serving = await asyncio.to_thread(_serving_certificate, running)
        return bool(serving.issuer == new_issuer.certificate.subject)

    await poll(reissued, 5.0, "a serving certificate re-issued by the new issuer", interval=0.01)
    assert serving is not None
    assert serving.not_valid_before_utc <= datetime.now(UTC)
    assert serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [running.server.identity.dns_name]


def _serving_certificate(running: Any) -> x509.Certificate:
    context = ssl.create_default_context(cadata=running.ca.anchor.certificate_pem.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", running.server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=running.server.identity.dns_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
