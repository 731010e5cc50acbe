"""proxy-init for real: rules installed in a pod-like namespace and proven by where TCP connections land.

Layout: a ``pod`` namespace (where proxy-init runs) and a ``peer`` namespace joined by a veth pair. In the
pod, identify servers stand in for the proxy's outbound (4140) and inbound (4143) listeners, its admin ports
(4190, 4191) and an application port (8080); the peer listens on 80, 5432 and 8080. Each server answers with
the port that accepted the connection and the original destination when iptables redirected it.

The IPv6 tests use the same layout on a dual-stack pair (``fd00:231:<n>::1`` in the pod, ``::2`` in the peer)
with IPv6 identify servers (``[::]`` only), proving the ip6tables rules the same way.
"""

from __future__ import annotations

import json

import pytest
from netns_harness import (
    DualStackLink,
    Namespace,
    NetnsHarness,
    connect_ipv6,
    identify_server_ipv6,
    ipv6_unavailable_reason,
    link_dual_stack,
    proxy_init,
)

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


@pytest.mark.parametrize(
    ("mode", "save", "save6"),
    [
        ("auto", "iptables-save", "ip6tables-save"),
        ("legacy", "iptables-legacy-save", "ip6tables-legacy-save"),
    ],
)
def test_second_run_changes_nothing(
    netns: NetnsHarness, ipv6_tools: None, mode: str, save: str, save6: str
) -> None:
    pod = netns.namespace("pod")
    args = (
        "--iptables-mode",
        mode,
        "--outbound-skip-ports",
        "5432,9000-9100",
        "--outbound-skip-subnets",
        # Every form ip(6)tables-save writes its own way: a host, IPv4-mapped, and every address.
        "10.9.0.0/16,fd00:9::/32,fd00:231:7::2,::ffff:10.0.0.1,0.0.0.0/0,::/0",
    )
    first = proxy_init(pod, *args)
    installed, installed6 = pod.iptables_save(binary=save), pod.iptables_save(binary=save6)
    second = proxy_init(pod, *args)
    assert (pod.iptables_save(binary=save), pod.iptables_save(binary=save6)) == (installed, installed6)
    assert families(first, "interception_rules_installed") == ["IPv4", "IPv6"]
    assert families(second, "interception_rules_already_installed") == ["IPv4", "IPv6"]
    for table in (installed, installed6):
        assert table.count("-j TETHER_PROXY_INBOUND\n") == 1
        assert table.count("-j TETHER_PROXY_OUTBOUND\n") == 1
        assert "-A TETHER_PROXY_OUTBOUND -p tcp -m multiport --dports 5432,9000:9100 -j RETURN" in table
    # Each family's table holds only its own subnets, in the form ip(6)tables-save prints them.
    assert "-A TETHER_PROXY_OUTBOUND -d 10.9.0.0/16 -j RETURN" in installed
    assert "fd00" not in installed
    assert "-A TETHER_PROXY_OUTBOUND -d fd00:9::/32 -j RETURN" in installed6
    assert "-A TETHER_PROXY_OUTBOUND -d fd00:231:7::2/128 -j RETURN" in installed6
    assert "-A TETHER_PROXY_OUTBOUND -d ::ffff:10.0.0.1/128 -j RETURN" in installed6
    assert "10.9.0.0" not in installed6


def test_changed_options_rewrite_the_chains_without_duplicating_hooks(
    netns: NetnsHarness, ipv6_tools: None
) -> None:
    pod = netns.namespace("pod")
    proxy_init(pod)
    proxy_init(pod, "--outbound-port", "5140")
    for save in ("iptables-save", "ip6tables-save"):
        saved = pod.iptables_save(binary=save)
        assert "-A TETHER_PROXY_OUTBOUND_REDIR -p tcp -j REDIRECT --to-ports 5140" in saved, save
        assert "--to-ports 4140" not in saved, save
        assert saved.count("-A OUTPUT -p tcp -j TETHER_PROXY_OUTBOUND\n") == 1, save


