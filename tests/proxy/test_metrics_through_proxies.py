"""After a known traffic pattern through a proxy pair, each proxy's /metrics reports exactly those counts."""

from __future__ import annotations

import asyncio
import re

import grpc
import grpc.aio
import pytest
from proxy_mesh import Mesh, Pod, authority, unary

_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>.*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def scrape(pod: Pod) -> list[tuple[str, dict[str, str], float]]:
    """GET /metrics from the pod's proxy admin listener over a real socket."""
    assert pod.runtime.admin is not None
    reader, writer = await asyncio.open_connection(pod.host, pod.runtime.admin.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    samples = []
    for line in body.decode().splitlines():
        match = _LINE.match(line)
        if match:
            labels = dict(_LABEL.findall(match["labels"]))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **wanted: str) -> float:
    return sum(
        value
        for sample, labels, value in samples
        if sample == name and all(labels.get(k) == v for k, v in wanted.items())
    )


async def test_metrics_count_exactly_the_traffic_sent(mesh: Mesh) -> None:
    server = await mesh.pod("echo")
    client = await mesh.pod()
    await mesh.register("echo", [server])
    target = authority("echo")
    async with client.channel(target) as channel:
        call = unary(channel)
        for _ in range(7):
            assert await call(b"echo:ok", timeout=5) == b"echo:ok"
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"status:NOT_FOUND", timeout=5)

    outbound = await scrape(client)
    inbound = await scrape(server)
    for samples, direction in ((outbound, "outbound"), (inbound, "inbound")):
        route = {"direction": direction, "authority": target}
        assert total(samples, "request_total", **route) == 10
        assert total(samples, "response_total", **route, grpc_status="0", classification="success") == 7
        assert total(samples, "response_total", **route, grpc_status="5", classification="failure") == 3
        assert total(samples, "response_total", **route) == 10
        assert total(samples, "response_latency_ms_count", **route, status_code="200") == 10
        # One client connection accepted, one connection dialled onwards, all closed by now or open.
        assert total(samples, "tcp_open_total", direction=direction, peer="src") == 1
        assert total(samples, "tcp_open_total", direction=direction, peer="dst") == 1
    # The outbound side labels the destination as the destination service described it.
    (labels,) = [
        labels
        for name, labels, _ in outbound
        if name == "request_total" and labels.get("direction") == "outbound"
    ]
    assert labels["dst_namespace"] == "test"
    assert labels["dst_pod"] == "echo-0"
    assert labels["dst_deployment"] == "echo"
