"""Fixtures for the telemetry integration tests: the real identity service (helpers live in harness.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which does not put test directories on sys.path; the tests
# here import their helper module by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Identity


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[Identity]:
    server = Identity(tmp_path / "ca")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
