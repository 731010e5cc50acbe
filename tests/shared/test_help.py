"""Every console script lists every option of its configuration, with its environment variable and default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tether.destination.config import DestinationConfig
from tether.identity.config import IdentityConfig
from tether.proxy.config import ProxyConfig
from tether.proxy.init.config import ProxyInitConfig
from tether.public_api.config import PublicApiConfig
from tether.shared.config import LoggingConfig, option_specs
from tether.telemetry.config import TelemetryConfig

SCRIPTS: dict[str, tuple[list[str], type[LoggingConfig], str]] = {
    "destination": (["tether-destination"], DestinationConfig, "destination"),
    "identity": (["tether-identity", "serve"], IdentityConfig, "identity"),
    "telemetry": (["tether-telemetry"], TelemetryConfig, "telemetry"),
    "public-api": (["tether-public-api"], PublicApiConfig, "public-api"),
    "proxy run": (["tether-proxy", "run"], ProxyConfig, "proxy"),
    "proxy init": (["tether-proxy", "init"], ProxyInitConfig, "proxy-init"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_lists_every_option(name: str) -> None:
    command, config_type, service = SCRIPTS[name]
    script = f"{sys.prefix}/bin/{command[0]}"
    result = subprocess.run([script, *command[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for spec in option_specs(config_type, service):
        assert spec.flag in help_text, f"{spec.flag} missing from {name} --help"
        assert spec.env in help_text, f"{spec.env} missing from {name} --help"
