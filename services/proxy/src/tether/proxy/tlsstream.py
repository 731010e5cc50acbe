"""TLS over a plain transport with memory BIOs, for mesh TCP: a stream that can half-close.

asyncio's TLS transport cannot pass a half-close on (``can_write_eof()`` is False, and a close_notify from
the peer shuts the whole connection down), so a TCP client that sends its request and then its FIN would
never be answered across the mesh. TLS 1.3 allows it (RFC 8446 §6.1: close_notify closes one direction;
the other may go on writing). This adapter drives an ``ssl.SSLObject`` itself: ``write_eof`` sends
close_notify and keeps reading; a close_notify received is ``eof_received`` for the application protocol.
It offers the application protocol the part of the transport API the TCP relay and detection use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, cast

MAX_READ = 256 * 1024

#: Checks the peer after the handshake (its identity, the ALPN agreed); an exception refuses it.
HandshakeCheck = Callable[[ssl.SSLObject], None]


class TlsStream(asyncio.Protocol):
    """The raw transport's protocol; to the application protocol it is the transport."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app: asyncio.Protocol,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        check: HandshakeCheck | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._app = app
        self._check = check
        self._handshake_timeout = handshake_timeout
        self._raw: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._established = False
        self._eof_sent = False
        self._eof_received = False
        self._app_open = False
        #: Resolved when the handshake completed (None) or failed (the exception).
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol, for the raw transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._handshake_timeout, self._handshake_timed_out
        )
        self._step()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        self._step()

    def eof_received(self) -> bool | None:
        # A FIN without close_notify: the peer will send no more either way.
        self._incoming.write_eof()
        self._step()
        if not self._established:
            return False
        if not self._eof_received:
            self._eof_received = True
            self._app.eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._raw = None
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during the TLS handshake"))
        if self._app_open:
            self._app_open = False
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app_open:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_open:
            self._app.resume_writing()

    def _handshake_timed_out(self) -> None:
        self._fail(TimeoutError("TLS handshake timed out"))

    def _fail(self, exc: Exception) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self._raw is not None:
            self._raw.abort()

    def _step(self) -> None:
        if not self._established:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._flush()
                self._fail(exc)
                return
            self._flush()
            if self._timer is not None:
                self._timer.cancel()
            if self._check is not None:
                try:
                    self._check(self._ssl)
                except Exception as exc:
                    self._fail(exc)
                    return
            self._established = True
            self._app_open = True
            self._app.connection_made(self)  # type: ignore[arg-type]
            if not self.handshake.done():
                self.handshake.set_result(None)
        self._read()

    def _read(self) -> None:
        chunks: list[bytes] = []
        closed = False
        try:
            while True:
                chunk = self._ssl.read(MAX_READ)
                if not chunk:
                    closed = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            closed = True
        except ssl.SSLError:
            self._flush()
            if self._raw is not None:
                self._raw.abort()
            return
        self._flush()  # (key updates and session tickets want answers)
        if chunks and self._app_open:
            self._app.data_received(b"".join(chunks))
        if closed and not self._eof_received and self._app_open:
            self._eof_received = True
            self._app.eof_received()
            self._maybe_close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None:
            self._raw.write(data)

    def _maybe_close(self) -> None:
        if self._eof_sent and self._eof_received and self._raw is not None:
            self._raw.close()

    # The transport, for the application protocol
    def write(self, data: bytes) -> None:
        if self._eof_sent or self._raw is None:
            return
        self._ssl.write(data)
        self._flush()

    def write_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError, OSError):
            self._ssl.unwrap()  # sends close_notify; the peer may go on writing
        self._flush()
        self._maybe_close()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._raw is not None:
            self.write_eof()
            self._raw.close()

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw is None or self._raw.is_closing()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def pause_reading(self) -> None:
        if self._raw is not None and self._raw.is_reading():
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None and not self._raw.is_reading():
            self._raw.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._ssl.context
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)
