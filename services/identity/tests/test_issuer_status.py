"""The issuer status event from a loaded authority: what it says, and that it carries no key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from tether.identity.bootstrap import generate_issuer, generate_trust_anchor
from tether.identity.ca import AuthorityState, FileContents
from tether.identity.issuer_status import issuer_status

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_status_of_a_loaded_issuer_names_both_certificates_and_their_expiry() -> None:
    anchor = generate_trust_anchor(NOW)
    issuer = generate_issuer(anchor, NOW, lifetime=timedelta(days=90))
    state = AuthorityState("cluster.local")
    state.observe(FileContents(anchor.certificate_pem, issuer.certificate_pem, issuer.key_pem), NOW)
    status = issuer_status(state.current, "", "identity-a", NOW)
    assert status.issuer_loaded and status.issuer is not None
    assert status.issuer.subject == "CN=issuer.identity.cluster.local"
    assert status.issuer.not_after == NOW.replace(microsecond=0) + timedelta(days=90)
    assert [a.subject for a in status.trust_anchors] == ["CN=root.identity.cluster.local"]
    assert status.trust_anchors[0].not_after == anchor.certificate.not_valid_after_utc
    encoded = msgspec.json.encode(status)
    assert b"PRIVATE" not in encoded and issuer.key_pem not in encoded


def test_status_without_an_issuer_says_why() -> None:
    status = issuer_status(None, "issuer does not chain to any valid trust anchor", "identity-a", NOW)
    assert not status.issuer_loaded and status.issuer is None and status.trust_anchors == []
    assert status.load_error == "issuer does not chain to any valid trust anchor"
