"""Destination/Get streams over the proxy's own gRPC client (tether.proxy.grpc_h2).

Every authority's stream shares the channel's one connection; in a meshed proxy it is TLS, and the
destination service must present its own identity.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from google.protobuf.message import DecodeError

from tether.proxy.core.resolution import Update
from tether.proxy.errors import GrpcCallError
from tether.proxy.grpc_h2 import INTERNAL, GrpcChannel
from tether.proxy.protoconv import update_from_proto
from tether.shared.proto.destination.v1 import destination_pb2

GET_PATH = b"/tether.destination.v1.Destination/Get"


class DestinationStreams:
    """Opens Destination/Get streams on ``channel``, telling the service who this proxy is."""

    def __init__(self, channel: GrpcChannel, context_token: str) -> None:
        self.channel = channel
        self._context_token = context_token

    async def open(self, authority: str) -> AsyncGenerator[Update, None]:
        """Updates of one Get stream; raises GrpcCallError when it fails.

        A stream the service ends with OK reached its maximum age (``--max-stream-age``): the connection is
        retired, so that the streams reopened next go over a new one, which may reach another replica."""
        request = destination_pb2.GetDestination(
            authority=authority, context_token=self._context_token
        ).SerializeToString()
        async for message in self.channel.stream(GET_PATH, request, retire_on_end=True):
            try:
                decoded = destination_pb2.Update.FromString(message)
            except DecodeError:
                raise GrpcCallError(INTERNAL, "the destination service sent an undecodable message") from None
            update = update_from_proto(decoded)
            if update is not None:
                yield update

    async def close(self) -> None:
        await self.channel.close()
