"""`local` tokens: Ed25519-signed, expiring statements of a ServiceAccount, for meshes without a
Kubernetes API server (development, tests, benchmarks).

Format: `tlt1.<base64url(JSON claims)>.<base64url(signature)>`, the signature covering everything before
the last dot. Claims: `sub` (`system:serviceaccount:<ns>:<sa>`), `iat` and `exp` (Unix seconds).
Only the signature, the expiry and the subject decide; the key lives in a file that only the identity
service and the minting tool can read.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tether.identity.errors import ConfigurationError, Reason, Unauthenticated
from tether.identity.tokens import MAX_TOKEN_BYTES
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_kubernetes_username

TOKEN_PREFIX = b"tlt1."


class LocalClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: str
    iat: int
    exp: int


_claims_decoder = msgspec.json.Decoder(LocalClaims)


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def generate_signing_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_signing_key(pem: bytes) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigurationError("token signing key is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError("token signing key must be Ed25519")
    return key


def load_verification_key(pem: bytes) -> ed25519.Ed25519PublicKey:
    """Accepts the shared private key file (as mounted) or just its public half."""
    if b"PRIVATE KEY" in pem:
        return load_signing_key(pem).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError("token verification key is not a PEM key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigurationError("token verification key must be Ed25519")
    return key


def mint_token(
    key: ed25519.Ed25519PrivateKey, identity: WorkloadIdentity, now: datetime, ttl: timedelta
) -> bytes:
    if ttl <= timedelta(0):
        raise ValueError("token ttl must be positive")
    issued = int(now.timestamp())
    claims = LocalClaims(sub=identity.kubernetes_username, iat=issued, exp=issued + int(ttl.total_seconds()))
    signed = TOKEN_PREFIX + _b64encode(msgspec.json.encode(claims))
    return signed + b"." + _b64encode(key.sign(signed))


class LocalTokenVerifier:
    def __init__(self, key: ed25519.Ed25519PublicKey, trust_domain: str) -> None:
        self._key = key
        self._trust_domain = trust_domain

    def verify_now(self, token: bytes, now: datetime) -> WorkloadIdentity:
        invalid = Unauthenticated(Reason.TOKEN_INVALID, "token is not a valid local mesh token")
        if len(token) > MAX_TOKEN_BYTES or not token.startswith(TOKEN_PREFIX):
            raise invalid
        signed, dot, signature = token.rpartition(b".")
        if not dot:
            raise invalid
        try:
            self._key.verify(_b64decode(signature), signed)
            claims = _claims_decoder.decode(_b64decode(signed[len(TOKEN_PREFIX) :]))
        except (InvalidSignature, binascii.Error, ValueError, msgspec.DecodeError):
            raise invalid from None
        if now.timestamp() >= claims.exp:
            raise Unauthenticated(Reason.TOKEN_EXPIRED, "token has expired")
        try:
            return parse_kubernetes_username(claims.sub, self._trust_domain)
        except InvalidIdentityName:
            raise invalid from None

    async def verify(self, token: bytes, now: datetime) -> WorkloadIdentity:
        return self.verify_now(token, now)

    async def close(self) -> None:
        return None
