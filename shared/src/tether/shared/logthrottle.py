"""Bounding how often one kind of warning is logged, for warnings a peer can provoke at will.

An attacker that reconnects after every cut-off could otherwise turn the proxy's log into its flood.
Pure: the time is passed in.
"""

from __future__ import annotations


class LogThrottle:
    """At most ``per_second`` lines per key in any one-second window; the rest are counted.

    ``admit`` answers None for a line to drop, or how many lines of that key were dropped since the
    last one admitted (to log with it, so nothing is silently lost).
    """

    __slots__ = ("_per_second", "_windows")

    def __init__(self, per_second: int = 10) -> None:
        self._per_second = per_second
        # key -> (window start, lines admitted in it, lines dropped since the last admitted)
        self._windows: dict[str, tuple[float, int, int]] = {}

    def admit(self, key: str, now: float) -> int | None:
        start, admitted, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= 1.0:
            start, admitted = now, 0
        if admitted >= self._per_second:
            self._windows[key] = (start, admitted, dropped + 1)
            return None
        self._windows[key] = (start, admitted + 1, 0)
        return dropped
