"""The reliability report: what each e2e scenario holds, injects and allows, and docs/reliability.md from it.

Every scenario is declared once here (:data:`SCENARIOS`): its load, its faults, the failures it allows and
the bound on its time to recover. The scenario tests take their texts (and loads) from these declarations
and write one result file each (``e2e_record``'s format; :func:`record_result` also asserts the declared
bounds), and ``make e2e-report`` renders the results into docs/reliability.md::

    python tests/e2e/reliability.py render --results DIR --out docs/reliability.md
    python tests/e2e/reliability.py check docs/reliability.md

``check`` (and tests/e2e/test_faults_report.py, which runs everywhere, no root needed) fails when the
committed table's rows (scenario, load, faults, allowed failures, bound) differ from the declarations, or a
committed value lies outside what the suite asserts: so the table can be neither hand-edited nor stale.
Rendering refuses a result whose own account of its load, faults or bounds differs from the declaration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
COLUMNS = (
    "Scenario",
    "Load held",
    "Faults injected",
    "Requests sent",
    "Failed",
    "Allowed failures",
    "Time to recover",
    "Bound",
)
NOT_APPLICABLE = "—"


@dataclass(frozen=True)
class Load:
    """A steady load: ``rate`` calls per second, each with ``deadline`` seconds, along ``path``."""

    rate: float
    deadline: float
    path: str

    def describe(self) -> str:
        return f"gRPC {self.rate:g} calls/s, {self.deadline:g} s deadline, {self.path}"


@dataclass(frozen=True)
class Scenario:
    title: str
    load_text: str
    faults: str
    #: What the test allows, in words ("0" when nothing may fail), and the most failed calls that can be.
    allowed: str
    max_failed: int
    #: What "recovered" means, and its bound in seconds (None: nothing to recover from).
    recovery: str = ""
    bound: float | None = None
    #: The fewest calls the load must have sent for the scenario to count as held.
    min_requests: int = 1
    #: The load itself, for the scenarios that start theirs from here.
    load: Load | None = None

    def bound_text(self) -> str:
        return f"≤ {self.bound:g} s: {self.recovery}" if self.bound is not None else NOT_APPLICABLE

    def row(self) -> dict[str, str]:
        """The declared cells (what a committed row must repeat exactly)."""
        return {
            "Scenario": self.title,
            "Load held": self.load_text,
            "Faults injected": self.faults,
            "Allowed failures": self.allowed,
            "Bound": self.bound_text(),
        }

    def problems(self, requests: int, failed: int, recovered: float | None) -> list[str]:
        """What is outside the declared bounds (empty: all within)."""
        found = []
        if requests < self.min_requests:
            found.append(f"{requests} requests sent, fewer than the {self.min_requests} the load must hold")
        if not 0 <= failed <= min(self.max_failed, requests):
            found.append(f"{failed} failed, more than the {self.max_failed} allowed ({self.allowed})")
        if self.bound is None and recovered is not None:
            found.append("a time to recover, where nothing is declared to recover")
        if self.bound is not None and (recovered is None or not 0 <= recovered <= self.bound):
            found.append(f"time to recover {recovered} s, not within {self.bound_text()}")
        return found

    def drift(self, record: Mapping[str, Any]) -> list[str]:
        """Where a result file's own account of the scenario differs from this declaration."""
        expected = {
            "load": self.load_text,
            "faults": self.faults,
            "allowed_failures": self.max_failed,
            "recovery_bound_seconds": self.bound,
        }
        return [
            f"{name} is {record.get(name)!r} in the result, {value!r} in reliability.SCENARIOS"
            for name, value in expected.items()
            if record.get(name) != value
        ]


def _mine(
    title: str,
    load: Load,
    faults: str,
    allowed: str,
    max_failed: int,
    recovery: str,
    bound: float,
    least: int,
) -> Scenario:
    return Scenario(title, load.describe(), faults, allowed, max_failed, recovery, bound, least, load)


# fmt: off
STEADY = Load(40, 2, "client → steady (3 pods)")
DATAPLANE = Load(50, 1, "client → edge (3 pods, each behind a relay)")
ROTATION_SECONDS = 180

