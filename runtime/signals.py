"""SIGTERM and SIGHUP stopping a command the way Ctrl-C does.

A command that stops cleanly at Ctrl-C (``upscale``: the file being written is finished and reported, no
temporary file is left, "interrupted") was killed mid-write by SIGTERM, what ``timeout``, ``docker stop``,
systemd and batch schedulers send: a hidden temporary file was left in the output folder and nothing was
said. :func:`terminate_as_interrupt` turns those signals into :class:`Terminated`, a ``KeyboardInterrupt``,
so that the command's Ctrl-C handling runs; its :attr:`~Terminated.exit_code` is the shell's 128 + the
signal number (143 for SIGTERM, 129 for SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A stop signal other than SIGINT, raised where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    del frame
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`Terminated` (main thread only; elsewhere, and for a
    signal the process ignores, such as SIGHUP under ``nohup``, nothing changes); the previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in signals:
        if signal.getsignal(signum) is signal.SIG_IGN:  # nohup, or a parent that wants it ignored
            continue
        previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
