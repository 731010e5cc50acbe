"""The local registry file: what it declares, and errors that name the offending line."""

from __future__ import annotations

import pytest

from tether.destination.errors import RegistryFileError
from tether.destination.sources.registry_file import parse_registry

GOOD = """\
services:
  - namespace: emojivoto
    name: web
    ports:
      - {name: http, port: 80, target_port: 8080}
    endpoints:
      - address: 10.0.0.7
        identity: web.emojivoto.serviceaccount.identity.cluster.local
        labels: {pod: web-0}
      - address: "fd00::1"
        port: 9090
        ready: false
  - namespace: emojivoto
    name: multi
    ports:
      - {name: http, port: 80}
      - {name: grpc, port: 81, target_port: 9000}
    endpoints:
      - address: 10.0.0.8
        ports: {http: 8081}
"""


def test_parses_services_ports_and_endpoints() -> None:
    services = parse_registry(GOOD, "reg.yaml", "cluster.local")
    web = services["emojivoto.web"]
    assert [(p.name, p.port) for p in web.ports] == [("http", 80)]
    first, second = web.endpoints
    assert (first.address, first.ports, first.identity, first.protocol_hint, first.labels) == (
        "10.0.0.7",
        {"http": 8080},
        "web.emojivoto.serviceaccount.identity.cluster.local",
        "h2",
        {"pod": "web-0"},
    )
    assert (second.address, second.ports, second.ready, second.identity, second.protocol_hint) == (
        "fd00::1",
        {"http": 9090},
        False,
        None,
        None,
    )
    (multi,) = services["emojivoto.multi"].endpoints
    assert multi.ports == {"http": 8081}


ADDRESSES = """\
services:
  - namespace: shop
    name: redis
    addresses: [10.96.0.10, "FD00:0::10"]
    ports:
      - {name: redis, port: 6379, target_port: 7000, opaque: true}
      - {name: http, port: 80, opaque: false}
      - {name: admin, port: 81}
  - namespace: shop
    name: web
    addresses:
      - 10.96.0.11
    ports: [{port: 80}]
"""


def test_addresses_and_opaque_ports() -> None:
    services = parse_registry(ADDRESSES, "reg.yaml", "cluster.local")
    redis = services["shop.redis"]
    assert redis.addresses == ("10.96.0.10", "fd00::10")  # canonical and sorted, as stored
    assert [(p.name, p.port, p.opaque) for p in redis.ports] == [
        ("http", 80, False),
        ("admin", 81, False),
        ("redis", 6379, True),
    ]
    assert services["shop.web"].addresses == ("10.96.0.11",)
    assert parse_registry(GOOD, "reg.yaml", "cluster.local")["emojivoto.web"].addresses == ()


def test_empty_file_declares_nothing() -> None:
    assert parse_registry("", "reg.yaml", "cluster.local") == {}
    assert parse_registry("services: []\n", "reg.yaml", "cluster.local") == {}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("services:\n  - namespace: a\n    name: [b\n", 4, "not valid YAML"),
        ("services:\n  - namespace: a\n    nme: b\n    ports: [{port: 80}]\n", 3, "unknown field 'nme'"),
        ("services:\n  - namespace: a\n    name: b\n", 2, "missing 'ports'"),
        ("services:\n  - namespace: A_B\n    name: b\n    ports: [{port: 80}]\n", 2, "DNS-1123"),
        ("services:\n  - namespace: a\n    name: b\n    ports:\n      - {port: 70000}\n", 5, "1..65535"),
        ("services:\n  - namespace: a\n    name: b\n    ports:\n      - {port: eighty}\n", 5, "integer"),
        (
            "services:\n  - namespace: a\n    name: b\n    ports: [{port: 80}]\n"
            "    endpoints:\n      - address: 10.0.0.1\n      - address: 10.0.0.999\n",
            7,
            "not an IPv4 or IPv6",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    ports: [{port: 80}]\n"
            "    endpoints:\n      - address: 10.0.0.1\n      - address: 10.0.0.1\n",
            7,
            "listed twice",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    ports: [{port: 80}]\n"
            "    endpoints:\n      - address: 10.0.0.1\n"
            "        identity: web.other.serviceaccount.identity.evil.org\n",
            7,
            "trust domain",
        ),
        (
            "services:\n  - {namespace: a, name: b, ports: [{port: 80}]}\n"
            "  - {namespace: a, name: b, ports: [{port: 81}]}\n",
            3,
            "declared twice",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n"
            "    ports: [{name: x, port: 80}, {name: y, port: 81}]\n"
            "    endpoints:\n      - {address: 10.0.0.1, port: 9}\n",
            6,
            "ambiguous",
        ),
        ("- just a list\n", 1, "must be a mapping"),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses: 10.0.0.1\n    ports: [{port: 80}]\n",
            4,
            "addresses must be a list",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses:\n      - 10.96.0.1\n"
            "      - 10.96.0.256\n    ports: [{port: 80}]\n",
            6,
            "not an IPv4 or IPv6",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses: [10.96.0.0/24]\n"
            "    ports: [{port: 80}]\n",
            4,
            "not an IPv4 or IPv6",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses: [10.96]\n    ports: [{port: 80}]\n",
            4,
            "must be a string",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses: ['fe80::1%eth0']\n"
            "    ports: [{port: 80}]\n",
            4,
            "zone",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses:\n      - fd00::1\n      - fd00:0::1\n"
            "    ports: [{port: 80}]\n",
            6,
            "listed twice",
        ),
        (
            "services:\n  - {namespace: a, name: b, addresses: [10.96.0.1], ports: [{port: 80}]}\n"
            "  - {namespace: a, name: c, ports: [{port: 80}],\n     addresses: [10.96.0.2, 10.96.0.1]}\n",
            4,
            "already the address of a.b",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    addresses: ["
            + ", ".join(f"10.96.0.{i}" for i in range(17))
            + "]\n    ports: [{port: 80}]\n",
            4,
            "at most 16",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    ports:\n      - {port: 80, opaque: yes please}\n",
            5,
            "opaque must be true or false",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    ports:\n      - {port: 80, opaque: 1}\n",
            5,
            "opaque must be true or false",
        ),
        (
            "services:\n  - namespace: a\n    name: b\n    ports:\n      - {port: 80, opaqe: true}\n",
            5,
            "unknown field 'opaqe'",
        ),
    ],
)
def test_invalid_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RegistryFileError) as caught:
        parse_registry(text, "reg.yaml", "cluster.local")
    assert caught.value.line == line, str(caught.value)
    assert words in caught.value.problem
    assert str(caught.value).startswith(f"reg.yaml:{line}: ")