LEADER = _mine(
    "Control plane: destination leader killed", STEADY,
    "SIGKILL the destination replica holding the writer lease; restarted", "0", 0,
    "another replica holds the lease", 15.0, 150,
)
DESTINATION_REPLICA = _mine(
    "Control plane: destination replica killed", STEADY,
    "SIGKILL a destination replica serving Get streams; restarted", "0", 0,
    "every stream it served reopened on a live replica", 15.0, 150,
)
NATS = _mine(
    "Control plane: nats-server killed", STEADY,
    "SIGKILL nats-server, restarted after 2 s (JetStream on its volume)", "0", 0,
    "every control-plane replica ready again", 30.0, 150,
)
IDENTITY_REPLICA = _mine(
    "Control plane: identity replica killed", STEADY, "SIGKILL one identity replica; restarted", "0", 0,
    "Certify through the Service address answering again", 10.0, 150,
)
IDENTITY_OUTAGE = _mine(
    "Control plane: every identity replica stopped", STEADY,
    "SIGKILL both identity replicas for 8 s, across renewals that come due; restarted", "0", 0,
    "each proxy whose renewal failed holds a new certificate", 30.0, 400,
)
TELEMETRY_REPLICA = _mine(
    "Control plane: telemetry replica killed", STEADY, "SIGKILL one telemetry replica; restarted", "0", 0,
    "every proxy's reports acknowledged again (counts exact at the run's end)", 45.0, 150,
)
PARTITION = _mine(
    "Control plane: proxy partitioned", STEADY,
    "iptables DROP between the client pod and every control-plane address, 30 s; healed", "0", 0,
    "after the heal, its reports acknowledged again (counts exact at the run's end)", 90.0, 1000,
)
ROTATION = _mine(
    "Certificate rotation", STEADY,
    f"60 s leaves, {ROTATION_SECONDS} s of load (≥ 3 renewals per proxy); issuer rotated mid-run (same trust "
    "anchor); the faults above during it",
    "0", 0, "every proxy's leaf chains to the new issuer", 60.0, 6000,
)
HANG = _mine(
    "Data plane: endpoint hangs", DATAPLANE,
    "the relay in front of one endpoint accepts and answers nothing, old connections or new",
    "≤ 25: calls sent to it before the balancer learns (each ends at its deadline)", 25,
    "its share of new calls below 5% and no more failures", 10.0, 400,
)
RESET = _mine(
    "Data plane: endpoint resets connections", DATAPLANE,
    "the relay in front of one endpoint resets every connection at once",
    "≤ 25: only the calls in flight on the reset connections", 25, "a call answered by it again", 5.0, 200,
)
LATENCY = _mine(
    "Data plane: latency on one endpoint", DATAPLANE,
    "the relay in front of one endpoint adds 150 ms each way", "0", 0,
    "its share of new calls below half of what it was", 10.0, 400,
)
# fmt: on

#: The recovery bound of the rows whose texts tests/e2e/e2e_scenarios.py declares (theirs: Baseline, Scale,
#: Security, Garbage, Abuse); rows not named here have nothing to recover from.
THEIR_BOUNDS = {
    "Scale out and in": ("a pod added answers its first call", 2.0),
    "Garbage on the bus": ("one destination replica holds the lease again after the garbage", 15.0),
}


def _theirs() -> list[Scenario]:
    from e2e_scenarios import ROWS

    rows = []
    for title, row in ROWS.items():
        recovery, bound = THEIR_BOUNDS.get(title, ("", None))
        allowed = str(row.allowed_failures)
        rows.append(Scenario(title, row.load, row.faults, allowed, row.allowed_failures, recovery, bound))
    return rows


def _ordered() -> tuple[Scenario, ...]:
    """Issue 15's order: baseline and scale, the faults, the rotation, the data plane, then the attacks."""
    theirs = _theirs()
    first = [row for row in theirs if row.title in ("Baseline", "Scale out and in")]
    mine = [LEADER, DESTINATION_REPLICA, NATS, IDENTITY_REPLICA, IDENTITY_OUTAGE, TELEMETRY_REPLICA]
    mine += [PARTITION, ROTATION, HANG, RESET, LATENCY]
    return (*first, *mine, *[row for row in theirs if row not in first])


SCENARIOS: tuple[Scenario, ...] = _ordered()

BY_TITLE: Mapping[str, Scenario] = {scenario.title: scenario for scenario in SCENARIOS}


# --- results ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    requests: int
    failed: int
    recovered: float | None
    #: Other measured values worth reading (shown under the table), name → value in words.
    measured: dict[str, str] = field(default_factory=dict)


def record_result(
    scenario: Scenario,
    record: Callable[..., Any],
    *,
    requests: int,
    failed: int,
    recovered: float | None,
    measured: Mapping[str, tuple[float, str]] | None = None,
    failures: str = "",
) -> None:
    """Write what was measured through the e2e ``record`` fixture (``e2e_record``'s format, marked passed
    only if the test passes; ``measured``: name → (value, unit)), then assert the declared bounds on it
    (``failures``: the failed calls described, for that assertion's message)."""
    entry = record(scenario.title, load=scenario.load_text, faults=scenario.faults)
    entry.traffic(requests, failed, scenario.max_failed)
    if recovered is not None and scenario.bound is not None:
        entry.recovery(recovered, scenario.bound)
    for name, (value, unit) in (measured or {}).items():
        entry.measure(name, value, unit=unit)
    problems = scenario.problems(requests, failed, recovered)
    assert not problems, f"{scenario.title}: " + "; ".join(problems) + (f"\n{failures}" if failures else "")


