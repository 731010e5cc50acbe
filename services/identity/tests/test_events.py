"""Events on a real nats-server: the documented schema of tether.v1.identity.issued / .rejected."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import msgspec
import pytest
from cryptography import x509

from tether.shared import subjects
from tether.shared.bus import Bus
from tether.shared.events import IdentityIssued, IdentityRejected
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.testing import eventually

WEB = WorkloadIdentity("web", "shop", "cluster.local")

ISSUED_FIELDS = {
    "identity",
    "spiffe_id",
    "serial",
    "not_before",
    "not_after",
    "fingerprint_sha256",
    "issuer_fingerprint_sha256",
    "replica",
    "issued_at",
}
REJECTED_FIELDS = {"reason", "status", "identity", "peer", "replica", "rejected_at"}


async def test_issued_and_rejected_events(
    nats_server: Any, start_identity: Any, csr_for: Any, mint: Any, ca: Any
) -> None:
    publisher = await Bus.connect(nats_server.url, name="identity-test")
    subscriber = await Bus.connect(nats_server.url, name="audit-test")
    raw: dict[str, list[bytes]] = {subjects.IDENTITY_ISSUED: [], subjects.IDENTITY_REJECTED: []}

    async def collect(message: Any) -> None:
        raw[message.subject].append(message.data)

    for subject in raw:
        await subscriber.client.subscribe(subject, cb=collect)
    await subscriber.flush()
    try:
        running = await start_identity(publish=publisher.publish, replica="identity-7")
        _, csr = csr_for(WEB)
        token = mint(WEB)
        response = await running.certify(WEB.dns_name, token, csr)
        with pytest.raises(grpc.aio.AioRpcError):
            await running.certify(WEB.dns_name, token, b"garbage")
        await eventually(
            lambda: bool(raw[subjects.IDENTITY_ISSUED] and raw[subjects.IDENTITY_REJECTED]),
            5,
            lambda: f"the issued and rejected events (got {[s for s, data in raw.items() if data]})",
            interval=0.01,
        )
    finally:
        await publisher.close()
        await subscriber.close()

    envelope = msgspec.json.decode(raw[subjects.IDENTITY_ISSUED][0])
    assert envelope["specversion"] == "1.0" and envelope["type"] == "io.tether.identity.issued.v1"
    assert envelope["source"] == publisher.source and envelope["subject"] == WEB.dns_name
    issued_json = envelope["data"]
    assert set(issued_json) == ISSUED_FIELDS
    issued = msgspec.convert(issued_json, type=IdentityIssued, strict=False)
    leaf = x509.load_der_x509_certificate(response.leaf_certificate)
    assert issued.identity == WEB.dns_name and issued.spiffe_id == WEB.spiffe_id
    assert issued.serial == format(leaf.serial_number, "x")
    assert issued.not_after == leaf.not_valid_after_utc and issued.not_before == leaf.not_valid_before_utc
    assert issued.fingerprint_sha256 == hashlib.sha256(response.leaf_certificate).hexdigest()
    assert (
        issued.issuer_fingerprint_sha256 == hashlib.sha256(response.intermediate_certificates[0]).hexdigest()
    )
    assert issued.replica == "identity-7"
    assert isinstance(issued_json["not_after"], str) and issued_json["not_after"].endswith("Z")

    envelope = msgspec.json.decode(raw[subjects.IDENTITY_REJECTED][0])
    assert envelope["type"] == "io.tether.identity.rejected.v1"
    rejected_json = envelope["data"]
    assert set(rejected_json) == REJECTED_FIELDS
    rejected = msgspec.convert(rejected_json, type=IdentityRejected, strict=False)
    assert rejected.reason == "csr_malformed" and rejected.status == "INVALID_ARGUMENT"
    assert rejected.identity == WEB.dns_name and rejected.peer == "127.0.0.1"
    assert rejected.replica == "identity-7"

    # Neither event carries the token, the CSR or anything like a key.
    for payload in raw[subjects.IDENTITY_ISSUED] + raw[subjects.IDENTITY_REJECTED]:
        assert token not in payload and csr.hex().encode() not in payload and b"KEY" not in payload
