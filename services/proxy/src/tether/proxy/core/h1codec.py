"""HTTP/1.1 behind the face the exchange core knows: a connection of numbered streams.

The forwarding core (:mod:`tether.proxy.core.exchange`) moves requests between HTTP/2 streams through a
small part of h2's connection API (``send_headers``, ``send_data``, ``end_stream``, ``reset_stream``,
windows and acknowledgements). The two codecs here offer that same part over h11, one message at a time:
the server side for clients of the proxy, the client side for the servers it dials. So an HTTP/1.1 request
is forwarded by the same code as an HTTP/2 one, to an HTTP/1.1 server or over a multiplexed HTTP/2
connection, and back.

Translation follows RFC 9113 §8.3.1 and RFC 9112: the request line and ``Host`` become ``:method``,
``:scheme``, ``:authority`` and ``:path``; framing headers (``Content-Length``, chunked) are rebuilt for each
hop; hop-by-hop fields are the exchange's to drop. HTTP/1.1 has no stream reset: a reset ends the
connection, so a truncated body is seen as one by the peer.

Flow control is the I/O layer's: ``window`` is unbounded here, the transport's write buffer stops the
sender (``writable``), and bytes received but not yet handed on (``unacknowledged``) pause reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus

import h11

from tether.proxy.core.headers import Header, Headers

#: What one DATA write may carry (the exchange splits its buffered chunks at this size).
MAX_WRITE = 64 * 1024
UNBOUNDED_WINDOW = 1 << 30
#: Received bytes not yet forwarded past which reading pauses (plus at most one read).
READ_BUFFER_HIGH = 64 * 1024
#: The original protocol of a request carried over a mesh HTTP/2 connection, restored by the inbound proxy.
ORIG_PROTO_HEADER = b"tether-orig-proto"
HTTP11 = b"HTTP/1.1"

_NO_BODY_STATUSES = frozenset({204, 304})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class _RemoteSettings:
    """h2's ``remote_settings`` as far as the core reads it: one request at a time."""

    max_concurrent_streams = 1


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _pseudo(headers: Headers, name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _regular(headers: Headers) -> list[Header]:
    return [(name, value) for name, value in headers if not name.startswith(b":")]


def _has(headers: Iterable[Header], name: bytes) -> bool:
    return any(key == name for key, _ in headers)


class H1Codec:
    """What both sides share: output, the acknowledgement count, the stream numbering."""

    remote_settings = _RemoteSettings()
    max_outbound_frame_size = MAX_WRITE

    def __init__(self, h11_connection: h11.Connection, on_drained: Callable[[], None]) -> None:
        self.h11 = h11_connection
        self._out: list[bytes] = []
        #: Bytes received and handed to an exchange that it has not yet passed on.
        self.unacknowledged = 0
        self._on_drained = on_drained
        #: The current message's stream number (odd, increasing, as h2's would be).
        self.stream_id = 0
        #: The connection must close once what is queued is written.
        self.must_close = False
        #: The peer switched protocols (101, or a 2xx to CONNECT): the rest is a byte stream.
        self.switched = False

    def local_flow_control_window(self, stream_id: int) -> int:
        # No window: whatever the exchange holds is written now (what it holds is bounded by the sending
        # side's own flow control), and a full write buffer stops it (``writable``), as for HTTP/2.
        return UNBOUNDED_WINDOW

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        before = self.unacknowledged
        self.unacknowledged = max(0, before - size)
        if before > READ_BUFFER_HIGH >= self.unacknowledged:
            self._on_drained()

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    def write_raw(self, data: bytes) -> None:
        """Bytes after a protocol switch, passed through untouched."""
        self._out.append(data)

    def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self._out.append(data)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if self.switched:
            self._out.append(data)
            return
        if data:
            self._send(h11.Data(data=data))
        if end_stream:
            self.end_stream(stream_id)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """No resets in HTTP/1.1: the connection closes once what is queued is written, so a message cut
        short is seen as truncated (its chunked body never ends, or falls short of its Content-Length)."""
        self.must_close = True

    def close_connection(self, *args: object, **kwargs: object) -> None:
        """No GOAWAY either: the connection closes after the message in flight (or now, if idle)."""
        self.must_close = True

    def end_stream(self, stream_id: int) -> None:
        raise NotImplementedError


class H1ServerCodec(H1Codec):
    """The proxy as an HTTP/1.1 server: requests in, the exchange's responses out."""

    def __init__(self, on_drained: Callable[[], None], max_head_bytes: int) -> None:
        super().__init__(h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes), on_drained)
        self.max_head_bytes = max_head_bytes
        self.request_method = b""
        self._response_started = False
        self._chunked = False

    @property
    def highest_inbound_stream_id(self) -> int:
        return self.stream_id

    def next_stream(self, method: bytes) -> int:
        self.stream_id += 2 if self.stream_id else 1
        self.request_method = method
        self._response_started = False
        return self.stream_id

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        if self._response_started:  # trailers: only a chunked body can carry them
            self._send(h11.EndOfMessage(headers=_regular(headers) if self._chunked else []))
            return
        status = int(_pseudo(headers, b":status") or b"502")
        fields = _regular(headers)
        if status < 200:
            self._send(
                h11.InformationalResponse(status_code=status, headers=fields, reason=reason_phrase(status))
            )
            if status == 101:
                self.switched = True
            return
        bodiless = status in _NO_BODY_STATUSES or self.request_method == b"HEAD"
        if end_stream and not bodiless and not _has(fields, b"content-length"):
            fields.append((b"content-length", b"0"))
        if self.must_close:
            fields.append((b"connection", b"close"))
        self._response_started = True
        self._chunked = not _has(fields, b"content-length") and status not in _NO_BODY_STATUSES
        self._send(h11.Response(status_code=status, headers=fields, reason=reason_phrase(status)))
        if self.request_method == b"CONNECT" and 200 <= status < 300:
            self.switched = True
            return
        if end_stream:
            self.end_stream(stream_id)

    def end_stream(self, stream_id: int) -> None:
        if not self.switched and self.h11.our_state is h11.SEND_BODY:
            self._send(h11.EndOfMessage())


