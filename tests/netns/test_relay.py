"""No open relay: from outside a pod, its proxy forwards only to the application on the pod's address.

``outside``: a client with no proxy and no interception (another pod's attacker, say). ``pod``: proxy-init
rules, the inbound proxy (UID 2102, identity disabled) and two applications: one on 0.0.0.0:8080 (what the pod
serves) and one on 127.0.0.1:9000 (what the pod keeps to itself, e.g. a debug endpoint). Every TCP connection
to the pod is redirected to the inbound proxy, so whatever port is asked for, the proxy decides.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from netns_harness import NetnsHarness, proxy_init, proxy_metrics, start_tether_proxy
from test_interception import app_get, sample

pytestmark = pytest.mark.netns

APP = Path(__file__).resolve().parent / "h2_app.py"
PUBLIC_PORT = 8080
PRIVATE_PORT = 9000


def test_requests_reach_only_the_pods_application(netns: NetnsHarness) -> None:
    outside, pod = netns.namespace("out"), netns.namespace("pod")
    _, pod_ip = netns.link(outside, pod)
    pod.spawn([sys.executable, str(APP), "serve", str(PUBLIC_PORT)], ready_line="ready")
    pod.spawn([sys.executable, str(APP), "serve", str(PRIVATE_PORT), "127.0.0.1"], ready_line="ready")
    proxy_init(pod)
    start_tether_proxy(pod)

    def get(port: int) -> dict[str, object]:
        (reply,) = app_get(outside, f"http://{pod_ip}:{port}/probe")
        return reply

    served = get(PUBLIC_PORT)
    assert served.get("status") == 200, served
    body = served["body"]
    assert isinstance(body, dict) and body["local"] == f"{pod_ip}:{PUBLIC_PORT}"

    # The loopback-only application is not reachable through the proxy: it forwards to the pod's own
    # address, where nothing listens on that port.
    private = get(PRIVATE_PORT)
    assert private.get("status") in (502, 503), private
    assert "body" not in private

    # The proxy's own listeners are never a forwarding target: 4140 (which would relay anywhere, as the pod)
    # is refused outright; 4143 reached directly was not redirected, so there is nothing to forward to.
    refused = get(4140)
    assert refused.get("status") == 403, refused
    direct = get(4143)
    assert direct.get("status") == 502, direct

    metrics = proxy_metrics(pod)
    assert "\nproxy_inbound_proxy_port_refused_total 1\n" in metrics, metrics
    assert sample(metrics, "response_total", direction="inbound", status_code="403") == 1
    assert sample(metrics, "response_total", direction="inbound", status_code="502") == 2
    assert sample(metrics, "request_total", direction="inbound", authority=f"{pod_ip}:{PRIVATE_PORT}") == 1
    # Only the public application answered (Linkerd counts the proxy's 403 as a success: a 4xx).
    assert sample(metrics, "response_total", direction="inbound", status_code="200") == 1
