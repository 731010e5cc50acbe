"""A steady load, as an application would send it: a fixed request rate (open loop: a slow answer does not
slow the next request), each request with a deadline, every outcome one JSON line in ``--out``.

    python e2e_loadgen.py --out FILE --rate 20 --deadline 2 http http://web.shop.svc.cluster.local:8080/chain
    python e2e_loadgen.py --out FILE --rate 20 --deadline 2 grpc books.shop.svc.cluster.local:9090

A line: ``{"seq", "t" (wall clock at send), "ms", "ok", "error", "by"}`` where ``by`` is the answer's
``served_by`` (who served each hop). SIGTERM stops sending; requests in flight finish (or hit their
deadline); the last line is ``{"done": true, "sent": N}``. Nothing here knows of the mesh: plain httpx
(HTTP/1.1, keep-alive) and grpcio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

Call = Callable[[int], Awaitable[dict[str, Any]]]


async def http_caller(url: str, deadline: float) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        timeout=deadline,
        trust_env=False,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )

    async def call(seq: int) -> dict[str, Any]:
        response = await client.get(url, params={"id": str(seq % 50)})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return dict(response.json())

    return call, client.aclose


async def grpc_caller(target: str, deadline: float) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import grpc

    channel = grpc.aio.insecure_channel(target)
    get_book = channel.unary_unary("/shop.Books/Get")

    async def call(seq: int) -> dict[str, Any]:
        try:
            raw = await get_book(json.dumps({"id": str(seq % 50)}).encode(), timeout=deadline)
        except grpc.aio.AioRpcError as error:
            raise RuntimeError(f"gRPC {error.code().name}: {error.details()}") from None
        answer = json.loads(raw)
        return {"served_by": {"books": answer["pod"]}, "client_id": {"books": answer["client_id"]}}

    async def close() -> None:
        await channel.close()

    return call, close


async def run(out: IO[str], rate: float, deadline: float, call: Call) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(seq: int) -> None:
        started_wall, started = time.time(), time.monotonic()
        record: dict[str, Any] = {"seq": seq, "t": round(started_wall, 4)}
        try:
            answer = await asyncio.wait_for(call(seq), deadline + 0.5)
            record |= {
                "ok": True,
                "error": None,
                "by": answer.get("served_by"),
                "ids": answer.get("client_id"),
            }
        except Exception as error:  # every failure is an outcome to record, whatever its type
            record |= {"ok": False, "error": f"{type(error).__name__}: {error}"[:300], "by": None}
        record["ms"] = round((time.monotonic() - started) * 1000, 2)
        out.write(json.dumps(record) + "\n")
        out.flush()

    print("ready", flush=True)
    start = time.monotonic()
    seq = 0
    while not stop.is_set():
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        task = asyncio.create_task(one(seq))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        seq += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=deadline + 2)
    return seq


async def main_async(args: argparse.Namespace) -> None:
    if args.mode == "http":
        call, close = await http_caller(args.target, args.deadline)
    else:
        call, close = await grpc_caller(args.target, args.deadline)
    with open(args.out, "a", encoding="utf-8") as out:
        sent = await run(out, args.rate, args.deadline, call)
        out.write(json.dumps({"done": True, "sent": sent}) + "\n")
    await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per request")
    parser.add_argument("mode", choices=("http", "grpc"))
    parser.add_argument("target", help="URL (http) or host:port (grpc)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
