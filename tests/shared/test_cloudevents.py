"""Every mesh event as it crosses NATS, read with the CNCF CloudEvents SDK and checked against docs/events.md.

The real publishers run against a real nats-server whose users and permissions are generated from
``tether.shared.permissions.ROLES``: heartbeats from an in-process ``Runtime`` (and from the service
processes' runtimes), identity issued/rejected from a ``tether-identity serve`` process, endpoints changed
from a destination replica process, registrations published with ``Bus.publish`` as the registrar. The
read-only ``reader`` user, with its own inbox prefix, receives them all on ``tether.v1.>``: so the
permission table is exercised too.

The document is read as data: the ``| type | subject | publisher | data |`` table, each type's data table
and its example, the permission table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
import pytest_asyncio
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tether.identity.bootstrap import bootstrap
from tether.identity.tokens.local import load_token_key, mint_token
from tether.shared import cloudevents, events, subjects
from tether.shared.bus import Bus
from tether.shared.cloudevents import EventData, EventDecoder, source_for
from tether.shared.config import config_from
from tether.shared.errors import PermissionDenied
from tether.shared.events import EndpointsChanged, WorkloadRegistration
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.natsserver import EmbeddedNats, free_port
from tether.shared.permissions import DEFAULT_USERS, render_markdown
from tether.shared.proto.identity.v1 import identity_pb2, identity_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.runtime import Runtime
from tether.shared.tap_requests import TapFilter, TapRequest, TapTarget
from tether.shared.testing import eventually
from tether.telemetry.config import TelemetryConfig
from tether.telemetry.service import TelemetryService
from tether.telemetry.testing import ReportClient, scope

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
TYPES_HEADER = ["type", "subject", "publisher", "data"]

WEB = WorkloadIdentity("web", "shop", "cluster.local")
IDENTITY_SERVER_NAME = "identity.tether.serviceaccount.identity.cluster.local"
TELEMETRY_INSTANCE = "telemetry-ce-1a2b3c"
REGISTRAR_INSTANCE = "registrar-ce-4d5e6f"
PUBLIC_API_INSTANCE = "public-api-ce-7a8b9c"
TAP_ID = "tap-ce-1"
REGISTERED_ADDRESS = "127.0.0.9"
DEADLINE = 20.0

SOURCE = re.compile(r"^/tether/(?P<component>[A-Za-z0-9_-]+)/(?P<instance>[A-Za-z0-9_-]+)$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# How far an event's time may lie outside the capture window (clock resolution, not skew: same host).
TIME_SLACK = timedelta(seconds=1)


# --- the document, read as data ----------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _is_separator(row: list[str]) -> bool:
    return all(cell and set(cell) <= set("-: ") for cell in row)


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: rows of cells, header first, separator row dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(_cells(line))
        elif current:
            tables.append([row for row in current if not _is_separator(row)])
            current = []
    return tables


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every heading of the document, fenced code blocks kept in the bodies."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,6} ", line):
            sections.append((line, []))
        else:
            sections[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in sections]


def _section(name: str) -> str:
    """The body of the one section whose heading names ``name`` in backticks."""
    found = [body for heading, body in _sections(DOC.read_text()) if f"`{name}`" in heading]
    assert len(found) == 1, f"docs/events.md: expected one heading naming `{name}`, found {len(found)}"
    return found[0]


def doc_fields(name: str) -> set[str]:
    """The fields of the first ``| field | ...`` table in the section of ``name``."""
    tables = [table for table in _tables(_section(name)) if table[0][0] == "field"]
    assert tables, f"docs/events.md: the section of `{name}` has no field table"
    return {field for row in tables[0][1:] for field in _ticked(row[0])}


def doc_example(name: str) -> str:
    match = re.search(r"```json\n(.*?)\n```", _section(name), re.DOTALL)
    assert match is not None, f"docs/events.md: the section of `{name}` has no JSON example"
    return match.group(1)


@dataclass(frozen=True)
class TypeRow:
    event_type: str
    subject: str
    publisher: str
    data: str

    def matches(self, subject: str) -> bool:
        parts = re.split(r"(<[^>]+>)", self.subject)
        pattern = "".join("[A-Za-z0-9_-]+" if part.startswith("<") else re.escape(part) for part in parts)
        return re.fullmatch(pattern, subject) is not None

    @property
    def data_class(self) -> type[EventData]:
        cls = getattr(events, self.data, None)
        assert isinstance(cls, type) and issubclass(cls, EventData), f"{self.data} is no event in events"
        return cls


def doc_types() -> list[TypeRow]:
    tables = [table for table in _tables(DOC.read_text()) if table[0] == TYPES_HEADER]
    assert len(tables) == 1, f"docs/events.md: expected one table with columns {TYPES_HEADER}"
    rows = []
    for cells in tables[0][1:]:
        assert len(cells) == 4, cells
        (event_type,), (subject,), data = _ticked(cells[0]), _ticked(cells[1]), _ticked(cells[3])
        rows.append(TypeRow(event_type, subject, cells[2], data[0]))
    return rows


def row_for(subject: str) -> TypeRow:
    rows = [row for row in doc_types() if row.matches(subject)]
    assert len(rows) == 1, f"{subject} matches {len(rows)} rows of the types table"
    return rows[0]


def event_classes() -> dict[str, type[EventData]]:
    """Every EventData subclass defined in tether.shared.events, by its CloudEvents type."""
    found: dict[str, type[EventData]] = {}
    for value in vars(events).values():
        if isinstance(value, type) and issubclass(value, EventData) and value is not EventData:
            assert value.event_type not in found, f"two classes name {value.event_type}"
            found[value.event_type] = value
    return found


def struct_fields(cls: type[msgspec.Struct]) -> set[str]:
    return {field.encode_name for field in msgspec.structs.fields(cls)}


def sdk_parse(payload: bytes) -> SdkEvent:
    event = JSONFormat().read(None, payload)
    assert isinstance(event, SdkEvent), type(event)
    return event


# --- the document on its own -------------------------------------------------------------------------------


def test_types_table_has_a_row_per_event_class_and_a_class_per_row() -> None:
    rows = doc_types()
    classes = event_classes()
    assert len({row.event_type for row in rows}) == len(rows), "a type has two rows"
    assert len({row.subject for row in rows}) == len(rows), "a subject has two rows"
    assert {row.event_type for row in rows} == set(classes)
    for row in rows:
        assert row.data_class is classes[row.event_type], (
            f"{row.event_type}: the data column names {row.data}"
        )
        assert re.fullmatch(r"io\.tether\.[a-z]+(\.[a-z]+)+\.v[1-9][0-9]*", row.event_type), row.event_type
        assert row.subject.startswith(f"{subjects.PREFIX}."), row.subject
        assert row.publisher, row.event_type


def test_types_table_subjects_are_those_of_the_subjects_module() -> None:
    samples = {
        "io.tether.health.heartbeat.v1": subjects.health("identity", "identity-7c9d-a1b2c3"),
        "io.tether.identity.issued.v1": subjects.IDENTITY_ISSUED,
        "io.tether.identity.rejected.v1": subjects.IDENTITY_REJECTED,
        "io.tether.identity.issuer.v1": subjects.IDENTITY_ISSUER,
        "io.tether.endpoints.changed.v1": subjects.endpoints("shop", "web"),
        "io.tether.registry.registration.v1": subjects.REGISTRY_REGISTER,
        "io.tether.telemetry.rollup.v1": subjects.rollup("shop", "deployment", "web"),
        "io.tether.tap.request.v1": subjects.TAP_REQUESTS,
        "io.tether.tap.matches.v1": subjects.tap_matches("tap-1"),
        "io.tether.tap.event.v1": subjects.tap_events("tap-1"),
        "io.tether.audit.tap.v1": subjects.AUDIT_TAP,
    }
    assert set(samples) == set(event_classes()), "a new event type needs a sample subject here"
    for event_type, subject in samples.items():
        assert row_for(subject).event_type == event_type


@pytest.mark.parametrize("name", sorted(event_classes()))
def test_data_table_lists_exactly_the_event_fields(name: str) -> None:
    assert doc_fields(name) == struct_fields(event_classes()[name])


@pytest.mark.parametrize("record", [events.Endpoint, events.EndpointSet, events.LeaseRecord])
def test_record_table_lists_exactly_the_record_fields(record: type[msgspec.Struct]) -> None:
    assert doc_fields(record.__name__) == struct_fields(record)


@pytest.mark.parametrize("name", sorted(event_classes()))
def test_example_is_exactly_what_the_encoder_writes(name: str) -> None:
    example = doc_example(name).encode()
    envelope, data = EventDecoder(event_classes()[name]).decode(example)
    assert envelope.time is not None
    encoded = cloudevents.encode(data, source=envelope.source, now=envelope.time, event_id=envelope.id)
    # Same keys, same order, same values: only the whitespace differs.
    assert json.dumps(json.loads(encoded)) == json.dumps(json.loads(example))
    assert sdk_parse(example).get_type() == name


def test_wire_example_is_byte_exact() -> None:
    text = DOC.read_text()
    subject = re.search(r"^subject: (\S+)$", text, re.MULTILINE)
    header = re.search(r"^header: +(.+)$", text, re.MULTILINE)
    payload = re.search(r"^payload: (\{.*\})$", text, re.MULTILINE)
    assert subject and header and payload
    assert header.group(1) == f"Content-Type: {cloudevents.CONTENT_TYPE}"
    envelope, data = EventDecoder(events.Heartbeat).decode(payload.group(1).encode())
    assert row_for(subject.group(1)).event_type == envelope.type
    assert envelope.time is not None
    encoded = cloudevents.encode(data, source=envelope.source, now=envelope.time, event_id=envelope.id)
    assert encoded.decode() == payload.group(1)


def test_permission_table_is_the_output_of_the_permissions_module() -> None:
    assert render_markdown() in DOC.read_text(), "paste `python -m tether.shared.permissions` into the doc"


# --- readers skip what they cannot read --------------------------------------------------------------------


async def test_unknown_types_and_plain_json_are_skipped_and_counted(nats_server: EmbeddedNats) -> None:
    subject = subjects.endpoints("shop", "web")
    label = "tether.v1.endpoints.shop"  # the counter keeps the first four tokens

    def errors(reason: str) -> float:
        sample = REGISTRY.get_sample_value(
            "tether_bus_decode_errors_total", {"subject": label, "reason": reason}
        )
        return sample or 0.0

    source = source_for("destination", "destination-ce-1")
    envelope = json.loads(
        cloudevents.encode(EndpointsChanged(namespace="shop", service="web", generation=1), source=source)
    )
    canary = "do-not-log-this-body"

    def variant(**attributes: Any) -> bytes:
        return json.dumps(
            {**envelope, "id": f"id-{len(attributes)}-{time.monotonic_ns()}", **attributes}
        ).encode()

    newer_version = variant(type="io.tether.endpoints.changed.v2")
    unknown_type = variant(type="io.tether.endpoints.resized.v1", subject=canary)
    plain_json = json.dumps(
        {"schema_version": 1, "namespace": "shop", "service": "web", "generation": 1, "note": canary}
    ).encode()
    not_json = b"\xff\x00" + canary.encode()
    # Unknown attributes and unknown data fields are ignored, not refused.
    extended = variant(
        tetherpriority="high",
        data={**envelope["data"], "generation": 2, "future_field": {"nested": True}},
    )

    # The SDK accepts the envelopes whose type Tether does not read, and refuses the plain JSON.
    assert sdk_parse(newer_version).get_type() == "io.tether.endpoints.changed.v2"
    assert sdk_parse(unknown_type).get_type() == "io.tether.endpoints.resized.v1"
    assert sdk_parse(extended).get_extension("tetherpriority") == "high"
    with pytest.raises(BaseCloudEventException):
        sdk_parse(plain_json)

    bus = await Bus.connect(nats_server.url, name="ce-reader")
    received: asyncio.Queue[tuple[EndpointsChanged, str]] = asyncio.Queue()

    async def handler(event: EndpointsChanged, on: str) -> None:
        await received.put((event, on))

    before = {reason: errors(reason) for reason in ("unknown_type", "not_cloudevent", "invalid_data")}
    try:
        with capture_logs() as logs:
            await bus.subscribe(subjects.ENDPOINTS_ALL, EndpointsChanged, handler)
            headers = {"Content-Type": cloudevents.CONTENT_TYPE}
            for payload in (newer_version, unknown_type, plain_json, not_json, extended):
                await bus.client.publish(subject, payload, headers=headers)
            # One subscription delivers in order: once the last arrives, every earlier one was handled.
            event, on = await asyncio.wait_for(received.get(), 5)
    finally:
        await bus.close()
    assert (event.generation, on) == (2, subject)
    assert received.empty()
    after = {reason: errors(reason) for reason in before}
    assert after["unknown_type"] == before["unknown_type"] + 2
    assert after["not_cloudevent"] == before["not_cloudevent"] + 2
    assert after["invalid_data"] == before["invalid_data"]
    failures = [entry for entry in logs if entry["event"] == "bus_decode_failed"]
    assert [entry["reason"] for entry in failures] == [
        "unknown_type",
        "unknown_type",
        "not_cloudevent",
        "not_cloudevent",
    ]
    assert all(entry["subject"] == subject and entry["size"] > 0 for entry in failures)
    assert canary not in repr(logs), "a decode failure logged the message body"


# --- who may publish and read: the permission table, enforced ----------------------------------------------


async def test_only_the_registrar_publishes_registrations_and_inboxes_are_private(tmp_path: Path) -> None:
    def denied(operation: str) -> float:
        sample = REGISTRY.get_sample_value("tether_bus_permission_denied_total", {"operation": operation})
        return sample or 0.0

    registration = WorkloadRegistration(
        namespace="shop", service="web", instance="web-1", address="127.0.0.1", port=8080
    )
    others = sorted(user for user in DEFAULT_USERS if user != "registrar")
    async with EmbeddedNats(tmp_path / "nats", users=DEFAULT_USERS) as nats:
        buses: list[Bus] = []
        try:
            with capture_logs() as logs:
                for user in [*others, "registrar"]:
                    buses.append(
                        await Bus.connect(
                            nats.settings(user), name=user, source=source_for(user, f"{user}-1")
                        )
                    )
                by_user = dict(zip([*others, "registrar"], buses, strict=True))
                arrived: asyncio.Queue[tuple[WorkloadRegistration, str]] = asyncio.Queue()

                async def on_registration(reg: WorkloadRegistration, _subject: str) -> None:
                    await arrived.put((reg, _subject))

                await by_user["destination"].subscribe(
                    subjects.REGISTRY_REGISTER, WorkloadRegistration, on_registration
                )
                publish_before, subscribe_before = denied("publish"), denied("subscribe")
                for user in others:
                    await by_user[user].publish(
                        subjects.REGISTRY_REGISTER, msgspec.structs.replace(registration, instance=user)
                    )
                    await by_user[user].flush()
                await by_user["registrar"].publish(subjects.REGISTRY_REGISTER, registration)
                reg, _ = await asyncio.wait_for(arrived.get(), 5)
                await eventually(
                    lambda: denied("publish") >= publish_before + len(others), DEADLINE, "the publish denials"
                )

                # Replies are private: nobody may subscribe to another user's inbox...
                with pytest.raises(PermissionDenied):
                    await by_user["reader"].subscribe(
                        "_INBOX.destination.>", WorkloadRegistration, on_registration
                    )
                # ...while the read-only user, with its own prefix, reads the buckets.
                await by_user["destination"].kv(subjects.ENDPOINTS_BUCKET)
                bucket = await by_user["reader"].kv(subjects.ENDPOINTS_BUCKET, create=False)
                assert await bucket.get("shop.web", events.EndpointSet) is None
        finally:
            for bus in buses:
                await bus.close()
    assert reg == registration and arrived.empty(), "a registration from another user got through"
    assert denied("publish") == publish_before + len(others)
    assert denied("subscribe") == subscribe_before + 1
    refusals = [entry for entry in logs if entry["event"] == "nats_permission_denied"]
    assert sorted((entry["operation"], entry["subject"]) for entry in refusals) == sorted(
        [("publish", subjects.REGISTRY_REGISTER)] * len(others) + [("subscribe", "_inbox.destination.>")]
    )


# --- the real publishers on the wire -----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    subject: str
    headers: Mapping[str, str]
    payload: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        assert isinstance(value, dict)
        return value

    @property
    def event_type(self) -> str:
        return str(self.envelope.get("type"))

    @property
    def data(self) -> dict[str, Any]:
        data = self.envelope.get("data")
        assert isinstance(data, dict)
        return data


@dataclass(frozen=True)
class Wire:
    messages: list[Received]
    started: datetime
    finished: datetime

    def of_type(self, event_type: str) -> list[Received]:
        return [message for message in self.messages if message.event_type == event_type]

    def heartbeats(self, service: str) -> list[dict[str, Any]]:
        beats = self.of_type(events.Heartbeat.event_type)
        return [message.data for message in beats if message.data.get("service") == service]


async def _http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


class ServiceProcess:
    """A control-plane service as its real entry point, ``python -m <module>``."""

    def __init__(self, name: str, workdir: Path, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.admin_port = free_port()
        self.log_path = workdir / f"{name}.log"
        env = {**os.environ, "TETHER_LOG_FORMAT": "json", "TETHER_SHUTDOWN_GRACE": "0.5", **env}
        with self.log_path.open("ab") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", *argv, "--admin-addr", f"127.0.0.1:{self.admin_port}"],
                env=env,
                stdout=log,
                stderr=log,
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            if await _http_status(self.admin_port, "/ready") == 200:
                return True
            assert self.process is not None and self.process.poll() is None, self.logs()
            return False

        await eventually(
            ready, DEADLINE, lambda: f"{self.name} to become ready: {self.logs()}", interval=0.05
        )

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await eventually(lambda: process.poll() is not None, 10, f"{self.name} to exit", interval=0.02)
        except AssertionError:  # still running: killed, and the exit code below says so
            process.kill()
            process.wait()
        assert process.returncode == 0, f"{self.name} exited {process.returncode}: {self.logs()}"


def _csr(identity: WorkloadIdentity) -> bytes:
    """The CSR a proxy sends: a fresh P-256 key, the identity as DNS SAN and its SPIFFE ID as URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(identity.dns_name), x509.UniformResourceIdentifier(identity.spiffe_id)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    csr = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _write_registry(path: Path, web: list[str]) -> None:
    services = [
        {
            "namespace": "shop",
            "name": "web",
            "ports": [{"name": "http", "port": 80, "target_port": 8080}],
            "endpoints": [{"address": address, "identity": WEB.dns_name} for address in web],
        }
    ]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"services": services if web else []}))  # JSON is YAML
    os.replace(temporary, path)


