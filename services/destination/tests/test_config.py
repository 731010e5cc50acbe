"""Options reach the service from flags and TETHER_DESTINATION_* variables, validated once."""

from __future__ import annotations

import pytest

from tether.destination.config import DestinationConfig
from tether.shared.config import config_from
from tether.shared.errors import ConfigError


def test_defaults_environment_and_flags() -> None:
    config = config_from(
        DestinationConfig,
        "destination",
        {"keepalive_interval": "2.5"},
        {
            "TETHER_DESTINATION_SOURCE": "local",
            "TETHER_DESTINATION_LEASE_TTL": "3",
            "TETHER_NATS_URL": "nats://n:4222",
        },
    )
    assert config.grpc_addr == "0.0.0.0:8086"
    assert (config.source, config.lease_ttl, config.keepalive_interval) == ("local", 3.0, 2.5)
    assert config.nats_url == "nats://n:4222"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"TETHER_DESTINATION_SOURCE": "consul"}, "--source"),
        ({"TETHER_DESTINATION_GRPC_ADDR": "nope"}, "--grpc-addr"),
        ({"TETHER_DESTINATION_TRUST_DOMAIN": "Bad_Domain"}, "--trust-domain"),
        ({"TETHER_DESTINATION_LEASE_TTL": "0"}, "--lease-ttl"),
        ({"TETHER_DESTINATION_NO_SUCH_OPTION": "1"}, "TETHER_DESTINATION_NO_SUCH_OPTION"),
    ],
)
def test_invalid_options_are_named(environ: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from(DestinationConfig, "destination", {}, environ)
    assert words in str(caught.value)
