"""Fixtures for every test in the workspace: a real nats-server on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.shared.natsserver import EmbeddedNats


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream, its store under the test's tmp_path; stopped after the test."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.close()
