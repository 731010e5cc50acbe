"""``tether-proxy init``: install the transparent-interception rules in the pod's network namespace."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import structlog

from tether.proxy.init.apply import (
    DISABLE_IPV6,
    ApplyResult,
    FamilyUnavailable,
    ProxyInitError,
    Runner,
    apply_plan,
    ipv6_unavailable,
    read_state,
    run_command,
)
from tether.proxy.init.config import SERVICE, ProxyInitConfig
from tether.proxy.init.plan import (
    FAMILY_LABEL,
    InterceptionPlan,
    InterceptionSpec,
    NatState,
    plan_interception,
    render_fragment,
)
from tether.shared import logging as tether_logging
from tether.shared.config import TetherArgumentParser, add_options, config_or_exit
from tether.shared.errors import FatalError, SetupError
from tether.shared.failure import report

COMMAND = "tether-proxy"
DESCRIPTION = (
    "Install nat rules redirecting the pod's inbound TCP to the proxy's inbound port and its outbound TCP "
    "to the outbound port, with iptables for IPv4 and ip6tables for IPv6 (see --ipv6). Safe to run "
    "repeatedly: an up-to-date table is left untouched."
)


def build_parser(prog: str = "tether-proxy init") -> argparse.ArgumentParser:
    parser = TetherArgumentParser(prog=prog, description=DESCRIPTION)
    add_options(parser, ProxyInitConfig, SERVICE)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print the iptables-restore input (then the ip6tables-restore input, unless --ipv6 off) that a "
            "fresh install would apply, and change nothing"
        ),
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    run: Runner = run_command,
    disable_ipv6: Path = DISABLE_IPV6,
) -> int:
    """Entry point; returns the process exit status (0 ok, 1 iptables failed, 2 bad configuration or
    ``--ipv6 on`` without IPv6)."""
    out = stdout if stdout is not None else sys.stdout
    parser = build_parser()
    try:
        namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        flags = vars(namespace)
        dry_run = bool(flags.pop("dry_run"))
        config = config_or_exit(
            parser, ProxyInitConfig, SERVICE, flags, os.environ if environ is None else environ
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    tether_logging.configure(
        service=SERVICE,
        instance=socket.gethostname(),
        version=_version(),
        fmt=config.log_format,
        level=config.log_level,
    )
    log = structlog.get_logger(__name__)
    spec = InterceptionSpec.from_config(config)
    ipv4 = plan_interception(spec, "ipv4")
    ipv6 = None if config.ipv6 == "off" else plan_interception(spec, "ipv6")
    if dry_run:
        out.write("".join(render_fragment(plan).text for plan in (ipv4, ipv6) if plan is not None))
        out.flush()
        return 0
    try:
        # Everything is checked and both tables read before either changes, so that under --ipv6 on a pod
        # without IPv6 is told so with nothing changed.
        ipv6_state: NatState | None = None
        if ipv6 is not None:
            missing = ipv6_unavailable(disable_ipv6)
            if missing is not None:
                if config.ipv6 == "on":
                    return _ipv6_required(missing)
                _skipped(log, missing)
                ipv6 = None
        ipv4_state = read_state("ipv4", config.iptables_mode, run)
        if ipv6 is not None:
            try:
                ipv6_state = read_state("ipv6", config.iptables_mode, run)
            except FamilyUnavailable as exc:
                if config.ipv6 == "on":
                    return _ipv6_required(exc)
                _skipped(log, exc)
                ipv6 = None
        _installed(log, ipv4, apply_plan(ipv4, config.iptables_mode, run, ipv4_state))
        if ipv6 is not None:
            try:
                _installed(log, ipv6, apply_plan(ipv6, config.iptables_mode, run, ipv6_state))
            except FamilyUnavailable as exc:
                if config.ipv6 == "on":
                    return _ipv6_required(exc)
                _skipped(log, exc)
    except ProxyInitError as exc:
        return report(
            COMMAND,
            FatalError(
                f"installing the interception rules failed: {exc}",
                "run it with NET_ADMIN in the pod's network namespace; --dry-run prints the rules",
            ),
        )
    return 0


def _installed(log: Any, plan: InterceptionPlan, result: ApplyResult) -> None:
    family = FAMILY_LABEL[plan.family]
    if result.changed:
        log.info("interception_rules_installed", family=family, rules=len(plan.rules) + len(plan.hooks))
    else:
        log.info("interception_rules_already_installed", family=family)


def _skipped(log: Any, exc: FamilyUnavailable) -> None:
    """``--ipv6 auto`` in a pod without (usable) IPv6: one line, and IPv4 interception only.

    A warning when the pod has IPv6 that now bypasses the proxy (no ip6tables, no IPv6 NAT in the kernel);
    information when it has no IPv6 at all, which is the normal case in an IPv4-only cluster.
    """
    emit = log.warning if exc.bypassed else log.info
    emit("ipv6_interception_skipped", reason=exc.cause, fix=exc.remedy, intercepting="IPv4 only")


def _ipv6_required(exc: FamilyUnavailable) -> int:
    return report(
        COMMAND,
        SetupError(
            f"--ipv6 on, but IPv6 cannot be intercepted: {exc.cause}",
            f"{exc.remedy}, or pass --ipv6 auto to intercept IPv4 only when the pod has no IPv6",
        ),
    )


def _version() -> str:
    try:
        return metadata.version("tether-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"
