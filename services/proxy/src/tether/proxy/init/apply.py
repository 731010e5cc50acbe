"""Installing a plan: read the nat table, compute the difference, apply it in one iptables-restore call."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence

import msgspec

from tether.proxy.errors import ProxyError
from tether.proxy.init.config import IptablesMode
from tether.proxy.init.plan import (
    TABLE,
    Fragment,
    InterceptionPlan,
    NatState,
    Rule,
    parse_nat_state,
    reconcile,
)


class ProxyInitError(ProxyError):
    """Installing the interception rules failed; the message names the step or rule and the reason."""


class CommandResult(msgspec.Struct, frozen=True):
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], CommandResult]
"""Runs ``argv`` with optional stdin text; raises FileNotFoundError when the binary is missing."""


def run_command(argv: Sequence[str], stdin: str | None) -> CommandResult:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=60)
    return CommandResult(done.returncode, done.stdout, done.stderr)


def binaries(mode: IptablesMode) -> tuple[str, str, str]:
    """(save, restore, iptables) executables for an iptables backend."""
    if mode == "auto":
        return "iptables-save", "iptables-restore", "iptables"
    return f"iptables-{mode}-save", f"iptables-{mode}-restore", f"iptables-{mode}"


class ApplyResult(msgspec.Struct, frozen=True):
    changed: bool
    fragment: Fragment | None
    """What was fed to iptables-restore; None when the table already matched."""


# Wait this long for the xtables lock when another process holds it.
LOCK_WAIT_SECONDS = 10


def apply_plan(plan: InterceptionPlan, mode: IptablesMode, run: Runner = run_command) -> ApplyResult:
    """Make the nat table match ``plan``, changing nothing when it already does."""
    save_bin, restore_bin, iptables_bin = binaries(mode)
    saved = _run(run, [save_bin, "-t", TABLE], None, f"reading the {TABLE} table")
    state = parse_nat_state(saved.stdout)
    fragment = reconcile(plan, state)
    if fragment is None:
        return ApplyResult(changed=False, fragment=None)
    argv = [restore_bin, "--noflush", "--wait", str(LOCK_WAIT_SECONDS)]
    try:
        result = run(argv, fragment.text)
    except FileNotFoundError:
        raise ProxyInitError(_missing(restore_bin)) from None
    if result.returncode != 0:
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
        raise ProxyInitError(_missing(argv[0])) from None
    if result.returncode != 0:
        raise ProxyInitError(
            f"{step} with {argv[0]} failed (exit {result.returncode}): {_first_lines(result.stderr)}"
        )
    return result


def _missing(binary: str) -> str:
    return f"{binary} not found on PATH: install the iptables package (Debian: apt-get install iptables)"


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
