"""The endpoint and lease buckets, with ``--kv-replicas`` JetStream replicas.

A bucket is created with the configured replica count. One that exists with fewer (created by a
single-node install before it grew into a NATS cluster) is moved over: its stream's ``num_replicas`` is
raised, and the cluster copies the data to the new replicas while it keeps serving. That is logged once,
by whichever replica did it. A bucket with more replicas than configured is left as it is: lowering it is an
operator's decision, not something a rolling update should do behind their back.

A NATS that cannot hold the replicas (a single server asked for 3, fewer JetStream servers than replicas)
refuses; the replica cannot do its job, and that is a configuration error (exit 2) naming the fix.
"""

from __future__ import annotations

from typing import Any

from tether.shared import subjects
from tether.shared.bus import Bus, KeyValue, replica_refusal
from tether.shared.errors import BusError, PermissionDenied

BUCKETS = (subjects.ENDPOINTS_BUCKET, subjects.LEASES_BUCKET)


async def open_buckets(bus: Bus, replicas: int, log: Any) -> tuple[KeyValue, KeyValue]:
    """(endpoints, leases), each with at least ``replicas`` replicas; SetupError when NATS refuses them."""
    opened: list[KeyValue] = []
    for bucket in BUCKETS:
        try:
            kv = await bus.kv(bucket, replicas=replicas)
            before = await bus.ensure_replicas(f"KV_{bucket}", replicas)
        except PermissionDenied:
            raise
        except BusError as exc:
            refusal = replica_refusal(f"the key-value bucket {bucket}", replicas, exc, "--kv-replicas")
            if refusal is not None:
                raise refusal from None
            raise
        if before < replicas:
            log.info("bucket_replicas_raised", bucket=bucket, replicas_before=before, replicas=replicas)
        opened.append(kv)
    return opened[0], opened[1]
