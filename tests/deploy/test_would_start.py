"""The rendered manifests would start: each control-plane container's command line and environment pass its
component's own configuration parser, every address it dials is a rendered Service port served by the
right pods, every address it listens on is a declared container port, every file an option names is on a
mounted volume whose Secret or ConfigMap has that key, and NATS' configuration names only mounted files.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from typing import Any

import pytest

from tether.shared.config import parse_hostport

from .manifests import CONTROL_PLANE, Container, Manifests, pod_template
from .pods import PLACEHOLDER, Parsed, command_line, environment, mounted_file, option_values, parse

LISTEN_OPTIONS = ("admin_addr", "grpc_addr")
LISTEN_HOSTS = ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost")


def _parsed(manifests: Manifests, component: str) -> Parsed:
    return parse(manifests, manifests.container_of(component))


def _port(container: Container, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.spec.get("ports") or []}
    assert name in ports, f"{container.where} declares no port {name}"
    return int(ports[name])


@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_configuration_parses_as_meant(manifests: Manifests, component: str) -> None:
    config = _parsed(manifests, component).config
    assert config.log_format == "json"
    assert config.nats_servers == ["tls://tether-nats.tether.svc.cluster.local:4222"]
    assert config.nats_nkey and config.nats_tls_ca and not config.nats_creds
    if component in ("destination", "identity", "public-api"):
        assert config.kube.api_url == "" and config.kube.kubeconfig == ""  # in-cluster: the pod's own token
    if component == "destination":
        assert config.source == "kubernetes" and not config.identity.disabled
        # HA: its buckets keep one replica on each of the three NATS servers (the default: one).
        if manifests.name == "ha":
            assert config.kv_replicas == 3
        else:
            assert "TETHER_DESTINATION_KV_REPLICAS" not in _parsed(manifests, component).env
    if component == "telemetry":
        assert not config.identity.disabled
        # HA: the rollups stream, like the buckets, one replica per NATS server.
        assert config.stream_replicas == (3 if manifests.name == "ha" else 1)
    if component == "identity":
        assert config.token_verifier == "kubernetes"
        assert config.namespace == manifests.container_of(component).namespace
    if component == "public-api":
        assert config.authz == "kubernetes"
        assert config.destination_trust_anchors  # destination serves TLS only


def test_bootstrap_job_configuration_parses(manifests: Manifests) -> None:
    container = manifests.container_of("bootstrap")
    assert container.spec["command"] == ["tether-identity", "kube-bootstrap"]
    assert container.spec["image"] == manifests.container_of("identity").spec["image"]
    config = parse(manifests, container).config
    assert config.namespace == container.namespace  # its Role's namespace, from the downward API
    assert config.kube.api_url == "" and config.kube.kubeconfig == "" and not config.skip_issuer
    assert set(config.nats_roles) == {"destination", "identity", "telemetry", "public-api", "reader"}


def test_a_refused_configuration_fails_with_the_components_own_message(manifests: Manifests) -> None:
    container = manifests.container_of("destination")
    broken_env = [*(container.spec.get("env") or []), {"name": "TETHER_DESTINATION_SOURCE", "value": "etcd"}]
    broken = Container(container.workload, container.pod, {**container.spec, "env": broken_env}, init=False)
    with pytest.raises(AssertionError, match="TETHER_DESTINATION_SOURCE"):
        parse(manifests, broken)
    # Service links add TETHER_DESTINATION_SERVICE_HOST & co: the parser knows them for what they are.
    linked = Container(
        container.workload, {**container.pod, "enableServiceLinks": True}, container.spec, False
    )
    parse(manifests, linked)


@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_listeners_are_the_declared_ports_and_probed(manifests: Manifests, component: str) -> None:
    container = manifests.container_of(component)
    options = option_values(_parsed(manifests, component).config)
    for option, port_name in (("admin_addr", "admin-http"), ("grpc_addr", "grpc")):
        host, port = parse_hostport(options[option])
        assert host in ("0.0.0.0", "[::]", "::"), f"{component} {option} {host}: kubelet and peers need it"
        assert port == _port(container, port_name), f"{component} {option} is not port {port_name}"
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        http = container.spec[probe]["httpGet"]
        assert (http["path"], http["port"]) == (path, "admin-http"), f"{component} {probe}"


def _service_backend(manifests: Manifests, host: str, port: int, where: str) -> tuple[Container, int]:
    """The Service a dialled host:port names, and the container port it forwards to."""
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
    assert match, f"{where}: {host} is not a Service's cluster DNS name"
    service = manifests.get("Service", match.group(1), match.group(2))
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"{where}: Service {host} has no port {port}"
    selector = service["spec"]["selector"]
    backends = [
        c
        for c in manifests.containers()
        if c.namespace == match.group(2)
        and selector.items() <= pod_template(c.workload)["metadata"]["labels"].items()
        and not c.init
    ]
    assert len(backends) == 1, f"{where}: Service {host} selects {len(backends)} containers"
    target = ports[0]["targetPort"]
    container = backends[0]
    return container, _port(container, target) if isinstance(target, str) else int(target)


@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_dialled_addresses_are_rendered_services(manifests: Manifests, component: str) -> None:
    parsed = _parsed(manifests, component)
    options = option_values(parsed.config)
    dialled = [("nats_url", urllib.parse.urlsplit(url).netloc) for url in parsed.config.nats_servers]
    # The other *_addr options, except listeners (a wildcard or loopback host) and a disabled client's.
    dialled += [
        (name, value)
        for name, value in options.items()
        if name.endswith("_addr")
        and name not in LISTEN_OPTIONS
        and value
        and parse_hostport(value)[0] not in LISTEN_HOSTS
        and not (name == "identity_addr" and options.get("identity_disabled"))
    ]
    assert len(dialled) >= (1 if component == "identity" else 2), dialled
    for option, address in dialled:
        host, port = parse_hostport(address)
        backend, target = _service_backend(manifests, host, port, f"{component} {option}")
        if backend.component in CONTROL_PLANE:  # the backend listens on the port the Service forwards to
            listen = option_values(_parsed(manifests, backend.component).config)["grpc_addr"]
            assert parse_hostport(listen)[1] == target, f"{component} {option}: {backend.where}"
        else:
            assert backend.component == "nats" and target == 4222


def test_mesh_identities_are_the_service_accounts(manifests: Manifests) -> None:
    """Identity signs a serving certificate only for the caller's own ServiceAccount, and clients check the
    name they were told: each name must be what the pod's ServiceAccount makes it."""
    identity = _parsed(manifests, "identity").config
    domain = identity.trust_domain
    own_name = f"identity.{identity.namespace}.serviceaccount.identity.{domain}"
    names = {}
    for component in ("destination", "telemetry"):
        container = manifests.container_of(component)
        config = _parsed(manifests, component).config
        sa = container.pod["serviceAccountName"]
        assert sa == f"tether-{component}"
        assert config.identity.name == f"{sa}.{container.namespace}.serviceaccount.identity.{domain}"
        assert config.identity.server_name == own_name
        names[component] = config.identity.name
    public_api = _parsed(manifests, "public-api").config
    assert public_api.destination_server_name == names["destination"]