def load_results(directory: Path) -> tuple[dict[str, Result], list[str]]:
    """The passed results in ``directory`` of declared scenarios, and what is wrong with the others."""
    results: dict[str, Result] = {}
    problems = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        scenario = BY_TITLE.get(document.get("scenario", ""))
        if scenario is None:
            problems.append(
                f"{path.name}: scenario {document.get('scenario')!r} is not in reliability.SCENARIOS"
            )
            continue
        if not document.get("passed"):
            continue
        drift = scenario.drift(document)
        if drift:
            problems.append(f"{scenario.title}: " + "; ".join(drift))
            continue
        measured = {
            name: f"{entry['value']}{' ' + entry['unit'] if entry.get('unit') else ''}"
            for name, entry in (document.get("measured") or {}).items()
            if name != "recovery_seconds"
        }
        results[scenario.title] = Result(scenario.title, int(document["requests"]), int(document["failed"]),
                                         document.get("recovery_seconds"), measured)  # fmt: skip
    return results, problems


# --- the document ---------------------------------------------------------------------------------------

HEADER = """# Reliability

What the mesh survives, measured end to end: the real control plane and real proxies in network namespaces
laid out as Kubernetes lays them out, real grpcio applications, faults injected while a steady load runs
(tests/e2e). Generated by `make e2e-report` from one run of the suite ({cores}); not edited by hand:
tests/e2e/test_faults_report.py fails when a row differs from the suite's declarations or a value lies
outside the bound the suite asserts. "Failed" counts calls the application saw fail; "time to recover" is
measured from the fault (or its end) to what the bound names.
"""


def _cell(text: str) -> str:
    assert "|" not in text and "\n" not in text, f"a table cell cannot hold {text!r}"
    return text


def _recovered_text(recovered: float | None) -> str:
    return NOT_APPLICABLE if recovered is None else f"{recovered:.1f} s"


def render(results: Mapping[str, Result], cores: str) -> str:
    missing = [scenario.title for scenario in SCENARIOS if scenario.title not in results]
    if missing:
        raise ValueError(f"no result for: {', '.join(missing)} (run the whole e2e suite, as root)")
    lines = [HEADER.format(cores=cores), "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    notes = []
    for scenario in SCENARIOS:
        result = results[scenario.title]
        cells = {
            **scenario.row(),
            "Requests sent": f"{result.requests:,}",
            "Failed": str(result.failed),
            "Time to recover": _recovered_text(result.recovered),
        }
        lines.append("| " + " | ".join(_cell(cells[column]) for column in COLUMNS) + " |")
        if result.measured:
            details = "; ".join(f"{name}: {value}" for name, value in result.measured.items())
            notes.append(f"- **{scenario.title}**: {details}.")
    if notes:
        lines += ["", "## Measured along the way", "", *notes]
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first table in ``text`` whose header is :data:`COLUMNS`."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            if tuple(header) != COLUMNS:
                raise ValueError(f"the table's columns are {header}, expected {list(COLUMNS)}")
            continue
        if all(set(cell) <= {"-", ":"} for cell in cells):
            continue
        if len(cells) != len(COLUMNS):
            raise ValueError(f"a row with {len(cells)} cells: {line}")
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _number(text: str) -> float | None:
    match = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)(?: s)?", text)
    return float(match.group(1).replace(",", "")) if match else None


def check(text: str, scenarios: Sequence[Scenario] = SCENARIOS) -> list[str]:
    """Everything wrong with a committed report (empty: it matches the suite)."""
    try:
        rows = parse_table(text)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    committed = [row["Scenario"] for row in rows]
    declared = [scenario.title for scenario in scenarios]
    if committed != declared:
        problems.append(f"the table's scenarios are {committed}, the suite declares {declared}")
    by_title = {row["Scenario"]: row for row in rows}
    for scenario in scenarios:
        row = by_title.get(scenario.title)
        if row is None:
            continue
        for column, expected in scenario.row().items():
            if row[column] != expected:
                problems.append(f"{scenario.title}: {column} is {row[column]!r}, the suite says {expected!r}")
        requests, failed = _number(row["Requests sent"]), _number(row["Failed"])
        recovered = None if row["Time to recover"] == NOT_APPLICABLE else _number(row["Time to recover"])
        if (
            requests is None
            or failed is None
            or (recovered is None and row["Time to recover"] != NOT_APPLICABLE)
        ):
            problems.append(f"{scenario.title}: a value is not a number: {row}")
            continue
        problems += [
            f"{scenario.title}: {problem}"
            for problem in scenario.problems(int(requests), int(failed), recovered)
        ]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rendering = commands.add_parser("render", help="write the report from a run's results")
    rendering.add_argument("--results", type=Path, default=None)
    rendering.add_argument("--out", type=Path, default=DOC)
    checking = commands.add_parser("check", help="compare a committed report with the suite")
    checking.add_argument("doc", type=Path, nargs="?", default=DOC)
    args = parser.parse_args(argv)
    if args.command == "render":
        from e2e_record import results_dir

        results, problems = load_results(args.results or results_dir())
        try:
            if problems:
                raise ValueError("; ".join(problems))
            text = render(results, f"{os.cpu_count()} cores")
        except ValueError as exc:
            print(f"reliability: error: {exc}", file=sys.stderr)
            return 1
        args.out.write_text(text)
        print(f"wrote {args.out}")
        return 0
    problems = check(args.doc.read_text())
    for problem in problems:
        print(f"reliability: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
