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
        assert spec.env in help_text, f"{spec.env} missing from {name} --help"
        if spec.env_only:  # a secret: environment only, never a flag anyone could read in the process list
            assert f"{spec.flag} " not in help_text, f"{name} --help offers secret {spec.flag} as a flag"
        else:
            assert spec.flag in help_text, f"{spec.flag} missing from {name} --help"


@pytest.mark.parametrize(
    ("script", "subcommands"),
    [("tether-identity", ["serve", "bootstrap", "mint-token"]), ("tether-proxy", ["run", "init"])],
)
def test_help_of_a_command_with_subcommands_lists_each_with_what_it_does(
    script: str, subcommands: list[str]
) -> None:
    result = subprocess.run(
        [f"{sys.prefix}/bin/{script}", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for subcommand in subcommands:
        described = [line for line in lines if line.strip().startswith(subcommand + " ")]
        assert described and len(described[0].split()) > 3, f"{subcommand} not described in {script} --help"


def test_a_secret_given_as_a_flag_is_refused_without_echoing_it() -> None:
    result = subprocess.run(
        [f"{sys.prefix}/bin/tether-telemetry", "--nats-password", "hunter2-secret"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "hunter2-secret" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tether-telemetry: error: --nats-password is not accepted on the command line")
    assert "TETHER_NATS_PASSWORD" in line