def test_dry_run_prints_the_rules_and_changes_nothing(netns: NetnsHarness) -> None:
    pod = netns.namespace("pod")
    before, before6 = pod.iptables_save(), pod.iptables_save(binary="ip6tables-save")
    done = proxy_init(pod, "--dry-run", "--outbound-skip-subnets", "10.9.0.0/16,fd00:9::/32")
    assert (pod.iptables_save(), pod.iptables_save(binary="ip6tables-save")) == (before, before6)
    assert "TETHER_PROXY" not in before + before6
    printed = done.stdout.splitlines()
    assert "-A TETHER_PROXY_OUTBOUND -m owner --uid-owner 2102 -j RETURN" in printed
    assert "-A PREROUTING -p tcp -j TETHER_PROXY_INBOUND" in printed
    assert printed[-1] == "COMMIT"
    # The iptables-restore input, then the ip6tables-restore input, each with its own family's subnets.
    ipv6_start = next(n for n, line in enumerate(printed) if "ip6tables-restore input" in line)
    ipv4, ipv6 = printed[:ipv6_start], printed[ipv6_start:]
    assert "iptables-restore input" in ipv4[0]
    assert ipv4.count("COMMIT") == ipv6.count("COMMIT") == 1
    assert "-A TETHER_PROXY_OUTBOUND -d 10.9.0.0/16 -j RETURN" in ipv4
    assert "-A TETHER_PROXY_OUTBOUND -d fd00:9::/32 -j RETURN" in ipv6
    assert not any("fd00" in line for line in ipv4)
    assert not any("10.9.0.0" in line for line in ipv6)
    assert "ip6tables-restore" not in proxy_init(pod, "--dry-run", "--ipv6", "off").stdout


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


# IPv6 ---------------------------------------------------------------------------------------------------


@pytest.fixture
def ipv6_tools(netns_supported: None) -> None:
    reason = ipv6_unavailable_reason()
    if reason is not None:
        pytest.skip(f"IPv6 network namespace tests skipped: {reason}")


class DualStackPod:
    """The ``Pod`` layout on a dual-stack pair, with IPv6 identify servers on the same ports."""

    def __init__(self, netns: NetnsHarness) -> None:
        self.pod = netns.namespace("pod")
        self.peer = netns.namespace("peer")
        self.link: DualStackLink = link_dual_stack(netns, self.pod, self.peer)
        self.pod_ip, self.peer_ip = f"[{self.link.left_ipv6}]", f"[{self.link.right_ipv6}]"
        identify_server_ipv6(self.pod, [OUTBOUND, INBOUND, 4190, 4191, 8080])
        identify_server_ipv6(self.peer, [80, 5432, 8080])


@pytest.fixture
def pod6(netns: NetnsHarness, ipv6_tools: None) -> DualStackPod:
    return DualStackPod(netns)


def answers6(namespace: Namespace, *targets: str, uid: int | None = None) -> dict[str, dict[str, object]]:
    replies = connect_ipv6(namespace, list(targets), uid=uid)
    for reply in replies:
        assert "error" not in reply, reply
    return {str(reply["target"]): reply for reply in replies}


def families(done: object, event: str) -> list[str]:
    """The ``family`` of each JSON log line with ``event`` in a proxy-init run's stderr."""
    stderr = str(getattr(done, "stderr", ""))
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [str(line.get("family")) for line in lines if line.get("event") == event]