def _file_options(component: str, config: Any, set_fields: frozenset[str]) -> dict[str, str]:
    """The files the component opens in this configuration: every path option the manifest sets, and the
    defaults its mode reads."""
    options = option_values(config)
    used = {"nats_creds", "nats_nkey", "nats_tls_ca", "nats_tls_cert", "nats_tls_key", "kubeconfig"}
    if not options.get("identity_disabled", True):
        used |= {"identity_trust_anchors", "identity_token_file"}
    used |= {
        "destination": {"registry_file"} if options.get("source") == "local" else set(),
        "identity": {"trust_anchors", "issuer_certificate", "issuer_key"}
        | ({"token_key"} if options.get("token_verifier") == "local" else set()),
        "public-api": {"destination_trust_anchors"},
    }.get(component, set())
    set_paths = {f for f in set_fields if isinstance(options.get(f), str) and options[f].startswith("/")}
    return {name: options[name] for name in sorted(used | set_paths) if options.get(name)}


@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_every_file_an_option_names_is_mounted(manifests: Manifests, component: str) -> None:
    container = manifests.container_of(component)
    parsed = _parsed(manifests, component)
    files = _file_options(component, parsed.config, parsed.set_fields)
    assert {"nats_nkey", "nats_tls_ca"} <= set(files)
    for option, path in files.items():
        found = mounted_file(manifests, container, path)
        if option.startswith("nats_"):
            assert (found.source, found.name) == ("Secret", f"tether-nats-{component}"), option
        if option == "identity_token_file":
            assert (found.source, found.name) == ("ServiceAccountToken", "identity.tether.io")
        if option in ("identity_trust_anchors", "destination_trust_anchors"):
            assert (found.source, found.name, found.key) == (
                "ConfigMap",
                "tether-trust-roots",
                "ca-bundle.crt",
            )
        if component == "identity" and option in ("trust_anchors", "issuer_certificate", "issuer_key"):
            assert (found.source, found.name) == ("Secret", "tether-identity-issuer")


