"""The maximum age of a long-lived stream (``--max-stream-age``): destination's Get streams and telemetry's
Report streams end cleanly (status OK) after it, so that the proxies reconnect, each on a new connection,
which a Kubernetes Service may send to a replica added since: scaling a component out needs nothing else.

The age is jittered, ±:data:`JITTER` around the configured one, so that proxies that connected together
(after a rollout, say) do not all reconnect together.
"""

from __future__ import annotations

import math
import random
from typing import Annotated

from msgspec import Meta

JITTER = 0.15
DEFAULT_MAX_STREAM_AGE = 300.0

#: The ``--max-stream-age`` option of the components whose streams end: seconds, 0 (never) to a day. Each
#: adds its own description (:func:`max_stream_age_help`), which names its stream.
MaxStreamAge = Annotated[float, Meta(ge=0.0, le=86_400.0)]


def max_stream_age_help(stream: str, condition: str = "") -> str:
    """``--max-stream-age``'s help for ``stream`` (``a Get stream``), ending once ``condition`` holds."""
    return (
        f"seconds after which {stream} ends (jittered by up to ±{round(JITTER * 100)} percent){condition} so "
        "the proxy reconnects, possibly to a new replica (0: never)"
    )


def stream_deadline(now: float, max_age: float, rng: random.Random | None = None) -> float:
    """When a stream (or connection) opened at ``now`` ends: ``now`` plus ``max_age`` jittered by
    ±:data:`JITTER`; infinity when ``max_age`` is 0 (streams never end on their own)."""
    if max_age <= 0:
        return math.inf
    jitter = (rng or random).uniform(-JITTER, JITTER)
    return now + max_age * (1.0 + jitter)
