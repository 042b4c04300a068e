"""benchmarks/cpu_contention.py: the busy processes are real and always killed; steps are timed per event."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

pytest.importorskip("torch")  # the benchmark imports torch at start-up
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def tool() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("cpu_contention")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_step_times_leave_out_the_first_and_the_evaluating_last_step(tool: ModuleType,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=100.0)  # a scripted clock: real sleeps overran their bounds on a busy machine
    monkeypatch.setattr(tool, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def run(progress: Callable[[object], None]) -> None:
        clock.now += 0.5  # set-up
        progress(SimpleNamespace(step=0))  # the backbone's evaluation: not a step
        for step, seconds in enumerate([0.05, 0.01, 0.02, 0.04], start=1):
            clock.now += seconds
            progress(SimpleNamespace(step=step))

    times = tool.step_times(run)
    assert times == pytest.approx([0.01, 0.02])  # steps 2 and 3 of 4


def test_busy_processes_run_and_are_killed_even_on_error(tool: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    real_popen = tool.subprocess.Popen

    def popen(*args: object, **kwargs: object) -> object:
        child = real_popen(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(tool.subprocess, "Popen", popen)
    with pytest.raises(RuntimeError, match="boom"), tool.busy_processes(1.5):
        assert all(child.poll() is None for child in started)  # alive and spinning inside the block
        raise RuntimeError("boom")
    assert len(started) == 2 and all(child.poll() is not None for child in started)


def test_rejects_too_few_steps(tool: ModuleType) -> None:
    with pytest.raises(SystemExit):
        tool.main(["--steps", "3"])


def test_load_is_whole_spinners_plus_one_duty_cycled_process(tool: ModuleType) -> None:
    assert tool.load_commands(0.0) == []
    two = tool.load_commands(2.0)
    assert len(two) == 2 and all(c[-1] == tool.BUSY_CODE for c in two)
    mixed = tool.load_commands(1.25)
    assert len(mixed) == 2 and mixed[0][-1] == tool.BUSY_CODE and "duty, period = 0.25, 0.02" in mixed[1][-1]
    compile(mixed[1][-1], "<duty>", "exec")  # the duty-cycled process's code is valid Python
