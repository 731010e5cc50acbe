"""Certify over grpcio, for control-plane services (the proxy has its own client without grpcio)."""

from __future__ import annotations

import grpc

from tether.shared.certmanager import Certify, CertifyFailed, Issued, certify_request, issued_from
from tether.shared.identity_names import WorkloadIdentity
from tether.shared.proto.identity.v1 import identity_pb2_grpc


class GrpcCertify:
    """Calls ``Identity/Certify`` at ``address`` over TLS, verifying the server as ``server_name``."""

    def __init__(
        self, address: str, trust_anchors_pem: bytes, server_name: str, timeout: float = 10.0
    ) -> None:
        self._address = address
        self._credentials = grpc.ssl_channel_credentials(root_certificates=trust_anchors_pem)
        self._options = [("grpc.ssl_target_name_override", server_name)]
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self, identity: WorkloadIdentity, token: bytes, csr_der: bytes) -> Issued:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self._address, self._credentials, options=self._options)
        stub = identity_pb2_grpc.IdentityStub(self._channel)
        try:
            response = await stub.Certify(certify_request(identity, token, csr_der), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise CertifyFailed(exc.code().name.lower(), f"{self._address}: {exc.details()}") from None
        return issued_from(response)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def grpc_certify(address: str, trust_anchors_pem: bytes, server_name: str) -> Certify:
    return GrpcCertify(address, trust_anchors_pem, server_name)
