"""What the writer needs from a discovery source."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from tether.destination.model import EndpointSet
from tether.destination.reconcile import DesiredService
from tether.shared.supervisor import SupervisedTask, TaskFactory

ChangeCallback = Callable[[set[str]], None]
Spawn = Callable[[str, TaskFactory], SupervisedTask]


class Source(Protocol):
    kind: str

    @property
    def synced(self) -> bool:
        """True once the source has a complete picture (a leader only deletes keys after that)."""
        ...

    def keys(self) -> set[str]: ...

    def desired(self, key: str) -> DesiredService | None: ...

    async def start(self, on_change: ChangeCallback, spawn: Spawn) -> None:
        """Begins watching; ``on_change`` receives the keys whose desired state may have changed.

        Raises FatalError (SetupError) when the source cannot start (an unreadable registry file, say).
        Long-lived work goes in tasks started with ``spawn``.
        """
        ...

    async def stop(self) -> None: ...

    def on_leadership(self, current: Iterable[EndpointSet], now: float) -> set[str]:
        """Called when this replica becomes the writer, with what the bucket holds; returns changed keys."""
        ...
