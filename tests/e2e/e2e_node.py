"""One Kubernetes node in network namespaces: a bridge, pods on it, kube-proxy's rules, /etc/hosts per pod.

* The node is a namespace holding bridge ``br0`` (10.240.0.1/24, fd00:240::1/64), with forwarding on and
  ``bridge-nf-call-iptables``, as kube-proxy requires; it is where ``tether`` (the CLI) runs, as on a node.
* A pod is a namespace with ``eth0`` (a veth whose peer is a bridge port) holding one IPv4 and one IPv6
  address, a route to the Service range (10.96.0.0/16) through the node and no default route (asserted), so
  nothing leaves the machine.
* Services: what kube-proxy's iptables mode installs on the node, DNAT from a Service's virtual address and
  port to one of its ready endpoints (``statistic --mode random``, so connections spread as with kube-proxy),
  from PREROUTING (pods) and OUTPUT (the node itself). The bridge hands pod-to-pod replies back through the
  node's conntrack, so the DNAT is undone on the way back.
* Names: ``/etc/netns/<pod namespace>/hosts`` maps ``<svc>.<ns>.svc.cluster.local`` (and the shorter
  forms) to virtual addresses; ``ip netns exec`` bind-mounts it over /etc/hosts for everything the pod runs
  (the stand-in for cluster DNS). Rewritten in place when Services change, so running pods see it.
* Containers run through :func:`container_argv`: ``ip netns exec`` (network namespace, and a mount
  namespace of their own), ``unshare --uts`` (the pod name as hostname), a tmpfs on /run, the volumes
  bind-mounted at their paths, then ``setpriv`` to the container's user, groups and capabilities.

Everything carries the harness' token; :meth:`Node.leftovers` lists whatever of it still exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e_kube import ContainerRun
from netns_harness import Namespace, NetnsHarness, unavailable_reason

#: The checkout (with its virtual environment): the programs every container runs.
CHECKOUT = Path(__file__).resolve().parents[2]
#: Where a container's mount namespace keeps the checkout while volumes are mounted (its own /run tmpfs).
_CHECKOUT_ASIDE = "/run/.tether-checkout"

SUBNET = "10.240.0"
SUBNET6 = "fd00:240::"
NODE_IP = f"{SUBNET}.1"
SERVICE_RANGE = "10.96.0.0/16"
SERVICE_PREFIX = "10.96.0"
CLUSTER_DOMAIN = "cluster.local"
NETNS_ETC = Path("/etc/netns")


@dataclass(frozen=True)
class Backend:
    """A Service port's ready endpoint: the pod address and the target port."""

    ip: str
    port: int


@dataclass(frozen=True)
class ServiceRule:
    """One Service port as kube-proxy programs it."""

    name: str
    vip: str
    port: int
    backends: tuple[Backend, ...]


def _names(service: str, namespace: str) -> str:
    base = f"{service}.{namespace}"
    return f"{base}.svc.{CLUSTER_DOMAIN} {base}.svc {base}"


