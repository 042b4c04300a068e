"""Console lines: one line per report, stdout restored after a guarded command."""

from __future__ import annotations

import errno
import io
import sys

import pytest

from adassr.runtime.console import GuardedOutput, guarded_stdout, one_line


def test_line_and_paragraph_separators_are_escaped() -> None:
    assert one_line("a\u2028b\u2029c\nd") == "a\\u2028b\\u2029c\\nd"
    assert one_line("caf\u00e9 \u00a0x") == "caf\u00e9 \u00a0x"


def test_guarded_stdout_is_restored_after_the_block() -> None:
    original = sys.stdout
    with guarded_stdout():
        assert sys.stdout is not original
    assert sys.stdout is original
    with pytest.raises(RuntimeError), guarded_stdout():
        raise RuntimeError("the command failed")
    assert sys.stdout is original


class _Failing(io.StringIO):
    """An output whose writes and flushes fail with ``error`` (its ``fileno`` is refused, as a StringIO's)."""

    name = "<failing>"

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error


def test_a_broken_pipe_stops_the_command_and_other_errors_silence_the_stream(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``... | head``: the broken pipe must reach the command (it stops, the CLI exits 1), while a full disk
    behind ``> file`` costs one warning and the run goes on (mutation testing swallowed the broken pipe)."""
    gone = GuardedOutput(_Failing(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    with pytest.raises(BrokenPipeError):
        gone.write("line\n")
    with pytest.raises(BrokenPipeError):
        gone.flush()
    with pytest.raises(BrokenPipeError):
        gone.close()  # closed all the same: nothing left for the garbage collector to flush
    full = GuardedOutput(_Failing(OSError(errno.ENOSPC, "No space left on device")))
    assert full.write("line\n") == 5
    full.flush()
    full.close()
    assert "cannot write to <failing> (No space left on device); the run goes on" in capsys.readouterr().err
