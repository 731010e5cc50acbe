"""The local mesh: ``tether up``, ``tether down`` and ``tether status`` (see README.md, "Local mesh")."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from tether.cli.localmesh.config import SERVICE, MeshConfig
from tether.shared.config import add_options, config_or_exit
from tether.shared.errors import FatalError
from tether.shared.failure import report

COMMANDS = ("up", "down", "status")
_HELP = {
    "up": "start the local mesh (NATS and the control plane on 127.0.0.1) under a background supervisor",
    "down": "stop the local mesh: every process of it, every port of it",
    "status": "show what of the local mesh runs: component, pid, port, ready",
}


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


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tether.cli.localmesh import commands

    flags = {k: v for k, v in vars(args).items() if k in MeshConfig.__struct_fields__}
    config = config_or_exit(_PARSERS.get(args.command, parser), MeshConfig, SERVICE, flags, os.environ)
    handler: Callable[[MeshConfig], int] = {
        "up": commands.up,
        "down": commands.down,
        "status": commands.status,
    }[args.command]
    try:
        return handler(config)
    except FatalError as exc:
        return report("tether", exc)
