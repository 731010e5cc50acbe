"""The local registry file: services and their endpoints, for meshes that run outside Kubernetes.

    services:
      - namespace: emojivoto
        name: web
        addresses: [10.96.0.10, "fd00::10"]   # optional: virtual addresses (IPv4/IPv6 literals), which
                                              #   resolve like the name; unique across services
        ports:                      # at least one; name defaults to "", target_port to port
          - {name: http, port: 80, target_port: 8080}
          - {name: redis, port: 6379, opaque: true}   # opaque: non-HTTP, proxies skip protocol detection
        endpoints:
          - address: 10.0.0.7       # IPv4 or IPv6
            port: 8080              # optional: the target port (single-port services only);
                                    #   or ports: {http: 8080}; default: each port's target_port
            identity: web.emojivoto.serviceaccount.identity.cluster.local   # optional: meshed (mTLS, h2)
            labels: {pod: web-0}    # optional metric labels
            ready: true             # optional

Parsing is strict: unknown keys, wrong types, bad addresses and duplicates (a port, an endpoint address,
a virtual address within the service or across services) are errors that name the line.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from tether.destination.errors import RegistryFileError
from tether.destination.model import Endpoint, ServicePort, service_key
from tether.destination.reconcile import DesiredService, normalise
from tether.shared.events import MAX_SERVICE_ADDRESSES
from tether.shared.identity_names import InvalidIdentityName, is_dns1123_label, parse_identity

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, problem: str) -> RegistryFileError:
        line = node.start_mark.line + 1 if node is not None else 0
        return RegistryFileError(self.path, line, problem)

    def mapping(
        self, node: yaml.Node, what: str, allowed: set[str], required: set[str]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        fields: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                raise self.fail(
                    key_node, f"unknown field {key!r} in {what}; expected one of {sorted(allowed)}"
                )
            if key in fields:
                raise self.fail(key_node, f"duplicate field {key!r} in {what}")
            fields[key] = value_node
        missing = sorted(required - set(fields))
        if missing:
            raise self.fail(node, f"{what} is missing {missing[0]!r}")
        return fields

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.fail(node, f"{what} must be a string")
        return str(node.value)

    def label(self, node: yaml.Node, what: str) -> str:
        value = self.string(node, what)
        if not is_dns1123_label(value):
            raise self.fail(node, f"{what} {value!r} is not a DNS-1123 label")
        return value

    def port(self, node: yaml.Node, what: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.fail(node, f"{what} must be an integer")
        try:
            value = int(str(node.value).replace("_", ""), 0)
        except ValueError:
            raise self.fail(node, f"{what} must be an integer") from None
        if not 1 <= value <= 65535:
            raise self.fail(node, f"{what} {value} is not in 1..65535")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on", "y")

    def labels(self, node: yaml.Node) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "labels must be a mapping of strings")
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, "label name")
            if not isinstance(value_node, yaml.ScalarNode) or isinstance(value_node.value, list):
                raise self.fail(value_node, f"label {key!r} must be a string")
            out[key] = str(value_node.value)
        return out


def parse_registry(text: str, path: str, trust_domain: str) -> dict[str, DesiredService]:
    """The services the file declares, by key. Raises RegistryFileError naming the offending line."""
    reader = _Reader(path)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise RegistryFileError(path, line, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RegistryFileError(path, 0, f"not valid YAML: {exc}") from None
    if root is None:
        return {}
    fields = reader.mapping(root, "the registry", {"services"}, set())
    services: dict[str, DesiredService] = {}
    owners: dict[str, str] = {}  # virtual address -> the service that declared it
    for service_node in reader.sequence(fields["services"], "services") if "services" in fields else []:
        desired, address_nodes = _parse_service(reader, service_node, trust_domain)
        if desired.key in services:
            raise reader.fail(service_node, f"service {desired.key!r} is declared twice")
        for address, address_node in address_nodes:
            if address in owners:
                raise reader.fail(
                    address_node, f"address {address} is already the address of {owners[address]}"
                )
            owners[address] = desired.key
        services[desired.key] = desired
    return services


def _parse_service(
    reader: _Reader, node: yaml.Node, trust_domain: str
) -> tuple[DesiredService, list[tuple[str, yaml.Node]]]:
    """The service, and its virtual addresses with their nodes (for errors naming a later duplicate)."""
    fields = reader.mapping(
        node,
        "a service",
        {"namespace", "name", "addresses", "ports", "endpoints"},
        {"namespace", "name", "ports"},
    )
    namespace = reader.label(fields["namespace"], "namespace")
    name = reader.label(fields["name"], "name")
    address_nodes: list[tuple[str, yaml.Node]] = []
    address_list = reader.sequence(fields["addresses"], "addresses") if "addresses" in fields else []
    if len(address_list) > MAX_SERVICE_ADDRESSES:
        raise reader.fail(fields["addresses"], f"a service has at most {MAX_SERVICE_ADDRESSES} addresses")
    for address_node in address_list:
        address = parse_address(reader, address_node)
        if any(address == seen for seen, _ in address_nodes):
            raise reader.fail(address_node, f"address {address} is listed twice")
        address_nodes.append((address, address_node))
    ports: list[ServicePort] = []
    targets: dict[str, int] = {}
    for port_node in reader.sequence(fields["ports"], "ports"):
        port_fields = reader.mapping(port_node, "a port", {"name", "port", "target_port", "opaque"}, {"port"})
        port_name = reader.string(port_fields["name"], "port name") if "name" in port_fields else ""
        if port_name in targets:
            raise reader.fail(port_node, f"port name {port_name!r} is used twice")
        port = reader.port(port_fields["port"], "port")
        if any(p.port == port for p in ports):
            raise reader.fail(port_node, f"port {port} is declared twice")
        opaque = reader.boolean(port_fields["opaque"], "opaque") if "opaque" in port_fields else False
        ports.append(ServicePort(name=port_name, port=port, opaque=opaque))
        targets[port_name] = (
            reader.port(port_fields["target_port"], "target_port") if "target_port" in port_fields else port
        )
    if not ports:
        raise reader.fail(fields["ports"], "a service needs at least one port")
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for endpoint_node in reader.sequence(fields["endpoints"], "endpoints") if "endpoints" in fields else []:
        endpoint = _parse_endpoint(reader, endpoint_node, targets, trust_domain)
        if endpoint.address in seen:
            raise reader.fail(endpoint_node, f"address {endpoint.address} is listed twice")
        seen.add(endpoint.address)
        endpoints.append(endpoint)
    desired = normalise(namespace, name, ports, endpoints, (address for address, _ in address_nodes))
    return desired, address_nodes


def _parse_endpoint(reader: _Reader, node: yaml.Node, targets: dict[str, int], trust_domain: str) -> Endpoint:
    allowed = {"address", "port", "ports", "identity", "labels", "ready"}
    fields = reader.mapping(node, "an endpoint", allowed, {"address"})
    address = parse_address(reader, fields["address"])
    ports = dict(targets)
    if "port" in fields and "ports" in fields:
        raise reader.fail(node, "give either port or ports, not both")
    if "port" in fields:
        if len(targets) != 1:
            raise reader.fail(
                fields["port"], "port is ambiguous for a multi-port service; use ports: {name: port}"
            )
        ports = {next(iter(targets)): reader.port(fields["port"], "port")}
    if "ports" in fields:
        ports_node = fields["ports"]
        mapped = reader.mapping(ports_node, "endpoint ports", set(targets), set())
        ports = {name: reader.port(value, f"port {name!r}") for name, value in mapped.items()}
    identity = None
    if "identity" in fields:
        identity = reader.string(fields["identity"], "identity")
        try:
            parse_identity(identity, trust_domain)
        except InvalidIdentityName as exc:
            raise reader.fail(fields["identity"], f"identity {identity!r}: {exc}") from None
    return Endpoint(
        address=address,
        ports=ports,
        ready=reader.boolean(fields["ready"], "ready") if "ready" in fields else True,
        identity=identity,
        protocol_hint="h2" if identity else None,
        labels=reader.labels(fields["labels"]) if "labels" in fields else {},
        origin="file",
    )


def parse_address(reader: _Reader, node: yaml.Node) -> str:
    text = reader.string(node, "address")
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        raise reader.fail(node, f"address {text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
        raise reader.fail(node, f"address {text!r} has a zone, which names a link, not an address")
    return str(parsed)


__all__ = ["parse_registry", "service_key"]
