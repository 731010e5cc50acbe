"""The report rows of this suite's own scenarios (Baseline, Scale, Security, Garbage, Abuse).

The texts are declared in ``reliability.SCENARIOS`` (the report's single source of rows) once the report
declares them; until then, and for anything it does not declare, these are used. Either way a test gets its
:class:`ScenarioRecord` from :func:`scenario_record`, so its result file repeats the declaration exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e_record import ScenarioRecord

CHAIN = "client → web (HTTP/1.1) → books, 2 pods (gRPC) → redis (TCP)"


@dataclass(frozen=True)
class Row:
    load: str
    faults: str
    allowed_failures: int = 0


ROWS = {
    "Baseline": Row(f"HTTP/1.1 20 req/s, 2 s deadline, {CHAIN}", "none"),
    "Scale out and in": Row(
        f"HTTP/1.1 25 req/s, 2 s deadline, {CHAIN}",
        "a books pod added; one drained (endpoint not ready, routed no more, then SIGTERM) and deleted",
    ),
    "Security: plaintext refused": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "a pod without a proxy calls redis (inbound policy all-authenticated), by Service and by pod address",
    ),
    "Security: forged identities refused": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "a client certificate for web's identity from a foreign CA; a server answering with another "
        "workload's certificate for a name discovery gave",
    ),
    "Security: inbound relays only to its application": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "requests to web's pod for its loopback-only port, the proxy's own ports and another service's "
        "authority, plaintext and over mTLS",
    ),
    "Security: identity for another name refused": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "mallory's token with a CSR for web's identity; no token; a forged token",
    ),
    "Security: NATS credentials confined": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "each component's NATS credentials used for what another component may do",
    ),
    "Security: every TLS listener refuses TLS 1.2": Row(
        f"HTTP/1.1 10 req/s, 2 s deadline, {CHAIN}",
        "a TLS 1.2 and a TLS 1.3 handshake to every identity, destination and telemetry replica's gRPC port "
        "and to web's inbound proxy",
    ),
    "Garbage on the bus": Row(
        f"HTTP/1.1 20 req/s, 2 s deadline, {CHAIN}",
        "random, oversized and well-formed meaningless payloads on every subject the services consume, "
        "with credentials allowed to publish there",
    ),
    "Abuse": Row(
        f"HTTP/1.1 20 req/s, 2 s deadline, {CHAIN}; gRPC 10 req/s, 2 s deadline, client → the attacked pod",
        "HTTP/2 rapid reset and PING flood from the plain pod on one books pod's inbound listener, 8 s",
    ),
}


def scenario_record(record: Callable[..., ScenarioRecord], title: str) -> ScenarioRecord:
    """A record for ``title`` with the declared load and faults (the report's declaration if it has one)."""
    load, faults = ROWS[title].load, ROWS[title].faults
    try:
        from reliability import BY_TITLE
    except ImportError:
        declared: Any = None
    else:
        declared = BY_TITLE.get(title)
    if declared is not None:
        load, faults = declared.load_text, declared.faults
    return record(title, load=load, faults=faults)