def disable_ipv6(namespace: Namespace) -> None:
    """``sysctl net.ipv6.conf.all.disable_ipv6=1`` inside ``namespace`` only (the file is per namespace)."""
    namespace.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"])
    value = namespace.run(["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"]).stdout.strip()
    assert value == "1"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_ipv6_interception_redirects_and_skips_what_it_should(pod6: DualStackPod, mode: str) -> None:
    done = proxy_init(pod6.pod, "--iptables-mode", mode, "--outbound-skip-ports", "5432")
    assert families(done, "interception_rules_installed") == ["IPv4", "IPv6"]
    peer80, peer_db = f"{pod6.peer_ip}:80", f"{pod6.peer_ip}:5432"
    app, admin, tap = f"{pod6.pod_ip}:8080", f"{pod6.pod_ip}:4191", f"{pod6.pod_ip}:4190"

    # The application's outbound IPv6 TCP lands on the proxy's outbound port, original destination intact.
    out = answers6(pod6.pod, peer80, "[::1]:8080", app, peer_db)
    assert (out[peer80]["port"], out[peer80]["original_dst"]) == (OUTBOUND, peer80)
    # Loopback (::1, and the pod's own address) and skip-listed ports are left alone.
    assert (out["[::1]:8080"]["port"], out["[::1]:8080"]["original_dst"]) == (8080, None)
    assert (out[app]["port"], out[app]["original_dst"]) == (8080, None)
    assert (out[peer_db]["port"], out[peer_db]["original_dst"]) == (5432, None)

    # The proxy's own connections (UID 2102) go straight out.
    own = answers6(pod6.pod, peer80, uid=PROXY_UID)
    assert (own[peer80]["port"], own[peer80]["original_dst"]) == (80, None)
    assert str(own[peer80]["peer"]).startswith(pod6.pod_ip + ":")

    # Inbound IPv6 TCP lands on the proxy's inbound port, except the skip-listed admin ports.
    inbound = answers6(pod6.peer, app, admin, tap)
    assert (inbound[app]["port"], inbound[app]["original_dst"]) == (INBOUND, app)
    assert (inbound[admin]["port"], inbound[admin]["original_dst"]) == (4191, None)
    assert (inbound[tap]["port"], inbound[tap]["original_dst"]) == (4190, None)


def test_ipv6_skip_ports_apply_in_both_directions(pod6: DualStackPod) -> None:
    proxy_init(pod6.pod, "--inbound-skip-ports", "8080", "--outbound-skip-ports", "80,5000-6000")
    out = answers6(pod6.pod, f"{pod6.peer_ip}:80", f"{pod6.peer_ip}:5432", f"{pod6.peer_ip}:8080")
    assert {target: (r["port"], r["original_dst"]) for target, r in out.items()} == {
        f"{pod6.peer_ip}:80": (80, None),
        f"{pod6.peer_ip}:5432": (5432, None),
        f"{pod6.peer_ip}:8080": (OUTBOUND, f"{pod6.peer_ip}:8080"),
    }
    # --inbound-skip-ports replaces the default list: the admin port is intercepted now, 8080 is not.
    inbound = answers6(pod6.peer, f"{pod6.pod_ip}:8080", f"{pod6.pod_ip}:4191")
    assert (inbound[f"{pod6.pod_ip}:8080"]["port"], inbound[f"{pod6.pod_ip}:8080"]["original_dst"]) == (
        8080,
        None,
    )
    assert inbound[f"{pod6.pod_ip}:4191"]["port"] == INBOUND


def test_outbound_skip_subnets_of_both_families(netns: NetnsHarness, pod6: DualStackPod) -> None:
    """One skip list with both families: each family's rules get its own CIDRs, and only those addresses."""
    other = "fd00:231:1::3"
    pod6.peer.run(["ip", "-6", "addr", "add", f"{other}/64", "dev", pod6.link.right_interface, "nodad"])
    pod6.peer.identify_server([80])
    proxy_init(pod6.pod, "--outbound-skip-subnets", f"{pod6.link.right_ipv4}/32,{pod6.link.right_ipv6}/128")
    skipped, intercepted = f"{pod6.peer_ip}:80", f"[{other}]:80"
    out = answers6(pod6.pod, skipped, intercepted)
    assert (out[skipped]["port"], out[skipped]["original_dst"]) == (80, None)
    assert (out[intercepted]["port"], out[intercepted]["original_dst"]) == (OUTBOUND, intercepted)
    ipv4_target = f"{pod6.link.right_ipv4}:80"
    reply = answers(pod6.pod, ipv4_target)[ipv4_target]
    assert (reply["port"], reply["original_dst"]) == (80, None)


