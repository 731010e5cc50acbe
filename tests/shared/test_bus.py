"""The NATS bus against a real nats-server process (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import socket

import msgspec
import pytest
from prometheus_client import REGISTRY

from tether.shared.bus import SYNCED, Bus, KvEntry, Synced
from tether.shared.errors import BusError, InvalidValue, RevisionMismatch
from tether.shared.events import Event
from tether.shared.natsserver import EmbeddedNats, free_port


class Ping(Event, frozen=True, kw_only=True):
    seq: int
    note: str = ""


async def _collect(queue: asyncio.Queue[Ping], count: int, timeout: float = 5.0) -> list[Ping]:
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(count)]


async def test_typed_publish_subscribe_round_trip(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, name="test")
    received: asyncio.Queue[Ping] = asyncio.Queue()
    subjects: list[str] = []

    async def handler(event: Ping, subject: str) -> None:
        subjects.append(subject)
        await received.put(event)

    await bus.subscribe("tether.v1.test.>", Ping, handler)
    await bus.publish("tether.v1.test.one", Ping(seq=1, note="hello"))
    got = await _collect(received, 1)
    assert got == [Ping(seq=1, note="hello")]
    assert subjects == ["tether.v1.test.one"]
    await bus.close()


async def test_queue_group_splits_messages(nats_server: EmbeddedNats) -> None:
    publisher = await Bus.connect(nats_server.url, name="pub")
    workers = [await Bus.connect(nats_server.url, name=f"w{i}") for i in range(2)]
    seen: list[list[int]] = [[], []]
    done: asyncio.Queue[Ping] = asyncio.Queue()

    for index, worker in enumerate(workers):

        async def handler(event: Ping, _subject: str, index: int = index) -> None:
            seen[index].append(event.seq)
            await done.put(event)

        await worker.subscribe("tether.v1.work", Ping, handler, queue="workers")
        await worker.flush()
    for seq in range(40):
        await publisher.publish("tether.v1.work", Ping(seq=seq))
    await _collect(done, 40)
    assert sorted(seen[0] + seen[1]) == list(range(40)), "each message goes to exactly one member"
    for bus in (publisher, *workers):
        await bus.close()


async def test_garbage_is_logged_counted_and_skipped(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await Bus.connect(nats_server.url, name="test")
    received: asyncio.Queue[Ping] = asyncio.Queue()

    async def handler(event: Ping, _subject: str) -> None:
        await received.put(event)

    await bus.subscribe("tether.v1.garbage.test", Ping, handler)
    before = (
        REGISTRY.get_sample_value("tether_bus_decode_errors_total", {"subject": "tether.v1.garbage.test"})
        or 0
    )
    for payload in (b"\xff\x00not json", b'{"seq": "not-an-int"}', b"[]"):
        await bus.client.publish("tether.v1.garbage.test", payload)
    await bus.publish("tether.v1.garbage.test", Ping(seq=7))
    assert await _collect(received, 1) == [Ping(seq=7)]
    after = REGISTRY.get_sample_value("tether_bus_decode_errors_total", {"subject": "tether.v1.garbage.test"})
    assert after == before + 3
    await bus.close()


async def test_kv_put_with_expected_revision(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, name="test")
    kv = await bus.kv("test_bucket")
    first = await kv.put("a", Ping(seq=1), expected_revision=0)
    with pytest.raises(RevisionMismatch):
        await kv.put("a", Ping(seq=2), expected_revision=0)
    second = await kv.put("a", Ping(seq=2), expected_revision=first)
    with pytest.raises(RevisionMismatch):
        await kv.put("a", Ping(seq=3), expected_revision=first)
    entry = await kv.get("a", Ping)
    assert entry == KvEntry(key="a", revision=second, value=Ping(seq=2))
    assert await kv.get("missing", Ping) is None

    garbage_revision = await kv.put_raw("g", b"{not json")
    with pytest.raises(InvalidValue) as invalid:
        await kv.get("g", Ping)
    assert invalid.value.revision == garbage_revision

    with pytest.raises(RevisionMismatch):
        await kv.delete("a", expected_revision=first)
    await kv.delete("a", expected_revision=second)
    deleted = await kv.get("a", Ping)
    assert deleted is not None and deleted.value is None and deleted.revision > second
    await bus.close()


async def test_kv_watch_initial_values_then_changes(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, name="test")
    kv = await bus.kv("watch_bucket")
    await kv.put("a", Ping(seq=1))
    await kv.put("a", Ping(seq=2))
    await kv.put("b", Ping(seq=3))
    watch = kv.watch(Ping)
    it = aiter(watch)
    initial = [await asyncio.wait_for(anext(it), 5) for _ in range(3)]
    assert [e.value.seq for e in initial[:2] if isinstance(e, KvEntry) and e.value] == [2, 3]
    assert initial[2] is SYNCED
    await kv.put_raw("b", b"garbage{")
    await kv.delete("a")
    await kv.put("c", Ping(seq=4))
    changes = [await asyncio.wait_for(anext(it), 5) for _ in range(2)]
    assert [(e.key, e.value) for e in changes if isinstance(e, KvEntry)] == [("a", None), ("c", Ping(seq=4))]
    await watch.aclose()
    await bus.close()


async def test_kv_watch_survives_nats_restart(tmp_path: object) -> None:
    """Kill nats-server (SIGKILL), restart it on the same port and store: the watch delivers every value."""
    server = EmbeddedNats(str(tmp_path) + "/nats", port=free_port())
    await server.start()
    try:
        writer = await Bus.connect(server.url, name="writer")
        reader = await Bus.connect(server.url, name="reader")
        kv = await writer.kv("restart_bucket", history=64)
        for seq in range(5):
            await kv.put(f"k{seq % 2}", Ping(seq=seq))
        watch = (await reader.kv("restart_bucket", history=64)).watch(Ping, from_revision=1, heartbeat=0.5)
        it = aiter(watch)
        seen: list[int] = []
        revisions: list[int] = []

        async def take_until(count: int) -> None:
            while len(seen) < count:
                item = await asyncio.wait_for(anext(it), 20)
                if isinstance(item, Synced):
                    continue
                assert item.value is not None
                seen.append(item.value.seq)
                revisions.append(item.revision)

        await take_until(5)
        await server.stop(kill=True)
        await server.start()
        for seq in range(5, 10):
            for _attempt in range(100):
                try:
                    await kv.put(f"k{seq % 2}", Ping(seq=seq))
                    break
                except BusError:
                    await asyncio.sleep(0.1)
        await take_until(10)
        assert seen == list(range(10))
        assert revisions == sorted(revisions)
        await watch.aclose()
        await reader.close()
        await writer.close()
    finally:
        await server.close()


async def test_connect_gives_up_with_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(BusError, match="could not connect to NATS"):
            await Bus.connect(f"nats://127.0.0.1:{port}", name="test", initial_timeout=0.3)


def test_events_are_json_with_schema_version() -> None:
    assert msgspec.json.decode(msgspec.json.encode(Ping(seq=1))) == {
        "schema_version": 1,
        "seq": 1,
        "note": "",
    }


logging.getLogger("nats").setLevel(logging.CRITICAL)
