"""A limit on the log lines that clients cause in uvicorn: a client must not fill the server's disk.

uvicorn logs a warning for each request that asks for a protocol upgrade (``Unsupported upgrade request.``,
followed by advice to install WebSocket packages, which this server, having no WebSocket endpoint, does not
need) and for each malformed request (``Invalid HTTP request received.``), before the application sees the
request and so before any token check: one keep-alive connection could log half a megabyte a second.
:class:`ClientNoiseLimit` lets each such line through once per :data:`INTERVAL_S`, the next one saying how
many were left out, and drops the WebSocket advice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

INTERVAL_S = 60.0
"""The least time between two log lines of one client-caused kind."""
CLIENT_MESSAGES = ("Unsupported upgrade request.", "Invalid HTTP request received.")
"""uvicorn's warnings that any client can cause at will."""
DROPPED_PREFIXES = ("No supported WebSocket library detected",)
"""uvicorn's advice that follows an upgrade request: no use to a server without WebSocket endpoints."""


class ClientNoiseLimit(logging.Filter):
    """Passes each of :data:`CLIENT_MESSAGES` at most once per ``interval_s`` (with the count of those left out
    since), drops :data:`DROPPED_PREFIXES`, and passes every other record."""

    def __init__(self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (when last logged, how many left out since)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(DROPPED_PREFIXES):
            return False
        if message not in CLIENT_MESSAGES:
            return True
        with self._lock:
            now = self._clock()
            last, left_out = self._seen.get(message, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._seen[message] = (last, left_out + 1)
                return False
            self._seen[message] = (now, 0)
        if left_out and last is not None:
            record.msg, record.args = (f"{message} ({left_out} more since the last such line, {now - last:.0f} s "
                                       "ago, were not logged)"), ()
        return True


def limit_client_noise(logger: logging.Logger | None = None) -> ClientNoiseLimit:
    """Put a :class:`ClientNoiseLimit` on ``logger`` (uvicorn's ``uvicorn.error``) unless one is there; returns it."""
    target = logger or logging.getLogger("uvicorn.error")
    for existing in target.filters:
        if isinstance(existing, ClientNoiseLimit):
            return existing
    limit = ClientNoiseLimit()
    target.addFilter(limit)
    return limit
