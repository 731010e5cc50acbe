"""An HTTP/1.1 client for the dashboard's tests (h11, asyncio): whole responses, and event streams read event
by event. Requests are sent as given, so a test can send what a browser would not (a foreign Host, no
Origin, two Host fields)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h11


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _head(
    method: str, path: str, port: int, headers: Mapping[str, str | None] | None, body: bytes
) -> list[tuple[str, str]]:
    fields: dict[str, str | None] = {"host": f"127.0.0.1:{port}", **(headers or {})}
    listed = [(k, v) for k, v in fields.items() if v is not None]
    if body or method == "POST":
        listed.append(("content-length", str(len(body))))
    return listed


async def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str | None] | None = None,
    body: bytes = b"",
) -> Answer:
    """One request on a new connection (``host`` 127.0.0.1:port unless ``headers`` say otherwise; a value
    None leaves the field out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        conn = h11.Connection(h11.CLIENT)
        head = h11.Request(method=method, target=path, headers=_head(method, path, port, headers, body))
        writer.write(conn.send(head) or b"")
        if body:
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status, fields, chunks = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                fields = {k.decode(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Answer(status, fields, bytes(chunks))
    finally:
        writer.close()


async def fetch_raw(port: int, data: bytes) -> tuple[int, bytes]:
    """``data`` sent as it is (what h11 would not send); the response's status and everything read until
    the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await reader.read(-1)
    finally:
        writer.close()
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"0"
    return int(status), answer


class EventStream:
    """``GET path`` held open; :meth:`next` returns the next server-sent event as (name, data)."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str | None] | None = None) -> None:
        self.port, self.path, self.headers = port, path, headers
        self.status = 0
        self.fields: dict[str, str] = {}
        self._conn = h11.Connection(h11.CLIENT)
        self._buffer = b""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> EventStream:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = h11.Request(
            method="GET", target=self.path, headers=_head("GET", self.path, self.port, self.headers, b"")
        )
        self._writer.write((self._conn.send(head) or b"") + (self._conn.send(h11.EndOfMessage()) or b""))
        await self._writer.drain()
        while not self.status:
            event = await self._event()
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.fields = {k.decode(): v.decode("latin-1") for k, v in event.headers}
        return self

    async def _event(self) -> Any:
        assert self._reader is not None
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._conn.receive_data(await self._reader.read(65536))

    async def next(self) -> tuple[str, Any] | None:
        """The next event (comments skipped); None once the stream ended."""
        while True:
            block, sep, rest = self._buffer.partition(b"\n\n")
            if sep:
                self._buffer = rest
                lines = block.decode().split("\n")
                if all(line.startswith(":") for line in lines):
                    continue
                name = next((x[len("event: ") :] for x in lines if x.startswith("event: ")), "message")
                data = "\n".join(x[len("data: ") :] for x in lines if x.startswith("data: "))
                return name, json.loads(data)
            event = await self._event()
            if isinstance(event, h11.Data):
                self._buffer += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
