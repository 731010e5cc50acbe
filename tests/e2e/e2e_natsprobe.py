"""NATS as someone holding one component's credentials, run inside a pod: prints one JSON line.

* ``try --user U --seed F --ca C OP...`` with OP ``pub:SUBJECT`` or ``sub:SUBJECT``: does each and reports
  whether nats-server refused it (``-ERR 'Permissions Violation ...'``):
  ``{"results": [{"op", "subject", "denied", "error"}]}``.
* ``garbage --user U --seed F --ca C --seconds S SUBJECT...``: publishes a mix of payloads on each subject
  for S seconds (random bytes, oversized, empty, JSON that is no event, CloudEvents of another type, of the
  right type with meaningless data): ``{"published", "denied", "by_kind"}``.
* ``kv --user U --seed F --ca C --bucket B --key K``: a key's current value and revision.

Connects as nats-py would for the component (nkey seed, TLS verified against the NATS CA, its own inbox
prefix ``_INBOX.<user>``) to ``tls://tether-nats.tether.svc.cluster.local:4222``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import sys
import time
import uuid
from collections import Counter
from typing import Any

URL = "tls://tether-nats.tether.svc.cluster.local:4222"
#: Under nats-server's default max_payload (1 MiB), over anything the services send.
OVERSIZED = 900 * 1024


async def connect(args: argparse.Namespace, errors: list[str]) -> Any:
    import nats

    context = ssl.create_default_context(cafile=args.ca)

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    return await nats.connect(
        servers=[URL],
        nkeys_seed=args.seed,
        tls=context,
        tls_hostname="tether-nats.tether.svc.cluster.local",
        inbox_prefix=f"_INBOX.{args.user}",
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
        name=f"e2e-probe-{args.user}",
    )


def _denied(errors: list[str], start: int, subject: str) -> str | None:
    for error in errors[start:]:
        if "permissions violation" in error.lower() and subject.lower() in error.lower():
            return error
    return None


async def try_operations(args: argparse.Namespace) -> dict[str, Any]:
    errors: list[str] = []
    client = await connect(args, errors)
    results = []
    for operation in args.ops:
        kind, _, subject = operation.partition(":")
        start = len(errors)
        if kind == "pub":
            await client.publish(subject, b'{"e2e": "probe"}')
        else:
            await client.subscribe(subject)
        await client.flush(timeout=5)
        deadline = time.monotonic() + 1.0
        while _denied(errors, start, subject) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        denial = _denied(errors, start, subject)
        results.append({"op": kind, "subject": subject, "denied": denial is not None, "error": denial})
    await client.close()
    return {"results": results}


def _cloudevent(event_type: str, data: Any) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/e2e/garbage",
            "type": event_type,
            "time": "2026-01-01T00:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def _event_type(subject: str) -> str:
    """The CloudEvents type a consumer of ``subject`` decodes (tether.shared.events)."""
    from tether.shared import events
    from tether.shared.cloudevents import EventData

    kinds: list[tuple[str, type[EventData]]] = [
        ("tether.v1.health.", events.Heartbeat),
        ("tether.v1.identity.issuer", events.IssuerStatus),
        ("tether.v1.telemetry.rollup.", events.TelemetryRollup),
        ("tether.v1.tap.requests", events.TapRequest),
        ("tether.v1.tap.matches.", events.TapMatchCount),
        ("tether.v1.tap.events.", events.TapEvent),
        ("tether.v1.registry.", events.WorkloadRegistration),
    ]
    return next((kind.event_type for prefix, kind in kinds if subject.startswith(prefix)), "")


def _meaningless(subject: str, rng: random.Random) -> bytes:
    """Well formed (JSON of the subject's own shape: a CloudEvent of its type, or a key-value record) but
    meaning nothing a consumer may act on: values out of range, names that are no names, wrong types."""
    if subject.startswith("$KV.tether_leases."):
        return json.dumps({"schema_version": 1, "holder": "x" * 5000, "ttl_seconds": -1}).encode()
    if subject.startswith("$KV."):
        namespace, _, service = subject.split(".", 2)[2].partition(".")
        return json.dumps(
            rng.choice(
                [
                    {
                        "schema_version": 1,
                        "namespace": namespace,
                        "service": service,
                        "generation": -1,
                        "ports": [],
                        "endpoints": [],
                    },
                    {
                        "schema_version": 1,
                        "namespace": namespace,
                        "service": service,
                        "generation": 1,
                        "ports": [{"name": "main", "port": 70000}],
                        "endpoints": [{"address": "not-an-address", "ports": {"main": 0}}],
                    },
                    {
                        "schema_version": 1,
                        "namespace": "other",
                        "service": "elsewhere",
                        "generation": 1,
                        "ports": [],
                        "endpoints": [],
                    },
                    {"schema_version": 99},
                ]
            )
        ).encode()
    data: Any = rng.choice(
        [
            None,
            {},
            [],
            "text",
            -1,
            {"namespace": "", "name": "." * 300, "count": -5, "sequence": -1, "rate": float("inf")},
        ]
    )
    return _cloudevent(_event_type(subject) or "io.tether.unknown.v1", data).replace(b"Infinity", b"1e999")


def payloads(subject: str, rng: random.Random) -> list[tuple[str, bytes]]:
    """One of each kind of garbage for ``subject`` (a fresh random draw each call)."""
    return [
        ("random", os.urandom(rng.randint(1, 4096))),
        ("oversized", os.urandom(OVERSIZED)),
        ("empty", b""),
        ("json_not_event", json.dumps({"hello": "world", "n": rng.random()}).encode()),
        ("not_utf8", b"\xff\xfe{" * 10),
        ("event_of_other_type", _cloudevent("io.example.unrelated.v1", {"x": 1})),
        ("meaningless", _meaningless(subject, rng)),
    ]


async def garbage(args: argparse.Namespace) -> dict[str, Any]:
    errors: list[str] = []
    client = await connect(args, errors)
    rng = random.Random(args.seed_value)
    by_kind: Counter[str] = Counter()
    published = 0
    deadline = time.monotonic() + args.seconds
    rounds = 0
    while time.monotonic() < deadline:
        for subject in args.subjects:
            for kind, payload in payloads(subject, rng):
                # Oversized ones every other second only: each is stored (KV, rollup stream) and delivered.
                if kind == "oversized" and rounds % 4:
                    continue
                await client.publish(subject, payload)
                by_kind[kind] += 1
                published += 1
        rounds += 1
        await client.flush(timeout=10)
        await asyncio.sleep(0.5)
    await client.flush(timeout=10)
    await asyncio.sleep(0.5)
    denied = [error for error in errors if "permissions violation" in error.lower()]
    await client.close()
    return {"published": published, "denied": len(denied), "first_denial": denied[:1], "by_kind": by_kind}


async def kv_get(args: argparse.Namespace) -> dict[str, Any]:
    errors: list[str] = []
    client = await connect(args, errors)
    kv = await client.jetstream().key_value(args.bucket)
    entry = await kv.get(args.key)
    await client.close()
    return {"revision": entry.revision, "value": (entry.value or b"").decode(errors="replace")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("try", "garbage", "kv"):
        command = commands.add_parser(name)
        command.add_argument("--user", required=True)
        command.add_argument("--seed", required=True)
        command.add_argument("--ca", required=True)
        if name == "try":
            command.add_argument("ops", nargs="+")
        elif name == "garbage":
            command.add_argument("--seconds", type=float, default=5.0)
            command.add_argument("--seed-value", type=int, default=15)
            command.add_argument("subjects", nargs="+")
        else:
            command.add_argument("--bucket", required=True)
            command.add_argument("--key", required=True)
    args = parser.parse_args()
    run = {"try": try_operations, "garbage": garbage, "kv": kv_get}[args.command]
    sys.stdout.write(json.dumps(asyncio.run(run(args))) + "\n")


if __name__ == "__main__":
    main()
