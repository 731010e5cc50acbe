"""NATS credentials and TLS for a nats-server outside the local mesh (the Kubernetes bootstrap Job, tests).

The local mesh (:mod:`tether.shared.natsserver`) writes its whole server configuration itself. A cluster's
nats-server reads an operator-written ``nats.conf`` that includes a generated ``auth.conf``; this module
generates that file from the same permission table (:data:`tether.shared.permissions.ROLES`), the users'
nkeys, and the certificates for client and route TLS:

- :func:`new_user_keys`: one fresh nkey seed per user.
- :func:`authorization_conf`: ``authorization { users = [...] }`` granting each nkey exactly its role.
- :func:`generate_server_tls`: a fresh CA that signs one server certificate (usable by routes as a client
  certificate too, so that routes authenticate each other) and is then forgotten: its key is never
  returned, so nothing can be signed by it again.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.shared.errors import TetherError
from tether.shared.natsserver import new_nkey_seed, nkey_public_key, user_permissions
from tether.shared.permissions import ROLES

_BACKDATE = timedelta(minutes=5)


class NatsAuthError(TetherError):
    """A user, role or certificate name that cannot go into a NATS configuration."""


@dataclass(frozen=True, slots=True, repr=False)
class UserKey:
    """A NATS user's nkey: the seed (secret, for the user) and its public key (for the server)."""

    name: str
    role: str
    seed: bytes

    @property
    def public_key(self) -> str:
        return nkey_public_key(self.seed)

    def __repr__(self) -> str:
        return f"UserKey({self.name!r}, role={self.role!r}, seed=<redacted>)"


def new_user_keys(users: Mapping[str, str]) -> dict[str, UserKey]:
    """A fresh nkey for each user (name → role of ROLES)."""
    for name, role in users.items():
        if role not in ROLES:
            raise NatsAuthError(f"user {name}: unknown role {role!r}; one of {', '.join(ROLES)}")
    return {name: UserKey(name, role, new_nkey_seed()) for name, role in users.items()}


def authorization_conf(public_keys: Mapping[str, tuple[str, str]], *, header: str = "") -> str:
    """nats-server configuration granting each user (name → (role, nkey public key)) exactly its role.

    Only public keys go in: the file holds nothing secret, though it says who may do what.
    Values are JSON (valid NATS configuration), quoted, so that ``$JS...`` subjects are not read as
    variables.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["authorization {", "  users = ["]
    for name, (role, public_key) in sorted(public_keys.items()):
        if role not in ROLES:
            raise NatsAuthError(f"user {name}: unknown role {role!r}; one of {', '.join(ROLES)}")
        if not (public_key.startswith("U") and public_key.isalnum()):
            raise NatsAuthError(f"user {name}: {public_key!r} is not an nkey user public key")
        user = {"nkey": public_key, "permissions": user_permissions(name, role)}
        lines.append(f"    # {name} (role {role})")
        lines.append(f"    {json.dumps(user, sort_keys=True)}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True, repr=False)
class ServerTls:
    """PEM: the CA certificate (for clients and routes to trust), the server certificate and its key."""

    ca_certificate: bytes
    certificate: bytes
    key: bytes

    def __repr__(self) -> str:
        return "ServerTls(key=<redacted>)"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_server_tls(
    dns_names: Iterable[str],
    now: datetime,
    lifetime: timedelta,
    *,
    ip_addresses: Iterable[str] = (),
    ca_name: str = "tether NATS CA",
) -> ServerTls:
    """A fresh CA and one server certificate for ``dns_names`` (and ``ip_addresses``), ECDSA P-256.

    The certificate is for serverAuth and clientAuth: cluster routes present it to each other, and each
    side verifies the other's against the CA. The CA key is dropped here; re-issuing means a new CA.
    """
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    except ValueError as error:
        raise NatsAuthError(str(error)) from None
    if not names:
        raise NatsAuthError("a server certificate needs at least one DNS name or IP address")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name[:64])])
    not_before, not_after = now - _BACKDATE, now + lifetime
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    first = names[0].value
    common_name = first if isinstance(first, str) else str(first)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name.removeprefix("*.")[:64])])
        )
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServerTls(ca.public_bytes(pem), certificate.public_bytes(pem), _pem_key(key))
