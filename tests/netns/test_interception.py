"""Transparent interception end to end: an application dials another namespace's address and port with no
knowledge of the proxy, and the request goes through both Tether proxies.

``client`` namespace: the application client (root, so its traffic is intercepted), proxy-init rules and an
outbound proxy running as UID 2102. ``server`` namespace: proxy-init rules, an inbound proxy (UID 2102) and
the application on port 8080. Discovery is disabled, so the outbound proxy forwards to each connection's
original destination, where the server's rules hand it to the inbound proxy, which forwards over loopback.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from netns_harness import (
    Namespace,
    NetnsHarness,
    proxy_init,
    proxy_metrics,
    start_tether_proxy,
)

pytestmark = pytest.mark.netns

APP = Path(__file__).resolve().parent / "h2_app.py"
APP_PORT = 8080


def sample(metrics: str, name: str, **labels: str) -> int:
    """Sum of ``name`` over series whose labels include all of ``labels``."""
    total = 0
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\d+)$", metrics, re.MULTILINE):
        series = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
        if all(series.get(key) == value for key, value in labels.items()):
            total += int(match.group(2))
    return total


def app_get(client: Namespace, *urls: str) -> list[dict[str, object]]:
    done = client.run([sys.executable, str(APP), "get", *urls])
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_requests_cross_both_proxies_with_the_original_destination(netns: NetnsHarness) -> None:
    client, server = netns.namespace("cli"), netns.namespace("srv")
    _, server_ip = netns.link(client, server)
    server.spawn([sys.executable, str(APP), "serve", str(APP_PORT)], ready_line="ready")
    proxy_init(client)
    proxy_init(server)
    start_tether_proxy(client)
    start_tether_proxy(server)

    base = f"http://{server_ip}:{APP_PORT}"
    urls = [f"{base}/ok/{i}" for i in range(5)] + [f"{base}/status/503"] * 2 + [f"{base}/status/404"]
    replies = app_get(client, *urls)

    assert [reply.get("status") for reply in replies] == [200] * 5 + [503, 503, 404], replies
    for reply, url in zip(replies, urls, strict=True):
        body = reply["body"]
        assert isinstance(body, dict)
        # The application saw the authority and port the client dialled, reached by the inbound proxy at
        # the pod's own address (never over loopback): the original destination survived both redirects.
        assert body["authority"] == f"{server_ip}:{APP_PORT}"
        assert body["path"] == url.removeprefix(base)
        assert body["local"] == f"{server_ip}:{APP_PORT}"
        assert str(body["peer"]).startswith(f"{server_ip}:")

    outbound, inbound = proxy_metrics(client), proxy_metrics(server)
    for metrics, direction in ((outbound, "outbound"), (inbound, "inbound")):
        assert sample(metrics, "request_total", direction=direction) == 8, metrics
        assert (
            sample(
                metrics, "response_total", direction=direction, status_code="200", classification="success"
            )
            == 5
        )
        assert (
            sample(
                metrics, "response_total", direction=direction, status_code="503", classification="failure"
            )
            == 2
        )
        assert (
            sample(
                metrics, "response_total", direction=direction, status_code="404", classification="success"
            )
            == 1
        )
        assert sample(metrics, "response_latency_ms_count", direction=direction) == 8
    # Nothing looped: the outbound proxy's own upstream connection was not intercepted again (it would
    # have shown up as more outbound requests, or as inbound ones on the client side).
    assert sample(outbound, "request_total", direction="inbound") == 0
    assert sample(inbound, "request_total", direction="outbound") == 0
    assert sample(outbound, "tcp_open_total", direction="outbound", peer="src") == 1  # the application's
    assert sample(outbound, "tcp_open_total", direction="outbound", peer="dst") == 1  # to the inbound proxy
    assert sample(inbound, "tcp_open_total", direction="inbound", peer="src") == 1  # from the outbound proxy