class H1ClientCodec(H1Codec):
    """The proxy as an HTTP/1.1 client of one server: the exchange's requests out, responses in."""

    def __init__(self, on_drained: Callable[[], None]) -> None:
        super().__init__(h11.Connection(h11.CLIENT), on_drained)
        self._request_started = False
        self._chunked = False
        self.request_method = b""
        #: The ``Upgrade`` token the client asked for (the exchange passes it on: it is hop-by-hop).
        self.upgrade: bytes | None = None

    def get_next_available_stream_id(self) -> int:
        self.stream_id += 2 if self.stream_id else 1
        self._request_started = False
        return self.stream_id

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        if self._request_started:  # trailers
            self._send(h11.EndOfMessage(headers=_regular(headers) if self._chunked else []))
            return
        self._request_started = True
        method = _pseudo(headers, b":method") or b"GET"
        self.request_method = method
        authority = _pseudo(headers, b":authority")
        path = _pseudo(headers, b":path") or b"/"
        fields = [
            (name, value) for name, value in _regular(headers) if name not in (b"host", ORIG_PROTO_HEADER)
        ]
        host = authority or next((value for name, value in headers if name == b"host"), b"")
        fields.insert(0, (b"host", host))
        if method == b"CONNECT":
            path = authority
        framed = _has(fields, b"content-length")
        if not framed and not end_stream:
            fields.append((b"transfer-encoding", b"chunked"))
        elif not framed and method in _BODY_METHODS:
            fields.append((b"content-length", b"0"))
        if self.upgrade is not None:
            fields += [(b"connection", b"upgrade"), (b"upgrade", self.upgrade)]
        self._chunked = not framed and not end_stream
        self.upgrade = None
        self._send(h11.Request(method=method, target=path, headers=fields))
        if end_stream:
            self.end_stream(stream_id)

    def end_stream(self, stream_id: int) -> None:
        if not self.switched and self.h11.our_state is h11.SEND_BODY:
            self._send(h11.EndOfMessage())
