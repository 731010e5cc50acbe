"""Authority parsing: every accepted form of a name and of an address, and what counts as invalid versus
merely not in the mesh."""

from __future__ import annotations

import pytest

from tether.destination.authority import (
    MAX_AUTHORITY_LENGTH,
    AddressAuthority,
    ServiceAuthority,
    parse_authority,
)
from tether.destination.errors import InvalidRequest


@pytest.mark.parametrize(
    ("authority", "token", "expected"),
    [
        ("web.emojivoto.svc.cluster.local:8080", "", ServiceAuthority("emojivoto", "web", 8080)),
        ("web.emojivoto.svc.cluster.local.:8080", "", ServiceAuthority("emojivoto", "web", 8080)),
        ("WEB.Emojivoto.svc.Cluster.Local:8080", "", ServiceAuthority("emojivoto", "web", 8080)),
        ("web.emojivoto.svc:80", "", ServiceAuthority("emojivoto", "web", 80)),
        ("web.emojivoto:9090", "", ServiceAuthority("emojivoto", "web", 9090)),
        ("web:9090", '{"ns":"emojivoto","pod":"vote-0"}', ServiceAuthority("emojivoto", "web", 9090)),
        ("web.emojivoto", "", ServiceAuthority("emojivoto", "web", 80)),
    ],
)
def test_accepted_forms(authority: str, token: str, expected: ServiceAuthority) -> None:
    assert parse_authority(authority, token) == expected


@pytest.mark.parametrize(
    ("authority", "token"),
    [
        ("web:8080", ""),  # short name without a namespace
        ("web:8080", "not json"),
        ("web:8080", '["ns"]'),
        ("web:8080", '{"ns": 7}'),
        ("web:8080", '{"ns": "Bad_NS"}'),
        ("web.emojivoto.svc.example.org:8080", ""),
        ("web.emojivoto:0", ""),
        ("web.emojivoto:65536", ""),
        ("web.emojivoto:http", ""),
        ("web_x.emojivoto:80", ""),
        ("-web.emojivoto:80", ""),
        ("a.b.c.d.e.f.g:80", ""),
        (":80", ""),
        ("10.0.0.1:0", ""),
        ("10.0.0.1:65536", ""),
        ("010.0.0.1:80", ""),  # not an IP literal Python or the proxy would produce
        ("10.0.0:80", ""),
        ("fd00::10:6379", ""),  # IPv6 without brackets: the port cannot be told apart
        ("fd00::10", ""),
        ("[fd00::10", ""),
        ("[fd00::10]6379", ""),
        ("[fd00::10]:", ""),
        ("[10.0.0.1]:80", ""),  # brackets are for IPv6 only
        ("[fe80::1%eth0]:80", ""),  # a zone names a link of the caller's host
        ("[web.ns]:80", ""),
    ],
)
def test_not_in_mesh(authority: str, token: str) -> None:
    assert parse_authority(authority, token) is None


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("10.96.0.10:6379", AddressAuthority("10.96.0.10", 6379)),
        ("10.96.0.10", AddressAuthority("10.96.0.10", 80)),
        ("[fd00::10]:6379", AddressAuthority("fd00::10", 6379)),
        ("[FD00:0:0::10]:6379", AddressAuthority("fd00::10", 6379)),  # canonical, as stored
        ("[fd00::10]", AddressAuthority("fd00::10", 80)),
        ("[::ffff:10.96.0.10]:53", AddressAuthority("10.96.0.10", 53)),  # a dual-stack socket's view
    ],
)
def test_ip_literals_are_addresses(authority: str, expected: AddressAuthority) -> None:
    # The context token never qualifies an address.
    assert parse_authority(authority, '{"ns":"emojivoto"}') == expected


def test_address_str_brackets_ipv6() -> None:
    assert str(AddressAuthority("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(AddressAuthority("fd00::10", 6379)) == "[fd00::10]:6379"


def test_cluster_domain_is_configurable() -> None:
    assert parse_authority(
        "web.ns.svc.corp.internal:80", "", cluster_domain="corp.internal"
    ) == ServiceAuthority("ns", "web", 80)
    assert parse_authority("web.ns.svc.cluster.local:80", "", cluster_domain="corp.internal") is None


@pytest.mark.parametrize(
    ("authority", "token"),
    [("", ""), ("a" * (MAX_AUTHORITY_LENGTH + 1), ""), ("web:80", "x" * 5000)],
)
def test_invalid_requests_raise(authority: str, token: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_authority(authority, token)


def test_key_and_str() -> None:
    parsed = parse_authority("web.emojivoto:8080")
    assert isinstance(parsed, ServiceAuthority)
    assert parsed.key == "emojivoto.web"
    assert str(parsed) == "web.emojivoto:8080"
