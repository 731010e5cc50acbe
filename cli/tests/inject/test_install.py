"""``tether install [--ha] [--registry R]`` prints what ``kubectl kustomize`` renders from deploy/, without
kubectl: the copies packaged in tether-cli equal a live render (so they cannot drift from deploy/ unnoticed;
``make manifests`` refreshes them), and the command runs with no kubectl anywhere on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from inject.kit import KUBECTL, REPO, documents, render_deploy, tether

from tether.cli.install import manifests

TETHER = REPO / ".venv" / "bin" / "tether"
REGISTRY = "registry.internal:5000/mirror/tether"


def _images(text: str) -> set[str]:
    found = set()
    for doc in documents(text):
        pod = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        found |= {c["image"] for key in ("containers", "initContainers") for c in pod.get(key) or []}
    return found


def render_with_registry(tmp_path: Path, overlay: str, registry: str) -> str:
    """A kustomization over deploy/ (or the HA overlay) moving every image, as a user of kustomize would."""
    base = REPO / "deploy" / overlay if overlay else REPO / "deploy"
    images = sorted({image.split(":")[0] for image in _images(render_deploy(overlay))})
    lines = [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        f"  - {os.path.relpath(base, tmp_path)}",
        "images:",
    ]
    for image in images:
        lines += [f"  - name: {image}", f"    newName: {registry}/{image.rsplit('/', 1)[-1]}"]
    (tmp_path / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("overlay", ["", "overlays/ha"])
def test_the_packaged_manifests_equal_a_live_render(overlay: str) -> None:
    assert manifests(ha=bool(overlay)) == render_deploy(overlay), (
        "the manifests packaged for tether install differ from deploy/: run make manifests"
    )


def test_install_needs_no_kubectl(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert shutil.which("kubectl", path=env["PATH"]) is None
    for flags, overlay in (((), ""), (("--ha",), "overlays/ha")):
        result = subprocess.run(
            [str(TETHER), "install", *flags], capture_output=True, text=True, env=env, check=False
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == render_deploy(overlay)
    result = subprocess.run(
        [str(TETHER), "install", "--ha", "--registry", REGISTRY],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == render_with_registry(tmp_path, "overlays/ha", REGISTRY)


def test_registry_moves_every_image_and_nothing_else(tmp_path: Path) -> None:
    result = tether("install", "--registry", REGISTRY + "/")
    assert result.code == 0
    assert result.out == render_with_registry(tmp_path, "", REGISTRY)
    images = _images(result.out)
    assert images and all(image.startswith(REGISTRY + "/") for image in images)
    assert f"{REGISTRY}/nats:" in " ".join(images)
    before, after = manifests().splitlines(), result.out.splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed and all(b.strip().startswith("image: ") for _, b in changed)


def test_an_invalid_registry_is_one_line() -> None:
    result = tether("install", "--registry", "Not A Registry")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "tether: error: --registry: 'Not A Registry' is not a registry (host[:port][/path], lower case); "
        "e.g. --registry registry.internal:5000/tether\n"
    )
