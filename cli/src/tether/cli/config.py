"""The ``tether`` client commands' configuration: flags and environment parsed into frozen structs.

``--api-addr`` / ``TETHER_API_ADDR`` names the public API; without either, the public-api of the local mesh
running in ``--state-dir`` / ``TETHER_MESH_STATE_DIR`` (``.tether``), else ``127.0.0.1:8085``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tether.cli.localmesh.config import HOST, PUBLIC_API, Paths
from tether.cli.localmesh.state import mesh_running, read_state
from tether.shared.config import parse_hostport
from tether.shared.errors import ConfigError

DEFAULT_API_ADDR = "127.0.0.1:8085"
DEFAULT_STATE_DIR = ".tether"
WINDOWS = {"10s": 10, "1m": 60, "10m": 600, "1h": 3600}
# Linkerd's resource types and their short names.
KINDS = {
    "deployment": "deployment",
    "deploy": "deployment",
    "deployments": "deployment",
    "statefulset": "statefulset",
    "sts": "statefulset",
    "statefulsets": "statefulset",
    "daemonset": "daemonset",
    "ds": "daemonset",
    "daemonsets": "daemonset",
    "job": "job",
    "jobs": "job",
    "pod": "pod",
    "po": "pod",
    "pods": "pod",
    "namespace": "namespace",
    "ns": "namespace",
    "namespaces": "namespace",
    "service": "service",
    "svc": "service",
    "services": "service",
    "authority": "authority",
    "au": "authority",
    "authorities": "authority",
}
WORKLOAD_KINDS = ("deployment", "statefulset", "daemonset", "job", "pod")
Output = Literal["text", "json", "wide"]
Label = Annotated[str, Meta(max_length=63, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")]


class ApiConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where and how to reach the public API."""

    api_addr: str
    # How it was chosen, for the error when it cannot be reached: a flag, the environment, the local mesh...
    api_addr_source: str
    timeout: Annotated[float, Meta(gt=0, le=3600)] = 5.0
    output: Output = "text"

    def __post_init__(self) -> None:
        try:
            parse_hostport(self.api_addr)
        except ValueError as exc:
            raise ValueError(f"api_addr: {exc}") from None


class ResourceArg(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Label = ""
    kind: str
    name: str = ""


class StatConfig(msgspec.Struct, frozen=True, kw_only=True):
    selector: ResourceArg
    all_namespaces: bool = False
    window: Literal["10s", "1m", "10m", "1h"] = "1m"
    to: ResourceArg | None = None
    source: ResourceArg | None = None


class TapConfig(msgspec.Struct, frozen=True, kw_only=True):
    target: ResourceArg
    method: Annotated[str, Meta(max_length=32)] = ""
    path: Annotated[str, Meta(max_length=1024)] = ""
    authority: Annotated[str, Meta(max_length=512)] = ""
    max_rps: Annotated[float, Meta(gt=0, le=10000)] = 100.0
    max_requests: Annotated[int, Meta(ge=0)] = 0


def local_mesh_api(state_dir: str) -> str | None:
    """The public-api address of the local mesh running in ``state_dir``, if one runs."""
    paths = Paths(state_dir)
    try:
        if not mesh_running(paths):
            return None
    except OSError:
        return None
    state = read_state(paths)
    if state is None:
        return None
    for component in state.components:
        if component.name == PUBLIC_API:
            return f"{HOST}:{component.port}"
    return None


def api_config(flags: Mapping[str, Any], environ: Mapping[str, str]) -> ApiConfig:
    """Flags < environment < local mesh < default, validated. Raises ConfigError naming the option."""
    if flags.get("api_addr"):
        addr, source = str(flags["api_addr"]), "--api-addr"
    elif environ.get("TETHER_API_ADDR"):
        addr, source = environ["TETHER_API_ADDR"], "TETHER_API_ADDR"
    else:
        state_dir = str(flags.get("state_dir") or environ.get("TETHER_MESH_STATE_DIR") or DEFAULT_STATE_DIR)
        local = local_mesh_api(state_dir)
        if local:
            addr, source = local, f"the local mesh in {Paths(state_dir).root}"
        else:
            addr, source = DEFAULT_API_ADDR, "the default"
    values = {
        "api_addr": addr,
        "api_addr_source": source,
        "timeout": flags.get("timeout", 5.0),
        "output": flags.get("output") or "text",
    }
    try:
        return msgspec.convert(values, type=ApiConfig)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("api_addr:"):
            raise ConfigError(f"{source}: {message.removeprefix('api_addr: ')}") from None
        raise ConfigError(message) from None


def parse_resource(
    text: str, what: str, *, name_required: bool = False, kinds: tuple[str, ...] = ()
) -> ResourceArg:
    """``<type>[/<name>]`` with Linkerd's type names. Raises ConfigError naming ``what``."""
    kind_text, _, name = text.partition("/")
    kind = KINDS.get(kind_text.lower())
    allowed = kinds or tuple(dict.fromkeys(KINDS.values()))
    if kind is None or kind not in allowed:
        raise ConfigError(f"{what}: unknown resource type {kind_text!r}; one of {', '.join(allowed)}")
    if name_required and not name:
        raise ConfigError(f"{what}: expected {kind}/<name>, got {text!r}")
    if "/" in name or (kind != "authority" and len(name) > 253):
        raise ConfigError(f"{what}: expected <type>[/<name>], got {text!r}")
    return ResourceArg(kind=kind, name=name)


def validated(cls: type[msgspec.Struct], values: Mapping[str, Any]) -> Any:
    """``values`` as a ``cls``, or ConfigError with msgspec's message (which names the field)."""
    try:
        return msgspec.convert(values, type=cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None
