"""What a rendered container would see when it starts: its command line, its environment (as the kubelet
builds it: ConfigMap and Secret references resolved, downward-API values as placeholders, service links
when enabled) and its mounted files; and its component's own configuration parser run on them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from tether.shared.config import load_config, option_specs

from .manifests import Container, Manifests, pod_template

#: Control-plane commands: console script -> (its entry point, configuration Struct, service name).
#: Each entry point is `service_main(ConfigType, service, ...)`, which parses with `load_config`; that parse
#: reads no file and opens no connection (files are checked by prepare() at start, which these tests
#: replace by checking each path against the pod's volumes).
COMMANDS = {
    "tether-destination": ("tether.destination.__main__:main", "tether.destination.config:DestinationConfig"),
    "tether-identity": ("tether.identity.__main__:main", "tether.identity.config:IdentityConfig"),
    # `tether-identity kube-bootstrap` (the Job): tether.identity.kube_bootstrap.cli.main, load_config too.
    "tether-identity kube-bootstrap": (
        "tether.identity.__main__:main",
        "tether.identity.kube_bootstrap.config:KubeBootstrapConfig",
    ),
    "tether-telemetry": ("tether.telemetry.__main__:main", "tether.telemetry.config:TelemetryConfig"),
    "tether-public-api": ("tether.public_api.__main__:main", "tether.public_api.config:PublicApiConfig"),
}

#: What the bootstrap Job creates (K8S_CONTRACT.md): object -> its keys. Pods may mount only these keys.
CONTRACT_OBJECTS: dict[tuple[str, str], frozenset[str]] = {
    ("Secret", "tether-identity-issuer"): frozenset({"tls.crt", "tls.key", "ca.crt"}),
    ("ConfigMap", "tether-trust-roots"): frozenset({"ca-bundle.crt"}),
    ("Secret", "tether-nats-server"): frozenset({"auth.conf", "tls.crt", "tls.key", "ca.crt"}),
    **{
        ("Secret", f"tether-nats-{role}"): frozenset({"nkey.seed", "ca.crt"})
        for role in ("destination", "identity", "telemetry", "public-api", "reader")
    },
}
#: A placeholder for what only exists in a cluster (Secret values, downward-API fields).
PLACEHOLDER = "placeholder"
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args (unknown references stay as written)."""
    return VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def _service_links(manifests: Manifests, namespace: str) -> dict[str, str]:
    """The docker-links variables the kubelet adds for every Service of the namespace (enableServiceLinks)."""
    env = {}
    for service in manifests.of_kind("Service"):
        if service["metadata"].get("namespace") != namespace or service["spec"].get("clusterIP") == "None":
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        ports = service["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = "10.96.0.10"
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{prefix}_PORT"] = f"tcp://10.96.0.10:{ports[0]['port']}"
        for port in ports:
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            base = f"{prefix}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
            env.update({base: f"tcp://10.96.0.10:{port['port']}", f"{base}_PORT": str(port["port"])})
    return env


def _field(container: Container, path: str) -> str:
    meta = pod_template(container.workload)["metadata"]
    known = {"metadata.namespace": container.namespace, "spec.serviceAccountName": _sa(container)}
    if path == "metadata.name":
        return f"{container.workload['metadata']['name']}-0"  # a StatefulSet's first pod, say
    if path.startswith("metadata.labels['"):
        return str(meta.get("labels", {}).get(path.split("'")[1], ""))
    return known.get(path, PLACEHOLDER)


def _sa(container: Container) -> str:
    return str(container.pod.get("serviceAccountName", "default"))


def environment(manifests: Manifests, container: Container) -> dict[str, str]:
    """The container's environment at start, as the kubelet builds it; AssertionError on a dangling ref."""
    env = {
        "HOSTNAME": f"{container.workload['metadata']['name']}-0",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    if container.pod.get("enableServiceLinks", True):
        env.update(_service_links(manifests, container.namespace))
    for source in container.spec.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = manifests.get("ConfigMap", source["configMapRef"]["name"], container.namespace)["data"]
            env.update({prefix + k: str(v) for k, v in data.items()})
        else:
            name = source["secretRef"]["name"]
            keys = CONTRACT_OBJECTS.get(("Secret", name))
            assert keys is not None, f"{container.where}: envFrom Secret {name} is not one the Job makes"
            env.update({prefix + key: PLACEHOLDER for key in keys})
    for var in container.spec.get("env") or []:
        env[var["name"]] = _value(manifests, container, var, env)
    return env


def _value(manifests: Manifests, container: Container, var: dict[str, Any], env: dict[str, str]) -> str:
    if "value" in var:
        return _expand(str(var["value"]), env)
    source = var["valueFrom"]
    if "fieldRef" in source:
        return _field(container, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return "1"
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        data = manifests.get("ConfigMap", ref["name"], container.namespace).get("data") or {}
        assert ref["key"] in data, f"{container.where}: ConfigMap {ref['name']} has no key {ref['key']}"
        return str(data[ref["key"]])
    ref = source["secretKeyRef"]
    assert ref["key"] in CONTRACT_OBJECTS.get(("Secret", ref["name"]), ()), (
        f"{container.where}: Secret {ref['name']} key {ref['key']} is not one the Job makes"
    )
    return PLACEHOLDER


def command_line(manifests: Manifests, container: Container) -> list[str]:
    env = environment(manifests, container)
    command = container.spec.get("command")
    assert command, f"{container.where}: the command is set explicitly, not left to the image"
    return [_expand(part, env) for part in [*command, *(container.spec.get("args") or [])]]


def _load(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Parsed:
    service: str
    config: Any  # the component's configuration Struct
    flags: dict[str, str]  # option field -> value given as a flag
    env: dict[str, str]  # the whole environment
    set_fields: frozenset[str]  # the options the manifest sets (flag or TETHER_* variable)


def parse(manifests: Manifests, container: Container) -> Parsed:
    """The container's configuration, parsed by its component's own parser; AssertionError with the
    component's one-line error when the parser refuses it."""
    argv = command_line(manifests, container)
    script, args = argv[0], argv[1:]
    prog = script
    if script == "tether-identity":  # its __main__ dispatches subcommands: `serve`, or the Job's
        assert args[:1] in (["serve"], ["kube-bootstrap"]), f"{container.where}: tether-identity {args[:1]}"
        prog, args = f"{script} {args[0]}", args[1:]
    assert prog in COMMANDS or script in COMMANDS, f"{container.where}: {prog} is no control-plane command"
    target, config_ref = COMMANDS.get(prog) or COMMANDS[script]
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get(script) == target, f"{script} is installed as {scripts.get(script)}, not {target}"
    service = script.removeprefix("tether-")
    config_type = _load(config_ref)
    env = environment(manifests, container)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            config = load_config(config_type, service, args, env, prog=prog)
    except SystemExit:
        raise AssertionError(
            f"{container.where}: {prog} refuses its configuration: {stderr.getvalue()}"
        ) from None
    specs = option_specs(config_type, service)
    by_flag = {spec.flag: spec.field for spec in specs}
    flags = {}
    for index, arg in enumerate(args):
        flag, _, inline = arg.partition("=")
        if flag in by_flag:
            flags[by_flag[flag]] = inline or args[index + 1]
    set_fields = set(flags) | {spec.field for spec in specs if spec.env in env}
    return Parsed(service, config, flags, env, frozenset(set_fields))


def option_values(config: Any) -> dict[str, Any]:
    """Every option of a parsed configuration by its flat name (groups flattened: identity_trust_anchors,
    and kube.kubeconfig as its option names it: kubeconfig)."""
    values: dict[str, Any] = {}
    for spec in option_specs(type(config), "any"):  # the service only scopes environment names
        value = config
        for name in spec.path:
            value = getattr(value, name)
        values[spec.field] = value
    return values


@dataclass(frozen=True)
class MountedFile:
    """Where a file a container opens comes from."""

    path: str
    volume: str
    source: str  # Secret, ConfigMap, ServiceAccountToken, emptyDir, PersistentVolumeClaim
    name: str  # the Secret's or ConfigMap's name, the token's audience, the claim's name
    key: str  # the key of the Secret or ConfigMap ("" for a directory volume)


def _volumes(container: Container) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in container.pod.get("volumes") or []}
    for claim in container.workload["spec"].get("volumeClaimTemplates") or []:
        name = claim["metadata"]["name"]
        volumes[name] = {"name": name, "persistentVolumeClaim": {"claimName": name}}
    return volumes


def _key(items: list[dict[str, Any]] | None, relative: str) -> str | None:
    if items is None:
        return relative if relative and "/" not in relative else None
    return next((item["key"] for item in items if item["path"] == relative), None)


def mounted_file(manifests: Manifests, container: Container, path: str) -> MountedFile:
    """The volume (and object key) behind ``path`` in ``container``; AssertionError when nothing mounted
    holds it, or the key it needs is neither rendered nor one the bootstrap Job makes."""
    mounts = sorted(container.spec.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]), reverse=True)
    for mount in mounts:
        root = mount["mountPath"].rstrip("/")
        if path != root and not path.startswith(root + "/"):
            continue
        relative = path[len(root) + 1 :]
        if mount.get("subPath"):
            relative = mount["subPath"] + (f"/{relative}" if relative else "")
        volume = _volumes(container)[mount["name"]]
        found = _source(manifests, container, volume, relative)
        assert found is not None, f"{container.where}: {path} is not in volume {mount['name']} ({volume})"
        source, name, key = found
        if source in ("Secret", "ConfigMap"):
            rendered = manifests.find(source, name, container.namespace) if source == "ConfigMap" else None
            keys = set((rendered or {}).get("data") or {}) | CONTRACT_OBJECTS.get((source, name), frozenset())
            assert key in keys, (
                f"{container.where}: {path} needs key {key} of {source} {name}, which has {keys}"
            )
        return MountedFile(path, mount["name"], source, name, key)
    raise AssertionError(
        f"{container.where}: {path} is on no mounted volume (the root filesystem is read-only)"
    )


def _source(
    manifests: Manifests, container: Container, volume: dict[str, Any], relative: str
) -> tuple[str, str, str] | None:
    if "secret" in volume:
        key = _key(volume["secret"].get("items"), relative)
        return None if key is None else ("Secret", volume["secret"]["secretName"], key)
    if "configMap" in volume:
        key = _key(volume["configMap"].get("items"), relative)
        return None if key is None else ("ConfigMap", volume["configMap"]["name"], key)
    if "emptyDir" in volume:
        return ("emptyDir", volume["name"], "")
    if "persistentVolumeClaim" in volume:
        return ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], "")
    for projected in volume.get("projected", {}).get("sources", []):
        if "serviceAccountToken" in projected and projected["serviceAccountToken"]["path"] == relative:
            return ("ServiceAccountToken", projected["serviceAccountToken"].get("audience", ""), "token")
        for kind, ref in (("Secret", "secret"), ("ConfigMap", "configMap")):
            if ref in projected:
                key = _key(projected[ref].get("items"), relative)
                if key is not None:
                    return (kind, projected[ref]["name"], key)
    return None
