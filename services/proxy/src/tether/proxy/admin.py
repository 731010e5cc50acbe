"""The proxy's own admin route (the listener, /live, /ready and /metrics are the shared runtime's).

``POST /shutdown`` stops the sidecar: jobs use it once their work is done. It is accepted from loopback
only, so that nothing outside the pod can stop it.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from tether.shared.admin import AdminResponse, AfterResponse, Route, is_loopback

log = structlog.get_logger(__name__)


def shutdown_routes(shutdown: Callable[[], None]) -> dict[str, dict[str, Route]]:
    def request_shutdown(peer_host: str) -> tuple[AdminResponse, AfterResponse | None]:
        if not is_loopback(peer_host):
            log.warning("admin_shutdown_refused", peer=peer_host)
            return AdminResponse(403, b"shutdown is only accepted from loopback\n"), None
        log.info("admin_shutdown_requested", peer=peer_host)
        return AdminResponse(202, b"shutting down\n"), shutdown

    return {"/shutdown": {"POST": request_shutdown}}
