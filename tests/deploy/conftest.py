"""tests/deploy: the manifests rendered once per session, by the real kubectl (kustomize)."""

from __future__ import annotations

import pytest

from .manifests import OVERLAYS, Manifests, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, Manifests]:
    """`kubectl kustomize deploy/` and `kubectl kustomize deploy/overlays/ha`, by overlay name."""
    out = {}
    for name, directory in OVERLAYS.items():
        text, docs = render(directory)
        out[name] = Manifests(name, text, docs)
    return out


@pytest.fixture(scope="session", params=sorted(OVERLAYS))
def manifests(request: pytest.FixtureRequest, rendered: dict[str, Manifests]) -> Manifests:
    """Each overlay in turn."""
    return rendered[request.param]
