"""The proxy's admin routes (default 0.0.0.0:4191): /metrics, /live, /ready and POST /shutdown.

The listener is the shared one (tether.shared.admin); what is proxy-specific is the metrics renderer and
``POST /shutdown``, which jobs use to stop their sidecar and which is accepted from loopback only.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from tether.shared.admin import AdminResponse, AdminServer, AfterResponse, Routes, health_routes, is_loopback

__all__ = ["AdminRoutes", "AdminServer", "is_loopback"]

log = structlog.get_logger(__name__)


class AdminRoutes(Routes):
    """The proxy's route table over its metrics registry, readiness and shutdown callbacks."""

    def __init__(
        self,
        *,
        render_metrics: Callable[[], str],
        ready: Callable[[], bool],
        shutdown: Callable[[], None],
    ) -> None:
        def request_shutdown(peer_host: str) -> tuple[AdminResponse, AfterResponse | None]:
            if not is_loopback(peer_host):
                log.warning("admin_shutdown_refused", peer=peer_host)
                return AdminResponse(403, b"shutdown is only accepted from loopback\n"), None
            log.info("admin_shutdown_requested", peer=peer_host)
            return AdminResponse(202, b"shutting down\n"), shutdown

        table = health_routes(ready, lambda: render_metrics().encode())
        table["/shutdown"] = {"POST": request_shutdown}
        super().__init__(table)
