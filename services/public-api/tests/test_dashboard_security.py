"""The dashboard's Host and same-origin checks (pure) and its options in the public API's configuration."""

from __future__ import annotations

import pytest

from tether.public_api.config import PublicApiConfig
from tether.public_api.dashboard.app import api_target
from tether.public_api.dashboard.security import (
    CSP,
    allowed_hosts,
    cross_site,
    host_allowed,
    host_name,
    same_origin,
)
from tether.shared.config import config_from
from tether.shared.errors import ConfigError


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8084", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1:9999", "127.0.0.1"),
        ("[::1]:8084", "::1"),
        ("[::1]", "::1"),
        ("tether.example.com", "tether.example.com"),
        ("", None),
        ("localhost:", None),
        ("localhost:80x", None),
        ("[::1", None),
        ("[nope]:80", None),
        ("::1", None),  # IPv6 needs brackets in a Host field
        ("user@localhost", None),
        ("local host", None),
        ("localhost:8084/x", None),
    ],
)
def test_host_names(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_only_loopback_the_bound_address_and_configured_names_are_allowed() -> None:
    wildcard = allowed_hosts("0.0.0.0", ())
    assert wildcard == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("::", ()) == wildcard
    allowed = allowed_hosts("10.1.2.3", ("Dash.Example",))
    assert allowed == {"localhost", "127.0.0.1", "::1", "10.1.2.3", "dash.example"}
    for ok in (
        "localhost:8084",
        "127.0.0.1:1",
        "[::1]:8084",
        "10.1.2.3:8084",
        "dash.example",
        "DASH.example:80",
    ):
        assert host_allowed(ok, allowed), ok
    # DNS rebinding: a name the attacker points at 127.0.0.1 still says its own name.
    for refused in (None, "evil.example:8084", "localhost.evil.example", "127.0.0.2:8084", "dash.example."):
        assert not host_allowed(refused, allowed), refused


def test_same_origin_needs_a_matching_origin_or_sec_fetch_site() -> None:
    host = {"host": "localhost:8084"}
    assert same_origin({**host, "origin": "http://localhost:8084"}) == ""
    assert same_origin({**host, "origin": "https://LOCALHOST:8084"}) == ""
    assert same_origin({**host, "sec-fetch-site": "same-origin"}) == ""
    # Another port of localhost is same-site, not same-origin; a sandboxed frame sends Origin: null.
    for headers in (
        {**host, "origin": "http://localhost:3000"},
        {**host, "origin": "http://127.0.0.1:8084"},
        {**host, "origin": "null"},
        {**host, "origin": "http://evil.example", "sec-fetch-site": "same-origin"},
        {**host, "sec-fetch-site": "same-site"},
        {**host, "sec-fetch-site": "cross-site"},
        {**host, "sec-fetch-site": "none"},
        host,
    ):
        assert same_origin(headers), headers
    assert cross_site({"sec-fetch-site": "cross-site"}) and cross_site({"sec-fetch-site": "same-site"})
    assert not cross_site({"sec-fetch-site": "same-origin"}) and not cross_site({"sec-fetch-site": "none"})
    assert not cross_site({})


def test_the_policy_allows_nothing_inline_nor_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in CSP


def _config(flags: dict[str, str | None]) -> PublicApiConfig:
    return config_from(PublicApiConfig, "public-api", flags, {})


def test_dashboard_options() -> None:
    default = _config({})
    assert default.dashboard_addr == "127.0.0.1:8084" and default.dashboard_host == ()
    assert _config({"dashboard_addr": ""}).dashboard_addr == ""  # the way to turn it off
    config = _config({"dashboard_addr": "[::1]:9000", "dashboard_host": "dash.example, 10.0.0.7"})
    assert config.dashboard_host == ("dash.example", "10.0.0.7")
    with pytest.raises(ConfigError, match="--dashboard-addr / TETHER_PUBLIC_API_DASHBOARD_ADDR"):
        _config({"dashboard_addr": "localhost"})
    with pytest.raises(ConfigError, match=r"--dashboard-host.*'evil\.example:80' is not"):
        _config({"dashboard_host": "ok.example,evil.example:80"})
    env = config_from(PublicApiConfig, "public-api", {}, {"TETHER_PUBLIC_API_DASHBOARD_HOST": "a.example"})
    assert env.dashboard_host == ("a.example",)


def test_the_dashboard_calls_the_grpc_listener_on_loopback_when_it_binds_a_wildcard() -> None:
    assert api_target("0.0.0.0:8085", 8085) == "127.0.0.1:8085"
    assert api_target("[::]:8085", 8085) == "[::1]:8085"
    assert api_target("127.0.0.1:0", 40123) == "127.0.0.1:40123"
    assert api_target("[fd00::1]:8085", 8085) == "[fd00::1]:8085"
