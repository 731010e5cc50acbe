"""Workload identity names: building, parsing and validating."""

from __future__ import annotations

import pytest

from tether.shared.identity_names import (
    InvalidIdentityName,
    WorkloadIdentity,
    parse_identity,
    parse_kubernetes_username,
    parse_spiffe_id,
    spiffe_id,
    workload_identity,
)


def test_names_round_trip() -> None:
    assert workload_identity("web", "shop") == "web.shop.serviceaccount.identity.cluster.local"
    assert spiffe_id("web", "shop", "example.org") == "spiffe://example.org/ns/shop/sa/web"
    identity = WorkloadIdentity("web", "shop", "example.org")
    assert parse_identity(identity.dns_name) == identity
    assert parse_spiffe_id(identity.spiffe_id) == identity
    assert parse_kubernetes_username("system:serviceaccount:shop:web", "example.org") == identity
    assert identity.kubernetes_username == "system:serviceaccount:shop:web"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "web.shop.cluster.local",
        "web.shop.serviceaccount.identity.",
        "Web.shop.serviceaccount.identity.cluster.local",
        "web_1.shop.serviceaccount.identity.cluster.local",
        "-web.shop.serviceaccount.identity.cluster.local",
        "web.shop.serviceaccount.identity.cluster..local",
        f"{'a' * 64}.shop.serviceaccount.identity.cluster.local",
        "web.shop.serviceaccount.identity.cluster.local\n",
    ],
)
def test_invalid_identity_names(name: str) -> None:
    with pytest.raises(InvalidIdentityName):
        parse_identity(name)


def test_trust_domain_is_enforced_when_given() -> None:
    with pytest.raises(InvalidIdentityName, match="trust domain"):
        parse_identity("web.shop.serviceaccount.identity.example.org", "cluster.local")


@pytest.mark.parametrize(
    "username",
    [
        "system:node:n1",
        "system:serviceaccount:shop",
        "system:serviceaccount:shop:web:x",
        "system:serviceaccount:Shop:web",
    ],
)
def test_invalid_usernames(username: str) -> None:
    with pytest.raises(InvalidIdentityName):
        parse_kubernetes_username(username)


@pytest.mark.parametrize(
    "uri",
    ["https://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa", "spiffe://cluster.local/sa/b/ns/a"],
)
def test_invalid_spiffe_ids(uri: str) -> None:
    with pytest.raises(InvalidIdentityName):
        parse_spiffe_id(uri)
