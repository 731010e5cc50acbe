"""The rendered nats.conf, read and moved onto loopback: what a pod's files would be, in a directory, so
that a real nats-server runs the manifests' own configuration here, with the Secret the bootstrap Job
makes (tether.identity.kube_bootstrap.objects).

Moving it rewrites only addresses and the mount paths; each rewrite must find what it replaces, so a
change to the manifests that this does not know fails loudly instead of testing something else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def uncommented(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def cluster_block(text: str) -> str | None:
    """The `cluster { ... }` block of a nats.conf, or None."""
    body = uncommented(text)
    match = re.search(r"^cluster\s*\{", body, re.M)
    if match is None:
        return None
    depth, index = 0, match.end() - 1
    for index in range(match.end() - 1, len(body)):
        depth += {"{": 1, "}": -1}.get(body[index], 0)
        if depth == 0:
            break
    return body[match.start() : index + 1]


def routes(text: str) -> list[str]:
    block = cluster_block(text) or ""
    listed = re.search(r"routes:\s*\[(.*?)\]", block, re.S)
    return re.findall(r'"([^"]+)"', listed.group(1)) if listed else []


@dataclass(frozen=True)
class Ports:
    client: int
    monitor: int
    cluster: int = 0


def localize(text: str, root: Path, ports: Ports, route_ports: list[int]) -> str:
    """The pod's nats.conf with its mount paths under ``root`` and its listeners and routes on loopback."""
    # (regular expression, replacement): the paths of the pod's mounts, then its listeners and routes.
    rewrites = [
        (r'"/etc/nats/', f'"{root}/etc/nats/'),
        (r'"/data"', f'"{root}/data"'),
        (r'"/var/run/nats/', f'"{root}/var/run/nats/'),
        (r"(?m)^port: 4222$", f"port: {ports.client}"),
        (r"(?m)^http_port: 8222$", f"http_port: {ports.monitor}"),
    ]
    if route_ports:
        rewrites.append((r"(?m)^  port: 6222$", f"  port: {ports.cluster}"))
        headless = re.escape("tether-nats-headless.tether.svc.cluster.local")
        for n, port in enumerate(route_ports):
            rewrites.append((rf'"tls://tether-nats-{n}\.{headless}:6222"', f'"tls://127.0.0.1:{port}"'))
    for pattern, replacement in rewrites:
        text, count = re.subn(pattern, replacement.replace("\\", "\\\\"), text)
        assert count, f"nats.conf no longer has {pattern!r}: update tests/deploy/nats_config.py"
    return text


def pod_files(root: Path, conf: str, server_secret: Mapping[str, bytes]) -> Path:
    """What the StatefulSet's volumes hold, under ``root`` (Secret tether-nats-server's keys where the pod
    mounts them); returns the nats.conf path."""
    (root / "etc" / "nats" / "auth").mkdir(parents=True)
    (root / "etc" / "nats" / "tls").mkdir()
    (root / "data").mkdir()
    (root / "var" / "run" / "nats").mkdir(parents=True)
    (root / "etc" / "nats" / "auth" / "auth.conf").write_bytes(server_secret["auth.conf"])
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (root / "etc" / "nats" / "tls" / key).write_bytes(server_secret[key])
    path = root / "etc" / "nats" / "nats.conf"
    path.write_text(conf)
    return path
