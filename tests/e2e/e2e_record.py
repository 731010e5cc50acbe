"""What each scenario measured, as JSON files a report (docs/reliability.md) is generated from.

One file per scenario, ``<results dir>/<slug of the scenario>.json`` (``$TETHER_E2E_RESULTS``, default
``<repo>/.e2e-results``), written when the test ends, passed or not::

    {"scenario": "Scale out and in", "test": "tests/e2e/test_scale.py::test_scale_out_and_in",
     "load": "...", "faults": "...", "requests": 812, "failed": 0, "allowed_failures": 0,
     "recovery_seconds": 0.61, "recovery_bound_seconds": 2.0,
     "measured": {"first_request_on_new_pod_seconds": {"value": 0.61, "bound": 2.0, "unit": "s"}},
     "passed": true, "recorded_at": "2026-12-01T16:00:00+00:00"}

``bound`` is what the test asserts (``value <= bound``), null when it asserts none.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e_kube import REPO


def results_dir() -> Path:
    return Path(os.environ.get("TETHER_E2E_RESULTS") or REPO / ".e2e-results")


def slug(scenario: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", scenario.lower()).strip("-")


@dataclass
class ScenarioRecord:
    scenario: str
    test: str
    load: str = ""
    faults: str = ""
    requests: int = 0
    failed: int = 0
    allowed_failures: int = 0
    recovery_seconds: float | None = None
    recovery_bound_seconds: float | None = None
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)

    def traffic(self, requests: int, failed: int, allowed_failures: int = 0) -> None:
        self.requests, self.failed, self.allowed_failures = requests, failed, allowed_failures

    def measure(self, name: str, value: float | int, *, bound: float | None = None, unit: str = "") -> None:
        self.measured[name] = {"value": value, "bound": bound, "unit": unit}

    def recovery(self, seconds: float, bound: float) -> None:
        self.recovery_seconds, self.recovery_bound_seconds = round(seconds, 3), bound
        self.measure("recovery_seconds", round(seconds, 3), bound=bound, unit="s")

    def write(self, passed: bool) -> Path:
        directory = results_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{slug(self.scenario)}.json"
        body = {
            "scenario": self.scenario,
            "test": self.test,
            "load": self.load,
            "faults": self.faults,
            "requests": self.requests,
            "failed": self.failed,
            "allowed_failures": self.allowed_failures,
            "recovery_seconds": self.recovery_seconds,
            "recovery_bound_seconds": self.recovery_bound_seconds,
            "measured": self.measured,
            "passed": passed,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
        temporary.replace(path)
        return path
