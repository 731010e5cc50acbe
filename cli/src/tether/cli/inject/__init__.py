"""``tether inject FILE|-``: mesh the workloads of Kubernetes manifests (``--uninject`` reverses it).

The injected YAML goes to stdout, a report on stderr says for each resource what was injected or skipped
and why. Nothing is written to stdout unless the whole input was read and injected: a YAML error or an
invalid annotation is one line naming the document, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import msgspec

from tether.cli.inject import config as cfg
from tether.cli.inject.errors import InvalidInput
from tether.shared.errors import FatalError
from tether.shared.failure import report

COMMANDS = ("inject",)
COMMAND = "tether"
_HELP = (
    "add the Tether proxy to the workloads of Kubernetes YAML (a file or - for stdin): "
    "tether inject app.yaml | kubectl apply -f -"
)
_PARSERS: dict[str, argparse.ArgumentParser] = {}


def register(commands: Any) -> None:
    """Add ``inject`` to the CLI's subcommands (an argparse subparsers action)."""
    parser: argparse.ArgumentParser = commands.add_parser("inject", help=_HELP, description=_HELP)
    _PARSERS["inject"] = parser
    add = parser.add_argument
    add("file", metavar="FILE|-", help="the manifests: a file, or - for stdin")
    add("--uninject", action="store_true", help="remove what tether inject added, giving back the input")
    add(
        "--sidecar-mode",
        choices=["native", "legacy"],
        default="native",
        help="native: the proxy as a native sidecar (an init container with restartPolicy: Always, "
        "Kubernetes 1.29+); legacy: a regular container, for older clusters (default: native)",
    )
    add(
        "--trust-anchors",
        metavar="FILE",
        default="",
        help="the mesh's trust anchors (PEM) (default: the cluster's ConfigMap tether/tether-trust-roots)",
    )
    add(
        "--kubeconfig",
        default="",
        help="kubeconfig for reading the trust anchors (default: KUBECONFIG, ~/.kube/config)",
    )
    add("--context", dest="kube_context", default="", help="kubeconfig context (default: its current one)")
    add("--registry", default=cfg.REGISTRY, help=f"registry of the proxy image (default: {cfg.REGISTRY})")
    add("--proxy-version", default=None, help="proxy image tag (default: this CLI's version)")
    add(
        "--image-pull-policy",
        choices=["Always", "IfNotPresent", "Never"],
        default="IfNotPresent",
        help="the proxy image's pull policy (default: IfNotPresent)",
    )
    for component, default in (
        ("destination", cfg.DESTINATION_ADDR),
        ("identity", cfg.IDENTITY_ADDR),
        ("telemetry", cfg.TELEMETRY_ADDR),
    ):
        add(
            f"--{component}-addr",
            default=default,
            help=f"the {component} service, host:port (default: {default})",
        )
    add("--trust-domain", default="cluster.local", help="the mesh's trust domain (default: cluster.local)")
    add(
        "--inbound-policy",
        choices=["all-unauthenticated", "all-authenticated"],
        default="all-unauthenticated",
        help="the proxies' inbound policy; per workload: annotation config.tether.io/inbound-policy "
        "(default: all-unauthenticated)",
    )
    add(
        "--proxy-log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the proxies' log level (default: info)",
    )
    defaults = cfg.Resources()
    for field in defaults.__struct_fields__:
        flag = "--proxy-" + field.replace("_", "-")
        add(
            flag,
            dest=f"proxy_{field}",
            default=getattr(defaults, field),
            help=f"the proxy container's {field.replace('_', ' ')}; per workload: annotation "
            f"config.tether.io/{flag[2:]} (default: {getattr(defaults, field)})",
        )


def config_from(args: argparse.Namespace) -> cfg.InjectConfig:
    """The validated configuration; InvalidInput naming the flag otherwise."""
    from tether.shared.runtime import package_version

    values = {
        name: getattr(args, name)
        for name in cfg.InjectConfig.__struct_fields__
        if name not in ("resources", "proxy_version")
    }
    values["proxy_version"] = args.proxy_version or package_version("tether-cli")
    values["resources"] = {f: getattr(args, f"proxy_{f}") for f in cfg.Resources.__struct_fields__}
    try:
        return msgspec.convert(values, type=cfg.InjectConfig)
    except msgspec.ValidationError as exc:
        message, _, location = str(exc).partition(" - at `$.")
        location = location.rstrip("`").split(".")[-1]
        field, sep, problem = message.partition(": ")
        if not sep or not (field in cfg.InjectConfig.__struct_fields__ or field.startswith("proxy_")):
            field, problem = location, message  # a type error: msgspec names the field in its location
        flag = "--" + field.replace("_", "-").replace("kube-context", "context")
        raise InvalidInput(f"{flag}: {problem}", "run 'tether inject --help' for every option") from None


def _read(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInput(
            f"{path} cannot be read: {exc.strerror}", "give a readable file, or - for stdin"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text", "give a YAML file") from None


def transform(text: str, source: str, config: cfg.InjectConfig) -> tuple[str, list[str]]:
    """The injected (or uninjected) stream and the report's lines. Raises InjectError."""
    from tether.cli.inject import documents, trust, workload
    from tether.cli.inject.sidecar import TrustAnchors

    loaded: list[TrustAnchors] = []

    def anchors() -> TrustAnchors:
        if not loaded:  # read only when some workload is injected
            loaded.append(trust.load(config))
        return loaded[0]

    def one(obj: Any, where: str) -> tuple[bool, str]:
        if not isinstance(obj, dict) or "kind" not in obj:
            return False, f"{where}: not a Kubernetes object, unchanged"
        if obj.get("kind") not in workload.WORKLOAD_KINDS:
            return False, f"{where}: {_ref(obj)} unchanged"
        try:
            outcome = workload.uninject(obj) if config.uninject else workload.inject(obj, config, anchors)
        except InvalidInput as exc:
            raise InvalidInput(f"{source}: {where}: {exc.cause}", exc.remedy) from None
        line = f"{where}: {outcome.kind.lower()}/{outcome.name} {outcome.action}"
        details = "; ".join(([outcome.reason] if outcome.reason else []) + outcome.notes)
        if details:
            line += f": {details}" if outcome.action == "skipped" else f" ({details})"
        return outcome.changed, line

    stream = documents.split(text)
    lines: list[str] = []
    for document in stream:
        documents.parse(document, source)
    for document in stream:
        if document.empty or document.value is None:
            continue
        where = f"document {document.number}"
        value = document.value
        items = value.get("items") if isinstance(value, dict) else None
        if (
            isinstance(value, dict)
            and str(value.get("kind", "")).endswith("List")
            and isinstance(items, list)
        ):
            for index, item in enumerate(items, 1):
                changed, line = one(item, f"{where} item {index}")
                document.changed |= changed
                lines.append(line)
            continue
        document.changed, line = one(value, where)
        lines.append(line)
    return documents.join(stream), lines


def _ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return f"{str(obj.get('kind')).lower()}/{meta.get('name') or '<unnamed>'}"


def run(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        config = config_from(args)
        text = _read(args.file, stdin or sys.stdin)
        result, lines = transform(text, "stdin" if args.file == "-" else args.file, config)
    except FatalError as exc:
        return report(COMMAND, exc, stream=err)
    out.write(result)
    out.flush()
    err.write("".join(line + "\n" for line in lines))
    err.flush()
    return 0
