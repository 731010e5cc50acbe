"""Tether's common library: config, logging, NATS bus and events, gRPC contracts, service runtime."""

import os

__version__ = "0.1.0"

#: TLS 1.3 only for every gRPC server and channel in a Tether process. grpcio has no minimum-TLS-version
#: setting; its core reads this documented variable once, when ``grpc`` is first imported, and applies it
#: to TLS 1.2 and below only (TLS 1.3's suites are fixed). A PSK suite is never negotiable without a PSK
#: callback, which gRPC never sets, so a TLS 1.2 handshake finds no shared cipher and fails, while TLS 1.3
#: is untouched. Set here, in the package every Tether module imports before grpc (tested per entry point),
#: and unconditionally: TLS 1.2 is not a choice a deployment gets to make by accident.
GRPC_TLS13_ONLY_CIPHER_SUITES = "PSK-AES128-CBC-SHA"
os.environ["GRPC_SSL_CIPHER_SUITES"] = GRPC_TLS13_ONLY_CIPHER_SUITES
