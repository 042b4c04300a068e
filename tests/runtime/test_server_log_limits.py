"""What a client can make the server log or raise when it goes away: bounded, and never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import h11

from adassr.runtime.server.http_protocol import header_timeout_protocol
from adassr.runtime.server.log_limits import INTERVAL_S, ClientNoiseLimit, limit_client_noise


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, (), None)


def test_client_caused_warnings_are_logged_once_a_minute_with_a_count() -> None:
    """One keep-alive connection sending `Upgrade: x` made uvicorn log two warnings per request, 0.5 MB a second
    with no token needed, the second advising to install WebSocket packages (a helper's hunt)."""
    now = [1000.0]
    limit = ClientNoiseLimit(clock=lambda: now[0])
    passed = [limit.filter(_record("Unsupported upgrade request.")) for _ in range(500)]
    assert passed.count(True) == 1 and passed[0]
    assert not limit.filter(_record("No supported WebSocket library detected. Please use \"pip install ...\""))
    assert limit.filter(_record("Invalid HTTP request received."))  # another kind: its own allowance
    now[0] += INTERVAL_S
    again = _record("Unsupported upgrade request.")
    assert limit.filter(again)
    assert again.getMessage() == ("Unsupported upgrade request. (499 more since the last such line, 60 s ago, "
                                  "were not logged)")
    assert all(limit.filter(_record(f"Application startup complete {n}")) for n in range(3))  # others pass


def test_the_limit_goes_on_a_logger_once() -> None:
    logger = logging.getLogger("test.uvicorn.error")
    first, second = limit_client_noise(logger), limit_client_noise(logger)
    try:
        assert first is second and logger.filters == [first]
    finally:
        logger.removeFilter(first)


class _ResetTransport:
    """A transport whose client has reset the connection: shutting down its write side fails."""

    closed = False

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(107, "Transport endpoint is not connected")

    def close(self) -> None:
        self.closed = True


def test_a_close_after_the_client_reset_the_connection_raises_nothing() -> None:
    """A refusal (413, 408) to a client that read part of it and closed: the lingering close's write_eof failed
    with ENOTCONN, and uvicorn logged the error as a crash, a 52-line traceback per client (a helper's hunt)."""
    protocol: Any = object.__new__(header_timeout_protocol(5.0))
    protocol._real = _ResetTransport()
    protocol.conn = h11.Connection(h11.SERVER)
    protocol.conn.receive_data(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
    protocol.conn.next_event()
    assert protocol.conn.their_state is h11.SEND_BODY  # the body is unread: the close would linger
    protocol.close_connection()
    assert protocol._real.closed and not protocol._lingering




def test_a_steady_flood_is_logged_once_a_minute_with_the_count_since_the_last_line() -> None:
    """A sliding window logged a flood of one line a second once and never again; the count must restart at
    each line logged, and a line with nothing left out carries no count (mutation testing)."""
    now = [0.0]
    limit = ClientNoiseLimit(clock=lambda: now[0])
    passed = 0
    for _ in range(300):  # one a second for five minutes
        passed += limit.filter(_record("Unsupported upgrade request."))
        now[0] += 1
    assert passed == 5
    now[0] += INTERVAL_S
    counted = ClientNoiseLimit(clock=lambda: now[0])
    for burst, expected in ((10, "(9 more"), (4, "(4 more")):  # the first of 10 logged; all 4 left out
        for _ in range(burst):
            counted.filter(_record("Unsupported upgrade request."))
        now[0] += INTERVAL_S
        line = _record("Unsupported upgrade request.")
        assert counted.filter(line) and expected in line.getMessage()
    quiet = ClientNoiseLimit(clock=lambda: now[0])
    assert quiet.filter(_record("Invalid HTTP request received."))
    assert [quiet.filter(_record("Invalid HTTP request received.")) for _ in range(100)].count(True) == 0
    now[0] += INTERVAL_S
    line = _record("Invalid HTTP request received.")
    assert quiet.filter(line) and "more" in line.getMessage()
    now[0] += INTERVAL_S
    line = _record("Invalid HTTP request received.")
    assert quiet.filter(line) and line.getMessage() == "Invalid HTTP request received."
