"""The Dockerfiles as written: hadolint passes with no unexplained ignore, the final stage holds only the
virtual environment and runs the component's console script as its non-root user, the build context is the
.dockerignore allowlist, and `make images` builds every image under the kustomize names or says it cannot.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("destination", "identity", "telemetry", "public-api", "proxy")
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
IMAGES_KUSTOMIZATION = REPO / "deploy" / "components" / "images" / "kustomization.yaml"
Stages = dict[str, dict[str, list[tuple[str, str]]]]


def makefile_variable(name: str) -> str:
    found = re.search(rf"^{name}\s*:=\s*(\S+)\s*$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert found, f"{name} not in the Makefile"
    return found.group(1)


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for kw, arguments in stage if kw == keyword]


@pytest.mark.parametrize("component", COMPONENTS)
def test_hadolint_passes(component: str) -> None:
    path = REPO / "services" / component / "Dockerfile"
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_hadolint_ignore_says_why(component: str) -> None:
    """An inline ignore is allowed only under a comment that names the rule and gives the reason."""
    lines = [line.strip() for line in (REPO / "services" / component / "Dockerfile").read_text().splitlines()]
    for number, line in enumerate(lines):
        ignored = re.match(r"#\s*hadolint\s+ignore=(\S+)", line)
        if not ignored:
            continue
        first = number
        while first > 0 and lines[first - 1].startswith("#"):
            first -= 1
        reason = " ".join(lines[first:number])
        for rule in ignored.group(1).split(","):
            assert rule in reason, f"line {number + 1}: {rule} ignored without a comment saying why"


@pytest.mark.parametrize("component", COMPONENTS)
def test_uv_is_the_makefiles_version(stages: Stages, component: str) -> None:
    assert f"UV_VERSION={makefile_variable('UV_VERSION')}" in args_of(stages[component]["global"], "ARG")
    assert args_of(stages[component]["uv"], "FROM") == ["ghcr.io/astral-sh/uv:${UV_VERSION} AS uv"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_final_stage_holds_only_the_venv_and_runs_the_console_script(stages: Stages, component: str) -> None:
    build, final = stages[component]["build"], stages[component]["final"]
    with (REPO / "shared" / "pyproject.toml").open("rb") as shared:
        minimum = tomllib.load(shared)["project"]["requires-python"].removeprefix(">=")
    # A slim Debian Python of the version the project targets, pinned by tag, the same in both stages: the
    # venv's interpreter is the build stage's /usr/local/bin/python3.
    (base,) = args_of(final, "FROM")
    assert re.fullmatch(rf"python:{re.escape(minimum)}-slim-[a-z]+", base)
    assert args_of(build, "FROM") == [f"{base} AS build"]
    (install,) = args_of(build, "RUN")
    venv = shlex.split(install)[3]
    assert shlex.split(install)[4] == "/usr/local/bin/python3"
    # Nothing but the venv comes from the build stage (no uv, no sources).
    assert args_of(final, "COPY") == [f"--from=build {venv} {venv}"]
    assert any(f"PATH={venv}/bin:$PATH" in env for env in args_of(final, "ENV"))
    uid = "2102" if component == "proxy" else "2103"
    assert args_of(final, "USER") == [f"{uid}:{uid}"]
    assert any(f"--uid {uid} --gid {uid}" in run for run in args_of(final, "RUN"))
    with (REPO / "services" / component / "pyproject.toml").open("rb") as project:
        scripts = tomllib.load(project)["project"]["scripts"]
    assert args_of(final, "ENTRYPOINT") == [f'["tether-{component}"]']
    assert f"tether-{component}" in scripts


def test_proxy_image_installs_iptables_and_keeps_no_setcap(stages: Stages) -> None:
    """setcap comes and goes in the one RUN that uses it (file capabilities do not survive COPY --from)."""
    (run,) = [run for run in args_of(stages["proxy"]["final"], "RUN") if "iptables" in run]
    assert "--no-install-recommends iptables libcap2-bin" in run
    assert run.index("setcap") < run.index("apt-get purge -y --auto-remove libcap2-bin")
    assert run.rstrip().endswith("rm -rf /var/lib/apt/lists/*")
    for component in COMPONENTS[:-1]:
        assert not any("iptables" in r for r in args_of(stages[component]["final"], "RUN"))


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".tools/bin/uv",
        ".git/HEAD",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/content",
        ".pytest_cache/README.md",
        ".hypothesis/examples/x",
        "tests/images/test_install_replay.py",
        "services/proxy/tests/test_tap.py",
        "shared/src/tether/shared/__pycache__/config.cpython-311.pyc",
        "services/proxy/src/tether/proxy/__pycache__/proxy.cpython-311.pyc",
        "docs/ARCHITECTURE.md",
        "bench/proxy/run.py",
        "deploy/kustomization.yaml",
        "tools/checkov/.venv/bin/checkov",
    ],
)
def test_build_context_leaves_out(in_build_context: Callable[[str], bool], path: str) -> None:
    assert not in_build_context(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "uv.lock",
        "shared/pyproject.toml",
        "shared/src/tether/shared/config.py",
        "cli/pyproject.toml",
        "services/proxy/pyproject.toml",
        "services/public-api/src/tether/public_api/service.py",
        "tools/images/install-venv.sh",
    ],
)
def test_build_context_holds(in_build_context: Callable[[str], bool], path: str) -> None:
    assert in_build_context(path)


def fake_engine(directory: Path, name: str, answers_info: bool) -> None:
    """A stand-in for the docker or podman client: records each call's arguments and working directory."""
    script = directory / name
    status = 0 if answers_info else 1
    script.write_text(
        f'#!/bin/sh\necho "{name} $(pwd) $*" >> "$ENGINE_LOG"\nif [ "$1" = info ]; then exit {status}; fi\n'
    )
    script.chmod(0o755)


