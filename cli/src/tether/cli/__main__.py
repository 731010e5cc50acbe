"""``tether``: the command-line tool, a client of the public API, and the local mesh's commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tether.cli import dashboard, inject, install, kubecreds, localmesh
from tether.cli.completion import SHELLS, script
from tether.cli.config import DEFAULT_API_ADDR, WINDOWS
from tether.shared.config import TetherArgumentParser

CLIENT_COMMANDS = ("version", "check", "stat", "edges", "tap", "endpoints")
_WIDE = ("stat", "edges", "endpoints")


def _common(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--api-addr",
        default=default,
        help=(
            "public API address host:port [env TETHER_API_ADDR] (default: the running local mesh's, "
            f"else {DEFAULT_API_ADDR})"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default if default is argparse.SUPPRESS else 5.0,
        help="seconds to wait for the API (default: 5)",
    )


def _namespaces(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-n", "--namespace", default=None, help="namespace of the resources (default: default)"
    )
    group.add_argument(
        "-A", "--all-namespaces", action="store_true", help="resources of every namespace (NAMESPACE column)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = TetherArgumentParser(prog="tether", description="Tether service mesh command-line tool")
    _common(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        _common(sub, default=argparse.SUPPRESS)
        choices = ["text", "json", "wide"] if name in _WIDE else ["text", "json"]
        sub.add_argument(
            "-o", "--output", choices=choices, default="text", help="output format (default: text)"
        )
        sub.add_argument(
            "--state-dir",
            default=None,
            help="the local mesh whose public API to use without --api-addr [env TETHER_MESH_STATE_DIR] "
            "(default: .tether)",
        )
        return sub

    client("version", "print the CLI's and the control plane's versions")
    client("check", "check that the control plane is healthy; exit 1 on any error")
    stat = client("stat", "golden metrics of resources: success rate, requests/s, latency, TCP connections")
    stat.add_argument(
        "resource",
        metavar="TYPE[/NAME]",
        help="deployment, statefulset, daemonset, job, pod, namespace, service or authority "
        "(Linkerd's short names too)",
    )
    _namespaces(stat)
    direction = stat.add_mutually_exclusive_group()
    direction.add_argument(
        "--from", dest="source", metavar="TYPE/NAME", help="only traffic from this resource"
    )
    direction.add_argument("--to", metavar="TYPE/NAME", help="only traffic to this resource")
    stat.add_argument("--from-namespace", help="namespace of --from (default: the resources')")
    stat.add_argument("--to-namespace", help="namespace of --to (default: the resources')")
    stat.add_argument("-t", "--time-window", choices=list(WINDOWS), default="1m", help="window (default: 1m)")
    edges = client("edges", "who talks to whom, and whether the edge is mTLS")
    edges.add_argument("resource", metavar="TYPE", help="deployment, statefulset, daemonset, job or pod")
    _namespaces(edges)
    edges.add_argument(
        "-t", "--time-window", choices=list(WINDOWS), default="1m", help="window (default: 1m)"
    )
    tap = client("tap", "live requests to and from a resource, one line per event")
    tap.add_argument("resource", metavar="TYPE/NAME", help="deployment/NAME, pod/NAME, namespace/NAME ...")
    tap.add_argument("-n", "--namespace", default=None, help="namespace of the resource (default: default)")
    tap.add_argument("--method", default="", help="only requests with this HTTP method")
    tap.add_argument("--path", default="", help="only requests whose path starts with this")
    tap.add_argument("--authority", default="", help="only requests to this authority")
    tap.add_argument("--max-rps", type=float, default=100.0, help="maximum events per second (default: 100)")
    tap.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0: never)")
    kubecreds.add_flags(tap)
    endpoints = client("endpoints", "what the destination service resolves an authority to")
    endpoints.add_argument("authority", help="host:port, e.g. web.default.svc.cluster.local:80")
    endpoints.add_argument("-n", "--namespace", default="", help="namespace for short authorities")
    kubecreds.add_flags(endpoints)
    localmesh.register(commands)
    dashboard.register(commands)
    inject.register(commands)
    install.register(commands)
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script: source <(tether completion bash)",
        description="print the shell completion script: source <(tether completion bash) (or zsh)",
    )
    completion.add_argument("shell", choices=SHELLS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is handled below
        return code
    except BrokenPipeError:
        # `tether tap ... | head`: the reader went away. Exit quietly, as other Unix tools do, and keep
        # Python from printing a second error while it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(script(parser, args.shell))
        return 0
    if args.command in localmesh.COMMANDS:
        return localmesh.run(parser, args)
    if args.command == dashboard.COMMAND:
        return dashboard.run(args, os.environ)
    if args.command in inject.COMMANDS:
        return inject.run(args)
    if args.command in install.COMMANDS:
        return install.run(args)
    from tether.cli import commands

    return commands.run(parser, args, os.environ)


if __name__ == "__main__":
    raise SystemExit(main())
