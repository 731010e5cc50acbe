"""No long-lived task bypasses the supervisor: the only other places that create asyncio tasks are listed
here, call site by call site (the function that creates the task), with why each task is short-lived. A new
``create_task`` anywhere else — in another function of a listed file too — fails this test until it goes
through ``Supervisor.spawn`` (or is added here with its reason)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: ``file::function`` (relative to the repository, the enclosing function's qualified name) -> why the tasks
#: it creates end on their own.
SHORT_LIVED = {
    "shared/src/tether/shared/supervisor.py::Supervisor.spawn": "the supervisor itself",
    "shared/src/tether/shared/runtime.py::serve_until_signalled": (
        "start-up and the stop signal, awaited by the runtime's own main"
    ),
    "shared/src/tether/shared/bus.py::Bus._guarded": (
        "one NATS request, raced against a permission denial and awaited"
    ),
    "services/proxy/src/tether/proxy/pool.py::EndpointPool.acquire": (
        "one upstream connect, bounded by the connect timeout"
    ),
    "services/proxy/src/tether/proxy/routing.py::_BaseRouter._spawn": (
        "one request waiting for its connection"
    ),
    "services/proxy/src/tether/proxy/inbound.py::InboundAcceptor._accept_forever": (
        "one connection being admitted, bounded by its timeouts"
    ),
    "services/proxy/src/tether/proxy/tcp.py::TcpRelay.connection_made": (
        "one TCP relay's route and connect, bounded by a timeout"
    ),
    "services/proxy/src/tether/proxy/tcp.py::ConnectTunnel.data_received": (
        "one CONNECT tunnel's route and connect, bounded by a timeout"
    ),
    "services/proxy/src/tether/proxy/detection.py::DetectingProtocol._look_up": (
        "one discovery lookup, bounded by the fail-fast timeout"
    ),
    "services/telemetry/src/tether/telemetry/server.py::TelemetryServicer._serve": (
        "one Report stream's next read raced against its wake-up, cancelled when the stream's handler ends"
    ),
    "services/telemetry/src/tether/telemetry/testing.py::ReportClient.connect": (
        "a test client's reader, cancelled when it closes"
    ),
    "services/public-api/src/tether/public_api/tap.py::run_tap": (
        "one tap stream's renewals, ended with its call"
    ),
    "cli/src/tether/cli/commands.py::tap": (
        "`tether tap`'s event stream and its Ctrl-C, awaited before it returns"
    ),
    "cli/src/tether/cli/localmesh/run.py::Runner.run": (
        "one `tether run`'s registration heartbeat, cancelled and awaited when the command exits"
    ),
    "cli/src/tether/cli/demo/app.py::generator": (
        "the demo application's traffic generator: an application the mesh carries (its calls and its stop"
        " signal), not a part of the mesh"
    ),
}

_CREATES_TASKS = {"create_task", "ensure_future", "TaskGroup"}


class _TaskSites(ast.NodeVisitor):
    """Every call that creates a task, by the qualified name of the function around it."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.sites: list[tuple[str, int]] = []

    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def visit_Call(self, node: ast.Call) -> None:
        called = node.func
        name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", None)
        if name in _CREATES_TASKS:
            self.sites.append((".".join(self.scope) or "<module>", node.lineno))
        self.generic_visit(node)


def _task_sites() -> dict[str, list[int]]:
    sources = [
        *ROOT.glob("shared/src/**/*.py"),
        *ROOT.glob("cli/src/**/*.py"),
        *ROOT.glob("services/*/src/**/*.py"),
    ]
    assert len(sources) > 50, "the source tree was not found"
    found: dict[str, list[int]] = {}
    for path in sources:
        relative = path.relative_to(ROOT).as_posix()
        if relative.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        visitor = _TaskSites()
        visitor.visit(ast.parse(path.read_text(), filename=relative))
        for function, line in visitor.sites:
            found.setdefault(f"{relative}::{function}", []).append(line)
    return found


def test_tasks_are_created_only_by_the_supervisor_or_for_one_request() -> None:
    offenders = [
        f"{site.split('::')[0]}:{line} (in {site.split('::')[1]})"
        for site, lines in _task_sites().items()
        if site not in SHORT_LIVED
        for line in lines
    ]
    assert not offenders, "tasks started outside the supervisor:\n" + "\n".join(offenders)


def test_every_listed_site_still_creates_tasks() -> None:
    """An entry that no longer creates tasks is stale and would hide a future one."""
    stale = sorted(set(SHORT_LIVED) - set(_task_sites()))
    assert not stale, f"listed sites that create no task any more: {stale}"


def test_the_scan_sees_a_task_created_in_a_new_function_of_a_listed_file() -> None:
    visitor = _TaskSites()
    visitor.visit(ast.parse("class Bus:\n    async def later(self):\n        asyncio.create_task(x())\n"))
    assert visitor.sites == [("Bus.later", 3)]