def test_a_file_on_no_volume_is_found_out(manifests: Manifests) -> None:
    container = manifests.container_of("identity")
    with pytest.raises(AssertionError, match="on no mounted volume"):
        mounted_file(manifests, container, "/var/run/tether/identity/token-signing.key")
    with pytest.raises(AssertionError, match="is not in volume tls"):  # the NATS CA key is never stored
        mounted_file(manifests, manifests.container_of("nats"), "/etc/nats/tls/ca.key")


def test_pods_wait_for_the_bootstrap_jobs_objects(manifests: Manifests) -> None:
    """The Secrets and ConfigMap the Job makes are mounted as required volumes, so Kubernetes holds each pod
    until they exist; nothing mounts anything else that no manifest renders."""
    for component in (*CONTROL_PLANE, "nats"):
        container = manifests.container_of(component)
        for volume in container.pod.get("volumes") or []:
            for kind in ("secret", "configMap"):
                if kind in volume:
                    assert not volume[kind].get("optional"), (
                        f"{container.where}: {volume['name']} is optional"
                    )


def test_nats_configuration_names_only_mounted_files(manifests: Manifests) -> None:
    container = manifests.container_of("nats")
    argv = command_line(manifests, container)
    assert argv[:2] == ["nats-server", "--config"]
    config_path = argv[2]
    found = mounted_file(manifests, container, config_path)
    assert (found.source, found.name, found.key) == ("ConfigMap", "tether-nats-config", "nats.conf")
    text = manifests.get("ConfigMap", "tether-nats-config")["data"]["nats.conf"]
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    paths = re.findall(r'"(/[^"]+)"', body)
    includes = [
        posixpath.normpath(posixpath.join(posixpath.dirname(config_path), p))
        for p in re.findall(r"include\s+(\S+)", body)
    ]
    assert len(includes) == 1 and len(paths) >= 4
    sources = {path: mounted_file(manifests, container, path) for path in paths + includes}
    assert sources[includes[0]].key == "auth.conf"
    store = re.search(r'store_dir:\s*"([^"]+)"', body)
    assert store and sources[store.group(1)].source == "PersistentVolumeClaim"
    env = environment(manifests, container)
    for variable in re.findall(r"\$([A-Z_][A-Z0-9_]*)", body):
        assert env.get(variable) not in (None, "", PLACEHOLDER), f"nats.conf uses ${variable}, not set"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container.spec[probe]["httpGet"]
        assert http["port"] == "monitor" and http["path"].startswith("/healthz")
    assert re.search(rf"http_port:\s*{_port(container, 'monitor')}\b", body)
    assert re.search(rf"^port:\s*{_port(container, 'client')}\b", body, re.M)
