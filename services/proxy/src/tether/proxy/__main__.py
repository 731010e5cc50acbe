"""``tether-proxy run`` (the sidecar) and ``tether-proxy init`` (the interception rules)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from tether.shared.errors import SetupError
from tether.shared.failure import report

COMMAND = "tether-proxy"
SUBCOMMANDS = {
    "run": "run the sidecar proxy: outbound and inbound listeners, discovery, metrics",
    "init": "install the iptables rules that send the pod's traffic through the proxy",
}
USAGE = (
    f"usage: {COMMAND} {{{','.join(SUBCOMMANDS)}}} [options]\n\nThe Tether sidecar proxy.\n\ncommands:\n"
    + "".join(f"  {name:<5} {text}\n" for name, text in SUBCOMMANDS.items())
    + f"\n'{COMMAND} <command> --help' lists a command's options.\n"
)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return run(rest, environ)
    if command == "init":
        from tether.proxy.init.cli import main as init_main

        return init_main(rest, environ)
    return report(COMMAND, SetupError(f"unknown command {command!r}", f"one of {', '.join(SUBCOMMANDS)}"))


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    # Imports are deferred so `tether-proxy init` does not pay for the data path.
    import socket

    from tether.proxy.config import ProxyConfig
    from tether.proxy.service import ProxyService
    from tether.shared.runtime import service_main

    return service_main(
        ProxyConfig,
        "proxy",
        ProxyService,
        argv,
        prog=f"{COMMAND} run",
        description="Tether sidecar proxy: HTTP/2 outbound and inbound data path",
        environ=environ,
        instance=lambda config: config.pod_name or socket.gethostname(),
    )


if __name__ == "__main__":
    sys.exit(main())
