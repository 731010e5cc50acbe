"""checkov's Kubernetes checks on the rendered manifests: none fails, and each skip is written next to what
it skips, as a `checkov.io/skipN: CKV_K8S_xx=<reason>` annotation with its reason.

checkov runs from its own locked environment (tools/checkov, `make checkov-env`): it pins packaging<24,
which this workspace's pytest cannot share. It runs once per overlay, offline (--skip-download).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .manifests import ROOT, Doc, Manifests

CHECKOV = ROOT / "tools" / "checkov" / ".venv" / "bin" / "checkov"
SKIP_KEY = re.compile(r"^checkov\.io/skip\d+$")
CHECK_ID = re.compile(r"^CKV2?_K8S_\d+$")


def skip_annotations(docs: list[Doc]) -> tuple[dict[tuple[str, str], str], list[str]]:
    """The skips written in the manifests, {(resource id, check id): reason}, and what is wrong with any."""
    skips: dict[tuple[str, str], str] = {}
    problems = []
    for doc in docs:
        meta = doc["metadata"]
        resource = f"{doc['kind']}.{meta.get('namespace', 'default')}.{meta['name']}"
        for key, value in (meta.get("annotations") or {}).items():
            if not key.startswith(("checkov.io/", "bridgecrew.io/")):
                continue
            check, sep, reason = str(value).partition("=")
            if not SKIP_KEY.match(key):
                problems.append(f"{resource}: {key} is not a checkov skip (checkov.io/skipN)")
            elif not CHECK_ID.match(check):
                problems.append(f"{resource}: {key} names no Kubernetes check: {value!r}")
            elif not sep or len(reason.strip()) < 20:
                problems.append(f"{resource}: {key} skips {check} without saying why")
            elif "=" in reason:
                problems.append(f"{resource}: {key}: checkov cuts the reason at '='; rephrase it")
            else:
                skips[(resource, check)] = reason
    return skips, problems


@pytest.fixture(scope="session")
def checkov_reports(
    rendered: dict[str, Manifests], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One checkov run over every overlay's rendered manifests (one file each); its report per overlay."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make checkov-env` creates it"
    directory: Path = tmp_path_factory.mktemp("checkov")
    files = []
    for name, manifests in rendered.items():
        (directory / f"{name}.yaml").write_text(manifests.text)
        files += ["--file", f"{name}.yaml"]
    result = subprocess.run(
        [
            str(CHECKOV),
            *files,
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=directory,
    )
    # Exit 1 means failed checks, which the tests report; anything else is checkov itself failing.
    assert result.returncode in (0, 1), f"checkov failed: {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    assert report["check_type"] == "kubernetes"
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    reports = {}
    for name in rendered:
        reports[name] = {
            kind: [c for c in checks if c["file_path"].lstrip("/") == f"{name}.yaml"]
            for kind, checks in report["results"].items()
        }
    return reports


def test_no_check_fails(manifests: Manifests, checkov_reports: dict[str, Any]) -> None:
    results = checkov_reports[manifests.name]
    checked = {c["resource"] for c in results["passed_checks"]}
    for workload in manifests.workloads():  # checkov did look at them
        assert f"{workload['kind']}.tether.{workload['metadata']['name']}" in checked
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert not failed, "checkov checks failed:\n" + "\n".join(failed)


def test_every_skip_is_written_with_its_reason(manifests: Manifests, checkov_reports: dict[str, Any]) -> None:
    skips, problems = skip_annotations(manifests.docs)
    assert not problems, "\n".join(problems)
    skipped = checkov_reports[manifests.name]["skipped_checks"]
    seen = set()
    for check in skipped:
        key = (check["resource"], check["check_id"])
        comment = check["check_result"].get("suppress_comment", "")
        assert key in skips, f"{key} was skipped without an annotation in the manifests"
        assert comment == skips[key] and comment != "No comment provided", key
        seen.add(key)
    # A skip that no longer skips anything (the check passes now) is removed, not kept.
    assert set(skips) == seen, f"skips that skip nothing: {sorted(set(skips) - seen)}"


def test_a_skip_without_its_reason_is_refused() -> None:
    docs = [
        {"kind": "Deployment", "metadata": {"name": "a", "annotations": {"checkov.io/skip1": "CKV_K8S_43"}}},
        {"kind": "Job", "metadata": {"name": "b", "annotations": {"checkov.io/skip1": "CKV_K8S_15= "}}},
        {"kind": "Job", "metadata": {"name": "c", "annotations": {"checkov.io/skip": "CKV_K8S_15=x" * 3}}},
    ]
    _, problems = skip_annotations(docs)
    assert len(problems) == 3, problems
