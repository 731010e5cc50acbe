"""Every rendered document is a valid object of the current Kubernetes API (kubernetes-validate, strict:
unknown fields are errors, as `kubectl apply --validate=strict` makes them)."""

from __future__ import annotations

import kubernetes_validate  # type: ignore[import-untyped]

from .manifests import Manifests

#: The newest Kubernetes whose schemas kubernetes-validate ships (what it validates against by default).
KUBERNETES_VERSION: str = kubernetes_validate.latest_version()


def test_every_document_validates_strictly(manifests: Manifests) -> None:
    assert tuple(int(part) for part in KUBERNETES_VERSION.split(".")[:2]) >= (1, 33)
    problems = []
    for doc in manifests.docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {path}")
    assert not problems, "\n".join(problems)
    assert len(manifests.docs) > 30


def test_validation_is_strict(manifests: Manifests) -> None:
    """The check above would catch a misspelt field: kubernetes-validate rejects an unknown one."""
    deployment = next(doc for doc in manifests.docs if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    try:
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("an unknown field was accepted")
