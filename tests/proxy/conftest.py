"""Fixtures for the proxy integration tests (helpers live in proxy_mesh.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which does not put test directories on sys.path; the tests
# here import their helper module by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_mesh import Mesh
from telemetry_harness import Replica

from tether.shared.natsserver import EmbeddedNats
from tether.shared.testing import eventually


@pytest.fixture
async def mesh(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Mesh]:
    world = Mesh(tmp_path, nats_server)
    try:
        await world.start_destination()
        yield world
    finally:
        await world.close()


@pytest.fixture
async def meshed(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Mesh]:
    """The mesh with the real identity service: proxies made with ``meshed=True`` get certificates."""
    world = Mesh(tmp_path, nats_server)
    try:
        await world.start_identity()
        await world.start_destination()
        yield world
    finally:
        await world.close()
        if world.identity is not None:
            await world.identity.stop()


@pytest.fixture
async def replicas(meshed: Mesh) -> AsyncIterator[list[Replica]]:
    """Two real telemetry replicas (in-process, each in the real runtime) with certificates from identity."""
    started = [Replica(name, meshed) for name in ("telemetry-a", "telemetry-b")]
    try:
        for replica in started:
            await replica.runtime.start()
            await eventually(replica.runtime.ready, 15.0, "telemetry ready")
        yield started
    finally:
        for replica in started:
            await replica.runtime.stop()
