"""How a process reaches and authenticates to NATS: built once from the common options, read by the bus.

Kept apart from :mod:`tether.shared.bus` so that the configuration layer (and the proxy, which never talks
to NATS) does not import nats-py.
"""

from __future__ import annotations

import msgspec

# Every user gets its own inbox prefix so that the server can keep users from reading each other's replies.
INBOX_ROOT = "_INBOX"


def inbox_prefix(user: str) -> str:
    return f"{INBOX_ROOT}.{user}"


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where NATS is and how to prove who we are. Secrets are held in memory only, never printed."""

    servers: tuple[str, ...]
    # Seconds to wait for the first connection; None waits forever.
    connect_timeout: float | None = 10.0
    creds_file: str = ""
    nkey_seed_file: str = ""
    user: str = ""
    password: str = ""
    token: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    inbox_prefix: str = INBOX_ROOT
    # Delays of the one backoff used for the first connection and every reconnect.
    retry_base: float = 0.1
    retry_cap: float = 2.0

    def __repr__(self) -> str:
        auth = (
            "creds"
            if self.creds_file
            else "nkey"
            if self.nkey_seed_file
            else "user"
            if self.user
            else "token"
            if self.token
            else "none"
        )
        return f"NatsSettings(servers={','.join(self.servers)}, auth={auth}, tls={bool(self.tls_ca_file)})"

    @property
    def url_text(self) -> str:
        return ",".join(self.servers)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca_file) or any(s.startswith(("tls://", "wss://")) for s in self.servers)
