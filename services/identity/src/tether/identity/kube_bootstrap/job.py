"""The bootstrap Job's logic: create each object the mesh needs if it is absent, never change one that exists.

Order matters for concurrent runs (two Jobs, or a retry racing a slow first attempt): the issuer comes
before the trust roots, which publish the issuer Secret that actually exists (ours, the user's, or a
concurrent run's); and Secret tether-nats-server comes before the role Secrets. Whoever creates the server
Secret owns the NATS credentials: a run whose create answers 409 drops what it generated and waits
(``--settle-timeout``) for the winner's role Secrets, then checks that they match the server's auth.conf.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from tether.identity.kube_bootstrap.api import KubeObjects, Resource, StoredObject
from tether.identity.kube_bootstrap.config import KubeBootstrapConfig
from tether.identity.kube_bootstrap.errors import ApiFailure, Inconsistent
from tether.identity.kube_bootstrap.objects import (
    AUTH_CONF,
    CA_CERT,
    ISSUER_SECRET,
    NATS_SERVER_SECRET,
    NKEY_SEED,
    TLS_CERT,
    TLS_KEY,
    TRUST_ROOTS_CONFIGMAP,
    ObjectData,
    certificates_in,
    issuer_objects,
    nats_objects,
    nats_server_names,
    role_secret,
    trust_roots,
)
from tether.shared.natsserver import nkey_public_key

log = structlog.get_logger(__name__)


def _listed(names: list[str], singular: str, plural: str) -> str:
    return f"{', '.join(names)} {singular if len(names) == 1 else plural}"


SETTLE_POLL = 0.25


@dataclass
class Outcome:
    """What the run did: per object, ``created``, ``existing`` (kept as it was) or ``concurrent`` (another
    run created it between our GET and POST; theirs is kept)."""

    actions: dict[str, str] = field(default_factory=dict)

    def record(self, resource: Resource, name: str, action: str, stored: StoredObject | None = None) -> None:
        self.actions[f"{resource}/{name}"] = action
        event = {"created": "bootstrap_object_created", "existing": "bootstrap_object_exists"}.get(
            action, "bootstrap_object_created_concurrently"
        )
        log.info(
            event, resource=resource, name=name, resource_version=stored.resource_version if stored else ""
        )


@dataclass
class Bootstrap:
    config: KubeBootstrapConfig
    objects: KubeObjects
    now: datetime
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    outcome: Outcome = field(default_factory=Outcome)

    def run(self) -> Outcome:
        anchors = self.ensure_issuer()
        self.ensure_trust_roots(anchors)
        self.ensure_nats()
        log.info("bootstrap_done", namespace=self.config.namespace, objects=self.outcome.actions)
        return self.outcome

    def _get(self, resource: Resource, name: str) -> StoredObject | None:
        found = self.objects.get(resource, name)
        if found is not None:
            self.outcome.record(resource, name, "existing", found)
        return found

    def _create(self, resource: Resource, obj: ObjectData) -> StoredObject:
        stored, created = self.objects.create(resource, obj)
        self.outcome.record(resource, obj.name, "created" if created else "concurrent", stored)
        return stored

    # --- the issuer and the trust roots ---

    def ensure_issuer(self) -> StoredObject | None:
        """The issuer Secret that exists after this step (None: skipped and absent)."""
        existing = self._get("secrets", ISSUER_SECRET)
        if existing is not None:
            return existing
        if self.config.skip_issuer:
            log.info("bootstrap_issuer_skipped", name=ISSUER_SECRET, reason="--skip-issuer")
            return None
        config = self.config
        generated = issuer_objects(
            self.now, config.trust_domain, config.anchor_lifetime, config.issuer_lifetime
        )
        return self._create("secrets", generated)

    def ensure_trust_roots(self, issuer: StoredObject | None) -> None:
        namespace = self.config.namespace
        existing = self._get("configmaps", TRUST_ROOTS_CONFIGMAP)
        anchor_pem = issuer.data.get(CA_CERT, b"") if issuer is not None else b""
        anchors = certificates_in(anchor_pem)
        if existing is not None:
            bundle = certificates_in(existing.data.get("ca-bundle.crt", b""))
            if anchors and not all(anchor in bundle for anchor in anchors):
                # Kept as it is (it may be mid-rotation); but proxies will not trust the issuer's leaves.
                log.warning(
                    "bootstrap_trust_roots_lack_issuer_anchor",
                    configmap=TRUST_ROOTS_CONFIGMAP,
                    secret=ISSUER_SECRET,
                    remedy=f"add the issuer Secret's ca.crt to {TRUST_ROOTS_CONFIGMAP}'s ca-bundle.crt",
                )
            return
        if issuer is None:
            raise ApiFailure(
                f"--skip-issuer: neither Secret {ISSUER_SECRET} nor ConfigMap {TRUST_ROOTS_CONFIGMAP} exists "
                f"in namespace {namespace}",
                f"create Secret {ISSUER_SECRET} (tls.crt, tls.key, ca.crt; e.g. a cert-manager Certificate) "
                "and rerun the Job, which then publishes its ca.crt",
            )
        if not anchors:
            raise ApiFailure(
                f"Secret {ISSUER_SECRET} in namespace {namespace} has no PEM certificate under {CA_CERT} to "
                f"publish in ConfigMap {TRUST_ROOTS_CONFIGMAP}",
                f"add the trust anchor as {CA_CERT} to the Secret, or create ConfigMap "
                f"{TRUST_ROOTS_CONFIGMAP} with key ca-bundle.crt yourself",
            )
        self._create("configmaps", trust_roots(anchor_pem))

    # --- NATS ---

    def ensure_nats(self) -> None:
        roles = self.config.nats_roles
        server = self._get("secrets", NATS_SERVER_SECRET)
        found = {role: self._get("secrets", role_secret(role)) for role in roles}
        if server is None and any(secret is not None for secret in found.values()):
            present = [role_secret(role) for role, secret in found.items() if secret is not None]
            raise self._inconsistent(
                f"{_listed(present, 'exists', 'exist')} but Secret {NATS_SERVER_SECRET} does not"
            )
        if server is None:
            config = self.config
            generated = nats_objects(
                roles,
                nats_server_names(config.namespace, config.cluster_domain),
                self.now,
                config.nats_tls_lifetime,
            )
            stored, created = self.objects.create("secrets", generated.server)
            self.outcome.record("secrets", NATS_SERVER_SECRET, "created" if created else "concurrent", stored)
            server = stored
            if created:
                found = {role: self._create("secrets", generated.roles[role]) for role in roles}
            # else: another run owns the credentials; what we generated is dropped, its role Secrets awaited.
        found = self._settle(found)
        self._check_consistent(server, found)

    def _settle(self, found: Mapping[str, StoredObject | None]) -> dict[str, StoredObject | None]:
        """Wait up to --settle-timeout for role Secrets a concurrent run may still be creating."""
        result = dict(found)
        deadline = self.clock() + self.config.settle_timeout
        while True:
            missing = [role for role, secret in result.items() if secret is None]
            if not missing:
                return result
            for role in missing:
                result[role] = self._get("secrets", role_secret(role))
            if all(result[role] is not None for role in missing) or self.clock() >= deadline:
                return result
            self.sleep(SETTLE_POLL)

    def _check_consistent(self, server: StoredObject, roles: Mapping[str, StoredObject | None]) -> None:
        problems: list[str] = []
        missing_keys = [key for key in (AUTH_CONF, TLS_CERT, TLS_KEY, CA_CERT) if not server.data.get(key)]
        if missing_keys:
            problems.append(f"Secret {NATS_SERVER_SECRET} lacks {', '.join(missing_keys)}")
        absent = [role_secret(role) for role, secret in roles.items() if secret is None]
        if absent:
            problems.append(f"Secret {NATS_SERVER_SECRET} exists but {_listed(absent, 'does', 'do')} not")
        auth = server.data.get(AUTH_CONF, b"").decode("utf-8", errors="replace")
        server_ca = server.data.get(CA_CERT, b"").strip()
        for role, secret in roles.items():
            if secret is None:
                continue
            name = role_secret(role)
            try:
                public_key = nkey_public_key(secret.data.get(NKEY_SEED, b"").strip())
            except Exception:  # nkeys raises several types; none of them may echo the seed
                problems.append(f"Secret {name} has no valid nkey seed under {NKEY_SEED}")
                continue
            if f'"{public_key}"' not in auth:
                problems.append(
                    f"the auth.conf of Secret {NATS_SERVER_SECRET} does not know the nkey of {name}"
                )
            if secret.data.get(CA_CERT, b"").strip() != server_ca:
                problems.append(f"Secret {name} holds another {CA_CERT} than {NATS_SERVER_SECRET}")
        if problems:
            raise self._inconsistent("; ".join(problems))

    def _inconsistent(self, what: str) -> Inconsistent:
        namespace = self.config.namespace
        every = " ".join([NATS_SERVER_SECRET, *(role_secret(role) for role in self.config.nats_roles)])
        return Inconsistent(
            f"the NATS credentials in namespace {namespace} do not belong together: {what}",
            f"delete them all (kubectl -n {namespace} delete secret {every} --ignore-not-found), rerun the "
            "Job, then restart the tether-nats pods and the control plane",
        )
