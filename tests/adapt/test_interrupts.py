"""Signals during adaptation become Interrupted (exit 130/143); commits are never cut in half."""

from __future__ import annotations

import os
import signal
import time

import pytest

from adassr.adapt.interrupts import Interrupted, as_interrupted, catch_interrupts, deferred


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_raises_interrupted_with_its_exit_code(sig: signal.Signals, code: int) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as info, catch_interrupts():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
    assert info.value.signum == sig and info.value.exit_code == code
    assert signal.getsignal(sig) is before  # handlers restored


def test_deferred_block_completes_before_the_signal_is_raised() -> None:
    done = []
    with pytest.raises(Interrupted) as info, catch_interrupts(), deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        done.append("commit")  # still runs: the signal is held
    assert done == ["commit"] and info.value.exit_code == 143


def test_a_failing_deferred_block_keeps_its_error() -> None:
    """A signal held while a commit fails must not turn the failure into an Interrupted, which the
    caller would read as 'the commit completed'."""
    with pytest.raises(OSError, match="disk full"), catch_interrupts(), deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        raise OSError("disk full")
    with catch_interrupts(), deferred():  # nothing held over from before
        pass


def test_keyboard_interrupt_counts_as_sigint() -> None:
    exc = as_interrupted(KeyboardInterrupt())
    assert exc is not None and exc.exit_code == 130
    assert as_interrupted(ValueError()) is None
