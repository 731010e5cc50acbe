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
# Identity: each replica's issuer and trust anchors with their expiry, on change and every 10 s.
IDENTITY_ISSUER = f"{PREFIX}.identity.issuer"
IDENTITY_ALL = f"{PREFIX}.identity.>"

# Endpoints: one diff event per change of a service's endpoint set.
ENDPOINTS_ALL = f"{PREFIX}.endpoints.>"

# Local registry: workloads register themselves with a TTL refreshed by heartbeats.
REGISTRY_REGISTER = f"{PREFIX}.registry.register"

# Telemetry: each replica's partial rollups per workload and interval (mergeable), also kept 1 h in the
# JetStream stream ROLLUPS_STREAM.
ROLLUP_ALL = f"{PREFIX}.telemetry.rollup.>"

# Tap: requests and captured request events. The read-only user may not subscribe: they carry request data.
TAP_ALL = f"{PREFIX}.tap.>"
#: Tap requests (start, renew every 2 s, cancel), from the public API.
TAP_REQUESTS = f"{PREFIX}.tap.requests"
#: Replicas share how many proxies match each tap, so the rate is split mesh-wide.
TAP_MATCHES_ALL = f"{PREFIX}.tap.matches.>"
#: Captured request events of one tap, from telemetry.
TAP_EVENTS_ALL = f"{PREFIX}.tap.events.>"

# Audit: who asked for which tap, and whether it was allowed (from the public API). Not under tap.>: it
# carries no request data, so the read-only user (security tooling) may read it.
AUDIT_TAP = f"{PREFIX}.audit.tap"

# JetStream key-value buckets.
ENDPOINTS_BUCKET = "tether_endpoints"
LEASES_BUCKET = "tether_leases"
# JetStream streams.
ROLLUPS_STREAM = "tether_rollups"

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


def rollup(namespace: str, kind: str, name: str) -> str:
    return f"{PREFIX}.telemetry.rollup.{token(namespace)}.{token(kind)}.{token(name)}"


def tap_matches(tap_id: str) -> str:
    return f"{PREFIX}.tap.matches.{token(tap_id)}"


def tap_events(tap_id: str) -> str:
    return f"{PREFIX}.tap.events.{token(tap_id)}"
