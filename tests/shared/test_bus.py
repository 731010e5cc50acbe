"""The NATS bus against a real nats-server process (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import socket

import msgspec
import pytest
from prometheus_client import REGISTRY

from tether.shared import cloudevents
from tether.shared.bus import SYNCED, Bus, KvEntry, NatsUnavailable, Synced
from tether.shared.cloudevents import EventData
from tether.shared.errors import BusError, InvalidValue, RevisionMismatch
from tether.shared.events import Record
from tether.shared.nats_settings import NatsSettings
from tether.shared.natsserver import EmbeddedNats, free_port


class Ping(EventData, frozen=True, kw_only=True):
    event_type = "io.tether.test.ping.v1"

    seq: int
    note: str = ""


class PingV2(EventData, frozen=True, kw_only=True):
    event_type = "io.tether.test.ping.v2"

    seq: int


class Counter(Record, frozen=True, kw_only=True):
    seq: int


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

    def errors(reason: str) -> float:
        labels = {"subject": "tether.v1.garbage.test", "reason": reason}
        return REGISTRY.get_sample_value("tether_bus_decode_errors_total", labels) or 0.0

    reasons = ("not_cloudevent", "unknown_type", "invalid_data")
    before = {reason: errors(reason) for reason in reasons}
    valid = cloudevents.encode(Ping(seq=1), source="/test")
    for payload in (
        b"\xff\x00not json",
        b"[]",
        b'{"seq": 1}',  # plain JSON: not a CloudEvent
        valid.replace(b'"specversion":"1.0"', b'"specversion":"0.3"'),
        valid.replace(b'"id":', b'"idx":'),
    ):
        await bus.client.publish("tether.v1.garbage.test", payload)
    await bus.publish("tether.v1.garbage.test", PingV2(seq=2))  # a version this reader does not know
    await bus.client.publish(
        "tether.v1.garbage.test", valid.replace(b'"data":{"seq":1', b'"data":{"seq":"one"')
    )
    await bus.publish("tether.v1.garbage.test", Ping(seq=7))
    assert await _collect(received, 1) == [Ping(seq=7)]
    after = {reason: errors(reason) for reason in reasons}
    assert after["not_cloudevent"] == before["not_cloudevent"] + 5
    assert after["unknown_type"] == before["unknown_type"] + 1
    assert after["invalid_data"] == before["invalid_data"] + 1
    assert received.empty()
    await bus.close()


async def test_events_are_structured_cloudevents_with_the_content_type_header(
    nats_server: EmbeddedNats,
) -> None:
    bus = await Bus.connect(nats_server.url, name="test", source="/tether/test/i-1")
    messages: asyncio.Queue[object] = asyncio.Queue()

    async def raw(message: object) -> None:
        await messages.put(message)

    await bus.client.subscribe("tether.v1.ce.test", cb=raw)
    await bus.flush()
    await bus.publish("tether.v1.ce.test", Ping(seq=3, note="n"))
    message = await asyncio.wait_for(messages.get(), 5)
    assert message.headers == {"Content-Type": "application/cloudevents+json"}  # type: ignore[attr-defined]
    event = msgspec.json.decode(message.data)  # type: ignore[attr-defined]
    assert event["specversion"] == "1.0" and event["type"] == "io.tether.test.ping.v1"
    assert event["source"] == "/tether/test/i-1" and event["datacontenttype"] == "application/json"
    assert event["data"] == {"seq": 3, "note": "n"} and event["id"] and event["time"].endswith("Z")
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


async def test_kv_watch_is_synced_only_after_its_initial_values(nats_server: EmbeddedNats) -> None:
    """SYNCED never comes before a value the bucket held when the watch started.

    nats-server sends a new consumer's messages and its answer to consumer info independently, so that answer
    can say "nothing pending" before the client has received the one value (a destination replica would then
    serve an empty endpoint set for a moment). A race: 800 watches of a one-key bucket, 20 at a time.
    """
    bus = await Bus.connect(nats_server.url, name="test")
    kv = await bus.kv("sync_bucket")
    await kv.put("only", Ping(seq=1))

    async def first_items() -> list[str]:
        watch = kv.watch(Ping)
        seen: list[str] = []
        try:
            async with asyncio.timeout(5):
                async for item in watch:
                    seen.append("SYNCED" if isinstance(item, Synced) else item.key)
                    if isinstance(item, Synced):
                        return seen
        finally:
            await watch.aclose()
        return seen

    for _ in range(40):
        rounds = await asyncio.gather(*(first_items() for _ in range(20)))
        assert all(seen == ["only", "SYNCED"] for seen in rounds), rounds
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


async def test_connect_gives_up_with_a_clear_error_after_backing_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"nats://127.0.0.1:{port}"
        settings = NatsSettings(servers=(url,), connect_timeout=1.0, retry_base=0.1, retry_cap=0.4)
        with pytest.raises(NatsUnavailable, match=r"could not connect to NATS at .* within 1s") as raised:
            await Bus.connect(settings, name="test")
    assert url in str(raised.value) and raised.value.exit_code == 1
    assert isinstance(raised.value, BusError)


def test_records_are_plain_json_with_schema_version() -> None:
    assert msgspec.json.decode(msgspec.json.encode(Counter(seq=1))) == {"schema_version": 1, "seq": 1}


logging.getLogger("nats").setLevel(logging.CRITICAL)
