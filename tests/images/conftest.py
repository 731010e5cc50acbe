"""Fixtures for the image tests: the Dockerfiles parsed, the build context, and each image's install replayed.

No container engine runs here, so an image's build stage is replayed on the host: the files its COPY
instructions take from the build context (the repository filtered by .dockerignore, with Docker's matching
rules) are copied into a fresh directory standing for its WORKDIR, and its one RUN instruction, the shared
tools/images/install-venv.sh, runs there with the pinned uv and this interpreter's base Python in place of the
image's. The virtual environment it makes is the one the final stage would copy.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("destination", "identity", "telemetry", "public-api", "proxy")
INSTALL_SCRIPT = "tools/images/install-venv.sh"
# The build stage's WORKDIR; relative COPY destinations land below it.
IMAGE_WORKDIR = PurePosixPath("/src")

Instruction = tuple[int, str, str]
"""(stage index, instruction keyword in capitals, its arguments with continuation lines joined)."""


def parse_dockerfile(text: str) -> list[Instruction]:
    """A Dockerfile's instructions in order, comments dropped and continuation lines joined as Docker does."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append((stage, keyword, arguments.strip()))
        pending = ""
    return instructions


def dockerfile(component: str) -> list[Instruction]:
    return parse_dockerfile((REPO / "services" / component / "Dockerfile").read_text())


def stage_of(instructions: list[Instruction], name: str | None) -> list[Instruction]:
    """The instructions of the stage ``FROM … AS name``, or of the final stage when ``name`` is None."""
    froms = [(stage, args) for stage, keyword, args in instructions if keyword == "FROM"]
    if name is None:
        wanted = froms[-1][0]
    else:
        named = [stage for stage, args in froms if args.lower().endswith(f" as {name}")]
        assert named, f"no stage named {name!r}"
        wanted = named[0]
    return [item for item in instructions if item[0] == wanted]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: Go's filepath.Match plus ``**``, as moby's patternmatcher reads it."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """Which paths of the repository are in the build context: the last matching pattern decides, a pattern
    matching a directory also matches everything below it, ``!`` re-includes (Docker's rules)."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            cleaned = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            self.rules.append((include, _pattern_regex(cleaned)))

    def excluded(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for include, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not include
        return excluded


def context_files(source: str, ignore: DockerIgnore) -> list[Path]:
    """The build context's files under ``source`` (a file or directory relative to the repository root)."""
    root = REPO / source
    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [p for p in candidates if not ignore.excluded(p.relative_to(REPO).as_posix())]


def replay_copy(arguments: str, workdir: Path, ignore: DockerIgnore) -> None:
    """``COPY src... dest`` from the build context into the directory standing for the stage's WORKDIR."""
    *sources, dest = shlex.split(arguments)
    assert not any(s.startswith("--") for s in sources), f"COPY option not replayed: {arguments}"
    target = workdir / (IMAGE_WORKDIR / dest).relative_to(IMAGE_WORKDIR)
    for source in sources:
        files = context_files(source, ignore)
        assert files, f"COPY {source}: nothing of it is in the build context (see .dockerignore)"
        if (REPO / source).is_file():
            destination = target / Path(source).name if dest.endswith("/") else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, destination)
            continue
        for file in files:
            destination = target / file.relative_to(REPO / source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination)


def uv_binary() -> Path:
    """The uv `make` uses: from PATH, else the pinned copy it bootstraps into .tools/."""
    found = shutil.which("uv")
    return Path(found) if found else REPO / ".tools" / "bin" / "uv"


def base_python() -> Path:
    """This interpreter's base installation (not the workspace venv): the image's /usr/local/bin/python3."""
    return (Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}").resolve()


def replay_build_stage(component: str, root: Path, ignore: DockerIgnore, env: Mapping[str, str]) -> Path:
    """Replays ``component``'s build stage under ``root``; returns the virtual environment it made."""
    workdir = root / "src"
    workdir.mkdir(parents=True)
    venv = root / "venv"
    runs = []
    for _, keyword, arguments in stage_of(dockerfile(component), "build"):
        if keyword == "COPY" and not arguments.startswith("--from="):
            replay_copy(arguments, workdir, ignore)
        elif keyword == "RUN":
            runs.append(arguments)
    assert len(runs) == 1, f"{component}: the build stage must RUN only {INSTALL_SCRIPT}, it runs {runs}"
    argv = shlex.split(runs[0])
    assert argv[:2] == ["sh", INSTALL_SCRIPT] and argv[2] == component, runs[0]
    # The image's venv path and interpreter, replaced by this run's.
    argv = [argv[0], argv[1], component, str(venv), str(base_python())]
    done = subprocess.run(argv, cwd=workdir, env=dict(env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{component}: {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return venv


@pytest.fixture(scope="session")
def stages() -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Each component's Dockerfile: stage name (``AS`` name, "final" for the last) to (keyword, arguments)."""
    parsed: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for component in COMPONENTS:
        instructions = dockerfile(component)
        names = {}
        for stage, keyword, arguments in instructions:
            if keyword == "FROM":
                words = arguments.split()
                names[stage] = words[-1] if len(words) == 3 and words[1].lower() == "as" else f"stage{stage}"
        names[max(names)] = "final"
        parsed[component] = {}
        for stage, keyword, arguments in instructions:
            key = names.get(stage, "global")  # ARGs before the first FROM are stage -1
            parsed[component].setdefault(key, []).append((keyword, arguments))
    return parsed


@pytest.fixture(scope="session")
def in_build_context() -> Callable[[str], bool]:
    """Whether a path relative to the repository root is in the build context (.dockerignore)."""
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    return lambda path: not ignore.excluded(path)


@pytest.fixture(scope="session")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every image's build stage replayed: component to the virtual environment its final stage would copy.

    Two at a time: uv's cache is safe to share, and the machine has two cores.
    """
    root = tmp_path_factory.mktemp("images")
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    uv = uv_binary()
    env = {**os.environ, "PATH": f"{uv.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(replay_build_stage, c, root / c, ignore, env) for c in COMPONENTS}
        return {c: future.result() for c, future in futures.items()}
