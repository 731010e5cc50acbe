"""The inbound policy's probe rules on their own: which ports take plaintext, and where plaintext may only
probe."""

from __future__ import annotations

import pytest

from tether.proxy.config import ProxyConfig
from tether.proxy.inbound import InboundPolicy
from tether.shared.config import load_config


def test_probe_paths_limit_plaintext_only_where_the_policy_refuses_it() -> None:
    strict = InboundPolicy(
        require_identity=True, probe_ports=(9000,), probe_paths=((8080, b"/healthz"), (8080, b"/ready"))
    )
    assert strict.allows_plaintext(8080) and strict.allows_plaintext(9000)
    assert not strict.allows_plaintext(8081)
    assert strict.probe_only_paths(8080) == frozenset({b"/healthz", b"/ready"})
    assert strict.probe_only_paths(9000) is None  # a TCP-connect probe: the port takes plaintext
    lenient = InboundPolicy(require_identity=False, probe_paths=((8080, b"/healthz"),))
    assert lenient.allows_plaintext(8080) and lenient.probe_only_paths(8080) is None
    per_port = InboundPolicy(require_identity=False, ports=(8080,), probe_paths=((8080, b"/healthz"),))
    assert (
        per_port.probe_only_paths(8080) == frozenset({b"/healthz"})
        and per_port.probe_only_paths(8081) is None
    )


def _parse(*flags: str) -> ProxyConfig:
    return load_config(ProxyConfig, "proxy", ["--identity-disabled", "true", *flags], environ={})


def test_probe_paths_option_is_port_colon_path() -> None:
    config = _parse("--probe-paths", "8080:/healthz,9102:/")
    assert config.probe_path_pairs() == [(8080, b"/healthz"), (9102, b"/")]
    for bad in ("99999:/x", "8080:healthz", "/healthz"):
        with pytest.raises(SystemExit):
            _parse("--probe-paths", bad)
