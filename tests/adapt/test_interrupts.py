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


def test_the_first_of_two_held_signals_is_the_one_raised() -> None:
    """Ctrl-C then SIGTERM during a commit: the run stops as the first asked (130), not the second."""
    with pytest.raises(Interrupted) as info, catch_interrupts(), deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert info.value.signum == signal.SIGINT and info.value.exit_code == 130


def test_a_nested_deferred_block_holds_the_signal_until_the_outer_one_ends() -> None:
    done = []
    with pytest.raises(Interrupted) as info, catch_interrupts(), deferred():
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        done.append("rest of the commit")  # the outer block is still a commit: not cut here
    assert done == ["rest of the commit"] and info.value.exit_code == 143


def test_catch_interrupts_outside_the_main_thread_changes_nothing() -> None:
    import threading

    errors: list[BaseException] = []

    def work() -> None:
        try:
            with catch_interrupts(), deferred():
                pass
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGTERM) is before
