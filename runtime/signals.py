"""SIGTERM and SIGHUP stopping a command the way Ctrl-C does, within seconds.

A command that stops cleanly at Ctrl-C (``upscale``: the outputs already written stay, complete, no
temporary file is left, "interrupted") was killed mid-write by SIGTERM, what ``timeout``, ``docker
stop``, systemd and batch schedulers send: a hidden temporary file was left in the output folder and
nothing was said. :func:`terminate_as_interrupt` turns those signals into :class:`Terminated`, a
``KeyboardInterrupt``, so that the command's Ctrl-C handling runs; its :attr:`~Terminated.exit_code` is
the shell's 128 + the signal number (143 for SIGTERM, 129 for SIGHUP).

Python runs a signal handler only between bytecodes of the main thread, so one that arrives during a
model call waits for the call to end: a minute for a large tile on a CPU, past the 10 s ``docker stop``
and ``timeout -k`` give before SIGKILL. A thread therefore hears of each signal at once (through
``signal.set_wakeup_fd``) and, if the command has not stopped within :data:`GRACE_S` of a stop signal
(or at a second signal, Ctrl-C included), ends the process itself: it removes the temporary files the
process is writing, says so, runs the command's :func:`last_words` (``upscale --report`` writes its
report), and exits with the same code. The outputs already complete stay; the one in progress is not
written.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from adassr.runtime.tempfiles import remove_own_temps

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

GRACE_S = 5.0
"""Seconds a stop signal gives the command to stop by itself (finish the write in progress) before the
process ends without it."""

_POLL_S = 0.05  # how often the watching thread looks whether the block has ended

LAST_WORDS_S = 2.0
"""Seconds the :func:`last_words` of a process that must end now get, all together (a report on a hung
network share must not keep it from ending within ``docker stop``'s 10 s)."""

_LAST_WORDS: list[Callable[[], object]] = []  # what must be done before the process ends without its command
_LAST_WORDS_LOCK = threading.Lock()


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
def last_words(callback: Callable[[], object]) -> Iterator[None]:
    """Within the block, ``callback`` runs (in another thread, at most :data:`LAST_WORDS_S`) when a stop
    signal must end the process without waiting for its command (module docstring): ``upscale --report``
    writes the report of what was done. It must say itself what went wrong (it runs as the process ends);
    an exception it lets out is named on stderr."""
    with _LAST_WORDS_LOCK:
        _LAST_WORDS.append(callback)
    try:
        yield
    finally:
        with _LAST_WORDS_LOCK:
            _LAST_WORDS.remove(callback)


def _say_last_words() -> None:
    """Run the registered :func:`last_words`, newest first, within :data:`LAST_WORDS_S` in all."""
    with _LAST_WORDS_LOCK:
        callbacks = list(reversed(_LAST_WORDS))
    if not callbacks:
        return

    def run() -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - the process is ending: named, not raised
                with contextlib.suppress(Exception):
                    if sys.stderr is not None:
                        sys.stderr.write(f"error: while stopping: {type(exc).__name__}: {exc}\n")

    speaker = threading.Thread(target=run, name="adassr-last-words", daemon=True)
    speaker.start()
    speaker.join(LAST_WORDS_S)


def _quit_now(signum: int, why: str) -> None:
    removed = remove_own_temps()
    left = f", {removed} temporary file(s) removed" if removed else ""
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.write(f"interrupted: {why}; stopped without waiting for it (the image in progress is not "
                             f"written{left})\n")
            sys.stderr.flush()
    _say_last_words()
    remove_own_temps()  # a last word that did not finish in time leaves no temporary file either
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()
    with contextlib.suppress(Exception):
        if sys.stdout is not None:
            sys.stdout.flush()
    os._exit(128 + signum)


def _receive(read_fd: int, wanted: set[int], done: threading.Event, grace_s: float) -> None:
    """The watching thread: the signal numbers the wakeup fd brings; end the process when the command has
    not stopped ``grace_s`` after a stop signal, or at a second signal."""
    first: float | None = None
    stop_signal = 0
    while not done.is_set():
        ready, _, _ = select.select([read_fd], [], [], _POLL_S)
        now = time.monotonic()
        if ready:
            try:
                data = os.read(read_fd, 64)
            except BlockingIOError:
                data = b""
            for signum in data:
                if signum not in wanted and signum != signal.SIGINT:
                    continue
                if first is not None:  # a second signal: no more waiting
                    _quit_now(signum if signum in wanted else stop_signal or signum,
                              f"a second signal ({signal.Signals(signum).name}) came while the first was handled")
                first = now
                stop_signal = signum if signum in wanted else 0
        if stop_signal and first is not None and now - first >= grace_s:
            _quit_now(stop_signal, f"{signal.Signals(stop_signal).name} came during a call that had not ended "
                                   f"{now - first:.0f} s later (loading or exporting a model, or a model call on "
                                   "a large tile)")


@contextlib.contextmanager
def terminate_as_interrupt(signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *,
                           grace_s: float = GRACE_S) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`Terminated` in the main thread, and end the process
    ``grace_s`` later if it has not stopped by then (module docstring). Main thread only; elsewhere, and
    for a signal the process ignores (SIGHUP under ``nohup``), nothing changes. The previous handlers and
    wakeup fd come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {s for s in signals if signal.getsignal(s) is not signal.SIG_IGN}  # nohup, or a parent's wish
    if not wanted:
        yield
        return
    previous = {s: signal.signal(s, _raise_terminated) for s in wanted}
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    watcher = threading.Thread(target=_receive, args=(read_fd, {int(s) for s in wanted}, done, grace_s),
                               name="adassr-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(OSError):  # wake it now (a 0 is no signal), not at its next poll: every run's end
            os.write(write_fd, b"\0")
        watcher.join()
        signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)
        os.close(read_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
