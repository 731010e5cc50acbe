"""proxy-init: the nat rules that send a pod's TCP through its Tether proxy.

Pure API: ``plan_interception(InterceptionSpec(...))`` gives the rules, ``render_fragment(plan)`` the
``iptables-restore`` input, ``reconcile(plan, parse_nat_state(saved))`` the change needed for a saved table;
``plan_interception(spec, "ipv6")`` is the same for ip6tables. ``apply_plan(plan, mode)`` runs iptables (or
ip6tables, by the plan's family); ``tether.proxy.init.cli:main`` is the ``tether-proxy init`` command.
"""

from tether.proxy.init.apply import (
    ApplyResult,
    FamilyUnavailable,
    ProxyInitError,
    apply_plan,
    explain_failure,
    ipv6_unavailable,
    read_state,
)
from tether.proxy.init.config import PortRange, ProxyInitConfig
from tether.proxy.init.plan import (
    InterceptionPlan,
    InterceptionSpec,
    IpFamily,
    NatState,
    Rule,
    parse_nat_state,
    plan_interception,
    reconcile,
    render_fragment,
)

__all__ = [
    "ApplyResult",
    "FamilyUnavailable",
    "InterceptionPlan",
    "InterceptionSpec",
    "IpFamily",
    "NatState",
    "PortRange",
    "ProxyInitConfig",
    "ProxyInitError",
    "Rule",
    "apply_plan",
    "explain_failure",
    "ipv6_unavailable",
    "parse_nat_state",
    "plan_interception",
    "read_state",
    "reconcile",
    "render_fragment",
]
