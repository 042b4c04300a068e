"""uvicorn's HTTP/1.1 protocol with the connection handling a public server needs.

uvicorn times out idle keep-alive connections but leaves these cases to the application, which cannot
see the socket. :func:`header_timeout_protocol` returns a protocol class that adds:

- a header timeout: a connection is closed when no complete request head has arrived within
  ``header_timeout_s`` of the connection opening or of the previous response (a client that sends its
  headers slowly, or never finishes them). The body has its own limit in the app
  (``Limits.body_timeout_s``, answered with 408);
- a send timeout: a connection whose client takes none of its response for ``send_timeout_s``
  while some of it waits in the write buffer (or, on Linux, unacknowledged in the socket's send queue)
  is aborted, which frees the buffered response; a plain
  close would wait for the buffer to flush, forever, and hold the connection (and a server's drain)
  open. Progress is what the client acknowledged (bytes written, minus those in the write buffer and,
  on Linux, in the socket's send queue), checked every ``SEND_CHECK_S`` or so: a client reading
  slowly but steadily keeps its connection however long the download takes (the write buffer alone
  moves in bursts of a third of the kernel's send buffer, seconds apart on a slow link);
- a lingering close: when the server closes a connection whose request body it has not read to the
  end (a 413, 422 or 429 sent before the body), closing at once would make the kernel answer the
  unread bytes with a reset, and many clients (urllib, requests) would see "connection reset"
  instead of the status. The connection half-closes instead (FIN after the response) and goes on
  reading and discarding what the client sends, until the client closes or ``LINGER_S`` after the
  response left the buffer (nginx's ``lingering_close``).

A client's EOF still ends its connection, after a whole request too: a half-close
(``shutdown(SHUT_WR)``, as ``nc -N`` does) looks the same as a client that went away, and a request
whose client is gone must free its tiles (nginx answers such requests with its 499 likewise).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

SEND_CHECK_S = 1.0
"""Seconds between checks of a connection's send progress while its write buffer holds data (at most
a quarter of the send timeout)."""

LINGER_S = 2.0
"""Seconds a lingering close goes on discarding the client's data once the response has left the
write buffer, unless the client closes first."""


try:
    import fcntl
    import termios
except ImportError:  # Windows: no send-queue probe, the write buffer alone is watched
    fcntl = termios = None  # type: ignore[assignment]


def _send_queue(transport: asyncio.Transport) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (``SIOCOUTQ``, Linux), else 0."""
    sock = transport.get_extra_info("socket")
    request = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux
    if sock is None or request is None or fcntl is None:
        return 0
    with contextlib.suppress(OSError, ValueError):
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0])
    return 0


