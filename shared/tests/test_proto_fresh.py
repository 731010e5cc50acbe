"""The committed generated gRPC code must match what `make proto` generates from the .proto files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PROTO_DIR = SRC / "tether" / "shared" / "proto"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(SRC)) for p in PROTO_DIR.rglob("*.proto"))
    assert protos, "no .proto files found"
    shutil.copytree(
        SRC / "tether", tmp_path / "tether", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        check=True,
        cwd=tmp_path,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    # Bytecode caches (whoever imported the modules without PYTHONDONTWRITEBYTECODE) are not committed code.
    committed = sorted(
        p.relative_to(SRC) for p in PROTO_DIR.rglob("*_pb2*.py*") if "__pycache__" not in p.parts
    )
    assert generated == committed, "generated files differ from the committed set: run `make proto`"
    stale = [str(rel) for rel in generated if (tmp_path / rel).read_bytes() != (SRC / rel).read_bytes()]
    assert not stale, f"stale generated code, run `make proto`: {stale}"
