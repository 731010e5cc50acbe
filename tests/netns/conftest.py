"""Fixtures for tests that need root: network namespaces joined by veth pairs, cleaned up after each test.

Tests here carry ``@pytest.mark.netns``; without root, ``ip``, ``iptables`` or namespace support they skip,
saying which of those is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which does not put test directories on sys.path; the tests
# here import their helper module by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns_harness import NetnsHarness, unavailable_reason


@pytest.fixture(scope="session")
def netns_supported() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespace tests skipped: {reason}")


@pytest.fixture
def netns(netns_supported: None) -> Iterator[NetnsHarness]:
    """Make namespaces with ``netns.namespace()`` and link them with ``netns.link(a, b)``."""
    harness = NetnsHarness()
    try:
        yield harness
    finally:
        harness.cleanup()
