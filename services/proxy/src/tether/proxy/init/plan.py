"""The interception rules as data: config in, nat-table rules and iptables-restore text out. No I/O.

Layout (all in the ``nat`` table; chain names are limited to 28 characters)::

    PREROUTING -p tcp -> TETHER_PROXY_INBOUND
        skip-listed destination ports RETURN, everything else -> TETHER_PROXY_INBOUND_REDIR
        TETHER_PROXY_INBOUND_REDIR: REDIRECT to the proxy's inbound port
    OUTPUT -p tcp -> TETHER_PROXY_OUTBOUND
        the proxy's own UID, loopback, skip-listed ports and subnets RETURN,
        everything else -> TETHER_PROXY_OUTBOUND_REDIR
        TETHER_PROXY_OUTBOUND_REDIR: REDIRECT to the proxy's outbound port

The same layout is planned once per address family: ``iptables`` for IPv4 and ``ip6tables`` for IPv6, whose
nat tables are separate. The two plans differ only in the skip-listed subnets, each family getting its own
(loopback is ``-o lo`` in both, so 127.0.0.0/8 and ::1 alike).

Rules are written in the exact form ``iptables-save`` prints them, so comparing the desired plan with the
saved table tells whether anything needs to change; that comparison is what makes proxy-init idempotent.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from tether.proxy.init.config import PortRange, ProxyInitConfig

TABLE = "nat"
INBOUND_CHAIN = "TETHER_PROXY_INBOUND"
INBOUND_REDIRECT_CHAIN = "TETHER_PROXY_INBOUND_REDIR"
OUTBOUND_CHAIN = "TETHER_PROXY_OUTBOUND"
OUTBOUND_REDIRECT_CHAIN = "TETHER_PROXY_OUTBOUND_REDIR"
OUR_CHAINS = (INBOUND_REDIRECT_CHAIN, INBOUND_CHAIN, OUTBOUND_REDIRECT_CHAIN, OUTBOUND_CHAIN)

IpFamily = Literal["ipv4", "ipv6"]
FAMILY_LABEL: dict[IpFamily, str] = {"ipv4": "IPv4", "ipv6": "IPv6"}
_VERSION: dict[IpFamily, int] = {"ipv4": 4, "ipv6": 6}

# xt_multiport takes at most 15 ports per rule; a range counts as two.
MULTIPORT_SLOTS = 15


class InterceptionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the planner needs, already validated."""

    inbound_port: int = 4143
    outbound_port: int = 4140
    proxy_uid: int = 2102
    inbound_skip_ports: tuple[PortRange, ...] = (PortRange(4190, 4190), PortRange(4191, 4191))
    outbound_skip_ports: tuple[PortRange, ...] = ()
    outbound_skip_subnets: tuple[str, ...] = ()
    """CIDRs of either family, normalised as iptables-save prints them (``10.0.0.0/8``, ``fd00::/64``)."""

    @classmethod
    def from_config(cls, config: ProxyInitConfig) -> InterceptionSpec:
        return cls(
            inbound_port=config.inbound_port,
            outbound_port=config.outbound_port,
            proxy_uid=config.proxy_uid,
            inbound_skip_ports=tuple(PortRange.parse(p) for p in config.inbound_skip_ports),
            outbound_skip_ports=tuple(PortRange.parse(p) for p in config.outbound_skip_ports),
            outbound_skip_subnets=tuple(normalise_subnet(s) for s in config.outbound_skip_subnets),
        )


def normalise_subnet(text: str) -> str:
    """A CIDR of either family in iptables-save's form; a bare address gets its full prefix length.

    IPv6 addresses are written by the C library's ``inet_ntop``, as ip6tables-save writes them: it differs
    from Python's form for IPv4-mapped addresses (``::ffff:10.0.0.1``, not ``::ffff:a00:1``).
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    if network.version == 4:
        return str(network)
    return f"{socket.inet_ntop(socket.AF_INET6, network.network_address.packed)}/{network.prefixlen}"


class Rule(msgspec.Struct, frozen=True):
    """One ``-A chain spec`` line, with the reason it exists (shown in dry runs and errors)."""

    chain: str
    spec: str
    purpose: str

    @property
    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


class InterceptionPlan(msgspec.Struct, frozen=True):
    """Our chains' full contents, and the jumps into them from the built-in chains, for one family."""

    chains: tuple[str, ...]
    rules: tuple[Rule, ...]
    hooks: tuple[Rule, ...]
    family: IpFamily = "ipv4"

    def rules_of(self, chain: str) -> list[str]:
        return [rule.line for rule in self.rules if rule.chain == chain]


