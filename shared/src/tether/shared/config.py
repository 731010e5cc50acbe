"""Configuration: parsed once at the entry point into a frozen, validated msgspec Struct.

Every option of a service is a field of its config Struct. The same field is reachable as a CLI flag
(``--nats-url``) and as an environment variable (``TETHER_NATS_URL`` for the common options,
``TETHER_<SERVICE>_<OPTION>`` for a service's own). Flags win over the environment, the environment over
defaults. Unknown flags and unknown ``TETHER_<SERVICE>_*`` variables are rejected, and every error names the
option and the value it expected.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import types
import typing
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NoReturn, TypeVar, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from tether.shared.errors import ConfigError
from tether.shared.failure import exit_with
from tether.shared.identity_names import InvalidIdentityName, WorkloadIdentity, parse_identity
from tether.shared.nats_settings import NatsSettings, inbox_prefix

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and validate both halves."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets, as in [::1]:8080; got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0..65535, got {port_text!r} in {value!r}")
    return host, int(port_text)


def check_addr(name: str, value: str) -> None:
    """Validate a ``host:port`` option in a ``__post_init__``; the error names the option."""
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


class LoggingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Options of every Tether command: how it logs."""

    log_format: Annotated[
        LogFormat, Meta(description="log format: json, console, or auto (console on a tty)")
    ] = "auto"
    log_level: Annotated[LogLevel, Meta(description="minimum log level")] = "info"


AdminAddr = Annotated[str, Meta(description="admin HTTP listener (/live, /ready, /metrics), host:port")]


class ProcessConfig(LoggingConfig, frozen=True, kw_only=True):
    """Options of every long-running Tether process (control-plane services and the proxy).

    Each component overrides ``admin_addr`` with its own default port (docs/ARCHITECTURE.md lists them),
    so that all of them run side by side on one host.
    """

    admin_addr: AdminAddr
    shutdown_grace: Annotated[
        float, Meta(ge=0.0, le=300.0, description="seconds to drain on SIGTERM before exiting")
    ] = 1.5

    def __post_init__(self) -> None:
        check_addr("admin_addr", self.admin_addr)


def _secret(description: str) -> Any:
    """A secret: read from the environment only, never a flag, so that it never shows in the process list."""
    return Meta(description=description, extra={"env_only": True})


class CommonConfig(ProcessConfig, frozen=True, kw_only=True):
    """Options every control-plane service takes, under the same names: the process options and NATS."""

    nats_url: Annotated[str, Meta(description="NATS server URL(s), comma separated")] = (
        "nats://127.0.0.1:4222"
    )
    nats_connect_timeout: Annotated[
        float,
        Meta(ge=0.0, le=3600.0, description="seconds to wait for the first NATS connection (0: forever)"),
    ] = 60.0
    nats_creds: Annotated[str, Meta(description="NATS credentials file (.creds: user JWT and nkey seed)")] = (
        ""
    )
    nats_nkey: Annotated[str, Meta(description="file holding this component's NATS nkey seed")] = ""
    nats_user: Annotated[str, Meta(description="NATS user name (its password in TETHER_NATS_PASSWORD)")] = ""
    nats_password: Annotated[str, _secret("password of --nats-user")] = ""
    nats_token: Annotated[str, _secret("NATS authentication token")] = ""
    nats_tls_ca: Annotated[
        str, Meta(description="PEM CA bundle that signs the NATS server's certificate")
    ] = ""
    nats_inbox_prefix: Annotated[
        str, Meta(description="inbox prefix of this NATS user's replies (empty: _INBOX.<component>)")
    ] = ""
    nats_tls_cert: Annotated[str, Meta(description="PEM client certificate for NATS (mutual TLS)")] = ""
    nats_tls_key: Annotated[str, Meta(description="PEM private key of --nats-tls-cert")] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for url in self.nats_servers:
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"nats_url: expected nats://host:port, got {url!r}")
            if "@" in urllib.parse.urlsplit(url).netloc:
                raise ValueError(
                    "nats_url: credentials in the URL end up in the process list and in logs; "
                    "put them in a file and use --nats-creds (or --nats-user with TETHER_NATS_PASSWORD)"
                )
        methods = [
            name
            for name, value in (
                ("nats_creds", self.nats_creds),
                ("nats_nkey", self.nats_nkey),
                ("nats_user", self.nats_user),
                ("nats_token", self.nats_token),
            )
            if value
        ]
        if len(methods) > 1:
            raise ValueError(f"{methods[1]}: choose one NATS authentication, not {' and '.join(methods)}")
        if self.nats_password and not self.nats_user:
            raise ValueError("nats_user: TETHER_NATS_PASSWORD is set but --nats-user is not")
        if self.nats_inbox_prefix and not all(
            token and token.replace("-", "").replace("_", "").isalnum()
            for token in self.nats_inbox_prefix.split(".")
        ):
            raise ValueError("nats_inbox_prefix: expected dot-separated tokens of letters, digits, - and _")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ValueError("nats_tls_cert: --nats-tls-cert and --nats-tls-key go together")

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def nats_settings(self, user: str) -> NatsSettings:
        """How this process connects to NATS, as NATS user ``user`` (its own inbox prefix)."""
        return NatsSettings(
            servers=tuple(self.nats_servers),
            connect_timeout=self.nats_connect_timeout or None,
            creds_file=self.nats_creds,
            nkey_seed_file=self.nats_nkey,
            user=self.nats_user,
            password=self.nats_password,
            token=self.nats_token,
            tls_ca_file=self.nats_tls_ca,
            tls_cert_file=self.nats_tls_cert,
            tls_key_file=self.nats_tls_key,
            inbox_prefix=self.nats_inbox_prefix or inbox_prefix(user),
        )


class KubeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a component reaches the Kubernetes API: a group of options (a component's field ``kube``).

    The options keep the names every component has always given them (``--kube-api-url``, ``--kubeconfig``),
    scoped per component (``TETHER_DESTINATION_KUBE_API_URL``), since two components on one host may well
    talk to different clusters. :meth:`tether.shared.kube.KubeSettings.from_config` reads them.
    """

    api_url: Annotated[
        str,
        Meta(
            description="Kubernetes API server URL (empty: in-cluster config, else KUBECONFIG/~/.kube/config)"
        ),
    ] = ""
    kubeconfig: Annotated[
        str,
        Meta(
            description="kubeconfig file (empty: KUBECONFIG, else ~/.kube/config); outside a cluster",
            extra={"option": "kubeconfig"},  # not --kube-kubeconfig
        ),
    ] = ""
    context: Annotated[str, Meta(description="kubeconfig context (empty: its current context)")] = ""
    connect_timeout: Annotated[
        float,
        Meta(ge=0.0, le=3600.0, description="seconds to wait for the Kubernetes API at start (0: forever)"),
    ] = 60.0

    def __post_init__(self) -> None:
        if self.api_url and not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url: expected http(s)://host[:port], got {self.api_url!r}")


class KubeClientConfig(CommonConfig, frozen=True, kw_only=True):
    """The options of every control-plane service that talks to the Kubernetes API: NATS, and the API's."""

    kube: KubeOptions = msgspec.field(default_factory=KubeOptions)


class IdentityClientConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a workload gets its mesh certificate from the identity service: the ``--identity-*`` options."""

    disabled: Annotated[
        bool, Meta(description="run without a mesh identity: no TLS with certificates from identity")
    ] = False
    name: Annotated[
        str, Meta(description="this workload's identity, <sa>.<ns>.serviceaccount.identity.<trust-domain>")
    ] = ""
    addr: Annotated[str, Meta(description="identity service (gRPC over TLS), host:port")] = (
        "tether-identity.tether.svc.cluster.local:8080"
    )
    server_name: Annotated[str, Meta(description="the identity the identity service must present")] = (
        "identity.tether.serviceaccount.identity.cluster.local"
    )
    trust_anchors: Annotated[str, Meta(description="PEM trust anchors of the mesh")] = (
        "/var/run/tether/identity/ca.crt"
    )
    token_file: Annotated[
        str, Meta(description="token proving this workload's identity (a projected ServiceAccount token)")
    ] = "/var/run/secrets/tether.io/serviceaccount/token"

    def __post_init__(self) -> None:
        if self.disabled:
            return
        check_addr("addr", self.addr)
        for field_name in ("name", "server_name"):
            value = getattr(self, field_name)
            if not value:
                continue
            try:
                parse_identity(value)
            except InvalidIdentityName as exc:
                raise ValueError(f"{field_name}: {exc}") from None

    def required(self, field: str = "identity") -> None:
        """Raise (as a component's ``__post_init__`` does) when identity is on but has no name."""
        if not self.disabled and not self.name:
            raise ValueError(f"{field}_name: required (the injector sets it), unless --{field}-disabled")

    def workload_identity(self) -> WorkloadIdentity:
        return parse_identity(self.name)


COMMON_FIELDS = frozenset(CommonConfig.__struct_fields__)

ConfigT = TypeVar("ConfigT", bound=LoggingConfig)


class OptionSpec(msgspec.Struct, frozen=True):
    field: str
    flag: str
    env: str
    default: Any
    help: str
    kind: Any
    # Secrets come from the environment only: a flag would show them in the process list.
    env_only: bool = False
    # Where the value goes: (field,) or, for an option of a group (a nested Struct), (group, field).
    path: tuple[str, ...] = ()
    # A group member's option name when it is not <group>_<field> (Meta extra "option").
    grouped_as: str = ""


def _env_prefix(service: str) -> str:
    return "TETHER_" + service.upper().replace("-", "_") + "_"


def _is_group(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def option_specs(cls: type[msgspec.Struct], service: str) -> list[OptionSpec]:
    """Every option of ``cls``: its flag, environment variable, default and help text.

    A field whose type is itself a Struct is a group of options, flattened with its name as prefix:
    field ``identity: IdentityClientConfig`` gives ``--identity-addr`` / ``TETHER_<SERVICE>_IDENTITY_ADDR``
    (a member's Meta extra ``option`` names it otherwise: ``kube.kubeconfig`` is ``--kubeconfig``).
    """
    hints = get_type_hints(cls, include_extras=True)
    defaults = dict(zip(cls.__struct_fields__, _struct_defaults(cls), strict=True))
    specs = []
    for name in cls.__struct_fields__:
        hint = hints[name]
        description = ""
        kind = hint
        env_only = False
        grouped_as = ""
        if get_origin(hint) is Annotated:
            kind, *extras = get_args(hint)
            metas = [m for m in extras if isinstance(m, Meta)]
            description = " ".join(m.description for m in metas if m.description)
            env_only = any((m.extra or {}).get("env_only") for m in metas)
            grouped_as = next((str(m.extra["option"]) for m in metas if m.extra and "option" in m.extra), "")
        if _is_group(kind):
            group_default = defaults[name]
            for inner in option_specs(kind, service):
                flat = inner.grouped_as or f"{name}_{inner.field}"
                default = getattr(group_default, inner.field, inner.default)
                specs.append(
                    msgspec.structs.replace(
                        inner,
                        field=flat,
                        flag="--" + flat.replace("_", "-"),
                        env=_env_prefix(service) + flat.upper(),
                        default=default,
                        path=(name, inner.field),
                    )
                )
            continue
        env = ("TETHER_" if name in COMMON_FIELDS else _env_prefix(service)) + name.upper()
        specs.append(
            OptionSpec(
                field=name,
                flag="--" + name.replace("_", "-"),
                env=env,
                default=defaults[name],
                help=description,
                kind=kind,
                env_only=env_only,
                path=(name,),
                grouped_as=grouped_as,
            )
        )
    return specs


def _struct_defaults(cls: type[msgspec.Struct]) -> list[Any]:
    fields = cls.__struct_fields__
    raw = cls.__struct_defaults__
    padded = [msgspec.NODEFAULT] * (len(fields) - len(raw)) + list(raw)
    return [value.factory() if isinstance(value, msgspec._core.Factory) else value for value in padded]


def _is_sequence(kind: Any) -> bool:
    return get_origin(kind) in (tuple, list)


def _is_bool(kind: Any) -> bool:
    return kind is bool


def _describe(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(kind))
    if _is_sequence(kind):
        return "a comma-separated list"
    return getattr(kind, "__name__", str(kind))


def _coerce(spec: OptionSpec, raw: str) -> Any:
    if _is_sequence(spec.kind):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if _is_bool(spec.kind):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{spec.flag} / {spec.env}: expected true or false, got {raw!r}")
    return raw


class TetherArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors in the one-line form of every Tether command (see tether.shared.failure).

    ``command`` is what the error line starts with (``tether-identity`` for ``tether-identity serve``).
    """

    def __init__(self, *args: Any, command: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command = command or self.prog.split()[0]

    def error(self, message: str) -> NoReturn:
        exit_with(self.command, ConfigError(message), help_command=self.prog)


def build_parser(
    cls: type[LoggingConfig], service: str, prog: str, description: str = ""
) -> TetherArgumentParser:
    parser = TetherArgumentParser(prog=prog, description=description)
    add_options(parser, cls, service)
    return parser


class _RefuseSecretFlag(argparse.Action):
    """A secret given as a flag: refused, without echoing it, pointing at its environment variable."""

    def __init__(self, *args: Any, env: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = env

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is not accepted on the command line, where every user of the host "
            f"can read it; set {self.env} instead"
        )


def add_options(parser: argparse.ArgumentParser, cls: type[msgspec.Struct], service: str) -> None:
    secrets = []
    for spec in option_specs(cls, service):
        default = spec.default
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        if default is msgspec.NODEFAULT:
            shown = "required"
        if spec.env_only:
            secrets.append(f"{spec.env}: {spec.help}")
            parser.add_argument(
                spec.flag,
                dest=f"_refused_{spec.field}",
                action=_RefuseSecretFlag,
                env=spec.env,
                help=argparse.SUPPRESS,
            )
            continue
        help_text = f"{spec.help} [env {spec.env}] (default: {shown}; {_describe(spec.kind)})"
        if _is_bool(spec.kind):
            # A switch given alone means true (--identity-disabled); "true"/"false" after it still work.
            parser.add_argument(
                spec.flag, dest=spec.field, default=None, nargs="?", const="true", metavar="true|false",
                help=help_text,
            )  # fmt: skip
            continue
        parser.add_argument(
            spec.flag, dest=spec.field, default=None, metavar=spec.field.upper(), help=help_text
        )
    if secrets:
        parser.epilog = "secrets, from the environment only: " + "; ".join(secrets)


_SERVICE_LINK_NAMES = (
    re.compile(r"[A-Z0-9_]+_SERVICE_HOST"),
    re.compile(r"[A-Z0-9_]+_SERVICE_PORT(_[A-Z0-9_]+)?"),
    re.compile(r"[A-Z0-9_]+_PORT"),
    re.compile(r"[A-Z0-9_]+_PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?"),
)
_SERVICE_LINK_VALUE = re.compile(r"((tcp|udp|sctp)://)?[0-9A-Fa-f.:\[\]]+(:[0-9]+)?|tcp|udp|sctp")


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is one of the variables Kubernetes injects for every Service of the pod's
    namespace (``enableServiceLinks``): a Service named ``tether-proxy-x`` gives an injected proxy
    ``TETHER_PROXY_X_SERVICE_HOST=10.96.0.7``, which must not stop it as an unknown option. Only the exact
    shapes Kubernetes writes (names and values) are ignored, so a mistyped option is still refused."""
    return any(p.fullmatch(name) for p in _SERVICE_LINK_NAMES) and bool(_SERVICE_LINK_VALUE.fullmatch(value))


def config_from(
    cls: type[ConfigT],
    service: str,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
) -> ConfigT:
    """Merge defaults < environment < flags and validate into ``cls``. Raises ConfigError."""
    specs = {spec.field: spec for spec in option_specs(cls, service)}
    known_env = {spec.env for spec in specs.values()}
    prefix = _env_prefix(service)
    unknown = sorted(
        k
        for k, v in environ.items()
        if k.startswith(prefix) and k not in known_env and not is_service_link(k, v)
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable {unknown[0]}: {service} options are "
            + ", ".join(sorted(s.env for s in specs.values() if s.env.startswith(prefix)))
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in specs.items():
        raw = None if spec.env_only else flags.get(name)
        source = spec.flag
        if raw is None and spec.env in environ:
            raw, source = environ[spec.env], spec.env
        if raw is not None:
            values[name] = _coerce(spec, raw)
            sources[name] = source
    try:
        return msgspec.convert(_nest(values, specs), type=cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, specs, sources, values)) from None


def _nest(values: Mapping[str, Any], specs: Mapping[str, OptionSpec]) -> dict[str, Any]:
    """Flat option values into the Struct's shape; a group starts from its component-specific default."""
    nested: dict[str, Any] = {}
    for name, spec in specs.items():
        if len(spec.path) == 2:
            group = nested.setdefault(spec.path[0], {})
            group[spec.path[1]] = values.get(name, spec.default)
        elif name in values:
            nested[name] = values[name]
    return nested


def _explain(
    exc: msgspec.ValidationError,
    specs: Mapping[str, OptionSpec],
    sources: Mapping[str, str],
    values: Mapping[str, Any],
) -> str:
    message = str(exc)
    field = None
    expected = True
    if "- at `$." in message:
        path = tuple(message.rsplit("- at `$.", 1)[1].rstrip("`").split("[")[0].split("."))
        by_path = {spec.path: name for name, spec in specs.items()}
        field = by_path.get(path, "_".join(path))
        message = message.rsplit(" - at ", 1)[0]
        inner = message.split(": ", 1)[0] if ": " in message else ""
        if field not in specs and (*path, inner) in by_path:
            # A group's own check (its __post_init__) names its field, as top-level checks do.
            field, message = by_path[(*path, inner)], message.split(": ", 1)[1]
            expected = False
    elif ": " in message and message.split(": ", 1)[0] in specs:
        field, message = message.split(": ", 1)
        expected = False  # a __post_init__ check already says what it expected
    elif message.startswith("Object missing required field `"):
        field = message.split("`")[1]
    if field is None or field not in specs:
        return f"invalid configuration: {message}"
    spec = specs[field]
    shown = "<secret>" if spec.env_only else repr(_redact_userinfo(values.get(field)))
    given = f" (got {shown} from {sources[field]})" if field in values else ""
    hint = f"; expected {_describe(spec.kind)}" if expected else ""
    name = spec.env if spec.env_only else f"{spec.flag} / {spec.env}"
    return f"{name}: {message}{hint}{given}"


def _redact_userinfo(value: Any) -> Any:
    """``nats://user:secret@host`` as ``nats://<redacted>@host``: an error line must not echo a secret."""
    if not isinstance(value, str) or "@" not in value:
        return value
    return ",".join(
        f"{part.split('//', 1)[0]}//<redacted>@{part.rsplit('@', 1)[1]}"
        if "//" in part and "@" in part
        else part
        for part in value.split(",")
    )


def load_config(
    cls: type[ConfigT],
    service: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
    description: str = "",
) -> ConfigT:
    """Parse ``argv`` and ``environ`` into ``cls``; print a one-line error and exit 2 when invalid."""
    parser = build_parser(cls, service, prog or f"tether-{service}", description)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return config_or_exit(parser, cls, service, vars(namespace), os.environ if environ is None else environ)


def config_or_exit(
    parser: argparse.ArgumentParser,
    cls: type[ConfigT],
    service: str,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> ConfigT:
    """The validated config, or the one-line error and exit 2."""
    flags = {name: value for name, value in flags.items() if not name.startswith("_refused_")}
    try:
        return config_from(cls, service, flags, environ)
    except ConfigError as exc:
        command = parser.command if isinstance(parser, TetherArgumentParser) else parser.prog.split()[0]
        exit_with(command, exc, help_command=parser.prog)
