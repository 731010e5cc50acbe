"""Abuse: an HTTP/2 rapid-reset flood (CVE-2023-44487) and a PING flood against one books pod's inbound
listener, from another pod (``plain``, no proxy: its connections land on books' inbound proxy), each attacker
reconnecting after every cut-off, while the shop's steady load runs through that same pod's proxy.

The legitimate traffic sees no failure; the attacked proxy cut the attackers off with GOAWAY
ENHANCE_YOUR_CALM and counted them (``proxy_h2_abuse_total{direction="inbound"}``) for each class; the
attack code is tests/netns/h2attacks.py's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h2attacks
import pytest
from e2e_load import steady_load
from e2e_mesh import BOOKS_PORT, SHOP, Mesh
from e2e_scenarios import scenario_record
from h2attacks import PingFlood, RapidReset, namespace_target, reconnecting, summary
from mesh_pods import sample

from tether.proxy.core.abuse import CONTROL_FLOOD, RAPID_RESET

pytestmark = pytest.mark.netns

RATE = 20.0
DIRECT_RATE = 10.0
ATTACK_SECONDS = 8.0


def test_abuse(healthy_mesh: Mesh, record: Any) -> None:
    mesh, cluster = healthy_mesh, healthy_mesh.cluster
    rec = scenario_record(record, "Abuse")
    victim = mesh.books[0]
    target = namespace_target("books", mesh.plain.netns, victim.ip, BOOKS_PORT)
    before = cluster.metrics(victim)
    # Two legitimate loads: the shop's chain (web balances over both books pods), and calls to the attacked
    # pod's own address (the client's proxy resolves a pod address to that one endpoint, over mTLS).
    with (
        steady_load(cluster, mesh.client, rate=RATE, name="abuse") as load,
        steady_load(
            cluster, mesh.client, "grpc", f"{victim.ip}:{BOOKS_PORT}", rate=DIRECT_RATE, name="abuse-direct"
        ) as direct,
    ):
        load.wait_requests(20)
        direct.wait_requests(10)

        async def attack() -> tuple[list[h2attacks.Outcome], list[h2attacks.Outcome]]:
            resets, pings = await asyncio.gather(
                reconnecting(RapidReset(), target, ATTACK_SECONDS),
                reconnecting(PingFlood(), target, ATTACK_SECONDS),
            )
            return resets, pings

        attack_started = time.time()
        resets, pings = asyncio.run(attack())
        attack_ended = time.time()
        load.wait_requests(len(load.outcomes()) + int(2 * RATE))
    chain, straight = load.stop(), direct.stop()
    rec.traffic(chain.sent + straight.sent, chain.failed + straight.failed)
    during = [o for o in direct.outcomes() if attack_started <= o.t <= attack_ended]
    rec.measure("attack_connections", len(resets) + len(pings))
    rec.measure("direct_requests_during_attack", len(during))
    assert chain.failed == 0, chain.describe()
    assert straight.failed == 0, straight.describe()
    assert len(during) >= DIRECT_RATE * ATTACK_SECONDS / 2, (
        f"only {len(during)} direct requests during the attack"
    )
    assert {o.by.get("books") for o in during} == {victim.name}
    for name, outcomes in (("rapid reset", resets), ("PING flood", pings)):
        report = summary(outcomes)
        assert report["cut_off"], f"{name}: the proxy never cut an attacker off: {report}"
        assert not report["problems"], f"{name}: {report['first_problem']}"
    after = cluster.metrics(victim)
    for reason in (RAPID_RESET, CONTROL_FLOOD):
        labels = {"direction": "inbound", "reason": reason}
        counted = sample(after, "proxy_h2_abuse_total", **labels) - sample(
            before, "proxy_h2_abuse_total", **labels
        )
        rec.measure(f"cut_off_{reason}", counted)
        assert counted >= 1, f"{victim.name}'s proxy counted no {reason} cut-off"
    assert {o.ids.get("books") for o in during} == {f"client.{SHOP}.serviceaccount.identity.cluster.local"}
