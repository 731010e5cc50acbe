"""Who may do what on NATS: the one source of truth for every user's permissions.

The local mesh and the Kubernetes manifests generate their nats-server configuration from :data:`ROLES`,
and docs/events.md shows it (``python -m tether.shared.permissions`` prints the table). A role is what a
user may publish and subscribe to; JetStream operations are publishes to ``$JS.API.*`` subjects, so the
same two lists also decide who may create, read, write, purge or delete a bucket.

Every user has its own inbox prefix (``_INBOX.<user>``): replies to its requests arrive there, and no other
user may subscribe to them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from tether.shared import subjects
from tether.shared.nats_settings import inbox_prefix


@dataclass(frozen=True, slots=True)
class Role:
    """What a NATS user may do; ``deny_*`` carve exceptions out of wildcards in ``publish``/``subscribe``."""

    description: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = field(default=())

    def for_user(self, user: str) -> Role:
        """The role as granted to ``user``: plus the subscription to its own inbox."""
        return Role(
            self.description,
            self.publish,
            (*self.subscribe, f"{inbox_prefix(user)}.>"),
            self.deny_publish,
            self.deny_subscribe,
        )


def _stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_read(bucket: str) -> tuple[str, ...]:
    """Publishes needed to open a bucket, get keys and watch it (an ordered consumer), and nothing more."""
    return stream_read(_stream(bucket))


def stream_read(stream: str) -> tuple[str, ...]:
    """Publishes needed to read a JetStream stream with an ordered consumer (and direct gets).

    Consumers only by the unnamed create, which the server keeps ephemeral (it refuses a durable name
    there): no reader leaves a named or durable consumer behind on the server.
    """
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        # Flow-control replies of the ordered consumer a watch uses.
        f"$JS.FC.{stream}.>",
    )


def kv_write(bucket: str) -> tuple[str, ...]:
    """Publishes needed to put and delete keys (both are publishes to ``$KV.<bucket>.<key>``)."""
    return (f"$KV.{bucket}.>",)


def kv_admin(bucket: str) -> tuple[str, ...]:
    """Publishes needed to create, update (e.g. its replica count), purge and delete the bucket itself."""
    return stream_admin(_stream(bucket))


def stream_admin(stream: str) -> tuple[str, ...]:
    """Publishes needed to create, update, purge and delete a JetStream stream."""
    return tuple(
        f"$JS.API.STREAM.{operation}.{stream}" for operation in ("CREATE", "UPDATE", "PURGE", "DELETE")
    )


def heartbeats(component: str) -> tuple[str, ...]:
    return (f"{subjects.PREFIX}.health.{subjects.token(component)}.>",)


def _buckets(*operations: Iterable[str]) -> tuple[str, ...]:
    return tuple(subject for group in operations for subject in group)


DOCUMENTED_BUCKETS = (subjects.ENDPOINTS_BUCKET, subjects.LEASES_BUCKET)

ROLES: dict[str, Role] = {
    "destination": Role(
        "discovery: the only writer of the endpoint and lease buckets and of endpoint events",
        publish=(
            *heartbeats("destination"),
            subjects.ENDPOINTS_ALL,
            *_buckets(*(f(b) for b in DOCUMENTED_BUCKETS for f in (kv_read, kv_write, kv_admin))),
        ),
        subscribe=(subjects.REGISTRY_REGISTER,),
    ),
    "identity": Role(
        "the certificate authority: publishes its audit events",
        publish=(*heartbeats("identity"), subjects.IDENTITY_ALL),
    ),
    "telemetry": Role(
        "metric reports and tap: the only publisher of rollups and tap events",
        publish=(
            *heartbeats("telemetry"),
            subjects.ROLLUP_ALL,
            subjects.TAP_EVENTS_ALL,
            subjects.TAP_MATCHES_ALL,
            *stream_read(subjects.ROLLUPS_STREAM),
            *stream_admin(subjects.ROLLUPS_STREAM),
        ),
        subscribe=(subjects.TAP_REQUESTS, subjects.TAP_MATCHES_ALL),
    ),
    "public-api": Role(
        "the API behind the CLI: reads heartbeats, issuer status and rollups; the only tap requester",
        publish=(
            *heartbeats("public-api"),
            subjects.TAP_REQUESTS,
            subjects.AUDIT_TAP,
            *stream_read(subjects.ROLLUPS_STREAM),
        ),
        subscribe=(
            subjects.HEALTH_ALL,
            subjects.IDENTITY_ISSUER,
            subjects.ROLLUP_ALL,
            subjects.TAP_EVENTS_ALL,
        ),
    ),
    "registrar": Role(
        "the local mesh's registrar: the only publisher of workload registrations",
        publish=(subjects.REGISTRY_REGISTER,),
    ),
    "reader": Role(
        "people and tools subscribing to mesh events: every documented event but tap, buckets read-only",
        publish=(
            *_buckets(*(kv_read(b) for b in DOCUMENTED_BUCKETS)),
            *stream_read(subjects.ROLLUPS_STREAM),
        ),
        subscribe=(f"{subjects.PREFIX}.>",),
        deny_subscribe=(subjects.TAP_ALL,),
    ),
}

# The users a local mesh or a cluster creates: one per component, plus a read-only one for people.
DEFAULT_USERS: dict[str, str] = {role: role for role in ROLES}


def render_markdown() -> str:
    """The permission table as docs/events.md shows it."""
    rows = ["| user | may publish | may subscribe | for |", "|---|---|---|---|"]
    for name, role in ROLES.items():
        granted = role.for_user(name)
        publish = "<br>".join(f"`{s}`" for s in granted.publish) or "nothing"
        subscribe = "<br>".join(f"`{s}`" for s in granted.subscribe)
        if granted.deny_subscribe:
            subscribe += "<br>except " + ", ".join(f"`{s}`" for s in granted.deny_subscribe)
        rows.append(f"| `{name}` | {publish} | {subscribe} | {role.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
