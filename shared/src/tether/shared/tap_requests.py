"""The tap messages that cross NATS: tap requests from the public API and the match counts telemetry
replicas share, as CloudEvents data (see :mod:`tether.shared.cloudevents`).

* :class:`TapRequest` on ``tether.v1.tap.requests`` (:data:`tether.shared.subjects.TAP_REQUESTS`), from the
  public API: ``action="start"`` opens a tap, ``"renew"`` (every :data:`RENEW_INTERVAL_SECONDS`) keeps it
  alive and carries the whole request again, so a replica that missed the start joins on the next renewal;
  ``"cancel"`` ends it. One event type on the subject, so one subscription decodes all three.
* :class:`TapEvent` on ``tether.v1.tap.events.<tap-id>`` (:func:`tether.shared.subjects.tap_events`), from
  the telemetry replica a proxy reports to: one phase of one request the proxy captured for the tap.
* :class:`TapMatchCount` on ``tether.v1.tap.matches.<tap-id>`` (:func:`tether.shared.subjects.tap_matches`),
  from each telemetry replica: how many of its connected proxies match the tap, so every replica splits the
  tap's rate across all matching proxies mesh-wide.

The Structs are defined in :mod:`tether.shared.events` with every other mesh event (docs/events.md lists
them all) and re-exported here with the tap constants.

A tap lives while renewed: it ends after :data:`MISSED_RENEWALS` missed renewals or a cancel. Header values
are captured only for the names a request lists, and never for :data:`SENSITIVE_HEADERS`.
"""

from __future__ import annotations

from tether.shared.events import (
    MAX_HEADER_NAMES,
    MAX_REQUESTS_LIMIT,
    MAX_TAP_RATE,
    SENSITIVE_HEADERS,
    FilterText,
    HeaderName,
    PodName,
    ReplicaId,
    TapAction,
    TapAddress,
    TapEvent,
    TapFilter,
    TapId,
    TapMatchCount,
    TapRequest,
    TapRequestInit,
    TapResponseEnd,
    TapResponseInit,
    TapTarget,
)

__all__ = [
    "MATCH_COUNT_INTERVAL_SECONDS",
    "MAX_HEADER_NAMES",
    "MAX_REQUESTS_LIMIT",
    "MAX_TAP_RATE",
    "MISSED_RENEWALS",
    "RENEW_INTERVAL_SECONDS",
    "SENSITIVE_HEADERS",
    "FilterText",
    "HeaderName",
    "PodName",
    "ReplicaId",
    "TapAction",
    "TapAddress",
    "TapEvent",
    "TapFilter",
    "TapId",
    "TapMatchCount",
    "TapRequest",
    "TapRequestInit",
    "TapResponseEnd",
    "TapResponseInit",
    "TapTarget",
]

#: The requester renews a tap this often.
RENEW_INTERVAL_SECONDS = 2.0
#: A tap ends once this many renewals in a row are missed.
MISSED_RENEWALS = 3
#: Replicas re-publish their match counts this often; a count not refreshed for
#: ``MISSED_RENEWALS * MATCH_COUNT_INTERVAL_SECONDS`` (plus a grace) is stale.
MATCH_COUNT_INTERVAL_SECONDS = 2.0
