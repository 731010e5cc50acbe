"""`tether-identity kube-bootstrap` (the bootstrap Job) against an emulated Kubernetes API server.

No Kubernetes API server can run here: :class:`tether.identity.kube_bootstrap.testing.FakeKubeApi` speaks
its wire protocol faithfully for what the Job touches (GET/POST of Secrets and ConfigMaps in a namespace,
with the API's JSON objects, resourceVersions, and its 401/403/404/409/422 Status bodies; RBAC emulated
from a Role's rules). The Job uses the real kubernetes client; its auth.conf is checked by the real
nats-server (``-t``); the issuer by the identity service's own loader. Every private key and nkey seed the
Job generated is registered with the ``secrets`` fixture, which fails a test whose log lines hold one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from tether.identity.ca import AuthorityState, FileContents, Outcome
from tether.identity.kube_bootstrap import testing
from tether.identity.kube_bootstrap.cli import main, run
from tether.identity.kube_bootstrap.config import DEFAULT_NATS_ROLES, KubeBootstrapConfig
from tether.identity.kube_bootstrap.job import Outcome as JobOutcome
from tether.identity.kube_bootstrap.objects import issuer_objects, nats_objects, nats_server_names
from tether.identity.kube_bootstrap.testing import ApiRequest, FakeKubeApi, Rule, configmap_body, secret_body
from tether.shared.config import config_from
from tether.shared.kube import KubeSettings, api_client
from tether.shared.natsserver import nats_server_binary, nkey_public_key, user_permissions

NS = "tether"
TOKEN = "bootstrap-sa-token"
ROLE_SECRETS = [f"tether-nats-{role}" for role in DEFAULT_NATS_ROLES]
EVERY_SECRET = ["tether-identity-issuer", "tether-nats-server", *ROLE_SECRETS]
# The contract's SANs of the NATS server certificate.
NATS_SANS = {
    "tether-nats",
    "tether-nats.tether.svc",
    "tether-nats.tether.svc.cluster.local",
    "*.tether-nats-headless.tether.svc",
    "*.tether-nats-headless.tether.svc.cluster.local",
    "localhost",
}
# The Role the contract gives ServiceAccount tether-bootstrap, minus `update`, which the Job never uses.
LEAST_PRIVILEGE = (
    Rule(("create",), ("secrets", "configmaps")),
    Rule(("get",), ("secrets",), tuple(EVERY_SECRET)),
    Rule(("get",), ("configmaps",), ("tether-trust-roots",)),
)


@pytest.fixture
def fake() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(namespaces={NS}).serving() as api:
        yield api


def job(fake: FakeKubeApi, secrets: Any, **flags: str) -> JobOutcome:
    """One in-process run of the Job (its logs go to the test's log buffer); registers what it generated."""
    config = config_from(KubeBootstrapConfig, "identity", {"kube_api_url": fake.url, **flags}, {})
    client = api_client(KubeSettings(api_url=fake.url, bearer_token=fake.token), remedy="")
    try:
        outcome = run(config, client)
    finally:
        client.close()
    register_secrets(fake, secrets)
    return outcome


def register_secrets(fake: FakeKubeApi, secrets: Any) -> None:
    for (resource, namespace, name), _ in list(fake.objects.items()):
        if resource != "secrets":
            continue
        data = fake.data(resource, namespace, name)
        for key in ("tls.key", "nkey.seed"):
            if key in data:
                secrets.add(data[key].strip())


def cli(fake: FakeKubeApi, capsys: Any, *argv: str) -> tuple[int, list[str]]:
    """The entry point as the Job's container runs it; (exit code, stderr lines)."""
    code = main(["--kube-api-url", fake.url, "--log-format", "json", *argv], environ={})
    err = capsys.readouterr().err
    for resource, namespace, name in list(fake.objects):
        if resource == "secrets":
            for key, value in fake.data(resource, namespace, name).items():
                if key in ("tls.key", "nkey.seed"):
                    assert value.strip().decode() not in err and b"PRIVATE KEY" not in err.encode()
    return code, err.splitlines()


def resource_versions(fake: FakeKubeApi) -> dict[tuple[str, str, str], str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in fake.objects.items()}


def auth_users(auth_conf: str) -> dict[str, Any]:
    """nkey -> permissions, from the generated auth.conf (one JSON user per line)."""
    users = [json.loads(line) for line in auth_conf.splitlines() if line.strip().startswith("{")]
    return {user["nkey"]: user["permissions"] for user in users}


def test_first_run_creates_every_object_with_valid_contents(
    fake: FakeKubeApi, secrets: Any, tmp_path: Path
) -> None:
    outcome = job(fake, secrets, issuer_lifetime_days="30", anchor_lifetime_days="400")

    assert set(outcome.actions.values()) == {"created"}
    assert sorted(fake.objects) == sorted(
        [("configmaps", NS, "tether-trust-roots"), *(("secrets", NS, name) for name in EVERY_SECRET)]
    )
    now = datetime.now(UTC)
    # The issuer: a kubernetes.io/tls Secret identity loads as it is, chaining to its anchor.
    issuer_secret = fake.get("secrets", NS, "tether-identity-issuer")
    assert issuer_secret is not None and issuer_secret["type"] == "kubernetes.io/tls"
    issuer = fake.data("secrets", NS, "tether-identity-issuer")
    assert sorted(issuer) == ["ca.crt", "tls.crt", "tls.key"]
    observation = AuthorityState("cluster.local").observe(
        FileContents(issuer["ca.crt"], issuer["tls.crt"], issuer["tls.key"]), now
    )
    assert observation.outcome is Outcome.LOADED, observation.error
    anchor = x509.load_pem_x509_certificate(issuer["ca.crt"])
    issuer_cert = x509.load_pem_x509_certificate(issuer["tls.crt"])
    issuer_cert.verify_directly_issued_by(anchor)
    assert (issuer_cert.not_valid_after_utc - now).days in (29, 30)
    assert (anchor.not_valid_after_utc - now).days in (399, 400)
    assert fake.data("configmaps", NS, "tether-trust-roots") == {"ca-bundle.crt": issuer["ca.crt"]}

    # NATS: auth.conf grants each role's nkey exactly its permissions, and nats-server accepts the file.
    server = fake.data("secrets", NS, "tether-nats-server")
    assert sorted(server) == ["auth.conf", "ca.crt", "tls.crt", "tls.key"]
    users = auth_users(server["auth.conf"].decode())
    assert len(users) == len(DEFAULT_NATS_ROLES)
    for role in DEFAULT_NATS_ROLES:
        data = fake.data("secrets", NS, f"tether-nats-{role}")
        assert sorted(data) == ["ca.crt", "nkey.seed"]
        assert data["ca.crt"] == server["ca.crt"]
        assert users[nkey_public_key(data["nkey.seed"].strip())] == user_permissions(role, role)
    (tmp_path / "auth.conf").write_bytes(server["auth.conf"])
    (tmp_path / "nats.conf").write_text(
        f"port: 4222\njetstream {{ store_dir: {json.dumps(str(tmp_path))} }}\ninclude ./auth.conf\n"
    )
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout

    # The server certificate: signed by the Secrets' CA, the contract's names, good for routes both ways.
    ca = x509.load_pem_x509_certificate(server["ca.crt"])
    certificate = x509.load_pem_x509_certificate(server["tls.crt"])
    certificate.verify_directly_issued_by(ca)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == NATS_SANS
    assert not sans.get_values_for_type(x509.IPAddress)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    key = load_pem_private_key(server["tls.key"], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    for obj in fake.objects.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tether"


def test_a_second_run_changes_nothing(fake: FakeKubeApi, secrets: Any) -> None:
    job(fake, secrets)
    before = resource_versions(fake)
    contents = {key: json.dumps(obj, sort_keys=True) for key, obj in fake.objects.items()}
    fake.requests.clear()

    outcome = job(fake, secrets)

    assert set(outcome.actions.values()) == {"existing"}
    assert fake.writes() == []
    assert {request.verb for request in fake.requests} == {"get"}
    assert resource_versions(fake) == before
    assert {key: json.dumps(obj, sort_keys=True) for key, obj in fake.objects.items()} == contents


@pytest.mark.parametrize("skip_issuer", ["true", "false"])
def test_a_user_provided_issuer_is_kept_and_its_anchor_published(
    fake: FakeKubeApi, secrets: Any, skip_issuer: str
) -> None:
    # As cert-manager writes it: a kubernetes.io/tls Secret with ca.crt.
    own = issuer_objects(datetime.now(UTC), "cluster.local", timedelta(days=100), timedelta(days=50))
    secrets.add(own.data["tls.key"])
    stored = fake.put("secrets", NS, secret_body("tether-identity-issuer", dict(own.data), own.secret_type))
    snapshot = json.dumps(stored, sort_keys=True)

    outcome = job(fake, secrets, skip_issuer=skip_issuer)

    assert outcome.actions["secrets/tether-identity-issuer"] == "existing"
    assert json.dumps(fake.get("secrets", NS, "tether-identity-issuer"), sort_keys=True) == snapshot
    assert fake.data("secrets", NS, "tether-identity-issuer") == dict(own.data)
    assert fake.data("configmaps", NS, "tether-trust-roots") == {"ca-bundle.crt": own.data["ca.crt"]}
    assert outcome.actions["configmaps/tether-trust-roots"] == "created"


def test_existing_trust_roots_are_kept_even_when_they_lack_the_issuer_anchor(
    fake: FakeKubeApi, secrets: Any, log_output: Any
) -> None:
    other = issuer_objects(datetime.now(UTC), "cluster.local", timedelta(days=10), timedelta(days=5))
    stored = fake.put(
        "configmaps",
        NS,
        configmap_body("tether-trust-roots", {"ca-bundle.crt": other.data["ca.crt"].decode()}),
    )
    snapshot = json.dumps(stored, sort_keys=True)

    job(fake, secrets)

    assert json.dumps(fake.get("configmaps", NS, "tether-trust-roots"), sort_keys=True) == snapshot
    assert "bootstrap_trust_roots_lack_issuer_anchor" in log_output.getvalue()


def test_skip_issuer_without_an_issuer_fails_in_one_line(fake: FakeKubeApi, capsys: Any) -> None:
    code, lines = cli(fake, capsys, "--skip-issuer", "true")
    assert code == 1
    assert lines[-1].startswith(
        "tether-identity: error: --skip-issuer: neither Secret tether-identity-issuer"
    )
    assert "create Secret tether-identity-issuer" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert ("secrets", NS, "tether-identity-issuer") not in fake.objects


@pytest.mark.parametrize("removed", ["tether-nats-reader", "tether-nats-server"])
def test_partial_nats_credentials_are_reported_not_repaired(
    fake: FakeKubeApi, secrets: Any, capsys: Any, removed: str
) -> None:
    job(fake, secrets)
    del fake.objects[("secrets", NS, removed)]
    before = resource_versions(fake)
    fake.requests.clear()

    code, lines = cli(fake, capsys, "--settle-timeout", "0.3")

    assert code == 1
    last = lines[-1]
    assert last.startswith(
        "tether-identity: error: the NATS credentials in namespace tether do not belong together: "
    )
    assert removed in last
    assert "delete secret tether-nats-server " + " ".join(ROLE_SECRETS) in last and "rerun the Job" in last
    assert not any("Traceback" in line for line in lines)
    assert fake.writes() == [] and resource_versions(fake) == before


def test_a_role_secret_the_server_does_not_know_is_inconsistent(
    fake: FakeKubeApi, secrets: Any, capsys: Any
) -> None:
    job(fake, secrets)
    stranger = nats_objects(["reader"], ["x"], datetime.now(UTC), timedelta(days=1)).roles["reader"]
    secrets.add(stranger.data["nkey.seed"].strip())
    del fake.objects[("secrets", NS, "tether-nats-reader")]
    fake.put("secrets", NS, secret_body("tether-nats-reader", dict(stranger.data)))

    code, lines = cli(fake, capsys)

    assert code == 1
    assert "does not know the nkey of tether-nats-reader" in lines[-1]
    assert "holds another ca.crt than tether-nats-server" in lines[-1]


def test_a_run_that_loses_a_race_keeps_the_winners_objects(fake: FakeKubeApi, secrets: Any) -> None:
    """Another run creates the NATS Secrets between this run's GET and POST: its set is kept whole."""
    winner = nats_objects(
        DEFAULT_NATS_ROLES, nats_server_names(NS, "cluster.local"), datetime.now(UTC), timedelta(days=1)
    )

    def concurrent(resource: str, namespace: str, name: str) -> None:
        if name == "tether-nats-server":
            fake.put(resource, namespace, secret_body(name, dict(winner.server.data)))
            for role, obj in winner.roles.items():
                fake.put(resource, namespace, secret_body(f"tether-nats-{role}", dict(obj.data)))
        else:
            fake.before_create = concurrent  # not yet: wait for the NATS server Secret's create

    fake.before_create = concurrent
    outcome = job(fake, secrets)

    assert outcome.actions["secrets/tether-nats-server"] == "concurrent"
    assert fake.data("secrets", NS, "tether-nats-server") == dict(winner.server.data)
    for role in DEFAULT_NATS_ROLES:
        assert fake.data("secrets", NS, f"tether-nats-{role}") == dict(winner.roles[role].data)
    creates = [request for request in fake.requests if request.verb == "create"]
    assert len(creates) == 3  # issuer, trust roots, the server Secret that lost: no role Secret was posted


def test_the_least_privilege_role_suffices(secrets: Any) -> None:
    with FakeKubeApi(namespaces={NS}, token=TOKEN, rules=LEAST_PRIVILEGE).serving() as fake:
        job(fake, secrets)
        job(fake, secrets)
    assert {request.verb for request in fake.requests if request.resource} == {"get", "create"}


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [rule for rule in LEAST_PRIVILEGE if rule.resources != ("configmaps",)],
            "verb get on configmaps (resourceNames: [tether-trust-roots]) in namespace tether",
        ),
        (
            [Rule(("create",), ("secrets",)), *LEAST_PRIVILEGE[1:]],
            "verb create on configmaps in namespace tether",
        ),
    ],
)
def test_forbidden_names_the_missing_permission(capsys: Any, rules: list[Rule], expected: str) -> None:
    with FakeKubeApi(namespaces={NS}, rules=rules).serving() as fake:
        code, lines = cli(fake, capsys)
    assert code == 2
    assert lines[-1].startswith("tether-identity: error: the Kubernetes API forbids "), lines[-1]
    assert "403 Forbidden" in lines[-1] and expected in lines[-1], lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_missing_namespace_rejected_credentials_and_unreachable_api_are_one_line(capsys: Any) -> None:
    with FakeKubeApi(namespaces={NS}, token=TOKEN).serving() as fake:
        code, lines = cli(fake, capsys)
    assert code == 2
    assert "did not accept this Job's credentials (401 Unauthorized)" in lines[-1], lines[-1]

    with FakeKubeApi(namespaces=set()).serving() as fake:
        code, lines = cli(fake, capsys)
    assert code == 1
    assert lines[-1].startswith("tether-identity: error: namespace tether does not exist"), lines[-1]

    with FakeKubeApi().serving() as gone:
        url = gone.url
    code = main(["--kube-api-url", url, "--kube-connect-timeout", "0.5"], environ={})
    last = capsys.readouterr().err.splitlines()[-1]
    assert code == 1
    assert last.startswith(f"tether-identity: error: the Kubernetes API at {url} did not answer within 0.5s")


def test_invalid_options_are_refused_at_once(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--nats-roles", "destination,registrar,nobody"], environ={})
    assert exited.value.code == 2
    assert "--nats-roles / TETHER_IDENTITY_NATS_ROLES: unknown role 'nobody'" in capsys.readouterr().err


def test_request_list_for_the_rbac_test() -> None:
    requests = testing.bootstrap_requests()
    resource_requests = {request for request in requests if request.resource}
    assert resource_requests == {
        ApiRequest("create", "", "secrets", NS, ""),
        ApiRequest("create", "", "configmaps", NS, ""),
        ApiRequest("get", "", "configmaps", NS, "tether-trust-roots"),
        *(ApiRequest("get", "", "secrets", NS, name) for name in EVERY_SECRET),
    }
    assert {request.path for request in requests if not request.resource} == {"/version/"}