def make_images(
    tmp_path: Path, engines: dict[str, bool]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`make images` with only the given fake engines on PATH (before /usr/bin and /bin, which make needs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, answers in engines.items():
        fake_engine(bin_dir, name, answers)
    log = tmp_path / "engine.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_ENGINES", "MAKEFLAGS", "MAKELEVEL")}
    env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "ENGINE_LOG": str(log)}
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "images"], env=env, capture_output=True, text=True, timeout=60
    )
    return done, log.read_text().splitlines() if log.exists() else []


def expected_refs() -> dict[str, str]:
    images = yaml.safe_load(IMAGES_KUSTOMIZATION.read_text())["images"]
    return {
        image["name"].removeprefix("tether/"): f"{image['newName']}:{image['newTag']}"
        for image in images
        if image["name"].startswith("tether/")
    }


def test_make_images_without_an_engine_says_so_and_succeeds(tmp_path: Path) -> None:
    """Clients whose daemon does not answer (as the docker client here) are no engine either."""
    done, calls = make_images(tmp_path, {"docker": False, "podman": False})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "make images: no container engine found (docker or podman, answering `info`); no image built"
    ]
    assert not any(" build " in call for call in calls)


@pytest.mark.parametrize(
    ("engines", "used"), [({"docker": True}, "docker"), ({"docker": False, "podman": True}, "podman")]
)
def test_make_images_builds_every_image_under_its_kustomize_name(
    tmp_path: Path, engines: dict[str, bool], used: str
) -> None:
    refs = expected_refs()
    assert sorted(refs) == sorted(COMPONENTS)
    done, calls = make_images(tmp_path, engines)
    assert done.returncode == 0, done.stderr
    builds = [call for call in calls if call.startswith(f"{used} {REPO} build ")]
    uv_version = makefile_variable("UV_VERSION")
    assert sorted(builds) == sorted(
        f"{used} {REPO} build --build-arg UV_VERSION={uv_version} --file services/{component}/Dockerfile "
        f"--tag {ref} ."
        for component, ref in refs.items()
    )
