"""The local mesh: ``tether up``, ``tether down``, ``tether status`` and ``tether run`` (see README.md,
"Local mesh")."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

from tether.cli.localmesh.config import SERVICE, MeshConfig
from tether.shared.config import add_options, config_or_exit
from tether.shared.errors import FatalError
from tether.shared.failure import report

COMMANDS = ("up", "down", "status", "run", "demo")
_HELP = {
    "up": "start the local mesh (NATS and the control plane on 127.0.0.1) under a background supervisor",
    "down": "stop the local mesh: every process of it, every port of it",
    "status": "show what of the local mesh runs: component, pid, port, ready",
    "demo": "run the demo: the local mesh, a meshed gRPC application and its live golden metrics",
    "run": "run an application in the local mesh with its own sidecar proxy: "
    "tether run --name NAME --port APP_PORT -- COMMAND...",
}
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def register(commands: Any) -> None:
    """Add ``up``, ``down`` and ``status`` to the CLI's subcommands (an argparse subparsers action)."""
    for name in COMMANDS:
        parser = commands.add_parser(name, help=_HELP[name], description=_HELP[name])
        _PARSERS[name] = parser
        add_options(parser, MeshConfig, SERVICE)
        if name == "status":
            # -o as every command's output option; the long --output stays the generated one.
            parser.add_argument("-o", dest="output", default=None, help="output: text or json")
        if name == "run":
            parser.add_argument("--name", required=True, help="the workload's service and service account")
            parser.add_argument(
                "-n", "--namespace", default="default", help="the workload's namespace (default: default)"
            )
            parser.add_argument(
                "--port", dest="app_port", type=int, required=True, help="the port the application listens on"
            )
            parser.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
        if name == "demo":
            parser.add_argument(
                "--duration",
                type=float,
                default=None,
                help="seconds to run, then stop (default: until Ctrl-C)",
            )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tether.cli.localmesh import commands

    flags = {k: v for k, v in vars(args).items() if k in MeshConfig.__struct_fields__}
    config = config_or_exit(_PARSERS.get(args.command, parser), MeshConfig, SERVICE, flags, os.environ)
    if args.command == "run":
        return _run(_PARSERS["run"], config, args)
    if args.command == "demo":
        from tether.cli.demo.command import demo

        if args.duration is not None and not args.duration > 0:
            _PARSERS["demo"].error(f"--duration {args.duration:g} is not above 0")
        try:
            return demo(config, args.duration)
        except FatalError as exc:
            return report("tether", exc)
    handler: Callable[[MeshConfig], int] = {
        "up": commands.up,
        "down": commands.down,
        "status": commands.status,
    }[args.command]
    try:
        return handler(config)
    except FatalError as exc:
        return report("tether", exc)


def _run(parser: argparse.ArgumentParser, config: MeshConfig, args: argparse.Namespace) -> int:
    from tether.cli.localmesh.run import RunOptions, run

    command = list(args.command_argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("the command to run is missing: tether run --name NAME --port APP_PORT -- COMMAND...")
    for flag, value in (("--name", args.name), ("--namespace", args.namespace)):
        if not _LABEL.fullmatch(value):
            parser.error(f"{flag} {value!r} is not a DNS-1123 label (lower-case letters, digits, '-')")
    if not 1 <= args.app_port <= 65535:
        parser.error(f"--port {args.app_port} is not in 1..65535")
    try:
        return run(config.state_dir, RunOptions(args.name, args.namespace, args.app_port, command))
    except FatalError as exc:
        return report("tether", exc)
