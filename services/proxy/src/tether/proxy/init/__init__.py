"""proxy-init: the nat rules that send a pod's TCP through its Tether proxy.

Pure API: ``plan_interception(InterceptionSpec(...))`` gives the rules, ``render_fragment(plan)`` the
``iptables-restore`` input, ``reconcile(plan, parse_nat_state(saved))`` the change needed for a saved table.
``apply_plan(plan, mode)`` runs iptables; ``tether.proxy.init.cli:main`` is the ``tether-proxy init`` command.
"""

from tether.proxy.init.apply import ApplyResult, ProxyInitError, apply_plan, explain_failure
from tether.proxy.init.config import PortRange, ProxyInitConfig
from tether.proxy.init.plan import (
    InterceptionPlan,
    InterceptionSpec,
    NatState,
    Rule,
    parse_nat_state,
    plan_interception,
    reconcile,
    render_fragment,
)

__all__ = [
    "ApplyResult",
    "InterceptionPlan",
    "InterceptionSpec",
    "NatState",
    "PortRange",
    "ProxyInitConfig",
    "ProxyInitError",
    "Rule",
    "apply_plan",
    "explain_failure",
    "parse_nat_state",
    "plan_interception",
    "reconcile",
    "render_fragment",
]