class Node:
    """The bridge namespace and the pods attached to it."""

    def __init__(self, harness: NetnsHarness) -> None:
        self.harness = harness
        self.token = harness.token
        self.namespace = harness.namespace("node")
        self._hosts = 1
        self._vips = 9
        #: Pod namespace name -> its own hostname line (Kubernetes writes the pod's name into /etc/hosts).
        self._hosts_files: dict[str, str] = {}
        self._service_lines: list[str] = []
        #: Network namespace inodes ever created, to find processes left inside one.
        self.inodes: set[int] = set()
        self._remember(self.namespace)
        run = self.namespace.run
        run(["ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0"])
        run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", "br0"])
        run(["ip", "-6", "addr", "add", f"{SUBNET6}1/64", "dev", "br0", "nodad"])
        run(["ip", "link", "set", "br0", "up"])
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"])
        # The Service range is local to the node: a Service address without endpoints (no DNAT) is refused
        # at once (a reset), as kube-proxy's REJECT makes it, rather than unreachable.
        run(["ip", "route", "add", "local", SERVICE_RANGE, "dev", "lo"])
        self.write_hosts(self.namespace, "node-0")
        self.sync_services([])

    def _remember(self, namespace: Namespace) -> None:
        self.inodes.add(os.stat(f"/run/netns/{namespace.name}").st_ino)

    # --- pods ---

    def attach(self, label: str) -> tuple[Namespace, str, str]:
        """A pod namespace on the bridge: (namespace, IPv4 address, IPv6 address)."""
        namespace = self.harness.namespace(label)
        self._remember(namespace)
        self._hosts += 1
        number = self._hosts
        ipv4, ipv6 = f"{SUBNET}.{number}", f"{SUBNET6}{number:x}"
        port = f"te{self.token}{number}"
        namespace.run(
            ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.namespace.name]
        )
        self.namespace.run(["ip", "link", "set", port, "master", "br0", "up"])
        namespace.run(["ip", "addr", "add", f"{ipv4}/24", "dev", "eth0"])
        namespace.run(["ip", "-6", "addr", "add", f"{ipv6}/64", "dev", "eth0", "nodad"])
        namespace.run(["ip", "link", "set", "eth0", "up"])
        namespace.run(["ip", "route", "add", SERVICE_RANGE, "via", NODE_IP])
        assert_no_default_route(namespace)
        return namespace, ipv4, ipv6

    # --- names ---

    def write_hosts(self, namespace: Namespace, hostname: str, ip: str = "") -> None:
        own = f"{ip}\t{hostname}\n" if ip else f"127.0.1.1\t{hostname}\n"
        self._hosts_files[namespace.name] = own
        self._write_hosts_file(namespace.name)

    def forget_hosts(self, namespace: Namespace) -> None:
        self._forget(namespace.name)

    def forget_all_hosts(self) -> None:
        """Every hosts file this node wrote (a pod that failed half-way started included)."""
        for name in list(self._hosts_files):
            self._forget(name)

    def _forget(self, name: str) -> None:
        self._hosts_files.pop(name, None)
        directory = NETNS_ETC / name
        (directory / "hosts").unlink(missing_ok=True)
        if directory.exists():
            directory.rmdir()

    def _write_hosts_file(self, name: str) -> None:
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n" + self._hosts_files[name]
        text += "".join(self._service_lines)
        path = NETNS_ETC / name / "hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        # In place (same inode): a bind mount made by a running `ip netns exec` keeps seeing this file.
        with path.open("a+") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(text)

    def allocate_vip(self) -> str:
        self._vips += 1
        return f"{SERVICE_PREFIX}.{self._vips}"

    def set_service_names(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """(virtual address, Service name, namespace) for every Service: into every pod's hosts file."""
        self._service_lines = [f"{vip}\t{_names(name, namespace)}\n" for vip, name, namespace in entries]
        for name in self._hosts_files:
            self._write_hosts_file(name)

    # --- kube-proxy ---

    def sync_services(self, rules: Sequence[ServiceRule]) -> None:
        """Replace the node's nat table with kube-proxy's rules for ``rules`` (one iptables-restore)."""
        lines = [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]",
        ]
        body: list[str] = []
        for index, rule in enumerate(rules):
            chain = f"KUBE-SVC-{index}"
            lines.append(f":{chain} - [0:0]")
            comment = f'-m comment --comment "{rule.name}"'
            body.append(f"-A KUBE-SERVICES -d {rule.vip}/32 -p tcp --dport {rule.port} {comment} -j {chain}")
            count = len(rule.backends)
            for position, backend in enumerate(rule.backends):
                remaining = count - position
                chance = (
                    f"-m statistic --mode random --probability {1 / remaining:.5f} " if remaining > 1 else ""
                )
                body.append(f"-A {chain} {chance}-p tcp -j DNAT --to-destination {backend.ip}:{backend.port}")
        lines += ["-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES", *body, "COMMIT", ""]
        restore = subprocess.run(
            self.namespace.argv(["iptables-restore"]),
            input="\n".join(lines),
            capture_output=True,
            text=True,
            check=False,
        )
        assert restore.returncode == 0, f"kube-proxy rules refused: {restore.stderr}\n{lines}"

    # --- what is left ---

    def leftovers(self) -> list[str]:
        """Whatever of this harness still exists: namespaces, /etc/netns entries, host links, processes."""
        found: list[str] = []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        found += [
            f"network namespace {line.split()[0]}" for line in listed.splitlines() if self.token in line
        ]
        if NETNS_ETC.exists():
            found += [
                f"{NETNS_ETC / entry.name}" for entry in NETNS_ETC.iterdir() if self.token in entry.name
            ]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
        found += [
            f"host link {line.split(':')[1].strip()}" for line in links.splitlines() if self.token in line
        ]
        for saver in ("iptables-save", "ip6tables-save"):
            rules = subprocess.run([saver], capture_output=True, text=True, check=False).stdout
            found += [
                f"host {saver}: {line}"
                for line in rules.splitlines()
                if re.search(rf"KUBE-SVC-|TETHER_E2E|{SUBNET}\.|{SERVICE_PREFIX}\.", line)
            ]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                inode = os.stat(entry / "ns" / "net").st_ino
            except OSError:
                continue
            if inode in self.inodes:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"process {entry.name} ({command.strip()[:120]})")
        return found