@pytest.mark.parametrize(("mode", "ip6tables"), [("auto", "ip6tables"), ("legacy", "ip6tables-legacy")])
def test_ipv6_failure_names_the_rule_and_leaves_the_table_as_it_was(
    netns: NetnsHarness, ipv6_tools: None, mode: str, ip6tables: str
) -> None:
    """The IPv4 test's trap in the IPv6 table: the ip6tables REDIRECT rule is refused and named."""
    pod = netns.namespace("pod")
    for command in (
        ["-N", "TETHER_PROXY_OUTBOUND_REDIR"],
        ["-A", "TETHER_PROXY_OUTBOUND_REDIR", "-p", "udp", "-j", "RETURN"],
        ["-A", "POSTROUTING", "-j", "TETHER_PROXY_OUTBOUND_REDIR"],
    ):
        pod.run([ip6tables, "-t", "nat", *command])
    save = f"{ip6tables}-save"
    before = pod.iptables_save(binary=save)
    failed = proxy_init(pod, "--iptables-mode", mode, check=False)
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("tether-proxy: error: installing the interception rules failed: ")
    assert "rule `-A TETHER_PROXY_OUTBOUND_REDIR -p tcp -j REDIRECT --to-ports 4140`" in error
    assert f"{ip6tables} rejected" in error or f"{ip6tables}-restore rejected" in error
    assert pod.iptables_save(binary=save) == before


def test_ipv6_disabled_auto_intercepts_ipv4_and_says_so(netns: NetnsHarness, ipv6_tools: None) -> None:
    pod = netns.namespace("pod")
    disable_ipv6(pod)
    done = proxy_init(pod)  # --ipv6 auto is the default
    assert families(done, "interception_rules_installed") == ["IPv4"]
    skipped = [json.loads(line) for line in done.stderr.splitlines() if "ipv6_interception_skipped" in line]
    assert len(skipped) == 1
    assert "IPv6 is disabled in the pod's network namespace" in skipped[0]["reason"]
    assert "disable_ipv6" in skipped[0]["reason"]
    assert "-A OUTPUT -p tcp -j TETHER_PROXY_OUTBOUND" in pod.iptables_save()
    assert "TETHER_PROXY" not in pod.iptables_save(binary="ip6tables-save")
    # Running again is as quiet about IPv4 as ever, and says the same about IPv6.
    again = proxy_init(pod)
    assert families(again, "interception_rules_already_installed") == ["IPv4"]
    assert again.stderr.count("ipv6_interception_skipped") == 1


def test_ipv6_on_without_ipv6_is_one_clear_error_and_changes_nothing(
    netns: NetnsHarness, ipv6_tools: None
) -> None:
    pod = netns.namespace("pod")
    disable_ipv6(pod)
    before, before6 = pod.iptables_save(), pod.iptables_save(binary="ip6tables-save")
    failed = proxy_init(pod, "--ipv6", "on", check=False)
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("tether-proxy: error: --ipv6 on, but IPv6 cannot be intercepted: IPv6 is disabled")
    assert "/proc/sys/net/ipv6/conf/all/disable_ipv6 is 1" in line
    assert "sysctl net.ipv6.conf.all.disable_ipv6=0" in line and "--ipv6 auto" in line
    assert (pod.iptables_save(), pod.iptables_save(binary="ip6tables-save")) == (before, before6)


def test_ipv6_off_leaves_ip6tables_alone(netns: NetnsHarness, ipv6_tools: None) -> None:
    pod = netns.namespace("pod")
    before6 = pod.iptables_save(binary="ip6tables-save")
    done = proxy_init(pod, "--ipv6", "off")
    assert families(done, "interception_rules_installed") == ["IPv4"]
    assert "ipv6_interception_skipped" not in done.stderr
    assert pod.iptables_save(binary="ip6tables-save") == before6
