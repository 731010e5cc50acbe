"""`local` tokens: expiring statements of a ServiceAccount, authenticated with a key that only the
identity service and the minting tool (`tether-identity mint-token`) hold. For meshes without a
Kubernetes API server: development, tests, benchmarks.

Format: `tlt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, everything before the last dot))>`.
Claims: `sub` (`system:serviceaccount:<ns>:<sa>`), `iat` and `exp` (Unix seconds). Only the MAC, the
expiry and the subject decide.

Why a MAC and not a public-key signature: the verifier (the identity service) already holds the CA's
issuer key, so a verify-only key would not limit what a compromised service could do, while HMAC
verification costs about a microsecond against ~60 us for Ed25519 on the Certify hot path.

The key file holds one line, `tether-token-key-v1:<base64url(32 random bytes)>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from tether.identity.errors import ConfigurationError, Reason, Unauthenticated
from tether.identity.tokens import MAX_TOKEN_BYTES
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_kubernetes_username

TOKEN_PREFIX = b"tlt1."
KEY_FILE_PREFIX = b"tether-token-key-v1:"
KEY_BYTES = 32


_KEY_REMEDY = "write it with 'tether-identity bootstrap --out DIR' (token-signing.key)"


class LocalClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: str
    iat: int
    exp: int


_claims_decoder = msgspec.json.Decoder(LocalClaims)


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(data: bytes) -> bytes:
    # A token has exactly one encoding: unpadded, and stray characters are not silently skipped.
    if b"=" in data:
        raise ValueError("padded base64")
    return base64.b64decode(data + b"=" * (-len(data) % 4), altchars=b"-_", validate=True)


@dataclass(frozen=True, slots=True, repr=False)
class TokenKey:
    secret: bytes

    def mac(self, message: bytes) -> bytes:
        return hmac.digest(self.secret, message, hashlib.sha256)

    def __repr__(self) -> str:
        return "TokenKey(<redacted>)"


def generate_token_key_file() -> bytes:
    """The contents of a new key file."""
    return KEY_FILE_PREFIX + _b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def load_token_key(data: bytes) -> TokenKey:
    line = data.strip()
    if not line.startswith(KEY_FILE_PREFIX):
        raise ConfigurationError(
            "token key file must hold one line: tether-token-key-v1:<base64url key>", _KEY_REMEDY
        )
    try:
        secret = _b64decode(line[len(KEY_FILE_PREFIX) :])
    except (binascii.Error, ValueError):
        raise ConfigurationError("token key is not valid base64url", _KEY_REMEDY) from None
    if len(secret) < KEY_BYTES:
        raise ConfigurationError(f"token key must be at least {KEY_BYTES} bytes", _KEY_REMEDY)
    return TokenKey(secret)


def mint_token(key: TokenKey, identity: WorkloadIdentity, now: datetime, ttl: timedelta) -> bytes:
    if ttl <= timedelta(0):
        raise ValueError("token ttl must be positive")
    issued = int(now.timestamp())
    claims = LocalClaims(sub=identity.kubernetes_username, iat=issued, exp=issued + int(ttl.total_seconds()))
    signed = TOKEN_PREFIX + _b64encode(msgspec.json.encode(claims))
    return signed + b"." + _b64encode(key.mac(signed))


class LocalTokenVerifier:
    def __init__(self, key: TokenKey, trust_domain: str) -> None:
        self._key = key
        self._trust_domain = trust_domain

    def verify_now(self, token: bytes, now: datetime) -> WorkloadIdentity:
        invalid = Unauthenticated(Reason.TOKEN_INVALID, "token is not a valid local mesh token")
        if len(token) > MAX_TOKEN_BYTES or not token.startswith(TOKEN_PREFIX):
            raise invalid
        signed, dot, mac = token.rpartition(b".")
        if not dot:
            raise invalid
        try:
            authentic = hmac.compare_digest(_b64decode(mac), self._key.mac(signed))
        except (binascii.Error, ValueError):
            raise invalid from None
        if not authentic:
            raise invalid
        try:
            claims = _claims_decoder.decode(_b64decode(signed[len(TOKEN_PREFIX) :]))
        except (binascii.Error, ValueError, msgspec.DecodeError):
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
