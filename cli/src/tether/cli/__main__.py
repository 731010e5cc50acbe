"""``tether``: the command-line tool, a client of the public API."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import grpc

from tether.cli import localmesh
from tether.shared.config import TetherArgumentParser
from tether.shared.errors import FatalError
from tether.shared.failure import report
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.runtime import env, package_version

DEFAULT_API_ADDR = "127.0.0.1:8085"


def build_parser() -> argparse.ArgumentParser:
    parser = TetherArgumentParser(prog="tether", description="Tether service mesh command-line tool")
    parser.add_argument(
        "--api-addr",
        default=None,
        help=f"public API address host:port [env TETHER_API_ADDR] (default: {DEFAULT_API_ADDR})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the API (default: 5)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the CLI's and the control plane's versions")
    commands.add_parser("check", help="check that the control plane is healthy")
    localmesh.register(commands)
    return parser


async def _version(stub: public_pb2_grpc.ApiStub, timeout: float) -> int:
    print(f"client: {package_version('tether-cli')}")
    response = await stub.Version(public_pb2.VersionRequest(), timeout=timeout)
    for component in response.components:
        state = "ready" if component.ready else "not ready"
        print(f"{component.service}: {component.version} ({component.instance}, {state})")
    return 0


async def _check(stub: public_pb2_grpc.ApiStub, timeout: float) -> int:
    response = await stub.Check(public_pb2.CheckRequest(), timeout=timeout)
    for result in response.results:
        mark = "ok" if result.ok else "FAIL"
        print(f"[{mark}] {result.description}")
        if not result.ok and result.hint:
            print(f"    hint: {result.hint}")
    print("Status check results are " + ("ok" if response.ok else "FAIL"))
    return 0 if response.ok else 1


async def _run(args: argparse.Namespace, api_addr: str) -> int:
    async with grpc.aio.insecure_channel(api_addr) as channel:
        stub = public_pb2_grpc.ApiStub(channel)
        if args.command == "version":
            return await _version(stub, args.timeout)
        return await _check(stub, args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in localmesh.COMMANDS:
        return localmesh.run(parser, args)
    api_addr = args.api_addr or env().get("TETHER_API_ADDR", DEFAULT_API_ADDR)
    try:
        return asyncio.run(_run(args, api_addr))
    except grpc.aio.AioRpcError as exc:
        return report(
            "tether",
            FatalError(
                f"cannot reach the public API at {api_addr} ({exc.code().name}: {exc.details()})",
                "check --api-addr / TETHER_API_ADDR and that tether-public-api is running",
            ),
        )


if __name__ == "__main__":
    raise SystemExit(main())
