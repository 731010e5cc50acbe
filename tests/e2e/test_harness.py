"""The harness itself: a cluster whose pod fails to start is still torn down completely.

A small cluster of its own (a node, a Service, a Deployment whose container exits at once, so its pod never
gets ready): the start fails, and leaving the block removes every namespace, /etc/netns entry, link, rule
and process it made, and its directory (the shared cluster's teardown is checked the same way, after the
session, by conftest.py).
"""

from __future__ import annotations

import sys

import pytest
from e2e_cluster import Cluster
from e2e_mesh import deployment, service
from e2e_node import e2e_unavailable_reason

pytestmark = pytest.mark.netns


def test_a_failed_start_leaves_nothing_behind() -> None:
    reason = e2e_unavailable_reason()
    if reason is not None:
        pytest.skip(f"end-to-end tests skipped: {reason}")
    crashing = deployment("crash", [sys.executable, "-c", "raise SystemExit(3)"], ports={"http": 8080},
                          readiness={"httpGet": {"path": "/", "port": 8080}})  # fmt: skip
    with pytest.raises(AssertionError, match="exited 3"), Cluster.open() as cluster:
        node, directory = cluster.node, cluster.directory
        cluster.add_service(service("crash", 8080))
        workload = cluster.add_workload(crashing)
        assert len(node.leftovers()) > 0  # the node, at least
        cluster.start_pods([workload])
    assert node.leftovers() == []
    assert not directory.exists()
