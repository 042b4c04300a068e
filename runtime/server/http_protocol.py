"""uvicorn's HTTP/1.1 protocol with a time limit on request headers (slow-client protection).

uvicorn times out idle keep-alive connections but not a client that opens a connection and sends
its request headers slowly (or never finishes them). :func:`header_timeout_protocol` returns a
protocol class that closes a connection when no complete request head has arrived within
``timeout_s`` of the connection opening or of the previous response. The body has its own limit
in the app (``Limits.body_timeout_s``, answered with 408).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass enforcing ``timeout_s`` for request heads."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request head arrived: the app's limits take over

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
