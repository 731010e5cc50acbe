"""Injecting one Kubernetes object's pod template, or removing what injection added.

Everything added is recognisable by name (containers, volumes, annotations), so uninjecting takes exactly
that away again; a key that injection created is removed once it is empty again, so the round trip gives
the original object back, key order included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.cli.inject import sidecar
from tether.cli.inject.config import (
    CONFIG_PREFIX,
    INJECT_ANNOTATION,
    KNOWN_ANNOTATIONS,
    InjectConfig,
    overrides,
)
from tether.cli.inject.errors import InvalidInput

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# The telemetry service names a workload after the first of these labels (docs/ARCHITECTURE.md).
_WORKLOAD_LABEL = {
    "Deployment": "deployment",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
    "ReplicaSet": "replicaset",
    "CronJob": "cronjob",
}
_PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


@dataclass
class Outcome:
    """What happened to one object, for the report on stderr."""

    kind: str
    name: str
    action: str  # injected, uninjected, skipped, unchanged
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.action in ("injected", "uninjected")


def _mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _insert(
    mapping: dict[str, Any], key: str, value: Any, *, before: str | None = None, first: bool = False
) -> Any:
    """``mapping[key] = value``, placed before ``before`` (if present) or first; the other keys keep their
    order."""
    items = list(mapping.items())
    index = 0 if first else len(items)
    if before is not None:
        index = next((i for i, (k, _) in enumerate(items) if k == before), index)
    items.insert(index, (key, value))
    mapping.clear()
    mapping.update(items)
    return value


def pod_template(obj: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The pod template of a workload (the object itself for a Pod) and the metadata of the objects around
    it, outermost first; None when the object has no pod template where its kind keeps one."""
    kind = obj.get("kind")
    spec = _mapping(obj.get("spec"))
    outer = [m for m in (_mapping(obj.get("metadata")),) if m is not None]
    if kind == "Pod":
        return (obj, []) if spec is not None else None  # type: ignore[return-value]
    if spec is None:
        return None
    if kind == "CronJob":
        job = _mapping(spec.get("jobTemplate"))
        if job is None or _mapping(job.get("spec")) is None:
            return None
        outer += [m for m in (_mapping(job.get("metadata")),) if m is not None]
        spec = job["spec"]
    template = _mapping(spec.get("template"))
    if template is None or _mapping(template.get("spec")) is None:
        return None
    return template, outer


