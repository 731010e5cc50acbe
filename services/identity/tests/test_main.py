"""The entry point: `tether-identity bootstrap`, `mint-token`, and `serve` as a real process under the
shared runtime (uvloop, NATS, admin port), certifying over TLS and shutting down on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from tether.identity.__main__ import main
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import free_port
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.testing import eventually

WEB = WorkloadIdentity("web", "shop", "cluster.local")


def test_bootstrap_writes_keys_0600_and_refuses_to_overwrite(tmp_path: Path, capsys: Any) -> None:
    assert main(["bootstrap", "--out", str(tmp_path / "ca"), "--trust-domain", "example.org"]) == 0
    for name in ("ca.key", "issuer.key", "token-signing.key"):
        assert stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) == 0o600
    anchor = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    issuer = x509.load_pem_x509_certificate((tmp_path / "ca" / "issuer.crt").read_bytes())
    issuer.verify_directly_issued_by(anchor)
    assert (anchor.not_valid_after_utc - anchor.not_valid_before_utc).days >= 3650
    assert 365 <= (issuer.not_valid_after_utc - issuer.not_valid_before_utc).days <= 366
    assert "example.org" in issuer.subject.rfc4514_string()
    with pytest.raises(SystemExit) as exited:
        main(["bootstrap", "--out", str(tmp_path / "ca")])
    assert exited.value.code == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_mint_token_prints_a_verifiable_token(tmp_path: Path, capsys: Any, secrets: Any) -> None:
    from datetime import UTC, datetime

    from tether.identity.tokens.local import LocalTokenVerifier, load_token_key

    main(["bootstrap", "--out", str(tmp_path)])
    capsys.readouterr()
    key_file = tmp_path / "token-signing.key"
    secrets.add(key_file.read_bytes())
    assert main(["mint-token", "--namespace", "shop", "--serviceaccount", "web", "--key", str(key_file)]) == 0
    token = capsys.readouterr().out.strip().encode()
    secrets.add(token)
    verifier = LocalTokenVerifier(load_token_key(key_file.read_bytes()), "cluster.local")
    assert verifier.verify_now(token, datetime.now(UTC)) == WEB
    with pytest.raises(SystemExit):
        main(["mint-token", "--namespace", "Shop!", "--serviceaccount", "web", "--key", str(key_file)])


async def test_serve_process_certifies_and_stops_on_sigterm(
    tmp_path: Path, nats_server: Any, csr_for: Any, secrets: Any
) -> None:
    assert main(["bootstrap", "--out", str(tmp_path)]) == 0
    key_file = tmp_path / "token-signing.key"
    from datetime import UTC, datetime, timedelta

    from tether.identity.tokens.local import load_token_key, mint_token

    token = mint_token(load_token_key(key_file.read_bytes()), WEB, datetime.now(UTC), timedelta(minutes=5))
    secrets.add(token)
    grpc_port, admin_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.identity",
        "serve",
        "--grpc-addr",
        f"127.0.0.1:{grpc_port}",
        "--admin-addr",
        f"127.0.0.1:{admin_port}",
        "--nats-url",
        nats_server.url,
        "--token-verifier",
        "local",
        "--token-key",
        str(key_file),
        "--trust-anchors",
        str(tmp_path / "ca.crt"),
        "--issuer-certificate",
        str(tmp_path / "issuer.crt"),
        "--issuer-key",
        str(tmp_path / "issuer.key"),
        "--log-format",
        "json",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_ready(admin_port, process)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{grpc_port}",
            grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.crt").read_bytes()),
            options=[
                ("grpc.ssl_target_name_override", "identity.tether.serviceaccount.identity.cluster.local")
            ],
        )
        async with channel:
            _, csr = csr_for(WEB)
            response = await identity_pb2_grpc.IdentityStub(channel).Certify(
                identity_pb2.CertifyRequest(
                    identity=WEB.dns_name, token=token, certificate_signing_request=csr
                ),
                timeout=10,
            )
        assert response.leaf_certificate
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{admin_port}/metrics")
        assert "tether_identity_certificates_issued_total 1.0" in metrics
        assert "tether_identity_issuer_not_after_timestamp_seconds" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr.decode()[-2000:]
    output = (stdout + stderr).decode()
    assert "certificate_issued" in output
    for secret in (token.decode(), (tmp_path / "issuer.key").read_text().splitlines()[1]):
        assert secret not in output


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def _wait_ready(admin_port: int, process: Any) -> None:
    async def ready() -> bool:
        assert process.returncode is None, "service exited"
        try:
            await asyncio.to_thread(_get, f"http://127.0.0.1:{admin_port}/ready")
        except OSError:
            return False
        return True

    await eventually(ready, 20, "the service to become ready (/ready)", interval=0.05)
