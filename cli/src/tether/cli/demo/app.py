"""The demo's services, plain grpcio with raw-bytes generic handlers, unaware of the mesh.

* ``emoji`` (``demo.Emoji/List``, ``demo.Emoji/Find``): the slow backend, 30-80 ms a call.
* ``voting`` (``demo.Voting/Vote``, ``demo.Voting/VoteDoughnut``): ``VoteDoughnut`` always fails with
  UNAVAILABLE.
* ``web`` (``demo.Web/List``, ``demo.Web/Vote``): the front, calling ``emoji`` and ``voting`` by their
  service names ``NAME.demo.svc.cluster.local:PORT`` (through the mesh: ``tether run`` sets ``grpc_proxy``).
* ``generator``: calls ``web`` in a loop, a few requests a second.

``python -m tether.cli.demo.app SERVICE --port PORT [--emoji ADDR --voting ADDR | --web ADDR]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys

import grpc

EMOJIS = ("doughnut", "dog", "pizza", "rocket", "unicorn", "taco", "cat", "ghost")
_votes: dict[str, int] = {}


def _options() -> list[tuple[str, int]]:
    return [("grpc.enable_retries", 0)]


def _identity(request: bytes) -> bytes:
    return request


async def _serve(port: int, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"{service} listening on 127.0.0.1:{port}", flush=True)
    await _until_stopped()
    await server.stop(1)


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()


def _unary(handler: object) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=_identity, response_serializer=_identity
    )


async def emoji(port: int) -> None:
    async def slow() -> None:
        await asyncio.sleep(random.uniform(0.03, 0.08))

    async def list_(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await slow()
        return ",".join(EMOJIS).encode()

    async def find(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await slow()
        if request.decode() not in EMOJIS:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such emoji")
        return request

    await _serve(port, "demo.Emoji", {"List": _unary(list_), "Find": _unary(find)})


async def voting(port: int) -> None:
    async def vote(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = request.decode()
        _votes[name] = _votes.get(name, 0) + 1
        return str(_votes[name]).encode()

    async def vote_doughnut(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the doughnut ballot box is broken")
        return b""  # not reached

    await _serve(port, "demo.Voting", {"Vote": _unary(vote), "VoteDoughnut": _unary(vote_doughnut)})


async def web(port: int, emoji_addr: str, voting_addr: str) -> None:
    # Plain channels to the services' names: grpcio takes grpc_proxy from the environment (CONNECT).
    emojis = grpc.aio.insecure_channel(emoji_addr, options=_options())
    votes = grpc.aio.insecure_channel(voting_addr, options=_options())
    emoji_list = emojis.unary_unary("/demo.Emoji/List")
    emoji_find = emojis.unary_unary("/demo.Emoji/Find")
    vote_call = votes.unary_unary("/demo.Voting/Vote")
    doughnut_call = votes.unary_unary("/demo.Voting/VoteDoughnut")

    async def list_(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        result: bytes = await emoji_list(b"", timeout=5)
        return result

    async def vote(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            name = await emoji_find(request, timeout=5)
            call = doughnut_call if name == b"doughnut" else vote_call
            result: bytes = await call(name, timeout=5)
            return result
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"voting for {request.decode()!r}: {exc.details()}")
            return b""  # not reached

    try:
        await _serve(port, "demo.Web", {"List": _unary(list_), "Vote": _unary(vote)})
    finally:
        await emojis.close()
        await votes.close()


async def generator(web_addr: str, rate: float) -> None:
    channel = grpc.aio.insecure_channel(web_addr, options=_options())
    list_ = channel.unary_unary("/demo.Web/List")
    vote = channel.unary_unary("/demo.Web/Vote")
    stop = asyncio.ensure_future(_until_stopped())

    async def one() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if random.random() < 0.3:
                await list_(b"", timeout=5)
            else:
                await vote(random.choice(EMOJIS).encode(), timeout=5)

    pending: set[asyncio.Task[None]] = set()
    while not stop.done():
        task = asyncio.ensure_future(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.wait({stop}, timeout=1 / rate)
    for task in pending:
        task.cancel()
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.cli.demo.app")
    parser.add_argument("service", choices=("web", "emoji", "voting", "generator"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--emoji", default="")
    parser.add_argument("--voting", default="")
    parser.add_argument("--web", default="")
    parser.add_argument("--rate", type=float, default=10.0, help="generator: requests per second")
    args = parser.parse_args(argv)
    if args.service == "emoji":
        asyncio.run(emoji(args.port))
    elif args.service == "voting":
        asyncio.run(voting(args.port))
    elif args.service == "web":
        asyncio.run(web(args.port, args.emoji, args.voting))
    else:
        asyncio.run(generator(args.web, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
