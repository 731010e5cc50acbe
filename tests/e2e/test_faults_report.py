"""docs/reliability.md is what the suite declares and asserts (tests/e2e/reliability.py), not hand-written.

These tests read files only (no root, no cluster): the committed table must list exactly the declared
scenarios in order, repeat each row's declared load, faults, allowed failures and bound, and hold values
within what the scenario tests assert. ``make e2e-report`` (as root) rewrites it from a run of the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability import DOC, SCENARIOS, Result, Scenario, check, load_results, parse_table, render


def _passing(scenario: Scenario) -> Result:
    """A result right at the edges of what the scenario allows."""
    recovered = None if scenario.bound is None else scenario.bound
    return Result(scenario.title, scenario.min_requests, scenario.max_failed, recovered, {"note": "1 s"})


def _rendered(**changes: Result) -> str:
    results = {scenario.title: _passing(scenario) for scenario in SCENARIOS}
    results.update({result.scenario: result for result in changes.values()})
    return render(results, "2 cores")


def test_the_committed_report_matches_the_suite() -> None:
    assert DOC.exists(), f"{DOC} is missing: run `make e2e-report` (as root)"
    problems = check(DOC.read_text())
    assert not problems, "docs/reliability.md is out of date; run `make e2e-report`:\n" + "\n".join(problems)


def test_a_rendered_report_passes_its_own_check_and_lists_every_scenario_once() -> None:
    text = _rendered()
    assert check(text) == []
    assert [row["Scenario"] for row in parse_table(text)] == [scenario.title for scenario in SCENARIOS]
    assert len({scenario.title for scenario in SCENARIOS}) == len(SCENARIOS)


def test_a_row_that_differs_from_its_declaration_is_caught() -> None:
    text = _rendered()
    scenario = next(s for s in SCENARIOS if s.bound is not None)
    edited = text.replace(f"| {scenario.faults} |", f"| {scenario.faults}, and then some |")
    assert edited != text
    assert any("Faults injected" in problem for problem in check(edited))
    lines = text.splitlines()
    dropped = "\n".join(line for line in lines if not line.startswith(f"| {scenario.title} |"))
    assert any("scenarios are" in problem for problem in check(dropped))


def test_values_outside_the_asserted_bounds_are_caught() -> None:
    hang = next(s for s in SCENARIOS if s.title == "Data plane: endpoint hangs")
    too_many = Result(hang.title, hang.min_requests, hang.max_failed + 1, 1.0)
    assert any("more than" in problem for problem in check(_rendered(x=too_many)))
    assert hang.bound is not None
    too_slow = Result(hang.title, hang.min_requests, 0, hang.bound + 0.1)
    assert any("time to recover" in problem for problem in check(_rendered(x=too_slow)))
    too_little = Result(hang.title, hang.min_requests - 1, 0, 1.0)
    assert any("fewer than" in problem for problem in check(_rendered(x=too_little)))
    text = _rendered()
    row = next(line for line in text.splitlines() if line.startswith(f"| {hang.title} |"))
    cells = row.split(" | ")
    cells[3] = "lots"
    assert any("not a number" in problem for problem in check(text.replace(row, " | ".join(cells))))


def test_rendering_needs_a_passed_result_of_every_scenario_written_against_its_declaration(
    tmp_path: Path,
) -> None:
    first, second = SCENARIOS[0], SCENARIOS[1]
    for scenario, passed, load in ((first, True, first.load_text), (second, True, "something else")):
        body = {"scenario": scenario.title, "load": load, "faults": scenario.faults, "requests": 10,
                "failed": 0, "allowed_failures": scenario.max_failed, "recovery_seconds": None,
                "recovery_bound_seconds": scenario.bound, "measured": {}, "passed": passed}  # fmt: skip
        (tmp_path / f"{scenario.title[:5]}.json").write_text(json.dumps(body))
    results, problems = load_results(tmp_path)
    assert list(results) == [first.title]
    assert len(problems) == 1 and "load is 'something else'" in problems[0]
    with pytest.raises(ValueError, match="no result for"):
        render(results, "2 cores")
