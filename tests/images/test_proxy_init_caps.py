"""The proxy image's file capabilities let proxy-init program iptables as the pod's securityContext runs it.

The init container runs `tether-proxy init` non-root with only NET_ADMIN and NET_RAW added and
allowPrivilegeEscalation: false (no_new_privs). The capabilities the proxy Dockerfile's setcap lines give are
applied here, as the same extended attribute setcap writes, to copies of this host's xtables-nft-multi and of
this interpreter, and the real proxy-init from the replayed proxy image runs through them in a new network
namespace, in the process state runc leaves a non-root container in (caps_launcher.py). The interpreter's copy
runs tether.proxy.init with the image venv's site-packages on PYTHONPATH and -S (the host interpreter's own
site-packages left out), as the image's console script would through the venv's interpreter.

Needs root, namespaces and nf_tables (tests marked netns, as tests/netns: CI runs them as root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The first test to ask for `replayed` waits for all five images' replay (tests/images/conftest.py).
pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).resolve().parent / "caps_launcher.py"
CAPABILITY_NUMBERS = {"cap_net_admin": 12, "cap_net_raw": 13}
INIT_CAPS = f"{CAPABILITY_NUMBERS['cap_net_admin']},{CAPABILITY_NUMBERS['cap_net_raw']}"
# What the capability sets of a process read as when empty, in /proc/<pid>/status.
NO_CAPS = "0000000000000000"


def dockerfile_setcaps() -> dict[str, str]:
    """Path in the image to the capability text setcap gives it, from the proxy Dockerfile."""
    lines = (REPO / "services" / "proxy" / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return {path: spec for spec, path in re.findall(r"setcap\s+(\S+)\s+(\S+)", text)}


def vfs_cap_data(spec: str) -> bytes:
    """The security.capability attribute setcap writes for ``spec`` (e.g. ``cap_net_admin,cap_net_raw+ep``):
    struct vfs_cap_data, revision 2, little-endian."""
    names, _, flags = spec.partition("+")
    assert set(flags) <= {"e", "i", "p"}, spec
    mask = sum(1 << CAPABILITY_NUMBERS[name] for name in names.split(","))
    magic = 0x02000000 | (1 if "e" in flags else 0)
    permitted = mask if "p" in flags else 0
    inheritable = mask if "i" in flags else 0
    return struct.pack("<5I", magic, permitted, inheritable, 0, 0)


def interpreter() -> Path:
    return (Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}").resolve()


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("xtables-nft-multi") or not shutil.which("unshare"):
        return "needs iptables (xtables-nft-multi) and unshare"
    probe = subprocess.run(
        ["unshare", "--net", "iptables-nft-save", "-t", "nat"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"no nf_tables in a new network namespace: {probe.stderr.strip()}"
    return None


class ImageFiles:
    """Copies of the image's capability-carrying files, with the Dockerfile's capabilities (or none)."""

    def __init__(self, root: Path) -> None:
        setcaps = dockerfile_setcaps()
        self.bin = root / "bin"
        self.bin.mkdir()
        xtables = self.bin / "xtables-nft-multi"
        shutil.copy2(str(shutil.which("xtables-nft-multi")), xtables)
        os.setxattr(xtables, "security.capability", vfs_cap_data(setcaps["/usr/sbin/xtables-nft-multi"]))
        # The names proxy-init runs under --iptables-mode auto, which Debian's alternatives point at nft.
        for name in ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"):
            (self.bin / name).symlink_to(xtables.name)
        (python_path,) = [path for path in setcaps if Path(path).name.startswith("python")]
        self.python_with_caps = root / "python-with-caps"
        shutil.copy2(interpreter(), self.python_with_caps)
        os.setxattr(self.python_with_caps, "security.capability", vfs_cap_data(setcaps[python_path]))
        self.python_without_caps = root / "python-without-caps"
        shutil.copy2(interpreter(), self.python_without_caps)


@pytest.fixture
def image_files(tmp_path: Path) -> ImageFiles:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"proxy-init capability test skipped: {reason}")
    return ImageFiles(tmp_path)


def launch(caps: str, command: list[str], site_packages: Path, files: ImageFiles) -> dict[str, Any]:
    env = {
        "PATH": f"{files.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": str(site_packages),
        "LANG": "C.UTF-8",
    }
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), caps, "--", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def proxy_site_packages(replayed: dict[str, Path]) -> Path:
    (site,) = replayed["proxy"].glob("lib/python*/site-packages")
    return site


def test_the_dockerfile_gives_capabilities_to_iptables_and_to_the_interpreter() -> None:
    setcaps = dockerfile_setcaps()
    # The image's interpreter: the base image's python<major.minor>, the venv's /usr/local/bin/python3.
    base = re.search(r"^FROM python:(\d+\.\d+)-slim", (REPO / "services/proxy/Dockerfile").read_text(), re.M)
    assert base
    python = f"/usr/local/bin/python{base.group(1)}"
    assert setcaps == {
        "/usr/sbin/xtables-nft-multi": "cap_net_admin,cap_net_raw+ep",
        "/usr/sbin/xtables-legacy-multi": "cap_net_admin,cap_net_raw+ep",
        # Permitted only: with the effective bit the sidecar (bounding set empty) could not exec Python.
        python: "cap_net_admin,cap_net_raw+p",
    }


def test_proxy_init_installs_the_rules_with_only_net_admin_and_net_raw(
    replayed: dict[str, Path], image_files: ImageFiles
) -> None:
    command = [str(image_files.python_with_caps), "-S", "-m", "tether.proxy.init", "--log-format", "json"]
    result = launch(INIT_CAPS, command, proxy_site_packages(replayed), image_files)
    assert result["returncode"] == 0, result["output"]
    assert "-A OUTPUT -p tcp -j TETHER_PROXY_OUTBOUND" in result["ipv4"]
    assert "-A PREROUTING -p tcp -j TETHER_PROXY_INBOUND" in result["ipv4"]
    if '"family": "IPv6", "rules"' in result["output"]:
        assert "-A OUTPUT -p tcp -j TETHER_PROXY_OUTBOUND" in result["ipv6"]


def test_without_the_interpreters_capabilities_no_new_privs_keeps_iptables_from_them(
    replayed: dict[str, Path], image_files: ImageFiles
) -> None:
    """Why the interpreter carries capabilities at all: file capabilities on iptables alone are not enough
    under no_new_privs, as the process that executes iptables holds none of its own."""
    command = [str(image_files.python_without_caps), "-S", "-m", "tether.proxy.init", "--log-format", "json"]
    result = launch(INIT_CAPS, command, proxy_site_packages(replayed), image_files)
    assert result["returncode"] == 1, result["output"]
    assert "Permission denied" in result["output"]
    assert "TETHER_PROXY" not in result["ipv4"]


def test_the_sidecar_starts_the_same_interpreter_with_no_capability(
    replayed: dict[str, Path], image_files: ImageFiles
) -> None:
    """The proxy container drops ALL: the interpreter's file capabilities neither stop it nor give it any."""
    code = (
        "import tether.proxy.__main__\n"
        "lines = open('/proc/self/status').read().splitlines()\n"
        "status = dict(line.split(':\\t') for line in lines if ':\\t' in line)\n"
        "print(status['CapPrm'].strip(), status['CapEff'].strip())\n"
    )
    command = [str(image_files.python_with_caps), "-S", "-c", code]
    result = launch("", command, proxy_site_packages(replayed), image_files)
    assert result["returncode"] == 0, result["output"]
    assert result["output"].split() == [NO_CAPS, NO_CAPS]
