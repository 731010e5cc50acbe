"""List-then-watch of one Kubernetes resource, as a pure state machine (no client, no clock).

The adapter asks for the next action, performs it and reports the outcome:

* ``List``: list everything, report ``listed(resource_version)`` then apply the items as a replacement.
* ``Watch(rv)``: watch from ``rv``; report each event's ``resourceVersion`` (BOOKMARKs included) with
  ``seen``; a watch the server ends normally resumes from the last version seen.
* ``410 Gone`` (an ERROR event or an HTTP 410) means the version was compacted away: ``gone()`` relists.
* Any other failure: ``failed()`` answers ``Wait``, for the next delay of the shared jittered backoff
  (reset by the next success); after it the adapter watches again (or lists, if it never listed).
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.shared.backoff import Backoff


@dataclass(frozen=True, slots=True)
class List:
    pass


@dataclass(frozen=True, slots=True)
class Watch:
    resource_version: str


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


ReflectorAction = List | Watch | Wait


class ReflectorCore:
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._resource_version: str | None = None

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    def start(self) -> ReflectorAction:
        return List()

    def listed(self, resource_version: str) -> ReflectorAction:
        self._resource_version = resource_version
        self._backoff.reset()
        return Watch(resource_version)

    def seen(self, resource_version: str | None) -> None:
        if resource_version:
            self._resource_version = resource_version
            self._backoff.reset()

    def watch_ended(self) -> ReflectorAction:
        return self.resume()

    def gone(self) -> ReflectorAction:
        self._resource_version = None
        return List()

    def failed(self) -> ReflectorAction:
        return Wait(self._backoff.next())

    def resume(self) -> ReflectorAction:
        """What to do after a backoff or a normal end of a watch."""
        if self._resource_version is None:
            return List()
        return Watch(self._resource_version)