def plan_interception(spec: InterceptionSpec, family: IpFamily = "ipv4") -> InterceptionPlan:
    """The complete set of nat rules for ``spec`` in ``family``'s table (only that family's subnets)."""
    rules: list[Rule] = [
        Rule(
            INBOUND_REDIRECT_CHAIN,
            f"-p tcp -j REDIRECT --to-ports {spec.inbound_port}",
            f"redirect inbound TCP to the proxy's inbound port {spec.inbound_port}",
        )
    ]
    for group in _multiport_groups(spec.inbound_skip_ports):
        rules.append(
            Rule(
                INBOUND_CHAIN,
                f"-p tcp -m multiport --dports {group} -j RETURN",
                f"leave inbound connections to ports {group} alone",
            )
        )
    rules.append(
        Rule(INBOUND_CHAIN, f"-p tcp -j {INBOUND_REDIRECT_CHAIN}", "intercept all other inbound TCP")
    )
    rules.append(
        Rule(
            OUTBOUND_REDIRECT_CHAIN,
            f"-p tcp -j REDIRECT --to-ports {spec.outbound_port}",
            f"redirect outbound TCP to the proxy's outbound port {spec.outbound_port}",
        )
    )
    rules.append(
        Rule(
            OUTBOUND_CHAIN,
            f"-m owner --uid-owner {spec.proxy_uid} -j RETURN",
            f"never redirect the proxy's own traffic (UID {spec.proxy_uid}), which would loop",
        )
    )
    rules.append(Rule(OUTBOUND_CHAIN, "-o lo -j RETURN", "leave traffic over loopback alone"))
    for group in _multiport_groups(spec.outbound_skip_ports):
        rules.append(
            Rule(
                OUTBOUND_CHAIN,
                f"-p tcp -m multiport --dports {group} -j RETURN",
                f"leave outbound connections to ports {group} alone",
            )
        )
    for subnet in spec.outbound_skip_subnets:
        network = ipaddress.ip_network(subnet, strict=False)
        if network.version != _VERSION[family]:
            continue
        # iptables-save leaves out a match on every address (/0).
        match = "" if network.prefixlen == 0 else f"-d {subnet} "
        rules.append(
            Rule(OUTBOUND_CHAIN, f"{match}-j RETURN", f"leave outbound connections to {subnet} alone")
        )
    rules.append(
        Rule(OUTBOUND_CHAIN, f"-p tcp -j {OUTBOUND_REDIRECT_CHAIN}", "intercept all other outbound TCP")
    )
    hooks = (
        Rule("PREROUTING", f"-p tcp -j {INBOUND_CHAIN}", "send inbound TCP through Tether's inbound chain"),
        Rule(
            "OUTPUT",
            f"-p tcp -j {OUTBOUND_CHAIN}",
            "send locally originated TCP through Tether's outbound chain",
        ),
    )
    return InterceptionPlan(chains=OUR_CHAINS, rules=tuple(rules), hooks=hooks, family=family)


def _multiport_groups(ranges: Sequence[PortRange]) -> Iterable[str]:
    group: list[str] = []
    used = 0
    for port_range in ranges:
        slots = 1 if port_range.first == port_range.last else 2
        if used + slots > MULTIPORT_SLOTS:
            yield ",".join(group)
            group, used = [], 0
        group.append(port_range.iptables())
        used += slots
    if group:
        yield ",".join(group)


class NatState(msgspec.Struct, frozen=True):
    """The parts of a saved nat table proxy-init cares about."""

    chains: dict[str, list[str]]
    """Every chain declared in the table, with its ``-A`` lines in order."""


def parse_nat_state(saved: str) -> NatState:
    """Parse ``iptables-save -t nat`` output. An empty or missing table yields no chains."""
    chains: dict[str, list[str]] = {}
    in_nat = False
    for raw in saved.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == f"*{TABLE}"
        elif not in_nat:
            continue
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return NatState(chains=chains)


class Fragment(msgspec.Struct, frozen=True):
    """iptables-restore input, and which rule each line came from (to explain failures)."""

    text: str
    rule_at_line: dict[int, Rule]

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


def reconcile(plan: InterceptionPlan, state: NatState) -> Fragment | None:
    """The ``iptables-restore --noflush`` input that turns ``state`` into ``plan``; None when nothing differs.

    Declaring a chain in restore input flushes it, so our chains are rewritten whole. Jumps from the built-in
    chains are only added when missing and duplicates or stale variants are deleted, so hooks never pile up.
    """
    chains_match = all(state.chains.get(chain) == plan.rules_of(chain) for chain in plan.chains)
    hook_deletes: list[str] = []
    hook_adds: list[Rule] = []
    for hook in plan.hooks:
        target = hook.spec.rsplit(" -j ", 1)[1]
        jumps = [line for line in state.chains.get(hook.chain, []) if line.endswith(f" -j {target}")]
        kept = False
        for line in jumps:
            if line == hook.line and not kept:
                kept = True
            else:
                hook_deletes.append("-D" + line[2:])
        if not kept:
            hook_adds.append(hook)
    if chains_match and not hook_deletes and not hook_adds:
        return None
    return render_fragment(plan, hooks=hook_adds, deletes=hook_deletes)


def render_fragment(
    plan: InterceptionPlan, *, hooks: Sequence[Rule] | None = None, deletes: Sequence[str] = ()
) -> Fragment:
    """iptables-restore (ip6tables-restore for IPv6) input installing ``plan``; ``hooks`` defaults to all of
    the plan's hooks."""
    restore = "iptables-restore" if plan.family == "ipv4" else "ip6tables-restore"
    label = FAMILY_LABEL[plan.family]
    lines = [
        f"# tether proxy-init: {label} transparent interception ({len(plan.rules)} rules), {restore} input",
        f"*{TABLE}",
    ]
    rule_at_line: dict[int, Rule] = {}
    lines.extend(f":{chain} - [0:0]" for chain in plan.chains)
    lines.extend(deletes)
    for rule in (*plan.rules, *(plan.hooks if hooks is None else hooks)):
        lines.append(f"# {rule.purpose}")
        lines.append(rule.line)
        rule_at_line[len(lines)] = rule
    lines.append("COMMIT")
    return Fragment(text="\n".join(lines) + "\n", rule_at_line=rule_at_line)
