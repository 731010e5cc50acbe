"""The proxy's HTTP/2 conformance, case by case as h2spec checks it (h2conformance), on both listeners.

One topology for the whole module: ``client`` (proxy-init rules and its proxy) linked to ``server`` (rules,
its proxy and the plaintext h2 application on :8080), and ``outside`` (no proxy, no rules) linked to
``server``. A case runs on one fresh connection to the server's address and port 8080:

* ``outbound``: opened in ``client``, so interception hands it to the client's outbound proxy (4140), which
  forwards to the server's inbound proxy, then the application;
* ``inbound``: opened in ``outside``, so the server's interception hands it (plaintext) to its inbound proxy
  (4143) directly.

A case passes on a verdict h2spec would give, and only with the error code RFC 9113 asks for: what h2spec
tolerates (say, a close after a GOAWAY with another code than the one asked for) fails here too, naming
what h2spec would have let through. The inapplicable cases are listed in h2conformance.INAPPLICABLE with
their RFC 9113 clause, and checked by the case-list test.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2conformance import CASES, H2SPEC_REVISION, INAPPLICABLE, Case, h2spec_ids, run_case
from h2raw import RawH2Client
from netns_harness import Namespace, NetnsHarness, proxy_init, start_tether_proxy

pytestmark = pytest.mark.netns

APP = Path(__file__).resolve().parent / "h2_app.py"
APP_PORT = 8080
LISTENERS = ("outbound", "inbound")


@dataclass(frozen=True)
class Topology:
    #: Listener name -> the namespace its connections start in.
    origins: dict[str, Namespace]
    #: Listener name -> the server's address as seen from that namespace.
    server_ips: dict[str, str]


@pytest.fixture(scope="module")
def topology(netns_supported: None) -> Iterator[Topology]:
    harness = NetnsHarness()
    try:
        client, server, outside = harness.namespace("cli"), harness.namespace("srv"), harness.namespace("out")
        _, server_ip = harness.link(client, server)
        _, server_ip_outside = harness.link(outside, server)
        server.spawn([sys.executable, str(APP), "serve", str(APP_PORT)], ready_line="ready")
        proxy_init(client)
        proxy_init(server)
        start_tether_proxy(client)
        start_tether_proxy(server)
        yield Topology(
            origins={"outbound": client, "inbound": outside},
            server_ips={"outbound": server_ip, "inbound": server_ip_outside},
        )
    finally:
        harness.cleanup()


@pytest.mark.parametrize("entry", CASES, ids=[entry.id for entry in CASES])
@pytest.mark.parametrize("listener", LISTENERS)
async def test_h2spec_case(topology: Topology, listener: str, entry: Case) -> None:
    origin, server_ip = topology.origins[listener], topology.server_ips[listener]
    sock = await asyncio.get_running_loop().run_in_executor(None, origin.open_socket, server_ip, APP_PORT)
    client = await RawH2Client.over(sock)
    try:
        notes = await run_case(entry, client, f"{server_ip}:{APP_PORT}")
    except AssertionError as exc:
        raise AssertionError(f"{entry.id} (RFC 9113 §{entry.section}: {entry.description}): {exc}") from None
    finally:
        await client.close()
    assert not notes, f"{entry.id} on {listener}: h2spec would pass it, RFC 9113 does not: {notes}"


def test_the_case_list_mirrors_h2spec() -> None:
    ids = h2spec_ids()
    # h2spec's source at H2SPEC_REVISION: generic 44, http2 95 (one --strict), hpack 8.
    assert Counter(case_id.split("/")[0] for case_id in ids) == {"generic": 44, "http2": 95, "hpack": 8}
    assert len(set(ids)) == len(ids)
    assert len(H2SPEC_REVISION) == 40

    implemented = [entry.id for entry in CASES]
    assert len(set(implemented)) == len(implemented), "a case is implemented twice"
    both = set(implemented) & set(INAPPLICABLE)
    assert not both, f"both implemented and inapplicable: {sorted(both)}"
    assert set(implemented) | set(INAPPLICABLE) == set(ids), (
        f"missing: {sorted(set(ids) - set(implemented) - set(INAPPLICABLE))}, "
        f"unknown: {sorted((set(implemented) | set(INAPPLICABLE)) - set(ids))}"
    )
    assert [entry.id for entry in CASES] == [case_id for case_id in ids if case_id not in INAPPLICABLE]
    assert [entry.id for entry in CASES if entry.strict] == ["http2/5.4.1/2"]

    for case_id, (clause, why) in INAPPLICABLE.items():
        assert clause.startswith("RFC 9113 §"), (case_id, clause)
        assert why, case_id
    for entry in CASES:
        # A section of RFC 9113's body (3 to 8), e.g. "6.5.3".
        head, *rest = entry.section.split(".")
        assert head in {"3", "4", "5", "6", "7", "8"} and all(part.isdigit() for part in rest), entry
        assert entry.description, entry.id
