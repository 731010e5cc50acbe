"""The admin listener's loopback-only POST /shutdown, with a real client on another host's address."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from netns_harness import Namespace, NetnsHarness

pytestmark = pytest.mark.netns

ADMIN_PORT = 4191
SERVER = Path(__file__).resolve().parent / "admin_server.py"
CLIENT = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], method=sys.argv[2], data=b"" if sys.argv[2] == "POST" else None)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def http(namespace: Namespace, method: str, url: str) -> int:
    return int(namespace.run([sys.executable, "-c", CLIENT, url, method]).stdout.strip())


def test_shutdown_is_refused_from_the_network_and_accepted_from_loopback(netns: NetnsHarness) -> None:
    pod, peer = netns.namespace("pod"), netns.namespace("peer")
    pod_ip, _ = netns.link(pod, peer)
    server = pod.spawn([sys.executable, str(SERVER), str(ADMIN_PORT)], ready_line="ready")
    remote = f"http://{pod_ip}:{ADMIN_PORT}"

    assert http(peer, "GET", f"{remote}/metrics") == 200
    assert http(peer, "POST", f"{remote}/shutdown") == 403
    assert server.poll() is None
    # The pod's own address is not loopback either, even from inside the pod.
    assert http(pod, "POST", f"{remote}/shutdown") == 403
    assert http(pod, "POST", f"http://127.0.0.1:{ADMIN_PORT}/shutdown") == 202
    try:
        out, _ = server.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("admin server did not stop after an accepted /shutdown")
    assert server.returncode == 0 and out.strip().endswith("shutdown")
