"""Console lines: one line per report, stdout restored after a guarded command."""

from __future__ import annotations

import sys

import pytest

from adassr.runtime.console import guarded_stdout, one_line


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
