#!/bin/sh
# install-venv.sh COMPONENT VENV [PYTHON]
#
# The one install step of every image (services/<component>/Dockerfile runs it in its build stage), kept in a
# script so that tests/images/test_install_replay.py runs these very commands without a container engine.
# Run from the workspace root (the build context): makes VENV, a virtual environment holding exactly what
# uv.lock pins for tether-COMPONENT (its extras of tether-shared included, nothing of the dev group), then
# tether-shared and tether-COMPONENT themselves as wheels built from this checkout (not editable: the final
# stage copies only VENV). PYTHON (default python3) is the interpreter the venv is made from: the final stage
# must hold it at the same path.
set -eu

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: install-venv.sh COMPONENT VENV [PYTHON]" >&2
    exit 2
fi
component=$1
venv=$2
python=${3:-python3}

# Byte-compile at install time: the containers run with a read-only root filesystem, where Python could not
# write __pycache__ and would compile every module again at each start. Copy rather than link from uv's cache,
# which a build stage does not keep; never download an interpreter (the venv must use PYTHON).
export UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --locked: refuse a uv.lock that no longer matches the pyproject files rather than resolving anew.
uv export --quiet --locked --package "tether-$component" --no-dev --no-emit-workspace \
    --format requirements.txt --output-file "$work/requirements.txt"
uv venv --quiet --python "$python" "$venv"
# Every pin carries its hashes; --no-deps because the export already is the whole locked closure.
uv pip install --quiet --python "$venv/bin/python" --require-hashes --no-deps -r "$work/requirements.txt"
# uv build always builds afresh (installing the directories would reuse a cached build keyed on
# pyproject.toml alone, stale after a source change).
uv build --quiet --wheel --out-dir "$work/wheels" shared
uv build --quiet --wheel --out-dir "$work/wheels" "services/$component"
uv pip install --quiet --python "$venv/bin/python" --no-deps "$work"/wheels/*.whl
