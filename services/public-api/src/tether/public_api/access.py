"""Admission of Tap and Endpoints calls: the configured :mod:`tether.public_api.authz` decision, answered at
the gRPC edge, and for Tap the audit event every decision publishes (``tether.v1.audit.tap``).

A tap is audited after its request was validated and before it starts, whatever the decision: so the trail
holds the refused attempts too, and a tap never streams without its audit event having been sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn

import grpc
import structlog

from tether.public_api.authz import ANONYMOUS, Authorizer, Caller, authority_namespace
from tether.public_api.errors import Decision, Refused
from tether.shared import subjects
from tether.shared.events import TapAudit, TapRequest

log = structlog.get_logger(__name__)

Publish = Callable[[str, TapAudit], Awaitable[None]]


def _peer_ip(peer: str) -> str:
    """The IP of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].removeprefix("[")[:64]
    if kind == "ipv4":
        return rest.rpartition(":")[0][:64]
    return peer[:64]


class Access:
    def __init__(self, authorizer: Authorizer, publish: Publish, replica: str) -> None:
        self.authorizer = authorizer
        self._publish = publish
        self._replica = replica

    async def _refuse(self, context: grpc.aio.ServicerContext, refused: Refused) -> NoReturn:
        await context.abort(refused.code, refused.message)
        raise AssertionError("unreachable")

    async def admit_tap(self, tap: TapRequest, context: grpc.aio.ServicerContext) -> Caller:
        """Return the caller if it may run ``tap`` (validated); else abort the call with its status.
        Either way the decision is audited first."""
        assert tap.target is not None
        caller = ANONYMOUS
        decision: Decision = "allowed"
        refused: Refused | None = None
        try:
            caller = await self.authorizer.authenticate(context.invocation_metadata())
            await self.authorizer.authorize(caller, tap.target.namespace)
        except Refused as exc:
            refused, decision = exc, exc.decision
        audit = TapAudit(
            tap_id=tap.tap_id,
            decision=decision,
            status="OK" if refused is None else refused.code.name,
            reason="" if refused is None else refused.message[:1024],
            authz=self.authorizer.mode,
            username=caller.username[:253],
            uid=caller.uid[:253],
            groups=tuple(group[:253] for group in caller.groups[:64]),
            target=tap.target,
            match=tap.match,
            max_events_per_second=tap.max_events_per_second,
            max_requests=tap.max_requests,
            header_names=tap.header_names,
            peer=_peer_ip(context.peer() or ""),
            replica=self._replica,
            at=datetime.now(UTC),
        )
        log.info(
            "tap_audit",
            tap_id=tap.tap_id,
            decision=decision,
            username=caller.username,
            namespace=tap.target.namespace,
        )
        try:
            await self._publish(subjects.AUDIT_TAP, audit)
        except Exception as exc:
            log.warning("tap_audit_publish_failed", tap_id=tap.tap_id, error=str(exc)[:200])
            if refused is None:
                # No tap without its audit trail.
                refused = Refused(
                    "unavailable", grpc.StatusCode.UNAVAILABLE, "cannot publish the tap's audit event: retry"
                )
        if refused is not None:
            await self._refuse(context, refused)
        return caller

    async def admit_endpoints(
        self, authority: str, namespace: str, context: grpc.aio.ServicerContext
    ) -> Caller:
        """Return the caller if it may resolve ``authority``; else abort the call with its status."""
        try:
            caller = await self.authorizer.authenticate(context.invocation_metadata())
            await self.authorizer.authorize(caller, authority_namespace(authority, namespace))
        except Refused as exc:
            await self._refuse(context, exc)
        return caller