class _LingeringTransport:
    """The connection's transport as the HTTP protocol sees it: ``close()`` asks the protocol, which
    closes at once or lingers, and the connection counts as closing from then on."""

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_connection()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)
        self._protocol.wrote(len(data))

    def is_closing(self) -> bool:
        return bool(self._protocol.closing or self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_timeout_protocol(timeout_s: float, send_timeout_s: float = 30.0,
                            on_send_failed: Callable[[], None] | None = None) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass with a header timeout of ``timeout_s``, a send timeout of
    ``send_timeout_s`` and lingering closes (module docstring). ``on_send_failed()`` is called once for
    each connection that ends before its client took the whole response: dropped by the send timeout,
    or lost (reset, broken) while some of the response still waited to be sent. The app counted the
    response when it handed it over (its status in the latency histogram), so this is the only sign."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _linger_timer: asyncio.TimerHandle | None = None
        _real: asyncio.Transport
        closing = False  # close_connection was called: the connection closes or lingers
        _lingering = False
        _send_dropped = False  # the send timeout aborted the connection
        _peer_eof = False
        _linger_buffered = 0  # the write buffer's size at the last lingering check
        _written = 0  # bytes handed to the transport
        _sent = 0  # of those, the bytes that had left the write buffer at the last send check
        _sent_at = 0.0  # loop time of the last send progress

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._real = transport
            super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # read and dropped: the client's unread upload must not turn into a reset
            super().data_received(data)

        def eof_received(self) -> None:
            # The client's EOF ends the connection, also after a whole request (as nginx's 499): the
            # server cannot tell a half-close from a client that gave up, and a request whose client
            # is gone must free its tiles, so a half-closed client gets no answer
            self._peer_eof = True
            super().eof_received()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel("_header_timer")  # a request head arrived: the app's limits take over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def wrote(self, size: int) -> None:
            """``size`` bytes went to the transport: watch that they leave its buffer."""
            self._written += size
            # a write that failed (the client reset already) empties the buffer and closes the transport:
            # watched too, so that its connection_lost(exc) counts the loss
            if self._send_timer is None and (self._waiting_to_be_taken() or self._real.is_closing()):
                self._sent, self._sent_at = self._acknowledged(), self.loop.time()
                self._watch_sends()

        def connection_lost(self, exc: Exception | None) -> None:
            # the send check runs while some of a response waits in the write buffer or the socket's send
            # queue: a connection lost with an error meanwhile lost that part (the transport has emptied its
            # buffer by now)
            lost_unsent = exc is not None and self._send_timer is not None
            for timer in ("_header_timer", "_send_timer", "_linger_timer"):
                self._cancel(timer)
            if (lost_unsent or self._send_dropped) and on_send_failed is not None:
                on_send_failed()
            super().connection_lost(exc)

        def close_connection(self) -> None:
            """Close, lingering when the request's body was not read to its end (module docstring)."""
            if self.closing:
                return
            self.closing = True
            self._cancel("_header_timer")
            unread = self.conn.their_state in (h11.SEND_BODY, h11.ERROR)
            if self._real.is_closing():
                return
            if not unread or self._peer_eof or not self._real.can_write_eof():
                self._real.close()
                return
            try:
                self._real.write_eof()  # FIN once the response has left the buffer
            except OSError:  # the client reset the connection already: nothing is left to linger for
                self._real.close()
                return
            self._lingering = True
            self._real.resume_reading()  # uvicorn pauses reading while a body waits for the app
            self._linger_buffered = self._real.get_write_buffer_size()
            self._linger_timer = self.loop.call_later(LINGER_S, self._linger_check)

        def _linger_check(self) -> None:
            self._linger_timer = None
            if self._real.is_closing():
                return
            buffered = self._real.get_write_buffer_size()
            if buffered == 0 and self._linger_buffered == 0:  # sent LINGER_S ago at least
                self._real.close()
                return
            self._linger_buffered = buffered  # a client that takes nothing is the send check's to drop
            self._linger_timer = self.loop.call_later(LINGER_S, self._linger_check)

        def _acknowledged(self) -> int:
            return self._written - self._real.get_write_buffer_size() - _send_queue(self._real)

        def _watch_sends(self) -> None:
            """Check the send progress again in :data:`SEND_CHECK_S` (at most a quarter of the send timeout)."""
            self._send_timer = self.loop.call_later(min(SEND_CHECK_S, send_timeout_s / 4), self._send_check)

        def _waiting_to_be_taken(self) -> bool:
            """Whether some of what was written has not reached the client: in the write buffer or, on
            Linux, in the socket's send queue (a response the kernel took whole is still lost by a reset
            that comes before the client has acknowledged it)."""
            return self._real.get_write_buffer_size() > 0 or _send_queue(self._real) > 0

        def _send_check(self) -> None:
            self._send_timer = None
            if not self._waiting_to_be_taken():
                if self._real.is_closing():
                    # a send error empties the write buffer and closes the transport, whose
                    # connection_lost(exc) follows a loop step later: watching on until then lets it count
                    # the loss (a plain close ends with connection_lost(None): nothing counted)
                    self._watch_sends()
                return  # all taken: the next write watches again
            now, sent = self.loop.time(), self._acknowledged()
            if sent > self._sent:
                self._sent, self._sent_at = sent, now
            elif now - self._sent_at >= send_timeout_s:  # a closing transport too: its close waits for the flush
                self.logger.info("a client took none of its response for %g s: connection dropped", send_timeout_s)
                self._send_dropped = True
                self._real.abort()
                return
            self._watch_sends()

        def _arm(self) -> None:
            self._cancel("_header_timer")
            self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _cancel(self, name: str) -> None:
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def _expired(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