def assert_no_default_route(namespace: Namespace) -> None:
    for family in ("-4", "-6"):
        routes = namespace.run(["ip", family, "route", "show", "default"]).stdout.strip()
        assert not routes, f"{namespace.name} has a default route ({family}): {routes}"


def container_argv(namespace: Namespace, hostname: str, container: ContainerRun) -> list[str]:
    """The command that starts ``container`` in ``namespace`` as the kubelet would (see the module doc)."""
    steps = [
        "set -e",
        f"echo {shlex.quote(hostname)} > /proc/sys/kernel/hostname",
        "mount -t tmpfs -o mode=0755,size=64m tmpfs /run",
    ]
    # The checkout stands in for the image's filesystem: a volume mounted over a directory holding it (a
    # checkout under /tmp, as CI's may be, and an emptyDir on /tmp) would hide the program itself. It is
    # bound aside first and back after the volumes.
    hidden = [m for m in container.mounts if Path(m.target) == CHECKOUT or Path(m.target) in CHECKOUT.parents]
    if hidden:
        steps += [
            f"mkdir -p {_CHECKOUT_ASIDE}",
            f"mount --bind {shlex.quote(str(CHECKOUT))} {_CHECKOUT_ASIDE}",
        ]
    # /tmp last: a volume source below it would be hidden once something is mounted there.
    for mount in sorted(container.mounts, key=lambda m: (m.target in ("/tmp", "/var/tmp"), len(m.target))):
        target = shlex.quote(mount.target)
        source = shlex.quote(str(mount.source))
        if mount.source.is_dir():
            steps.append(f"mkdir -p {target}")
        else:
            steps.append(f"mkdir -p $(dirname {target}) && touch {target}")
        steps.append(f"mount --bind {source} {target}")
        if mount.read_only:
            steps.append(f"mount -o remount,bind,ro {target}")
    if hidden:
        steps += [
            f"mkdir -p {shlex.quote(str(CHECKOUT))}",
            f"mount --bind {_CHECKOUT_ASIDE} {shlex.quote(str(CHECKOUT))}",
        ]
    user: list[str] = []
    if container.uid is not None and container.uid != 0:
        gid = container.gid if container.gid is not None else container.uid
        user = ["setpriv", f"--reuid={container.uid}", f"--regid={gid}"]
        user += (
            [f"--groups={','.join(map(str, container.groups))}"] if container.groups else ["--clear-groups"]
        )
        if container.caps:
            caps = ",".join(f"+{cap.lower()}" for cap in container.caps)
            user += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        if container.no_new_privs:
            user.append("--no-new-privs")
        user.append("--")
    # The image's working directory (the Tether images: /); the shell's own PWD is not the container's.
    steps += ["cd /", "unset PWD OLDPWD", 'exec "$@"']
    return [
        "ip",
        "netns",
        "exec",
        namespace.name,
        "unshare",
        "--uts",
        "--",
        "/bin/sh",
        "-c",
        "\n".join(steps),
        "sh",
        *user,
        *container.argv,
    ]


def env_for(container: ContainerRun, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment: exactly the container's (nothing of the test runner's leaks in)."""
    return {**container.env, **(extra or {})}


#: Tools the cluster uses beyond netns_harness.TOOLS (all installed by CI).
E2E_TOOLS = ("unshare", "mount", "redis-server", "redis-cli", "ip6tables")


def e2e_unavailable_reason() -> str | None:
    reason = unavailable_reason()
    if reason is not None:
        return reason
    missing = [tool for tool in E2E_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y util-linux mount redis-server iptables"
    if not Path("/proc/sys/net/bridge").exists():
        return "the kernel has no br_netfilter (/proc/sys/net/bridge), which kube-proxy's rules need"
    return None
