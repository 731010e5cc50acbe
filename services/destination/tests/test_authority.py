"""Authority parsing: every accepted form, and what counts as invalid versus merely not in the mesh."""

from __future__ import annotations

import pytest

from tether.destination.authority import MAX_AUTHORITY_LENGTH, ServiceAuthority, parse_authority
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
        ("10.0.0.1:8080", ""),
        ("[::1]:8080", ""),
        ("web.emojivoto:0", ""),
        ("web.emojivoto:65536", ""),
        ("web.emojivoto:http", ""),
        ("web_x.emojivoto:80", ""),
        ("-web.emojivoto:80", ""),
        ("a.b.c.d.e.f.g:80", ""),
        (":80", ""),
    ],
)
def test_not_in_mesh(authority: str, token: str) -> None:
    assert parse_authority(authority, token) is None


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
    assert parsed is not None
    assert parsed.key == "emojivoto.web"
    assert str(parsed) == "web.emojivoto:8080"
