"""`tether.public.v1` changes only additively: the descriptors of today's public.proto against those of the
previous release (public_v1_baseline.proto, the file as committed before this release's additions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tether.shared.proto.public.v1 import public_pb2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASELINE = HERE / "public_v1_baseline.proto"


def compile_descriptor(proto: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / f"{proto.stem}.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"-I{ROOT / 'shared' / 'src'}",
            f"--descriptor_set_out={out}",
            str(proto),
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[-1]


def current_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    public_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages(
    prefix: str, messages: list[descriptor_pb2.DescriptorProto]
) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}
    for message in messages:
        name = f"{prefix}.{message.name}"
        found[name] = message
        found.update(_messages(name, list(message.nested_type)))
    return found


def incompatibilities(
    old: descriptor_pb2.FileDescriptorProto, new: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """What breaks a client of ``old``: a removed message, field, enum value, service or rpc, a field number
    reused with another name, type or label, an rpc whose types or streaming changed."""
    problems = []
    if old.package != new.package:
        problems.append(f"package {old.package} became {new.package}")
    old_messages = _messages(old.package, list(old.message_type))
    new_messages = _messages(new.package, list(new.message_type))
    for name, message in old_messages.items():
        if name not in new_messages:
            problems.append(f"message {name} removed")
            continue
        new_fields = {f.number: f for f in new_messages[name].field}
        for f in message.field:
            g = new_fields.get(f.number)
            if g is None:
                problems.append(f"field {name}.{f.name} = {f.number} removed")
                continue
            for attribute in ("name", "type", "type_name", "label"):
                if getattr(f, attribute) != getattr(g, attribute):
                    problems.append(
                        f"field {name}.{f.name} = {f.number}: {attribute} {getattr(f, attribute)!r}"
                        f" became {getattr(g, attribute)!r}"
                    )
            if f.HasField("oneof_index") != g.HasField("oneof_index"):
                problems.append(f"field {name}.{f.name} = {f.number} moved in or out of a oneof")
    old_enums = {f"{old.package}.{e.name}": e for e in old.enum_type}
    new_enums = {f"{new.package}.{e.name}": e for e in new.enum_type}
    for name, enum in old_enums.items():
        if name not in new_enums:
            problems.append(f"enum {name} removed")
            continue
        values = {v.number: v.name for v in new_enums[name].value}
        problems += [
            f"enum value {name}.{v.name} = {v.number} removed or renamed"
            for v in enum.value
            if values.get(v.number) != v.name
        ]
    new_services = {s.name: s for s in new.service}
    for service in old.service:
        if service.name not in new_services:
            problems.append(f"service {service.name} removed")
            continue
        methods = {m.name: m for m in new_services[service.name].method}
        for m in service.method:
            n = methods.get(m.name)
            if n is None:
                problems.append(f"rpc {service.name}.{m.name} removed")
                continue
            for attribute in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(m, attribute) != getattr(n, attribute):
                    problems.append(
                        f"rpc {service.name}.{m.name}: {attribute} {getattr(m, attribute)!r}"
                        f" became {getattr(n, attribute)!r}"
                    )
    return problems


def test_public_api_changes_only_additively(tmp_path: Path) -> None:
    old = compile_descriptor(BASELINE, tmp_path)
    new = current_descriptor()
    assert incompatibilities(old, new) == []
    # and this release did add what it promises
    assert "Edges" in {m.name for m in new.service[0].method}
    assert "from" in {
        f.name
        for f in _messages(new.package, list(new.message_type))["tether.public.v1.StatSummaryRequest"].field
    }


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("uint32 max_requests = 3;", "field tether.public.v1.TapRequest.max_requests = 3: type"),
        ("bool ok = 3;", "field tether.public.v1.CheckResult.ok = 3 removed"),
        ("repeated CheckResult results = 2;", "field tether.public.v1.CheckResponse.results = 2: label"),
        ("rpc Tap(TapRequest) returns (stream", "rpc Api.Tap: server_streaming"),
        ("message EndpointsResponse {", "message tether.public.v1.EndpointsResponse removed"),
        ("rpc Version(VersionRequest) returns (VersionResponse);", "rpc Api.Version removed"),
    ],
)
def test_the_check_catches_incompatible_changes(tmp_path: Path, edit: str, expected: str) -> None:
    text = BASELINE.read_text()
    assert edit in text
    replacements = {
        "uint32 max_requests = 3;": "string max_requests = 3;",
        "bool ok = 3;": "reserved 3;",
        "repeated CheckResult results = 2;": "CheckResult results = 2;",
        "rpc Tap(TapRequest) returns (stream": "rpc Tap(TapRequest) returns (",
        "message EndpointsResponse {": "message EndpointsAnswer {",
        "rpc Version(VersionRequest) returns (VersionResponse);": "",
    }
    changed = tmp_path / "changed" / "public_v1_baseline.proto"
    changed.parent.mkdir()
    text = text.replace(edit, replacements[edit])
    if edit == "message EndpointsResponse {":
        text = text.replace("returns (EndpointsResponse)", "returns (EndpointsAnswer)")
    changed.write_text(text)
    old = compile_descriptor(BASELINE, tmp_path)
    new = compile_descriptor(changed, tmp_path)
    problems = incompatibilities(old, new)
    assert any(p.startswith(expected) for p in problems), problems
