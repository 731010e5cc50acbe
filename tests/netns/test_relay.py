"""No open relay: from outside a pod, its proxy forwards only to the application on the pod's address.

``outside``: a client with no proxy and no interception (another pod's attacker, say). ``pod``: proxy-init
rules, the inbound proxy (UID 2102, identity disabled) and two applications: one on 0.0.0.0:8080 (what the pod
serves) and one on 127.0.0.1:9000 (what the pod keeps to itself, e.g. a debug endpoint). Every TCP connection
to the pod is redirected to the inbound proxy, so whatever port is asked for, the proxy decides. ``victim``
(in the second test): a host behind the pod, which ``outside`` routes through the pod's address.
"""

from __future__ import annotations

import json
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
    proxy = start_tether_proxy(pod)

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
    # and 4143 (reached directly, so not redirected) are refused and counted.
    for port in (4140, 4143):
        refused = get(port)
        assert refused.get("status") == 403, refused

    metrics = proxy_metrics(pod)
    assert "\nproxy_inbound_proxy_port_refused_total 2\n" in metrics, metrics
    assert sample(metrics, "response_total", direction="inbound", status_code="403") == 2
    assert sample(metrics, "response_total", direction="inbound", status_code="502") == 1
    assert sample(metrics, "request_total", direction="inbound", authority=f"{pod_ip}:{PRIVATE_PORT}") == 1
    # Only the public application answered (Linkerd counts the proxy's 403 as a success: a 4xx).
    assert sample(metrics, "response_total", direction="inbound", status_code="200") == 1

    # Identity is disabled here: every series says so (the hop to the application too), with no reason.
    labelled = [line for line in metrics.splitlines() if 'tls="' in line and not line.startswith("#")]
    assert labelled, metrics
    assert all('tls="disabled"' in line and "no_tls_reason" not in line for line in labelled), labelled
    proxy.terminate()
    _, stderr = proxy.communicate(timeout=15)
    warned = [json.loads(line) for line in stderr.splitlines() if '"identity_disabled"' in line]
    assert [entry["level"] for entry in warned] == ["warning"], stderr


def test_traffic_for_another_host_routed_through_the_pod_is_not_relayed(netns: NetnsHarness) -> None:
    """iptables redirects every TCP connection that reaches the pod, also one whose destination is another
    host (an attacker next to the pod routes it there): the proxy must not connect onwards as the pod."""
    outside, pod, victim = netns.namespace("out"), netns.namespace("pod"), netns.namespace("vic")
    _, pod_ip = netns.link(outside, pod)
    pod_side, victim_ip = netns.link(pod, victim)
    victim.spawn([sys.executable, str(APP), "serve", str(PUBLIC_PORT), victim_ip], ready_line="ready")
    pod.spawn([sys.executable, str(APP), "serve", str(PUBLIC_PORT)], ready_line="ready")
    victim.run(["ip", "route", "add", "default", "via", pod_side])
    outside.run(["ip", "route", "add", victim_ip, "via", pod_ip])
    proxy_init(pod)
    start_tether_proxy(pod)

    (relayed,) = app_get(outside, f"http://{victim_ip}:{PUBLIC_PORT}/probe")
    assert relayed.get("status") == 403, relayed
    assert "body" not in relayed, relayed  # the victim's application never answered
    # The pod's own application still answers on the same port.
    (served,) = app_get(outside, f"http://{pod_ip}:{PUBLIC_PORT}/probe")
    assert served.get("status") == 200, served

    metrics = proxy_metrics(pod)
    assert "\nproxy_inbound_not_local_refused_total 1\n" in metrics, metrics
    assert sample(metrics, "request_total", direction="inbound", authority=f"{victim_ip}:{PUBLIC_PORT}") == 1
    assert sample(metrics, "response_total", direction="inbound", status_code="200") == 1
