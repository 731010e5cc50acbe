"""No long-lived task bypasses the supervisor: the only other places that create asyncio tasks are listed here
with why each task is short-lived. A new ``create_task`` anywhere else fails this test until it goes through
``Supervisor.spawn`` (or is added here with its reason)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# file (relative to the repository) -> why the tasks it creates end on their own
SHORT_LIVED = {
    "shared/src/tether/shared/supervisor.py": "the supervisor itself",
    "shared/src/tether/shared/runtime.py": "start-up and the stop signal, awaited by the runtime's own main",
    "shared/src/tether/shared/bus.py": "one NATS request, raced against a permission denial and awaited",
    "services/proxy/src/tether/proxy/pool.py": "one upstream connect, bounded by the connect timeout",
    "services/proxy/src/tether/proxy/routing.py": "one request waiting for its connection",
    "services/proxy/src/tether/proxy/inbound.py": "one connection being admitted, bounded by its timeouts",
    "cli/src/tether/cli/localmesh/supervisor.py": "the local mesh's own supervisor process: a keeper per"
    " component, awaited at its stop; one that dies of a bug is logged and stops the mesh",
    "cli/src/tether/cli/localmesh/run.py": "one `tether run`'s registration heartbeat, cancelled and awaited"
    " when the command exits",
    "cli/src/tether/cli/demo/app.py": "the demo application's traffic generator: an application the mesh"
    " carries (its calls and its stop signal), not a part of the mesh",
    "cli/src/tether/cli/commands.py": "`tether tap`'s event stream and its Ctrl-C, awaited before it returns",
    "services/public-api/src/tether/public_api/tap.py": "one tap stream's renewals, ended with its call",
    "services/proxy/src/tether/proxy/tcp.py": "one TCP relay's route and connect, bounded by a timeout",
    "services/proxy/src/tether/proxy/detection.py": "one discovery lookup, bounded by the fail-fast timeout",
    "services/telemetry/src/tether/telemetry/server.py": (
        "one Report stream's next read raced against its wake-up, cancelled when the stream's handler ends"
    ),
    "services/telemetry/src/tether/telemetry/testing.py": "a test client's reader, cancelled when it closes",
}

_SPAWN = re.compile(r"\b(create_task|ensure_future|TaskGroup)\b")


def test_tasks_are_created_only_by_the_supervisor_or_for_one_request() -> None:
    sources = [
        *ROOT.glob("shared/src/**/*.py"),
        *ROOT.glob("cli/src/**/*.py"),
        *ROOT.glob("services/*/src/**/*.py"),
    ]
    assert len(sources) > 50, "the source tree was not found"
    offenders = []
    for path in sources:
        relative = path.relative_to(ROOT).as_posix()
        if relative.endswith(("_pb2.py", "_pb2_grpc.py")) or relative in SHORT_LIVED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _SPAWN.search(line.split("#", 1)[0]):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "tasks started outside the supervisor:\n" + "\n".join(offenders)


def test_the_listed_files_still_create_tasks() -> None:
    """An entry that no longer creates tasks is stale and would hide a future one."""
    for relative in SHORT_LIVED:
        assert _SPAWN.search((ROOT / relative).read_text()), f"{relative} creates no task any more"
