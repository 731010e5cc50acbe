"""The end-to-end suite's fixtures: one cluster shared by every scenario (session scope), the recorder.

``mesh`` starts, once per session, a node, the control plane as ``kubectl kustomize deploy/`` renders it and
the shop as ``tether inject`` writes it (tests/e2e/e2e_mesh.py). It tears all of it down after the last test
of this directory (or at the end of the session), then asserts that nothing of it is left: namespaces,
/etc/netns entries, links, host iptables rules, processes, its directory. Tests need root, ``ip``,
``iptables``, ``setpriv`` and namespace support: without them they skip naming what is missing (under
``CI=true`` a skip fails, see the root conftest.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest runs with --import-mode=importlib: put this directory and the netns harness it builds on on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "netns"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_cluster import Cluster
from e2e_mesh import Mesh, start_control_plane, start_shop
from e2e_node import e2e_unavailable_reason
from e2e_record import ScenarioRecord

from tether.identity.kube_bootstrap.testing import FakeKubeApi

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


#: The shared cluster's resources while it runs (closed by whichever comes first: the last test of this
#: directory, or the end of the session).
_RUNNING: list[contextlib.ExitStack] = []


def _close_mesh() -> None:
    while _RUNNING:
        _RUNNING.pop().close()


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    """The shared cluster. Scenarios must leave it healthy (``Mesh.wait_healthy``) for the next one."""
    reason = e2e_unavailable_reason()
    if reason is not None:
        pytest.skip(f"end-to-end tests skipped: {reason}")
    stack = contextlib.ExitStack()
    _RUNNING.append(stack)
    made: list[Cluster] = []
    # Last (callbacks run in reverse): once the cluster is torn down, nothing of it may remain.
    stack.callback(lambda: _assert_nothing_left(made))
    api = stack.enter_context(FakeKubeApi(namespaces={"tether"}).serving())
    cluster = stack.enter_context(Cluster.open())
    made.append(cluster)
    try:
        control = start_control_plane(cluster, api)
        start_shop(cluster, control)
    except BaseException:
        _close_mesh()
        raise
    yield Mesh(cluster, control)
    _close_mesh()


def _assert_nothing_left(made: list[Cluster]) -> None:
    for cluster in made:
        leftovers = cluster.node.leftovers()
        if cluster.directory.exists():
            leftovers.append(f"directory {cluster.directory}")
        assert not leftovers, "the cluster left behind:\n" + "\n".join(leftovers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After the last test of tests/e2e, tear the cluster down (and check it left nothing), rather than at the
    end of the whole session: `make unit` runs more suites after this one."""
    yield
    here = Path(__file__).resolve().parent
    if _RUNNING and (nextitem is None or here not in Path(nextitem.path).resolve().parents):
        _close_mesh()


@pytest.fixture
def healthy_mesh(mesh: Mesh) -> Mesh:
    """The shared cluster, once every pod is ready again (a previous scenario may have broken something)."""
    mesh.wait_healthy()
    return mesh


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Callable[..., ScenarioRecord]]:
    """``record("Scenario name", load=..., faults=...)``: a :class:`ScenarioRecord`, written when the test
    ends (tests/e2e/e2e_record.py has the format)."""
    made: list[ScenarioRecord] = []

    def new(scenario: str, **fields: Any) -> ScenarioRecord:
        entry = ScenarioRecord(scenario, request.node.nodeid, **fields)
        made.append(entry)
        return entry

    yield new
    report = request.node.stash.get(_CALL_REPORT, None)
    for entry in made:
        entry.write(passed=report is not None and report.passed)
