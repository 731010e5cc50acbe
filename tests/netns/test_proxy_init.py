"""proxy-init for real: rules installed in a pod-like namespace and proven by where TCP connections land.

Layout: a ``pod`` namespace (where proxy-init runs) and a ``peer`` namespace joined by a veth pair. In the
pod, identify servers stand in for the proxy's outbound (4140) and inbound (4143) listeners, its admin ports
(4190, 4191) and an application port (8080); the peer listens on 80, 5432 and 8080. Each server answers with
the port that accepted the connection and the original destination when iptables redirected it.
"""

from __future__ import annotations

import pytest
from netns_harness import Namespace, NetnsHarness, proxy_init

pytestmark = pytest.mark.netns

PROXY_UID = 2102
OUTBOUND = 4140
INBOUND = 4143


class Pod:
    def __init__(self, netns: NetnsHarness) -> None:
        self.pod = netns.namespace("pod")
        self.peer = netns.namespace("peer")
        self.pod_ip, self.peer_ip = netns.link(self.pod, self.peer)
        self.pod.identify_server([OUTBOUND, INBOUND, 4190, 4191, 8080])
        self.peer.identify_server([80, 5432, 8080])


@pytest.fixture
def pod(netns: NetnsHarness) -> Pod:
    return Pod(netns)


def answers(namespace: Namespace, *targets: str, uid: int | None = None) -> dict[str, dict[str, object]]:
    replies = namespace.connect(list(targets), uid=uid)
    for reply in replies:
        assert "error" not in reply, reply
    return {str(reply["target"]): reply for reply in replies}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_interception_redirects_and_skips_what_it_should(pod: Pod, mode: str) -> None:
    proxy_init(pod.pod, "--iptables-mode", mode, "--outbound-skip-ports", "5432")
    peer80, peer_db = f"{pod.peer_ip}:80", f"{pod.peer_ip}:5432"
    app, admin, tap = f"{pod.pod_ip}:8080", f"{pod.pod_ip}:4191", f"{pod.pod_ip}:4190"

    # The application's outbound TCP lands on the proxy's outbound port, original destination intact.
    out = answers(pod.pod, peer80, "127.0.0.1:8080", app, peer_db)
    assert (out[peer80]["port"], out[peer80]["original_dst"]) == (OUTBOUND, peer80)
    # Loopback, including the pod's own address, and skip-listed ports are left alone.
    assert (out["127.0.0.1:8080"]["port"], out["127.0.0.1:8080"]["original_dst"]) == (8080, None)
    assert (out[app]["port"], out[app]["original_dst"]) == (8080, None)
    assert (out[peer_db]["port"], out[peer_db]["original_dst"]) == (5432, None)

    # The proxy's own connections (UID 2102) go straight out: no loop back into itself.
    own = answers(pod.pod, peer80, uid=PROXY_UID)
    assert (own[peer80]["port"], own[peer80]["original_dst"]) == (80, None)
    assert str(own[peer80]["peer"]).startswith(pod.pod_ip + ":")

    # Inbound TCP lands on the proxy's inbound port, except the skip-listed admin ports.
    inbound = answers(pod.peer, app, admin, tap)
    assert (inbound[app]["port"], inbound[app]["original_dst"]) == (INBOUND, app)
    assert (inbound[admin]["port"], inbound[admin]["original_dst"]) == (4191, None)
    assert (inbound[tap]["port"], inbound[tap]["original_dst"]) == (4190, None)


def test_outbound_skip_subnets(pod: Pod) -> None:
    proxy_init(pod.pod, "--outbound-skip-subnets", f"{pod.peer_ip}/32")
    target = f"{pod.peer_ip}:80"
    reply = answers(pod.pod, target)[target]
    assert (reply["port"], reply["original_dst"]) == (80, None)


@pytest.mark.parametrize(("mode", "save"), [("auto", "iptables-save"), ("legacy", "iptables-legacy-save")])
def test_second_run_changes_nothing(netns: NetnsHarness, mode: str, save: str) -> None:
    pod = netns.namespace("pod")
    args = (
        "--iptables-mode",
        mode,
        "--outbound-skip-ports",
        "5432,9000-9100",
        "--outbound-skip-subnets",
        "10.9.0.0/16",
    )
    first = proxy_init(pod, *args)
    installed = pod.iptables_save(binary=save)
    second = proxy_init(pod, *args)
    assert pod.iptables_save(binary=save) == installed
    assert "interception_rules_installed" in first.stderr
    assert "interception_rules_already_installed" in second.stderr
    assert installed.count("-j TETHER_PROXY_INBOUND\n") == 1
    assert installed.count("-j TETHER_PROXY_OUTBOUND\n") == 1


def test_changed_options_rewrite_the_chains_without_duplicating_hooks(netns: NetnsHarness) -> None:
    pod = netns.namespace("pod")
    proxy_init(pod)
    proxy_init(pod, "--outbound-port", "5140")
    saved = pod.iptables_save()
    assert "-A TETHER_PROXY_OUTBOUND_REDIR -p tcp -j REDIRECT --to-ports 5140" in saved
    assert "--to-ports 4140" not in saved
    assert saved.count("-A OUTPUT -p tcp -j TETHER_PROXY_OUTBOUND\n") == 1


def test_dry_run_prints_the_rules_and_changes_nothing(netns: NetnsHarness) -> None:
    pod = netns.namespace("pod")
    before = pod.iptables_save()
    done = proxy_init(pod, "--dry-run")
    assert pod.iptables_save() == before
    assert "TETHER_PROXY" not in before
    printed = done.stdout.splitlines()
    assert "-A TETHER_PROXY_OUTBOUND -m owner --uid-owner 2102 -j RETURN" in printed
    assert "-A PREROUTING -p tcp -j TETHER_PROXY_INBOUND" in printed
    assert printed[-1] == "COMMIT"


@pytest.mark.parametrize(("mode", "iptables"), [("auto", "iptables"), ("legacy", "iptables-legacy")])
def test_failure_names_the_rule_and_leaves_the_table_as_it_was(
    netns: NetnsHarness, mode: str, iptables: str
) -> None:
    """A chain of ours reachable from POSTROUTING makes the kernel refuse its REDIRECT rule."""
    pod = netns.namespace("pod")
    for command in (
        ["-N", "TETHER_PROXY_OUTBOUND_REDIR"],
        ["-A", "TETHER_PROXY_OUTBOUND_REDIR", "-p", "udp", "-j", "RETURN"],
        ["-A", "POSTROUTING", "-j", "TETHER_PROXY_OUTBOUND_REDIR"],
    ):
        pod.run([iptables, "-t", "nat", *command])
    save = f"{iptables}-save"
    before = pod.iptables_save(binary=save)
    failed = proxy_init(pod, "--iptables-mode", mode, check=False)
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("tether-proxy: error: installing the interception rules failed: ")
    assert "rule `-A TETHER_PROXY_OUTBOUND_REDIR -p tcp -j REDIRECT --to-ports 4140`" in error
    assert "Invalid argument" in error
    assert pod.iptables_save(binary=save) == before
