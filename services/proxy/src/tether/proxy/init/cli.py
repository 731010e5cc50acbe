"""``tether-proxy init``: install the transparent-interception rules in the pod's network namespace."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TextIO

import structlog

from tether.proxy.init.apply import ApplyResult, ProxyInitError, Runner, apply_plan, run_command
from tether.proxy.init.config import SERVICE, ProxyInitConfig
from tether.proxy.init.plan import InterceptionSpec, plan_interception, render_fragment
from tether.shared import logging as tether_logging
from tether.shared.config import TetherArgumentParser, add_options, config_or_exit
from tether.shared.errors import FatalError
from tether.shared.failure import report

DESCRIPTION = (
    "Install nat rules redirecting the pod's inbound TCP to the proxy's inbound port and its outbound TCP "
    "to the outbound port. Safe to run repeatedly: an up-to-date table is left untouched."
)


def build_parser(prog: str = "tether-proxy init") -> argparse.ArgumentParser:
    parser = TetherArgumentParser(prog=prog, description=DESCRIPTION)
    add_options(parser, ProxyInitConfig, SERVICE)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the iptables-restore input that a fresh install would apply, and change nothing",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    run: Runner = run_command,
) -> int:
    """Entry point; returns the process exit status (0 ok, 1 iptables failed, 2 bad configuration)."""
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
    plan = plan_interception(InterceptionSpec.from_config(config))
    if dry_run:
        out.write(render_fragment(plan).text)
        out.flush()
        return 0
    try:
        result: ApplyResult = apply_plan(plan, config.iptables_mode, run)
    except ProxyInitError as exc:
        return report(
            "tether-proxy",
            FatalError(
                f"installing the interception rules failed: {exc}",
                "run it with NET_ADMIN in the pod's network namespace; --dry-run prints the rules",
            ),
        )
    if result.changed:
        log.info("interception_rules_installed", rules=len(plan.rules) + len(plan.hooks))
    else:
        log.info("interception_rules_already_installed")
    return 0


def _version() -> str:
    try:
        return metadata.version("tether-proxy")
    except metadata.PackageNotFoundError:
        return "unknown"
