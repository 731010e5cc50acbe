"""Tether's common library: config, logging, NATS bus and events, gRPC contracts, service runtime."""

__version__ = "0.1.0"
