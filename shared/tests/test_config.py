"""Configuration parsing: defaults < environment < flags, validation, and errors that name the option."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
from msgspec import Meta

from tether.shared.config import (
    AdminAddr,
    CommonConfig,
    config_from,
    load_config,
    option_specs,
    parse_hostport,
)
from tether.shared.errors import ConfigError


class DemoConfig(CommonConfig, frozen=True, kw_only=True):
    admin_addr: AdminAddr = "0.0.0.0:9999"
    grpc_addr: Annotated[str, Meta(description="listener")] = "0.0.0.0:8086"
    workers: Annotated[int, Meta(ge=1, le=64, description="worker count")] = 4
    tags: Annotated[tuple[str, ...], Meta(description="tags")] = ()
    strict: Annotated[bool, Meta(description="strict mode")] = False


def test_defaults() -> None:
    config = config_from(DemoConfig, "demo", {}, {})
    assert config.nats_url == "nats://127.0.0.1:4222"
    assert config.workers == 4 and config.tags == () and config.strict is False


def test_environment_then_flags_override() -> None:
    environ = {
        "TETHER_NATS_URL": "nats://10.0.0.1:4222",
        "TETHER_DEMO_WORKERS": "8",
        "TETHER_DEMO_TAGS": "a, b",
    }
    config = config_from(DemoConfig, "demo", {"workers": "16", "strict": "yes"}, environ)
    assert config.nats_url == "nats://10.0.0.1:4222"
    assert config.workers == 16
    assert config.tags == ("a", "b")
    assert config.strict is True


SWITCHES = [
    ([], False),
    (["--strict"], True),
    (["--strict", "false"], False),
    (["--strict", "--workers", "2"], True),
]


@pytest.mark.parametrize(("argv", "strict"), SWITCHES)
def test_a_switch_alone_means_true(argv: list[str], strict: bool) -> None:
    assert load_config(DemoConfig, "demo", argv, {}).strict is strict


def test_config_is_frozen() -> None:
    config = config_from(DemoConfig, "demo", {}, {})
    with pytest.raises(AttributeError):
        config.workers = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("flags", "environ", "fragment"),
    [
        ({"workers": "0"}, {}, "--workers / TETHER_DEMO_WORKERS: Expected `int` >= 1"),
        ({"workers": "many"}, {}, "--workers / TETHER_DEMO_WORKERS"),
        ({}, {"TETHER_DEMO_WORKERS": "99"}, "got '99' from TETHER_DEMO_WORKERS"),
        ({"log_level": "loud"}, {}, "--log-level / TETHER_LOG_LEVEL"),
        ({"admin_addr": "localhost"}, {}, "--admin-addr / TETHER_ADMIN_ADDR: expected host:port"),
        ({"admin_addr": "1.2.3.4:99999"}, {}, "port must be 0..65535"),
        ({"nats_url": "http://x"}, {}, "--nats-url / TETHER_NATS_URL"),
        ({"strict": "maybe"}, {}, "--strict / TETHER_DEMO_STRICT: expected true or false"),
        ({}, {"TETHER_DEMO_WORKRES": "2"}, "unknown environment variable TETHER_DEMO_WORKRES"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, str], environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from(DemoConfig, "demo", flags, environ)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_other_services_variables_are_not_ours() -> None:
    config = config_from(DemoConfig, "demo", {}, {"TETHER_IDENTITY_ANYTHING": "x", "HOME": "/root"})
    assert config.workers == 4


def test_kubernetes_service_links_of_a_service_named_like_us_are_not_options() -> None:
    """A Service ``tether-demo-db`` in the pod's namespace makes Kubernetes set these (enableServiceLinks)."""
    links = {
        "TETHER_DEMO_DB_SERVICE_HOST": "10.96.0.7",
        "TETHER_DEMO_DB_SERVICE_PORT": "5432",
        "TETHER_DEMO_DB_SERVICE_PORT_SQL": "5432",
        "TETHER_DEMO_DB_PORT": "tcp://10.96.0.7:5432",
        "TETHER_DEMO_DB_PORT_5432_TCP": "tcp://10.96.0.7:5432",
        "TETHER_DEMO_DB_PORT_5432_TCP_PROTO": "tcp",
        "TETHER_DEMO_DB_PORT_5432_TCP_PORT": "5432",
        "TETHER_DEMO_DB_PORT_5432_TCP_ADDR": "10.96.0.7",
        "TETHER_DEMO_V6_PORT": "tcp://[fd00::7]:80",
    }
    assert config_from(DemoConfig, "demo", {}, links).workers == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TETHER_DEMO_GRPC_PORT", "8086x"),
        ("TETHER_DEMO_DB_SERVICE_HOST", "db.example"),
        ("TETHER_DEMO_X", "1"),
    ],
)
def test_only_the_exact_shapes_of_service_links_are_ignored(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown environment variable {name}"):
        config_from(DemoConfig, "demo", {}, {name: value})


def test_option_names() -> None:
    specs = {s.field: s for s in option_specs(DemoConfig, "demo")}
    assert specs["nats_url"].env == "TETHER_NATS_URL" and specs["nats_url"].flag == "--nats-url"
    assert specs["grpc_addr"].env == "TETHER_DEMO_GRPC_ADDR" and specs["grpc_addr"].flag == "--grpc-addr"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:4140", ("::1", 4140)), ("svc.ns:8086", ("svc.ns", 8086))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "host", "::1:80", "host:-1", "host:http"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_unknown_flag_exits_non_zero_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether.telemetry", "--admin-addr", "nowhere"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--admin-addr" in result.stderr
