"""SIGINT / SIGTERM during adaptation: turned into one exception type, deferred around commits.

:func:`catch_interrupts` installs handlers for SIGINT and SIGTERM (main thread only) that raise
:class:`Interrupted` carrying the signal number, so both stop a run the same way Ctrl-C does and
the caller can tell them apart (exit 130 / 143). Inside :func:`deferred` (e.g. while the store
commits the manifest) a signal is remembered and raised when the block ends, so a commit is never
cut in half. Outside :func:`catch_interrupts` nothing is changed (Python's default handlers).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """The run was stopped by a signal; ``signum`` says which. Not an AdassrError: it is no failure."""

    def __init__(self, signum: int, *, kept: bool = False, note: str | None = None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.kept = kept  # True when weights were published (--keep-on-interrupt, or a commit that completed)
        self.note = note  # what happened to the camera's model, when the plain kept / not kept wording is wrong

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell convention)."""
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.defer_depth = 0
        self.pending: int | None = None


_STATE = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    del frame
    if _STATE.defer_depth > 0:
        if _STATE.pending is None:
            _STATE.pending = signum
        return
    raise Interrupted(signum)


def as_interrupted(exc: BaseException) -> Interrupted | None:
    """``exc`` as :class:`Interrupted` (a KeyboardInterrupt counts as SIGINT), or None."""
    if isinstance(exc, Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    return None


@contextlib.contextmanager
def catch_interrupts() -> Iterator[None]:
    """Raise :class:`Interrupted` on SIGINT / SIGTERM inside the block; restore the old handlers after.

    A no-op outside the main thread (Python delivers signals only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    for sig in HANDLED:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM (installed by :func:`catch_interrupts`) until the block ends, then raise.

    When the block itself fails, its error propagates and a held signal is dropped: the failure is
    what happened (an ``Interrupted`` raised here would say the block completed)."""
    _STATE.defer_depth += 1
    completed = False
    try:
        yield
        completed = True
    finally:
        _STATE.defer_depth -= 1
        if _STATE.defer_depth == 0 and _STATE.pending is not None:
            signum, _STATE.pending = _STATE.pending, None
            if completed:
                raise Interrupted(signum)
