"""``tether dashboard [--url]``: open the local mesh's web dashboard in a browser, or print its address.

The dashboard is served by the public-api component (``--dashboard-addr``); the local mesh gives it the port
``--port-base`` + 42 on 127.0.0.1. In Kubernetes it listens on loopback inside the public-api pod and is
reached with ``kubectl -n tether port-forward deploy/tether-public-api 8084`` (then http://localhost:8084/).
"""

from __future__ import annotations

import argparse
import socket
import sys
import webbrowser
from collections.abc import Mapping
from typing import Any

import msgspec

from tether.cli.localmesh.config import DASHBOARD_OFFSET, HOST, Paths
from tether.cli.localmesh.state import mesh_running, read_state
from tether.shared.errors import FatalError
from tether.shared.failure import report

COMMAND = "dashboard"
DEFAULT_STATE_DIR = ".tether"
PORT_FORWARD = (
    "kubectl -n tether port-forward deploy/tether-public-api 8084, then open http://localhost:8084/"
)


class DashboardConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str = DEFAULT_STATE_DIR
    url_only: bool = False


def register(commands: Any) -> None:
    """Add ``dashboard`` to the CLI's subcommands (an argparse subparsers action)."""
    text = "open the local mesh's web dashboard in a browser (--url: print its address)"
    parser = commands.add_parser(COMMAND, help=text, description=text)
    parser.add_argument(
        "--url", dest="url_only", action="store_true", help="print the dashboard's URL instead of opening it"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="the local mesh's state directory [env TETHER_MESH_STATE_DIR] (default: .tether)",
    )


def config(args: argparse.Namespace, environ: Mapping[str, str]) -> DashboardConfig:
    state_dir = args.state_dir or environ.get("TETHER_MESH_STATE_DIR") or DEFAULT_STATE_DIR
    return DashboardConfig(state_dir=state_dir, url_only=bool(args.url_only))


def dashboard_url(state_dir: str) -> str:
    """The URL of the dashboard of the local mesh running in ``state_dir``; FatalError when none runs."""
    paths = Paths(state_dir)
    state = read_state(paths)
    if state is None or not mesh_running(paths):
        raise FatalError(
            f"no local mesh runs in {paths.root}",
            f"start one with `tether up`, or give --state-dir; in Kubernetes: {PORT_FORWARD}",
        )
    port = state.port_base + DASHBOARD_OFFSET
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            pass
    except OSError:
        raise FatalError(
            f"the local mesh's dashboard at {HOST}:{port} does not answer",
            "see `tether status` (is public-api restarting?) and its log",
        ) from None
    return f"http://{HOST}:{port}/"


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = config(args, environ)
    try:
        url = dashboard_url(settings.state_dir)
    except FatalError as exc:
        return report("tether", exc)
    if settings.url_only:
        print(url)
        return 0
    if webbrowser.open(url):
        print(f"opened {url} in your browser")
    else:
        print(f"no browser found here; open {url}", file=sys.stderr)
    return 0
