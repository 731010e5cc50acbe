"""Runs a command as a container runtime starts a non-root container's process, in a new network namespace.

    python caps_launcher.py CAPS -- COMMAND...   (as root; CAPS: comma-separated capability numbers, or "")

What runc does last before it executes a container's entry point, for a pod whose securityContext says
``capabilities: {drop: [ALL], add: CAPS}``, ``allowPrivilegeEscalation: false`` and a non-root user: the
bounding set and the permitted and effective sets are CAPS, the inheritable and ambient sets empty, and
no_new_privs is set. The UID stays 0, so that the command can read an interpreter installed under a private
home directory; SECBIT_NOROOT (locked) makes the kernel compute capabilities on execve exactly as for any
other UID (no implicit full set for root, file capabilities alone count), which is what matters here.

Then, still as root in that namespace, it reads both families' nat tables with iptables-nft-save and prints
one JSON object: the command's exit status and output, and the tables. The namespace ends with the process.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

CLONE_NEWNET = 0x40000000
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LAST_CAP_PROBE = 64  # PR_CAPBSET_DROP refuses numbers past the kernel's last capability with EINVAL

libc = ctypes.CDLL(None, use_errno=True)


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what} failed")


def become_container(caps: set[int]) -> None:
    """Runs in the child between fork and execve (subprocess's preexec_fn)."""
    check(libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0), "PR_SET_SECUREBITS")
    for cap in range(LAST_CAP_PROBE):
        if cap not in caps and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            check(-1, f"PR_CAPBSET_DROP {cap}")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT_CLEAR_ALL")
    mask = [0, 0]
    for cap in caps:
        mask[cap // 32] |= 1 << (cap % 32)
    data = (CapData * 2)(CapData(mask[0], mask[0], 0), CapData(mask[1], mask[1], 0))
    check(libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def nat_table(save: str) -> str:
    done = subprocess.run([save, "-t", "nat"], capture_output=True, text=True, check=False, timeout=60)
    return done.stdout if done.returncode == 0 else ""


def main(argv: list[str]) -> int:
    separator = argv.index("--")
    caps = {int(cap) for cap in argv[1].split(",") if cap} if separator == 2 else set()
    command = argv[separator + 1 :]
    check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    done = subprocess.run(
        command,
        preexec_fn=lambda: become_container(caps),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    print(
        json.dumps(
            {
                "returncode": done.returncode,
                "output": done.stdout + done.stderr,
                "ipv4": nat_table("iptables-nft-save"),
                "ipv6": nat_table("ip6tables-nft-save"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
