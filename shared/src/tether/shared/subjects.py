"""Every NATS subject and bucket Tether uses: ``tether.v1.<domain>.<...>``.

These are a public interface ("mesh events"): docs/events.md documents each one.
"""

from __future__ import annotations

import re

PREFIX = "tether.v1"

# Health: every service instance publishes a Heartbeat here every 2 s.
HEALTH_ALL = f"{PREFIX}.health.>"

# Identity: certificate issuances and rejections (audit trail).
IDENTITY_ISSUED = f"{PREFIX}.identity.issued"
IDENTITY_REJECTED = f"{PREFIX}.identity.rejected"
IDENTITY_ALL = f"{PREFIX}.identity.>"

# Endpoints: one diff event per change of a service's endpoint set.
ENDPOINTS_ALL = f"{PREFIX}.endpoints.>"

# Local registry: workloads register themselves with a TTL refreshed by heartbeats.
REGISTRY_REGISTER = f"{PREFIX}.registry.register"

# Tap: requests and captured request events. Reserved here so the permission table can keep them from the
# read-only user: they carry request data.
TAP_ALL = f"{PREFIX}.tap.>"

# JetStream key-value buckets.
ENDPOINTS_BUCKET = "tether_endpoints"
LEASES_BUCKET = "tether_leases"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def token(value: str) -> str:
    """One subject token: rejects characters that would change a subject's meaning (``.``, ``*``, ``>``)."""
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid NATS subject token: {value!r}")
    return value


def health(service: str, instance: str) -> str:
    return f"{PREFIX}.health.{token(service)}.{token(instance)}"


def endpoints(namespace: str, service: str) -> str:
    return f"{PREFIX}.endpoints.{token(namespace)}.{token(service)}"
