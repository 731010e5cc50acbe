"""The only Kubernetes requests the bootstrap Job makes: GET one object by name, POST (create) one object.

Never list, update, patch or delete: what exists is never overwritten, and the Job's RBAC needs only
``create`` on secrets and configmaps plus ``get`` on its named objects. Blocking (the kubernetes client):
the Job does one thing after another and nothing else. Responses are read as raw JSON into msgspec
shapes, as the destination's Kubernetes source does, and no error message ever carries object data.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import structlog

from tether.identity.kube_bootstrap.errors import ApiFailure, Forbidden, Unreachable
from tether.identity.kube_bootstrap.objects import ObjectData, labels

Resource = Literal["secrets", "configmaps"]

# (connect, read) seconds of each request: the API server answers these in milliseconds.
REQUEST_TIMEOUT = (5.0, 30.0)

log = structlog.get_logger(__name__)


class _Metadata(msgspec.Struct, frozen=True):
    name: str = ""
    resourceVersion: str = ""  # the API's own field name


class _Object(msgspec.Struct, frozen=True):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    type: str = ""
    data: dict[str, str] | None = None


class _Status(msgspec.Struct, frozen=True):
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True, repr=False)
class StoredObject:
    """An object as the API server holds it: data decoded to bytes (Secrets from base64)."""

    resource: Resource
    name: str
    resource_version: str
    data: dict[str, bytes]
    secret_type: str = ""

    def __repr__(self) -> str:
        return (
            f"StoredObject({self.resource}/{self.name}, rv={self.resource_version}, keys={sorted(self.data)})"
        )


def _status_of(error: Any) -> _Status:
    try:
        return msgspec.json.decode(error.body or b"{}", type=_Status)
    except (msgspec.DecodeError, TypeError):
        return _Status()


class KubeObjects:
    """Get and create Secrets and ConfigMaps in one namespace."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client as kube_client

        self._core = kube_client.CoreV1Api(api_client)
        self._models = kube_client
        self.namespace = namespace
        self.host = str(api_client.configuration.host)

    def get(self, resource: Resource, name: str) -> StoredObject | None:
        """The object, or None when it does not exist."""
        read = (
            self._core.read_namespaced_secret
            if resource == "secrets"
            else self._core.read_namespaced_config_map
        )
        status, body = self._call(
            "get", resource, name, lambda: read(name, self.namespace, **self._options())
        )
        if status == 404:
            return None
        return self._decode(resource, name, body)

    def create(self, resource: Resource, obj: ObjectData) -> tuple[StoredObject, bool]:
        """Create ``obj``; when it already exists (409), the existing one. True when this call created it."""
        metadata = self._models.V1ObjectMeta(
            name=obj.name, namespace=self.namespace, labels=labels(obj.component)
        )
        if resource == "secrets":
            encoded: dict[str, bytes | str] = {
                key: base64.b64encode(value).decode("ascii") for key, value in obj.data.items()
            }
            secret = self._models.V1Secret(
                api_version="v1", kind="Secret", metadata=metadata, type=obj.secret_type, data=encoded
            )

            def post() -> Any:
                return self._core.create_namespaced_secret(self.namespace, secret, **self._options())
        else:
            text = {key: value.decode("utf-8") for key, value in obj.data.items()}
            config_map = self._models.V1ConfigMap(
                api_version="v1", kind="ConfigMap", metadata=metadata, data=text
            )

            def post() -> Any:
                return self._core.create_namespaced_config_map(self.namespace, config_map, **self._options())

        status, body = self._call("create", resource, obj.name, post)
        if status == 409:
            existing = self.get(resource, obj.name)
            if existing is None:
                raise ApiFailure(
                    f"{resource}/{obj.name} in namespace {self.namespace} was created and deleted by someone "
                    "else while this Job ran",
                    "rerun the Job once nothing else changes these objects",
                )
            return existing, False
        if status == 404:
            raise ApiFailure(
                f"namespace {self.namespace} does not exist on the Kubernetes API at {self.host}",
                "create it (kubectl apply -k deploy/ does) or pass --namespace",
            )
        return self._decode(resource, obj.name, body), True

    @staticmethod
    def _options() -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}

    def _call(self, verb: str, resource: Resource, name: str, call: Any) -> tuple[int, bytes]:
        """(HTTP status, body) for 2xx, 404 and 409; every other answer raises, naming what to do."""
        from kubernetes.client.exceptions import ApiException

        where = f"{resource}/{name} in namespace {self.namespace}"
        try:
            response = call()
        except ApiException as error:
            code = int(error.status or 0)
            if code in (404, 409):
                return code, b""
            status = _status_of(error)
            if code == 403:
                scope = f" (resourceNames: [{name}])" if verb == "get" else ""
                raise Forbidden(
                    f"the Kubernetes API forbids {verb} on {where} (403 Forbidden: {status.message[:200]})",
                    f"grant the Job's ServiceAccount (tether-bootstrap) verb {verb} on {resource}{scope} in "
                    f"namespace {self.namespace}: a Role bound with a RoleBinding",
                ) from None
            if code == 401:
                raise Forbidden(
                    f"the Kubernetes API at {self.host} did not accept this Job's credentials "
                    f"(401 Unauthorized) on {verb} {where}",
                    "run the Job with its ServiceAccount token mounted, or check the kubeconfig",
                ) from None
            if code == 0:
                raise Unreachable(
                    f"the Kubernetes API at {self.host} did not answer {verb} {where} ({error.reason})",
                    "check that the API server is up and reachable; the Job retries",
                ) from None
            raise ApiFailure(
                f"the Kubernetes API answered {verb} {where} with {code} {status.reason or error.reason}",
                "see the API server's logs; the Job retries",
            ) from None
        except Exception as error:  # urllib3's connection and timeout errors
            raise Unreachable(
                f"the Kubernetes API at {self.host} did not answer {verb} {where} ({type(error).__name__})",
                "check that the API server is up and reachable; the Job retries",
            ) from None
        try:
            return int(response.status), bytes(response.data)
        finally:
            response.release_conn()

    def _decode(self, resource: Resource, name: str, body: bytes) -> StoredObject:
        try:
            obj = msgspec.json.decode(body, type=_Object)
            raw = obj.data or {}
            if resource == "secrets":
                data = {key: base64.b64decode(value, validate=True) for key, value in raw.items()}
            else:
                data = {key: value.encode("utf-8") for key, value in raw.items()}
        except (msgspec.DecodeError, binascii.Error, ValueError):
            raise ApiFailure(
                f"the Kubernetes API sent a {resource} object for {name} that does not decode",
                "check the API server (or whatever proxies it)",
            ) from None
        return StoredObject(resource, name, obj.metadata.resourceVersion, data, obj.type)
