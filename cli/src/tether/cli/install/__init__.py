"""``tether install [--ha] [--registry R]``: print the control plane's manifests, exactly what
``kubectl kustomize deploy/`` (or ``deploy/overlays/ha``) renders, for users without kustomize:
``tether install | kubectl apply -f -``.

The rendered manifests ship inside tether-cli (manifests/default.yaml and ha.yaml, made by
``make manifests``; a test keeps them equal to a live render). ``--registry`` moves every image to another
registry, keeping its name and tag, as ``kustomize edit set image`` would.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from typing import Any, TextIO

from tether.shared.errors import SetupError
from tether.shared.failure import report

COMMANDS = ("install",)
_HELP = (
    "print the control plane's Kubernetes manifests (what kubectl kustomize deploy/ renders): "
    "tether install | kubectl apply -f -"
)
# host[:port][/path]: where the images are pulled from instead.
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.:_-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*")
_IMAGE_LINE = re.compile(r"^(?P<key>[ \t]*(?:- )?image: )(?P<image>\S+)[ \t]*$", re.MULTILINE)


def register(commands: Any) -> None:
    """Add ``install`` to the CLI's subcommands (an argparse subparsers action)."""
    parser: argparse.ArgumentParser = commands.add_parser("install", help=_HELP, description=_HELP)
    parser.add_argument(
        "--ha",
        action="store_true",
        help="the HA overlay: 3 replicas of each component, a 3-node NATS cluster, PodDisruptionBudgets",
    )
    parser.add_argument(
        "--registry",
        default="",
        metavar="R",
        help="pull every image from this registry instead, same names and tags "
        "(e.g. registry.internal:5000/tether: .../destination:0.1.0, .../nats:2.15.1-alpine)",
    )


def manifests(*, ha: bool = False) -> str:
    """The packaged render of deploy/ (or of the HA overlay)."""
    return resources.files(__package__).joinpath("manifests", "ha.yaml" if ha else "default.yaml").read_text()


def with_registry(text: str, registry: str) -> str:
    """Every container image moved to ``registry``: ``ghcr.io/tether-mesh/identity:0.1.0`` becomes
    ``<registry>/identity:0.1.0``; nothing but the ``image:`` fields of containers changes."""

    def moved(match: re.Match[str]) -> str:
        image = match["image"].strip("\"'")
        name = image.rsplit("/", 1)[-1]
        return f"{match['key']}{registry}/{name}"

    return _IMAGE_LINE.sub(moved, text)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    registry = args.registry.rstrip("/")
    if args.registry and not _REGISTRY.fullmatch(registry):
        return report(
            "tether",
            SetupError(
                f"--registry: {args.registry!r} is not a registry (host[:port][/path], lower case)",
                "e.g. --registry registry.internal:5000/tether",
            ),
            stream=stderr,
        )
    text = manifests(ha=args.ha)
    if registry:
        text = with_registry(text, registry)
    out = stdout or sys.stdout
    out.write(text)
    out.flush()
    return 0
