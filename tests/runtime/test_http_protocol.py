"""The server's connection protocol (runtime/server/http_protocol.py): send timeouts and their timers,
lingering closes, and what counts as a failed send. Unit tests drive the protocol with a fake loop and
transport; the others talk raw HTTP to a real server. Each was written against a change that mutation
testing made unnoticed (the test fails under it)."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from adassr.runtime.server.config import Limits
from adassr.runtime.server.http_protocol import LINGER_S, header_timeout_protocol

from ._models import fallback_and_canon
from ._server import running_server, small_png
from .test_server import _config, _metric


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fallback_and_canon(tmp_path / "store")


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[list[Any]] = []  # [when, cb, cancelled]

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Any) -> Any:
        entry = [self.now + delay, cb, False]
        self.timers.append(entry)

        return _Handle(entry)

    def live(self) -> list[list[Any]]:
        return [t for t in self.timers if not t[2]]

    def advance(self, dt: float) -> None:
        self.now += dt
        while True:
            due = [t for t in self.timers if not t[2] and t[0] <= self.now]
            if not due:
                return
            for t in due:
                t[2] = True
                t[1]()


class _Handle:
    def __init__(self, entry: list[Any]) -> None:
        self.entry = entry

    def cancel(self) -> None:
        self.entry[2] = True


class FakeTransport:
    def __init__(self) -> None:
        self.buffer = 0
        self.closing = False
        self.aborted = False
        self.eof = False
        self.paused = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def resume_reading(self) -> None:
        self.paused = False


def _protocol(failed: list[int] | None = None, send_timeout_s: float = 4.0) -> Any:
    on_failed = None if failed is None else (lambda: failed.append(1))
    p: Any = object.__new__(header_timeout_protocol(5.0, send_timeout_s, on_send_failed=on_failed))
    p.loop = FakeLoop()
    p._real = FakeTransport()
    p.logger = logging.getLogger("test_http_protocol")
    return p


@pytest.fixture
def lost_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``connection_lost`` runs only the protocol's own part (uvicorn's needs a whole connection)."""
    import uvicorn.protocols.http.h11_impl as h11_impl

    monkeypatch.setattr(h11_impl.H11Protocol, "connection_lost", lambda self, exc: None)


def test_each_write_while_buffered_keeps_one_send_timer() -> None:
    p = _protocol()
    p._real.buffer = 100
    for _ in range(5):
        p.wrote(100)
    assert len(p.loop.live()) == 1


def test_a_write_that_failed_at_once_counts_a_failed_send(lost_only: None) -> None:
    failed: list[int] = []
    p = _protocol(failed)
    p._real.closing = True  # the write failed: buffer emptied, transport closing
    p.wrote(1000)
    p.connection_lost(ConnectionResetError())  # a loop step later
    assert failed == [1]


def test_a_reset_with_nothing_unsent_is_not_a_failed_send(lost_only: None) -> None:
    failed: list[int] = []
    _protocol(failed).connection_lost(ConnectionResetError())
    assert failed == []


def _lingering(p: Any) -> None:
    p.conn = h11.Connection(h11.SERVER)
    p.conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
    p.conn.next_event()
    p.close_connection()
    assert p._lingering and p._real.eof and not p._real.closing


def test_linger_ends_after_the_response_left_the_buffer_for_linger_s() -> None:
    p = _protocol()
    p._real.buffer = 500  # the 413 still buffered when the close starts
    _lingering(p)
    p.loop.advance(LINGER_S)
    assert not p._real.closing
    p._real.buffer = 0  # now sent
    p.loop.advance(LINGER_S)
    assert not p._real.closing  # sent less than LINGER_S ago: goes on discarding
    p.loop.advance(LINGER_S)
    assert p._real.closing  # and then ends


def test_linger_with_the_response_sent_at_once_ends_after_linger_s() -> None:
    p = _protocol()
    _lingering(p)
    assert not p._real.paused  # reading resumed to discard the upload
    p.loop.advance(LINGER_S)
    assert p._real.closing


def test_a_lingering_connection_discards_what_the_client_sends() -> None:
    p = _protocol()
    _lingering(p)
    p.data_received(b"x" * 100000)  # must not reach h11 / uvicorn
    assert p.conn.their_state is h11.SEND_BODY


def test_send_timeout_drops_only_a_client_that_takes_nothing() -> None:
    failed: list[int] = []
    p = _protocol(failed, send_timeout_s=4.0)
    p._real.buffer = 1000
    p.wrote(1000)
    for _ in range(10):  # takes 50 bytes a second: kept
        p._real.buffer -= 50
        p.loop.advance(1.0)
    assert not p._real.aborted
    p.loop.advance(3.0)  # 3 s without progress: still kept
    assert not p._real.aborted
    p.loop.advance(1.0)  # 4 s: dropped
    assert p._real.aborted and p._send_dropped


def test_send_check_period_is_a_quarter_of_a_short_timeout() -> None:
    p = _protocol(send_timeout_s=0.4)
    p._real.buffer = 10
    p.wrote(10)
    (when, _, _), = p.loop.live()
    assert when == pytest.approx(0.1)
    p = _protocol(send_timeout_s=30)
    p._real.buffer = 10
    p.wrote(10)
    (when, _, _), = p.loop.live()
    assert when == pytest.approx(1.0)


def test_an_idle_keep_alive_client_that_resets_is_not_a_failed_send(store: Path) -> None:
    with running_server(_config(store)) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"alive" not in got:
            got += sock.recv(4096)
        time.sleep(0.3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        time.sleep(1.0)
        assert _metric(httpx.get(f"{live.url}/metrics", timeout=30).text, "adassr_errors_total",
                       'kind="send_failed"') == 0


def test_a_refused_upload_is_discarded_not_buffered(store: Path) -> None:
    config = _config(store, limits=Limits(max_body_bytes=2**20))
    with running_server(config) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=20)
        total = 24 * 2**20
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
        sock.sendall(bytes(total))  # the server must read (and drop) all of it: no broken pipe
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 413"), got
        sock.close()


def test_no_timer_outlives_its_connection(lost_only: None) -> None:
    """A timer chain left running re-arms itself every second for good: a leak per reset download."""
    p = _protocol([])
    p._real.buffer = 100
    for _ in range(3):
        p.wrote(100)
        p.loop.advance(0.5)
    p._real.closing, p._real.buffer = True, 0  # reset: buffer emptied
    p.connection_lost(ConnectionResetError())
    p.loop.advance(5.0)
    assert p.loop.live() == []


def test_a_pipelined_request_whose_body_is_slow_is_not_cut_by_the_header_timeout(store: Path) -> None:
    config = _config(store, limits=Limits(header_timeout_s=0.5))
    image = small_png(16, 12, seed=2)
    with running_server(config) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(image))
        time.sleep(1.5)  # the second head is whole; its body comes later (the body timeout is 30 s)
        sock.sendall(image)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        sock.close()
        assert got.count(b"HTTP/1.1 200") == 2, got[:400]


def test_a_malformed_request_with_a_body_gets_its_400_not_a_reset(store: Path) -> None:
    with running_server(_config(store)) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        body = bytes(24 * 2**20)
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: 7\r\n\r\n"
                     % len(body))
        sock.sendall(body)  # a client like urllib sends its whole body before reading
        got = sock.recv(4096)
        sock.close()
        assert got.startswith(b"HTTP/1.1 400"), got
