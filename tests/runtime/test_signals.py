"""SIGTERM / SIGHUP turned into a KeyboardInterrupt for the commands that stop cleanly at Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import pytest

from adassr.runtime.signals import Terminated, terminate_as_interrupt


def test_sigterm_raises_terminated_and_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught, terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert isinstance(caught.value, Terminated) and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sighup_stays_ignored() -> None:
    """Under nohup SIGHUP is ignored on purpose: the command must go on, not stop."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert Terminated(signal.SIGHUP).exit_code == 129
