"""Installing a plan: read the nat table, compute the difference, apply it in one iptables-restore call.

One family at a time: IPv4 with iptables-save and iptables-restore, IPv6 with ip6tables-save and
ip6tables-restore, each restore atomic. A family the pod cannot intercept (its binary missing, the kernel
without its NAT support, IPv6 disabled in the namespace) raises :class:`FamilyUnavailable`, which the command
treats as "no IPv6 here" under ``--ipv6 auto``.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from tether.proxy.errors import ProxyError
from tether.proxy.init.config import IptablesMode
from tether.proxy.init.plan import (
    FAMILY_LABEL,
    TABLE,
    Fragment,
    InterceptionPlan,
    IpFamily,
    NatState,
    Rule,
    parse_nat_state,
    reconcile,
)


class ProxyInitError(ProxyError):
    """Installing the interception rules failed; the message names the step or rule and the reason."""


class FamilyUnavailable(ProxyInitError):
    """A family cannot be intercepted here at all: ``cause`` says why, ``remedy`` what would make it work.

    ``bypassed``: the namespace does have the family, so its traffic would flow past the proxy (as opposed to
    a namespace without the family at all).
    """

    def __init__(self, cause: str, remedy: str, *, bypassed: bool = True) -> None:
        super().__init__(f"{cause}: {remedy}")
        self.cause = cause
        self.remedy = remedy
        self.bypassed = bypassed


class CommandResult(msgspec.Struct, frozen=True):
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], CommandResult]
"""Runs ``argv`` with optional stdin text; raises FileNotFoundError when the binary is missing."""


def run_command(argv: Sequence[str], stdin: str | None) -> CommandResult:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=60)
    return CommandResult(done.returncode, done.stdout, done.stderr)


def binaries(mode: IptablesMode, family: IpFamily = "ipv4") -> tuple[str, str, str]:
    """(save, restore, iptables) executables for an iptables backend: ``ip6tables*`` for IPv6."""
    base = "iptables" if family == "ipv4" else "ip6tables"
    if mode == "auto":
        return f"{base}-save", f"{base}-restore", base
    return f"{base}-{mode}-save", f"{base}-{mode}-restore", f"{base}-{mode}"


DISABLE_IPV6 = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6")
"""Per network namespace: read from inside the pod's namespace, it tells whether the pod has IPv6."""


def ipv6_unavailable(disable_ipv6: Path = DISABLE_IPV6) -> FamilyUnavailable | None:
    """Why the namespace has no IPv6 at all, or None when it has (or when that cannot be told)."""
    try:
        value = disable_ipv6.read_text().strip()
    except FileNotFoundError:
        return FamilyUnavailable(
            f"the kernel has no IPv6 ({disable_ipv6} does not exist)",
            "boot the node's kernel with IPv6 (without ipv6.disable=1)",
            bypassed=False,
        )
    except OSError:
        return None  # unreadable: ip6tables itself will tell
    if value == "1":
        return FamilyUnavailable(
            f"IPv6 is disabled in the pod's network namespace ({disable_ipv6} is 1)",
            "enable it in the pod (sysctl net.ipv6.conf.all.disable_ipv6=0)",
            bypassed=False,
        )
    return None


class ApplyResult(msgspec.Struct, frozen=True):
    changed: bool
    fragment: Fragment | None
    """What was fed to iptables-restore; None when the table already matched."""


# Wait this long for the xtables lock when another process holds it.
LOCK_WAIT_SECONDS = 10


def read_state(family: IpFamily, mode: IptablesMode, run: Runner = run_command) -> NatState:
    """The family's nat table as ``iptables-save`` (``ip6tables-save``) prints it. Changes nothing."""
    save_bin = binaries(mode, family)[0]
    saved = _run(run, [save_bin, "-t", TABLE], None, f"reading the {FAMILY_LABEL[family]} {TABLE} table")
    return parse_nat_state(saved.stdout)


def apply_plan(
    plan: InterceptionPlan, mode: IptablesMode, run: Runner = run_command, state: NatState | None = None
) -> ApplyResult:
    """Make the plan's family's nat table match ``plan``, changing nothing when it already does.

    ``state`` is the table as :func:`read_state` read it; it is read here when not given.
    """
    _, restore_bin, iptables_bin = binaries(mode, plan.family)
    if state is None:
        state = read_state(plan.family, mode, run)
    fragment = reconcile(plan, state)
    if fragment is None:
        return ApplyResult(changed=False, fragment=None)
    argv = [restore_bin, "--noflush", "--wait", str(LOCK_WAIT_SECONDS)]
    try:
        result = run(argv, fragment.text)
    except FileNotFoundError:
        raise _missing(restore_bin) from None
    if result.returncode != 0:
        if _NO_KERNEL_SUPPORT.search(result.stderr):
            raise _unsupported(restore_bin, plan.family, result.stderr)
        message = explain_failure(restore_bin, fragment, result.stderr)
        if "--- input was ---" in message:
            found = diagnose(plan, state, iptables_bin, run)
            if found is not None:
                rule, reason = found
                message = f"{iptables_bin} rejected rule `{rule.line}` ({rule.purpose}): {reason}"
        raise ProxyInitError(message)
    return ApplyResult(changed=True, fragment=fragment)


