"""Checking that an upstream still answers, and avoiding it until it does (pure: raw frames, no sockets).

An endpoint that left a request unanswered is not chosen until its connection answers a PING (a hung host
never does); the end-to-end behaviour is in tests/proxy/test_hung_endpoint.py.
"""

from __future__ import annotations

import random

from h2rig import Rig, Scheduler, of_type
from hyperframe.frame import PingFrame

from tether.proxy.core.balancer import Balancer, EndpointLoad
from tether.proxy.core.connection import PROBE_PING, UpstreamConnection


def _ping_ack(data: bytes) -> bytes:
    frame = PingFrame(0)
    frame.opaque_data = data
    frame.flags.add("ACK")
    return bytes(frame.serialize())


def test_one_ping_at_a_time_and_its_answer_reaches_every_waiter() -> None:
    rig = Rig()
    answered: list[str] = []
    rig.up.probe(lambda: answered.append("first"))
    rig.up.probe(lambda: answered.append("second"))
    (ping,) = of_type(rig.to_server(), PingFrame)
    assert bytes(ping.opaque_data) == PROBE_PING and "ACK" not in ping.flags
    assert answered == []
    rig.from_server(_ping_ack(PROBE_PING))
    assert answered == ["first", "second"]
    rig.up.probe(lambda: answered.append("third"))
    assert len(of_type(rig.to_server(), PingFrame)) == 1, "a new check after the answer is a new PING"


def test_a_lost_or_closing_connection_answers_for_itself() -> None:
    rig = Rig()
    answered: list[str] = []
    rig.up.probe(lambda: answered.append("waiting"))
    rig.up.connection_lost(rig.now)
    assert answered == ["waiting"]
    rig.up.probe(lambda: answered.append("after"))
    assert answered == ["waiting", "after"]
    closing = UpstreamConnection(Scheduler())
    closing.closing = True
    closing.probe(lambda: answered.append("closing"))
    assert answered[-1] == "closing"


def test_an_endpoint_with_an_unanswered_check_is_not_chosen_while_another_can_be() -> None:
    balancer: Balancer[str] = Balancer(random.Random(7))
    balancer.set_endpoints([("a", 0), ("b", 0), ("c", 0)], now=0.0)
    hung = balancer.get("c")
    assert isinstance(hung, EndpointLoad)
    hung.check_started()
    hung.check_started()
    assert {balancer.pick(1.0).key for _ in range(300)} == {"a", "b"}  # type: ignore[union-attr]
    hung.check_answered()
    assert {balancer.pick(1.0).key for _ in range(300)} == {"a", "b"}  # type: ignore[union-attr]
    hung.check_answered()
    assert "c" in {balancer.pick(1.0).key for _ in range(300)}  # type: ignore[union-attr]
    alone: Balancer[str] = Balancer(random.Random(7))
    alone.set_endpoints([("c", 0)], now=0.0)
    only = alone.get("c")
    assert only is not None
    only.check_started()
    assert alone.pick(1.0) is only, "with nothing else to choose, it is still tried"