def _endpoint_events(received: list[Received]) -> list[dict[str, Any]]:
    return [m.data for m in received if m.event_type == EndpointsChanged.event_type]


async def _certify_three_times(grpc_port: int, ca_pem: bytes, token_key: bytes) -> None:
    """One issuance and two refusals: a garbage CSR for a good identity, and a malformed identity."""
    token = mint_token(load_token_key(token_key), WEB, datetime.now(UTC), timedelta(hours=1))
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{grpc_port}",
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=[("grpc.ssl_target_name_override", IDENTITY_SERVER_NAME)],
    )
    try:
        stub = identity_pb2_grpc.IdentityStub(channel)
        request = identity_pb2.CertifyRequest
        await stub.Certify(
            request(identity=WEB.dns_name, token=token, certificate_signing_request=_csr(WEB)), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Certify(
                request(identity=WEB.dns_name, token=token, certificate_signing_request=b"garbage"),
                timeout=10,
            )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Certify(
                request(identity="Not An Identity", token=token, certificate_signing_request=_csr(WEB)),
                timeout=10,
            )
    finally:
        await channel.close()


async def _capture(workdir: Path) -> Wire:
    """Run every publisher once against an authenticated nats-server; every message the reader received."""
    nats = EmbeddedNats(workdir / "nats", users=DEFAULT_USERS)
    received: list[Received] = []
    started = datetime.now(UTC)
    async with contextlib.AsyncExitStack() as cleanup:
        await nats.start()
        cleanup.push_async_callback(nats.close)

        reader = await Bus.connect(nats.settings("reader"), name="reader")
        cleanup.push_async_callback(reader.close)

        async def on_message(msg: Any) -> None:
            received.append(Received(msg.subject, dict(msg.headers or {}), msg.data))

        await reader.client.subscribe(f"{subjects.PREFIX}.>", cb=on_message)
        await reader.flush()

        # Heartbeats: a Runtime in this process.
        flags = {
            "nats_url": nats.url,
            "nats_nkey": nats.users["telemetry"].seed_file,
            "admin_addr": "127.0.0.1:0",
        }
        # Plaintext Report: proxies' mTLS to telemetry is covered in tests/telemetry.
        telemetry_env = {
            "TETHER_TELEMETRY_IDENTITY_DISABLED": "true",
            "TETHER_TELEMETRY_GRPC_ADDR": "127.0.0.1:0",
        }
        telemetry_config = config_from(TelemetryConfig, "telemetry", flags, telemetry_env)
        telemetry_service = TelemetryService(telemetry_config)
        telemetry = Runtime(
            "telemetry",
            telemetry_config,
            telemetry_service,
            version="9.9.9",
            instance=TELEMETRY_INSTANCE,
        )
        cleanup.push_async_callback(telemetry.stop)
        await telemetry.start()

        # A rollup: one report from a client standing in for a proxy, acknowledged once published.
        proxy = ReportClient(
            namespace="shop", pod="web-1", identity=WEB.dns_name, labels={"deployment": "web"}
        )
        cleanup.push_async_callback(proxy.close)
        await proxy.connect(f"127.0.0.1:{telemetry_service.grpc_port}")
        await proxy.send(
            [
                scope(
                    telemetry_pb2.DIRECTION_INBOUND,
                    {"authority": "web.shop:80"},
                    [(200, 0, True, [3.0, 7.0])],
                )
            ]
        )
        await telemetry_service.publish_once()
        await proxy.wait_acked(1)

        # Tap: the reader may not see tether.v1.tap.>, so the users entitled to listen do. A request from
        # the public API; telemetry subscribes the connected proxy (publishing its match count) and relays
        # the event the proxy then sends.
        tap_listeners = []
        for user, tap_subjects in (
            ("telemetry", (subjects.TAP_REQUESTS, subjects.TAP_MATCHES_ALL)),
            ("public-api", (subjects.TAP_EVENTS_ALL,)),
        ):
            listener = await Bus.connect(nats.settings(user), name=f"{user}-tap-listener")
            cleanup.push_async_callback(listener.close)
            for tap_subject in tap_subjects:
                await listener.client.subscribe(tap_subject, cb=on_message)
            await listener.flush()
            tap_listeners.append(listener)
        public_api = await Bus.connect(
            nats.settings("public-api"),
            name="public-api",
            source=source_for("public-api", PUBLIC_API_INSTANCE),
        )
        cleanup.push_async_callback(public_api.close)
        await public_api.publish(
            subjects.TAP_REQUESTS,
            TapRequest(
                action="start",
                tap_id=TAP_ID,
                target=TapTarget(namespace="shop", workload=events.Workload("deployment", "web")),
                match=TapFilter(method="GET"),
                max_events_per_second=5.0,
                header_names=("x-request-id", "authorization"),
            ),
        )
        # The public API audits each tap it decides (tests/public_api/test_tap_authz.py runs the real one).
        await public_api.publish(
            subjects.AUDIT_TAP,
            events.TapAudit(
                tap_id=TAP_ID,
                decision="allowed",
                status="OK",
                authz="kubernetes",
                username="alice",
                groups=("system:authenticated",),
                target=TapTarget(namespace="shop", workload=events.Workload("deployment", "web")),
                match=TapFilter(method="GET"),
                max_events_per_second=5.0,
                replica=PUBLIC_API_INSTANCE,
                at=datetime.now(UTC),
            ),
        )
        await eventually(lambda: bool(proxy.subscriptions), DEADLINE, "the tap subscription")
        event = telemetry_pb2.TapEvent(
            tap_id=TAP_ID,
            direction=telemetry_pb2.DIRECTION_INBOUND,
            stream_id=1,
            request_init=telemetry_pb2.TapEvent.RequestInit(
                method="GET", scheme="http", authority="web.shop:80", path="/orders"
            ),
            headers={"x-request-id": "r-1", "authorization": "Bearer do-not-publish"},
            source_identity=WEB.dns_name,
            tls="true",
        )
        event.at.GetCurrentTime()
        await proxy.send_tap(event)
        await eventually(
            lambda: (
                bool(received_of(received, events.TapEvent))
                and bool(received_of(received, events.TapMatchCount))
            ),
            DEADLINE,
            "the tap event and match count",
        )

        # Identity issued / rejected: the real server process.
        ca = bootstrap(workdir / "ca", datetime.now(UTC))
        identity_port = free_port()
        identity = ServiceProcess(
            "identity",
            workdir,
            [
                "tether.identity",
                "serve",
                "--grpc-addr",
                f"127.0.0.1:{identity_port}",
                "--trust-anchors",
                str(ca["ca.crt"]),
                "--issuer-certificate",
                str(ca["issuer.crt"]),
                "--issuer-key",
                str(ca["issuer.key"]),
                "--token-verifier",
                "local",
                "--token-key",
                str(ca["token-signing.key"]),
                "--nats-url",
                nats.url,
                "--nats-nkey",
                nats.users["identity"].seed_file,
            ],
            {},
        )
        cleanup.push_async_callback(identity.stop)

        # Endpoints changed: a destination replica process on a local registry.
        registry = workdir / "registry.yaml"
        _write_registry(registry, ["10.0.0.1"])
        destination = ServiceProcess(
            "destination",
            workdir,
            ["tether.destination"],
            {
                "TETHER_NATS_URL": nats.url,
                "TETHER_NATS_NKEY": nats.users["destination"].seed_file,
                "TETHER_DESTINATION_GRPC_ADDR": f"127.0.0.1:{free_port()}",
                "TETHER_DESTINATION_SOURCE": "local",
                "TETHER_DESTINATION_REGISTRY_FILE": str(registry),
                "TETHER_DESTINATION_REGISTRY_POLL_INTERVAL": "0.05",
                "TETHER_DESTINATION_LEASE_TTL": "3",
                # Proxies' mTLS to destination is not what this test is about.
                "TETHER_DESTINATION_IDENTITY_DISABLED": "true",
            },
        )
        cleanup.push_async_callback(destination.stop)
        await identity.wait_ready()
        await destination.wait_ready()

        await _certify_three_times(
            identity_port, ca["ca.crt"].read_bytes(), ca["token-signing.key"].read_bytes()
        )
        await eventually(
            lambda: (
                len(received_of(received, events.IdentityRejected)) >= 2
                and len(received_of(received, events.IdentityIssued)) >= 1
            ),
            DEADLINE,
            lambda: f"identity events: {identity.logs()}",
        )

        await eventually(
            lambda: bool(_endpoint_events(received)),
            DEADLINE,
            lambda: f"the registry file's endpoints: {destination.logs()}",
        )

        # Registrations: Bus.publish as the registrar, which destination turns into endpoint changes.
        registrar = await Bus.connect(
            nats.settings("registrar"), name="registrar", source=source_for("registrar", REGISTRAR_INSTANCE)
        )
        cleanup.push_async_callback(registrar.close)
        registration = WorkloadRegistration(
            namespace="shop",
            service="web",
            instance="web-9",
            address=REGISTERED_ADDRESS,
            port=8080,
            identity=WEB.dns_name,
            labels={"zone": "local"},
        )
        await registrar.publish(subjects.REGISTRY_REGISTER, registration)
        await eventually(
            lambda: any(
                added.get("origin") == "registration"
                for changed in _endpoint_events(received)
                for added in changed["added"]
            ),
            DEADLINE,
            lambda: f"the registered endpoint: {destination.logs()}",
        )
        await registrar.publish(
            subjects.REGISTRY_REGISTER, msgspec.structs.replace(registration, deregister=True)
        )
        await eventually(
            lambda: any(REGISTERED_ADDRESS in changed["removed"] for changed in _endpoint_events(received)),
            DEADLINE,
            lambda: f"the deregistration: {destination.logs()}",
        )
        _write_registry(registry, [])
        await eventually(
            lambda: any(changed["deleted"] for changed in _endpoint_events(received)),
            DEADLINE,
            lambda: f"the deleted service: {destination.logs()}",
        )

        # Shutdown: each runtime's last heartbeat says not ready.
        await telemetry.stop()
        await identity.stop()
        await destination.stop()

        def stopped(service: str) -> bool:
            beats = [m.data for m in received_of(received, events.Heartbeat) if m.data["service"] == service]
            return bool(beats) and beats[-1]["ready"] is False

        for service in ("telemetry", "identity", "destination"):
            await eventually(
                functools.partial(stopped, service), DEADLINE, f"the last heartbeat of {service}"
            )
    return Wire(messages=list(received), started=started, finished=datetime.now(UTC))


def received_of(received: list[Received], cls: type[EventData]) -> list[Received]:
    return [message for message in received if message.event_type == cls.event_type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def wire(tmp_path_factory: pytest.TempPathFactory) -> Wire:
    return await _capture(tmp_path_factory.mktemp("wire"))


def _check_heartbeat(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    service, instance = data["service"], data["instance"]
    assert event.get_source() == source_for(service, instance)
    assert message.subject == subjects.health(service, instance)
    assert event.get_subject() == f"{service}/{instance}"


def _check_issued(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("identity", data["replica"])
    assert event.get_subject() == data["identity"] == WEB.dns_name
    assert data["spiffe_id"] == WEB.spiffe_id


def _check_rejected(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("identity", data["replica"])
    # No subject rather than an empty one (which CloudEvents forbids) when the identity was malformed.
    assert event.get_subject() == (data["identity"] or None)
    assert ("subject" in message.envelope) == bool(data["identity"])


def _check_issuer(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("identity", data["replica"])
    assert event.get_subject() == data["replica"]
    # The capture's identity loads the bootstrap CA: the issuer and its one anchor, with their expiry.
    assert data["issuer_loaded"] is True and data["load_error"] == ""
    assert data["issuer"]["not_after"] > data["observed_at"]
    assert len(data["trust_anchors"]) == 1
    assert data["trust_anchors"][0]["not_after"] >= data["issuer"]["not_after"]
    assert b"PRIVATE KEY" not in message.payload


def _check_endpoints(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    instances = {beat["instance"] for beat in wire.heartbeats("destination")}
    assert event.get_source() in {source_for("destination", instance) for instance in instances}
    assert message.subject == subjects.endpoints(data["namespace"], data["service"])
    assert event.get_subject() == f"{data['namespace']}/{data['service']}"
    endpoint_fields = doc_fields("Endpoint")
    for endpoint in data["added"]:
        assert {"address", "ports"} <= set(endpoint) <= endpoint_fields, endpoint


def _check_registration(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("registrar", REGISTRAR_INSTANCE)
    assert event.get_subject() == f"{data['namespace']}/{data['service']}/{data['instance']}"


def _check_rollup(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert (
        event.get_source()
        == source_for("telemetry", TELEMETRY_INSTANCE)
        == source_for("telemetry", data["replica"])
    )
    assert message.subject == subjects.rollup(data["namespace"], data["kind"], data["name"])
    assert event.get_subject() == "shop/deployment/web"
    (only_range,) = data["ranges"]
    assert {k: only_range[k] for k in ("identity", "pod", "first", "last")} == {
        "identity": WEB.dns_name,
        "pod": "web-1",
        "first": 1,
        "last": 1,
    }
    assert len(only_range["instance"]) == 16  # the stand-in proxy's process id
    (only,) = data["scopes"]
    assert only["requests"] == 2 and only["responses"][0]["latency_buckets"][2:6] == [1, 0, 0, 1]


def _check_tap_request(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("public-api", PUBLIC_API_INSTANCE)
    assert message.subject == subjects.TAP_REQUESTS
    assert event.get_subject() == data["tap_id"] == TAP_ID


def _check_tap_matches(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("telemetry", TELEMETRY_INSTANCE)
    assert message.subject == subjects.tap_matches(TAP_ID)
    assert event.get_subject() == f"{TAP_ID}/{TELEMETRY_INSTANCE}"
    assert data["replica"] == TELEMETRY_INSTANCE and data["matching"] in (0, 1)


def _check_tap_event(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("telemetry", TELEMETRY_INSTANCE)
    assert message.subject == subjects.tap_events(TAP_ID)
    assert event.get_subject() == f"{TAP_ID}/shop/web-1"
    assert data["request_init"]["path"] == "/orders"
    assert data["headers"] == {"x-request-id": "r-1"}
    assert b"do-not-publish" not in message.payload


def _check_tap_audit(message: Received, event: SdkEvent, data: dict[str, Any], wire: Wire) -> None:
    assert event.get_source() == source_for("public-api", data["replica"])
    assert message.subject == subjects.AUDIT_TAP
    assert event.get_subject() == f"shop/{TAP_ID}"
    assert (data["decision"], data["username"]) == ("allowed", "alice")


CHECKS: dict[str, Callable[[Received, SdkEvent, dict[str, Any], Wire], None]] = {
    events.Heartbeat.event_type: _check_heartbeat,
    events.IdentityIssued.event_type: _check_issued,
    events.IdentityRejected.event_type: _check_rejected,
    events.IssuerStatus.event_type: _check_issuer,
    events.EndpointsChanged.event_type: _check_endpoints,
    events.WorkloadRegistration.event_type: _check_registration,
    events.TelemetryRollup.event_type: _check_rollup,
    events.TapRequest.event_type: _check_tap_request,
    events.TapMatchCount.event_type: _check_tap_matches,
    events.TapEvent.event_type: _check_tap_event,
    events.TapAudit.event_type: _check_tap_audit,
}


@pytest.mark.parametrize("row", doc_types(), ids=lambda row: row.event_type)
def test_published_events_are_the_documented_cloudevents(wire: Wire, row: TypeRow) -> None:
    messages = [message for message in wire.messages if row.matches(message.subject)]
    assert messages, f"no event was received on {row.subject}"
    fields = doc_fields(row.event_type)
    for message in messages:
        event = sdk_parse(message.payload)
        assert message.headers.get("Content-Type") == "application/cloudevents+json"
        assert event.get_specversion() == "1.0"
        assert event.get_type() == row.event_type
        assert event.get_datacontenttype() == "application/json"
        assert SOURCE.fullmatch(event.get_source()), event.get_source()
        assert RFC3339.fullmatch(message.envelope["time"]), message.envelope["time"]
        published = event.get_time()
        assert published is not None and published.utcoffset() == timedelta(0)
        assert wire.started - TIME_SLACK <= published <= wire.finished + TIME_SLACK
        data = event.get_data()
        assert isinstance(data, dict)
        assert set(data) == fields, f"{row.event_type} data fields differ from docs/events.md"
        EventDecoder(row.data_class).decode(message.payload)  # and Tether's own reader takes it
        CHECKS[row.event_type](message, event, data, wire)


def test_every_message_is_a_documented_event(wire: Wire) -> None:
    for message in wire.messages:
        assert row_for(message.subject).event_type == message.event_type, message.subject


def test_ids_are_unique_across_all_events(wire: Wire) -> None:
    ids = [message.envelope["id"] for message in wire.messages]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 12


def test_every_publisher_was_heard(wire: Wire) -> None:
    """The capture exercised what it claims: otherwise the checks above pass on too little."""
    for service in ("telemetry", "identity", "destination"):
        beats = wire.heartbeats(service)
        assert beats and beats[-1]["ready"] is False, f"{service}: no heartbeat, or no last not-ready one"
    assert wire.heartbeats("telemetry")[0]["instance"] == TELEMETRY_INSTANCE
    assert len(wire.of_type(events.IdentityIssued.event_type)) == 1
    reasons = sorted(m.data["reason"] for m in wire.of_type(events.IdentityRejected.event_type))
    assert reasons == ["csr_malformed", "invalid_identity"]
    changes = [m.data for m in wire.of_type(EndpointsChanged.event_type)]
    assert any(change["added"] for change in changes)
    assert any(change["removed"] for change in changes)
    assert any(change["deleted"] for change in changes)
    registrations = [m.data for m in wire.of_type(WorkloadRegistration.event_type)]
    assert [r["deregister"] for r in registrations] == [False, True]
