"""Lines for the user on stdout / stderr that never stop the work they report on.

A folder run prints one line per image. Neither a reader that went away (``adassr upscale ... |
head -1``: a broken pipe), a full device behind a redirect, nor a file name that the terminal's
encoding cannot show (undecodable bytes, kept by Python as surrogates) may end the run with a
traceback while images are still to be written: :func:`say` shows such names escaped
(``bad\\udcff.png``) and, when a stream cannot be written, sends the rest of its output to
``os.devnull`` with one warning on stderr, and the run goes on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import sys
import unicodedata
from collections.abc import Iterator
from typing import TextIO


def printable(text: str, stream: TextIO) -> str:
    """``text`` with what ``stream``'s encoding cannot hold written as backslash escapes."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding, "replace")
    except LookupError:  # an encoding name Python does not know: keep ASCII, escape the rest
        return text.encode("ascii", "backslashreplace").decode("ascii")


def one_line(text: str) -> str:
    """``text`` with its control characters and line or paragraph separators written as escapes (``\\n``,
    ``\\x1b``): a file name holding them would split a line of a per-image report or reach the terminal raw."""
    if text.isprintable():
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BREAKS else c
                   for c in text)


_BREAKS = ("Cc", "Zl", "Zp")


class OneLineFormatter(logging.Formatter):
    """Log lines whose message is :func:`one_line`: a file name or an EXIF field in a warning cannot split
    it into a forged ``WARNING ...`` line or send escape sequences to the terminal (a traceback after the
    message stays as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)


def say(text: str, stream: TextIO | None, *, end: str = "\n") -> bool:
    """Write ``text`` and ``end`` to ``stream`` and flush; False (and the stream silenced) when it failed.
    A stream that is None (the process started with that descriptor closed, ``>&-``) takes nothing."""
    if stream is None:
        return False
    try:
        stream.write(printable(text, stream) + end)
        stream.flush()
    except OSError as exc:
        lost_stream(stream, exc)
        return False
    return True


def lost_stream(stream: TextIO, exc: OSError, *, warn: bool = True) -> None:
    """Point ``stream``'s file descriptor at ``os.devnull`` (its buffered text too, so that the flush at
    exit does not fail again) and, with ``warn``, say on stderr that the run goes on without it (unless
    stderr is the stream that failed)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if warn and stream is not sys.stderr:
        name = getattr(stream, "name", "output")
        with contextlib.suppress(OSError, ValueError):
            print(f"warning: cannot write to {name} ({exc.strerror or exc}); the run goes on without its "
                  "lines there", file=sys.stderr, flush=True)


def reader_gone(stream: TextIO) -> bool:
    """Whether ``stream`` is a pipe whose reader has gone (writing to it fails with a broken pipe)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


class GuardedOutput(io.TextIOBase):
    """A text stream in front of ``stream`` (stdout) for a command's whole run: what its encoding cannot
    hold is written escaped (:func:`printable`), and a write or flush that fails with anything but a
    broken pipe (a full device behind ``> file``, an I/O error) silences the stream with one warning on
    stderr (:func:`lost_stream`) instead of ending the run with a traceback after its work was done. A
    broken pipe is raised as it is: the command stops as ``... | head`` expects (the CLI exits 1)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(printable(text, self._stream))
        except BrokenPipeError:
            raise
        except OSError as exc:
            lost_stream(self._stream, exc)
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            lost_stream(self._stream, exc)

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def name(self) -> str:
        return str(getattr(self._stream, "name", "<stdout>"))


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """Run the block with ``sys.stdout`` behind a :class:`GuardedOutput` (nothing when stdout is closed)."""
    original = sys.stdout
    if original is None:
        yield
        return
    sys.stdout = GuardedOutput(original)
    try:
        yield
    finally:
        sys.stdout = original