def _containers(pod: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = pod.get(key)
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def is_injected(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("name") in sidecar.CONTAINER_NAMES
        for key in ("initContainers", "containers")
        for c in _containers(pod, key)
    )


def probe_ports(pod: Mapping[str, Any]) -> tuple[int, ...]:
    """The ports the kubelet probes the application on (named ports resolved): the proxy lets plaintext
    through on them whatever the inbound policy."""
    return tuple(sorted({port for _kind, port, _path in _probes(pod)}))


def probe_paths(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """``PORT:/PATH`` of the HTTP probes, for the ports probed by HTTP and TCP-connect probes only: there,
    under ``all-authenticated``, plaintext may only GET or HEAD these paths."""
    probes = list(_probes(pod))
    # A gRPC probe's POST cannot be told from any other call, and a path holding a comma cannot be listed
    # in the proxy's option: such ports stay open to plaintext.
    unlimited = {port for kind, port, path in probes if kind == "grpc" or "," in path}
    http = {f"{port}:{path}" for kind, port, path in probes if kind == "httpGet" and port not in unlimited}
    return tuple(sorted(http, key=lambda entry: (int(entry.partition(":")[0]), entry)))


def _probes(pod: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(handler kind, port, path) of every probe of this pod's application (paths without query)."""
    found: list[tuple[str, int, str]] = []
    containers = _containers(pod, "containers") + [
        c for c in _containers(pod, "initContainers") if c.get("restartPolicy") == "Always"
    ]
    for container in containers:
        named = {
            p.get("name"): p.get("containerPort") for p in container.get("ports") or [] if isinstance(p, dict)
        }
        for probe_key in _PROBES:
            probe = _mapping(container.get(probe_key)) or {}
            for handler_key in ("httpGet", "tcpSocket", "grpc"):
                handler = _mapping(probe.get(handler_key))
                if handler is None or handler.get("host"):
                    continue  # a probe of another host does not reach this pod's proxy
                port = handler.get("port")
                port = named.get(port, port) if isinstance(port, str) else port
                if isinstance(port, str) and port.isdigit():
                    port = int(port)
                if isinstance(port, int) and 1 <= port <= 65535:
                    path = str(handler.get("path") or "/").split("?", 1)[0]
                    found.append((handler_key, port, path if path.startswith("/") else "/" + path))
    return found


def _declared_ports(pod: Mapping[str, Any]) -> list[tuple[int, str]]:
    ports = []
    for key in ("initContainers", "containers"):
        for container in _containers(pod, key):
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    ports.append((port.get("containerPort", 0), str(port.get("protocol", "TCP"))))
    return ports


def _annotations(*metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for meta in metadata:  # outermost first: the pod template's own annotations win
        merged |= _mapping((meta or {}).get("annotations")) or {}
    return merged


def _skip_reason(pod: Mapping[str, Any], spec: Mapping[str, Any], annotations: Mapping[str, Any]) -> str:
    opt = annotations.get(INJECT_ANNOTATION)
    if opt is not None and str(opt) not in ("enabled", "disabled"):
        raise InvalidInput(
            f"annotation {INJECT_ANNOTATION}: {opt!r} is not enabled or disabled",
            "fix or remove the annotation",
        )
    if opt == "disabled":
        return f"{INJECT_ANNOTATION}: disabled"
    if is_injected(spec):
        return "already injected"
    if spec.get("hostNetwork") is True:
        return "hostNetwork: true (the interception rules would apply to the node's network)"
    ports = _declared_ports(spec)
    if ports and all(protocol != "TCP" for _, protocol in ports):
        listed = ", ".join(f"{port}/{protocol}" for port, protocol in ports)
        return f"only non-TCP ports ({listed}): the proxy carries TCP only"
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("name") in sidecar.VOLUME_NAMES:
            return f"a volume is already named {volume['name']}"
    return ""


def inject(obj: dict[str, Any], config: InjectConfig, anchors: Callable[[], sidecar.TrustAnchors]) -> Outcome:
    """Inject ``obj`` in place when it is a workload (the outcome says what happened and why)."""
    try:
        return _inject(obj, config, anchors)
    except InvalidInput as exc:
        raise InvalidInput(f"{str(obj.get('kind')).lower()}/{_name(obj)}: {exc.cause}", exc.remedy) from None


def _inject(
    obj: dict[str, Any], config: InjectConfig, anchors: Callable[[], sidecar.TrustAnchors]
) -> Outcome:
    kind, name = str(obj.get("kind")), _name(obj)
    found = pod_template(obj)
    if found is None:
        return Outcome(kind, name, "skipped", "no pod template (spec.template)")
    template, outer = found
    spec: dict[str, Any] = template["spec"]
    own_meta = _mapping(template.get("metadata"))
    annotations = _annotations(*outer, own_meta)
    reason = _skip_reason(template, spec, annotations)
    if reason:
        return Outcome(kind, name, "skipped", reason)
    settings = overrides(annotations, config)
    outcome = Outcome(kind, name, "injected", f"{config.sidecar_mode} sidecar")
    ports = probe_ports(spec)
    if ports:
        outcome.notes.append(f"probe ports {','.join(map(str, ports))}")
    other = sorted({f"{p}/{proto}" for p, proto in _declared_ports(spec) if proto != "TCP"})
    if other:
        outcome.notes.append(f"{', '.join(other)} bypassing the proxy, which carries TCP only")
    # The interception rules exempt the proxy's UID: a container running as it is never meshed.
    pod_uid = (_mapping(spec.get("securityContext")) or {}).get("runAsUser")
    as_proxy = [
        str(c.get("name"))
        for c in _containers(spec, "initContainers") + _containers(spec, "containers")
        if (_mapping(c.get("securityContext")) or {}).get("runAsUser", pod_uid) == sidecar.PROXY_UID
    ]
    if as_proxy:
        outcome.notes.append(
            f"{', '.join(as_proxy)} run as the proxy's UID {sidecar.PROXY_UID}: their traffic bypasses it"
        )
    used = sorted(k.removeprefix(CONFIG_PREFIX) for k in annotations if k in KNOWN_ANNOTATIONS)
    if used:
        outcome.notes.append(f"overrides {', '.join(used)}")
    outcome.notes += [f"unknown annotation {key} ignored" for key in settings.unknown]
    if config.sidecar_mode == "legacy" and kind in ("Job", "CronJob"):
        outcome.notes.append(
            "legacy sidecar: the Job completes only once its containers end the proxy with "
            f"POST http://127.0.0.1:{sidecar.ADMIN_PORT}/shutdown (accepted from loopback only)"
        )
    label = _WORKLOAD_LABEL.get(kind)
    workload_label = f"{label}={name}" if label and name else ""
    trust = anchors()

    kept_empty = []
    if own_meta is None:
        own_meta = _insert(template, "metadata", {}, first=True)
    elif not own_meta:
        kept_empty.append("metadata")
    pod_annotations = _mapping(own_meta.get("annotations"))
    if pod_annotations is None:
        pod_annotations = _insert(own_meta, "annotations", {})
    elif not pod_annotations:
        kept_empty.append("metadata.annotations")
    proxy = sidecar.proxy_container(config, settings, ports, workload_label, probe_paths(spec))
    init = sidecar.init_container(config, settings)
    init_containers = _list(spec, "initContainers", kept_empty, before="containers")
    init_containers[:0] = [init, proxy] if config.sidecar_mode == "native" else [init]
    if config.sidecar_mode == "legacy":
        # Last, so that kubectl logs and exec keep defaulting to the application's first container.
        _list(spec, "containers", kept_empty).append(proxy)
    _list(spec, "volumes", kept_empty).extend(sidecar.volumes())
    pod_annotations.update(sidecar.pod_annotations(config, trust))
    if kept_empty:
        pod_annotations[sidecar.KEPT_EMPTY_ANNOTATION] = ",".join(kept_empty)
    return outcome


def _list(spec: dict[str, Any], key: str, kept_empty: list[str], *, before: str | None = None) -> list[Any]:
    value = spec.get(key)
    if isinstance(value, list):
        if not value:
            kept_empty.append(f"spec.{key}")
        return value
    created: list[Any] = _insert(spec, key, [], before=before)
    return created


def uninject(obj: dict[str, Any]) -> Outcome:
    """Remove what :func:`inject` added to ``obj``, in place."""
    kind, name = str(obj.get("kind")), _name(obj)
    found = pod_template(obj)
    if found is None or not is_injected(found[0]["spec"]):
        return Outcome(kind, name, "unchanged", "not injected")
    template = found[0]
    spec = template["spec"]
    meta = _mapping(template.get("metadata")) or {}
    pod_annotations = _mapping(meta.get("annotations")) or {}
    kept = set(str(pod_annotations.get(sidecar.KEPT_EMPTY_ANNOTATION, "")).split(","))
    for key in ("initContainers", "containers"):
        if isinstance(spec.get(key), list):
            spec[key] = [
                c for c in spec[key] if not (isinstance(c, dict) and c.get("name") in sidecar.CONTAINER_NAMES)
            ]
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = [
            v for v in spec["volumes"] if not (isinstance(v, dict) and v.get("name") in sidecar.VOLUME_NAMES)
        ]
    for key in sidecar.ANNOTATIONS:
        pod_annotations.pop(key, None)
    for holder, key, path in (
        (spec, "initContainers", "spec.initContainers"),
        (spec, "volumes", "spec.volumes"),
        (meta, "annotations", "metadata.annotations"),
        (template, "metadata", "metadata"),
    ):
        if key in holder and not holder[key] and path not in kept:
            del holder[key]
    return Outcome(kind, name, "uninjected")


def _name(obj: Mapping[str, Any]) -> str:
    meta = _mapping(obj.get("metadata")) or {}
    return str(meta.get("name") or meta.get("generateName") or "<unnamed>")