def diagnose(
    plan: InterceptionPlan, state: NatState, iptables_bin: str, run: Runner
) -> tuple[Rule, str] | None:
    """Find the rule the kernel refuses by adding the rules one command at a time, then put ``state`` back.

    Only used after the atomic restore failed without naming a rule: iptables-legacy-restore reports a
    kernel refusal only as "line <COMMIT> failed". The rules are briefly half-installed meanwhile, which is
    acceptable because a pod whose proxy-init fails does not start.
    """
    base = [iptables_bin, "--wait", str(LOCK_WAIT_SECONDS), "-t", TABLE]
    added_hooks: list[Rule] = []
    try:
        for chain in plan.chains:
            run([*base, "-F" if chain in state.chains else "-N", chain], None)
        for rule in (*plan.rules, *plan.hooks):
            if rule in plan.hooks and rule.line in state.chains.get(rule.chain, []):
                continue
            result = run([*base, "-A", rule.chain, *rule.spec.split()], None)
            if result.returncode != 0:
                return rule, _first_lines(result.stderr)
            if rule in plan.hooks:
                added_hooks.append(rule)
        return None
    except FileNotFoundError:
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            for hook in added_hooks:
                run([*base, "-D", hook.chain, *hook.spec.split()], None)
            for chain in plan.chains:
                run([*base, "-F", chain], None)
                for line in state.chains.get(chain, []):
                    run([*base, *shlex.split(line)], None)
            for chain in plan.chains:
                if chain not in state.chains:
                    run([*base, "-X", chain], None)


def _run(run: Runner, argv: list[str], stdin: str | None, step: str) -> CommandResult:
    try:
        result = run(argv, stdin)
    except FileNotFoundError:
        raise _missing(argv[0]) from None
    if result.returncode != 0:
        if _NO_KERNEL_SUPPORT.search(result.stderr):
            raise _unsupported(argv[0], "ipv6" if argv[0].startswith("ip6") else "ipv4", result.stderr)
        raise ProxyInitError(
            f"{step} with {argv[0]} failed (exit {result.returncode}): {_first_lines(result.stderr)}"
        )
    return result


def _missing(binary: str) -> FamilyUnavailable:
    return FamilyUnavailable(
        f"{binary} not found on PATH", "install the iptables package (Debian: apt-get install iptables)"
    )


# What the iptables tools print when the kernel has no table (legacy) or no nf_tables family (nft) for them.
_NO_KERNEL_SUPPORT = re.compile(
    r"Table does not exist|do you need to insmod|Address family not supported|Protocol not supported"
    r"|can't initiali[sz]e ip6?tables table|unable to initiali[sz]e table",
    re.IGNORECASE,
)


def _unsupported(binary: str, family: IpFamily, stderr: str) -> FamilyUnavailable:
    label = FAMILY_LABEL[family]
    module = "ip6table_nat" if family == "ipv6" else "iptable_nat"
    return FamilyUnavailable(
        f"the kernel has no {label} NAT support for {binary}: {_first_lines(stderr)}",
        f"load it on the node (modprobe {module} for the legacy backend, nft_chain_nat for nft)",
    )


_LINE = re.compile(r"line:?\s+(\d+)")
_QUOTED = re.compile(r"""[`'"]([^`'"\s]+)['"]""")


def explain_failure(restore_bin: str, fragment: Fragment, stderr: str) -> str:
    """Name the rule iptables-restore rejected and its reason.

    The legacy backend reports the failing line; nft reports the COMMIT line for errors the kernel finds, so
    fall back to the rule mentioning the chain, target or match the error message quotes.
    """
    reason = _first_lines(stderr)
    rule = None
    line_match = _LINE.search(stderr)
    if line_match:
        rule = fragment.rule_at_line.get(int(line_match.group(1)))
    if rule is None:
        for token in _QUOTED.findall(stderr):
            rule = next((r for r in fragment.rule_at_line.values() if _mentions(r.line, token)), None)
            if rule is not None:
                break
    if rule is None:
        return f"{restore_bin} rejected the {TABLE} rules: {reason}\n--- input was ---\n{fragment.text}"
    return f"{restore_bin} rejected rule `{rule.line}` ({rule.purpose}): {reason}"


def _mentions(line: str, token: str) -> bool:
    return token in line.split() or token.lstrip("-") in line.split()


def _first_lines(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Try `")]
    return "; ".join(lines[:3]) or "no error output"
