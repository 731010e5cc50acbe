"""``tether-proxy run`` (the sidecar) and ``tether-proxy init`` (the interception rules)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

USAGE = "usage: tether-proxy {run,init} [options]  (tether-proxy <command> --help for options)\n"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return run(rest, environ)
    if command == "init":
        from tether.proxy.init.cli import main as init_main

        return init_main(rest, environ)
    sys.stderr.write(f"tether-proxy: unknown command {command!r}\n{USAGE}")
    return 2


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    # Imports are deferred so `tether-proxy init` does not pay for the data path.
    import uvloop

    from tether.proxy.config import ProxyConfig
    from tether.shared import logging as tether_logging
    from tether.shared.config import load_config

    config = load_config(
        ProxyConfig,
        service="proxy",
        argv=argv,
        environ=os.environ if environ is None else environ,
        prog="tether-proxy run",
        description="Tether sidecar proxy: HTTP/2 outbound and inbound data path",
    )
    tether_logging.configure(
        service="proxy",
        instance=config.pod_name or socket.gethostname(),
        version=_version(),
        fmt=config.log_format,
        level=config.log_level,
    )
    try:
        uvloop.run(_serve(config))
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: object) -> None:
    from tether.proxy.config import ProxyConfig
    from tether.proxy.proxy import Proxy

    assert isinstance(config, ProxyConfig)
    proxy = Proxy(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.shutdown_requested.set)
    await proxy.start()
    await proxy.shutdown_requested.wait()
    await proxy.stop()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tether-proxy")
    except metadata.PackageNotFoundError:
        return "0.0.0"


if __name__ == "__main__":
    sys.exit(main())
