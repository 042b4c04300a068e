"""SIGTERM / SIGHUP turned into a KeyboardInterrupt for the commands that stop cleanly at Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from adassr.runtime.signals import Terminated, terminate_as_interrupt


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_raises_terminated_and_the_previous_handlers_come_back(stop: signal.Signals, code: int) -> None:
    """SIGHUP too (a closed terminal): the command stops as at Ctrl-C, exit 129, no temporary file left."""
    outer = signal.signal(stop, signal.SIG_DFL)  # as in a terminal: the test run itself may be under nohup
    try:
        with pytest.raises(KeyboardInterrupt) as caught, terminate_as_interrupt():
            os.kill(os.getpid(), stop)
            time.sleep(5)  # the handler raises here, at once
        assert isinstance(caught.value, Terminated) and caught.value.exit_code == code
        assert signal.getsignal(stop) is signal.SIG_DFL
    finally:
        signal.signal(stop, outer)


def test_outside_the_main_thread_nothing_changes() -> None:
    """A library caller running an upscale on a worker thread (signals are the main thread's only)."""
    import threading

    seen: list[object] = []

    def work() -> None:
        with terminate_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert seen == [before]


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


@dataclass(frozen=True)
class _Stopped:
    code: int
    ready: str  # the stdout line the script said it was ready with
    err: str
    out: str  # all its stdout
    took: float  # seconds from the first signal to the exit


def _stop(script: str, *args: str, ready: str, stops: tuple[signal.Signals, ...], settle_s: float = 0.5,
          gap_s: float = 0.3, timeout_s: float = 30, check: Callable[[str], bool] = bool) -> _Stopped:
    """Run ``script`` in a fresh Python, wait for its first stdout line containing ``ready`` (and ``settle_s``
    more: inside its long call by then; ``check`` of that line must hold), send it ``stops`` ``gap_s`` apart,
    and wait for its end."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while ready not in (line := proc.stdout.readline()):
            assert line, f"the script ended before it printed {ready!r}"
            lines.append(line)
        assert check(line.strip()), line
        time.sleep(settle_s)
        started = time.monotonic()
        for k, stop in enumerate(stops):
            if k:
                time.sleep(gap_s)
            proc.send_signal(stop)
        code = proc.wait(timeout=timeout_s)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "".join([*lines, line, proc.stdout.read() if proc.stdout else ""])
    return _Stopped(code, line.strip(), proc.stderr.read() if proc.stderr else "", out, took)


_STUCK = """
import sys
from pathlib import Path
import numpy as np
from adassr.runtime.signals import terminate_as_interrupt
from adassr.runtime.tempfiles import create_temp
a = np.ones((8000, 8000), dtype=np.float32)
with terminate_as_interrupt(grace_s=float(sys.argv[2])):
    fd, tmp = create_temp(Path(sys.argv[1]))
    print(tmp, flush=True)
    # one long call that releases the GIL, as onnxruntime's run on a large tile: no Python handler runs meanwhile
    for _ in range(100):
        a @ a
"""


@pytest.mark.parametrize("grace_s, signals, stop", [(1.0, 1, signal.SIGTERM), (60.0, 2, signal.SIGTERM),
                                                     (60.0, 2, signal.SIGINT)], ids=["grace", "second", "ctrl-c-twice"])
def test_a_signal_during_a_long_call_ends_the_process_within_the_grace_and_removes_its_temporaries(
        tmp_path: Path, grace_s: float, signals: int, stop: signal.Signals) -> None:
    """The Python handler waits for the call to end (a minute for a big tile on a CPU, past docker stop's 10 s):
    a thread hears of the signal at once and ends the process after the grace, or at a second signal (a
    helper's review)."""
    run = _stop(_STUCK, str(tmp_path / "out.png"), str(grace_s), ready="", stops=(stop,) * signals, settle_s=1.0,
                check=lambda temp: Path(temp).exists())
    assert run.code == 128 + int(stop)
    assert run.took < (grace_s + 2.5 if signals == 1 else 10), run.took  # within docker stop's 10 s
    assert not Path(run.ready).exists() and list(tmp_path.iterdir()) == []
    err = run.err
    assert err.startswith("interrupted: ") and "temporary file(s) removed" in err, err
    assert (f"a second signal ({stop.name})" in err) == (signals == 2)


_SLOW_CALLS = """
import sys
import numpy as np
from adassr.runtime.signals import terminate_as_interrupt
a = np.ones((4000, 4000), dtype=np.float32)
with terminate_as_interrupt(grace_s=0.5):
    print("started", flush=True)
    for _ in range(40):
        a @ a  # calls of a few seconds on a small CPU, longer than the grace
"""


def test_one_ctrl_c_is_left_to_python_and_starts_no_forced_exit() -> None:
    """Ctrl-C raises KeyboardInterrupt when the call ends (the command then writes its report and summary);
    only a second one, or a stop signal, ends the process at the grace."""
    err = _stop(_SLOW_CALLS, ready="started", stops=(signal.SIGINT,), settle_s=0.3, timeout_s=120).err
    assert "KeyboardInterrupt" in err and "interrupted: " not in err, err


def test_ctrl_c_after_a_stop_signal_ends_with_the_stop_signals_code(tmp_path: Path) -> None:
    """SIGTERM (docker stop) then Ctrl-C: the process was stopped by SIGTERM, so it exits 143, not 130."""
    run = _stop(_STUCK, str(tmp_path / "out.png"), "60", ready="", stops=(signal.SIGTERM, signal.SIGINT),
                settle_s=1.0)
    assert run.code == 128 + int(signal.SIGTERM)
    err = run.err
    assert "a second signal (SIGINT)" in err, err


def test_the_previous_wakeup_fd_comes_back() -> None:
    """After the block the wakeup fd is the caller's again, not the block's closed pipe (whose number the
    next open file may get, and every later signal would write a byte into it)."""
    before = signal.set_wakeup_fd(-1)
    try:
        with terminate_as_interrupt():
            pass
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.set_wakeup_fd(before)


_STUCK_BATCH = """
import sys
from pathlib import Path
import numpy as np
from adassr.runtime.images import write_image
from adassr.runtime.pipeline import UpscaleResult
from adassr.runtime.signals import terminate_as_interrupt
from adassr.runtime.upscale_cli import run_batch

folder = Path(sys.argv[1])
pairs = []
for k in range(3):
    pairs.append((write_image(folder / f"img{k}.png", np.full((12, 10, 3), 40 * k, np.uint8)),
                  folder / "out" / f"img{k}.png"))
a = np.ones((8000, 8000), dtype=np.float32)

def serve(image, tiles, check):
    if image.path.name == "img1.png":
        print("stuck", flush=True)
        for _ in range(100):
            a @ a  # a model call on a large tile: no Python handler runs meanwhile
    return UpscaleResult(np.repeat(np.repeat(image.pixels, 2, 0), 2, 1), None, 8, 2, 2.0, model_name="x2")

with terminate_as_interrupt(grace_s=0.5):
    run_batch(pairs, serve, progress=False, report_path=folder / "report.json", overlap_writes=sys.argv[2] == "1")
"""


@pytest.mark.parametrize("overlap", [False, True], ids=["foreground-writes", "background-writes"])
def test_upscale_writes_its_report_when_a_stop_signal_ends_the_process(tmp_path: Path, overlap: bool) -> None:
    """``--report`` is written "however the run ends": a SIGTERM during a long model call ended the process
    after the grace without one (docker stop, a batch scheduler's time limit). An image written in the background
    (GPU, Triton) during that call is reported done, with its line (a review helper: it was `not_done`)."""
    import json

    run = _stop(_STUCK_BATCH, str(tmp_path), "1" if overlap else "0", ready="stuck", stops=(signal.SIGTERM,))
    assert run.code == 143
    assert f"{tmp_path / 'img0.png'} -> {tmp_path / 'out' / 'img0.png'}  [model x2]" in run.out
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["finished"] is False
    assert [f["status"] for f in doc["files"]] == ["ok", "not_done", "not_done"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png"]  # no temporary file either


_LAST_WORDS = """
import sys
import time
import numpy as np
from adassr.runtime.signals import last_words, terminate_as_interrupt

def hang():
    time.sleep(60)  # a report on a network share that does not answer

def fail():
    raise OSError(5, "Input/output error")

a = np.ones((8000, 8000), dtype=np.float32)
with terminate_as_interrupt(grace_s=0.5), last_words(hang), last_words(fail):
    print("started", flush=True)
    for _ in range(100):
        a @ a
"""


def test_last_words_that_fail_or_hang_neither_crash_nor_keep_the_process(tmp_path: Path) -> None:
    from adassr.runtime.signals import LAST_WORDS_S

    run = _stop(_LAST_WORDS, ready="started", stops=(signal.SIGTERM,))
    assert run.code == 143
    assert "error: while stopping: OSError: [Errno 5] Input/output error" in run.err, run.err
    took = run.took
    assert took < 0.5 + LAST_WORDS_S + 4, took  # the hanging one is not waited for past LAST_WORDS_S


def test_last_words_are_registered_only_within_their_block() -> None:
    from adassr.runtime import signals

    def word() -> None:
        pass

    with signals.last_words(word):
        assert [word] == signals._LAST_WORDS
    assert signals._LAST_WORDS == []
    with pytest.raises(RuntimeError), signals.last_words(word):
        raise RuntimeError
    assert signals._LAST_WORDS == []


def test_every_last_word_runs_and_any_error_of_one_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Each registered last word runs (newest first), also after one that failed with any exception."""
    from adassr.runtime import signals

    said: list[str] = []

    def newer() -> None:
        said.append("newer")

    def broken() -> None:
        said.append("broken")
        raise ValueError("bad value")

    def oldest() -> None:
        said.append("oldest")

    with signals.last_words(oldest), signals.last_words(broken), signals.last_words(newer):
        signals._say_last_words()
    assert said == ["newer", "broken", "oldest"]
    assert "error: while stopping: ValueError: bad value" in capsys.readouterr().err


def test_the_last_words_and_the_grace_fit_in_docker_stops_ten_seconds() -> None:
    from adassr.runtime.signals import GRACE_S, LAST_WORDS_S

    assert GRACE_S + LAST_WORDS_S < 10


_HANGING_WRITE = """
import os
import sys
import time
from pathlib import Path
from adassr.runtime import signals
from adassr.runtime.tempfiles import create_temp

folder = Path(sys.argv[1])

def slow_report():
    fd, _ = create_temp(folder / "report.json")  # a report on a share that stopped answering
    os.close(fd)
    time.sleep(60)

with signals.last_words(slow_report):
    signals._quit_now(15, "a test")
"""


def test_a_last_word_cut_off_leaves_no_temporary_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _HANGING_WRITE, str(tmp_path)], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_report_of_the_last_words_keeps_the_inputs_skip_existing_left_out(tmp_path: Path) -> None:
    """The report written as a stop signal ends the process lists every planned input, as the run's end does."""
    import json

    import numpy as np

    from adassr.runtime import signals
    from adassr.runtime.images import write_image
    from adassr.runtime.pipeline import UpscaleResult
    from adassr.runtime.upscale_cli import run_batch

    planned = [(write_image(tmp_path / f"img{k}.png", np.full((12, 10, 3), 40 * k, np.uint8)),
                tmp_path / "out" / f"img{k}.png") for k in range(3)]
    report = tmp_path / "report.json"
    seen: list[dict[str, object]] = []

    def serve(image, tiles, check):  # type: ignore[no-untyped-def]
        if image.path.name == "img2.png":
            signals._LAST_WORDS[-1]()  # as the watcher thread calls it
            seen.append(json.loads(report.read_text()))
        return UpscaleResult(np.repeat(np.repeat(image.pixels, 2, 0), 2, 1), None, 8, 2, 2.0, model_name="x2")

    run_batch(planned[1:], serve, progress=False, report_path=report, planned=planned)
    (doc,) = seen
    assert doc["finished"] is False
    assert [f["status"] for f in doc["files"]] == ["skipped", "ok", "not_done"]


def test_the_report_of_the_last_words_counts_a_background_write_only_once_it_ended_well(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last words count an image whose background write had ended as done; one whose write is still running
    (its file not there yet) or failed is not (its report said ok for a file that was never written)."""
    import json
    import threading

    import numpy as np

    from adassr.runtime import signals, upscale_cli
    from adassr.runtime.images import write_image
    from adassr.runtime.pipeline import UpscaleResult

    pairs = [(write_image(tmp_path / f"img{k}.png", np.full((12, 10, 3), 40 * k, np.uint8)),
              tmp_path / "out" / f"img{k}.png") for k in range(2)]
    report = tmp_path / "report.json"
    release = threading.Event()
    write = upscale_cli._write_one

    def held(prepared):  # type: ignore[no-untyped-def]
        release.wait(30)  # a slow disk: still writing when the stop signal comes
        write(prepared)

    seen: list[list[str]] = []

    def serve(image, tiles, check):  # type: ignore[no-untyped-def]
        if image.path.name == "img1.png":
            signals._LAST_WORDS[-1]()  # as the watcher thread calls it
            seen.append([f["status"] for f in json.loads(report.read_text())["files"]])
            release.set()
        return UpscaleResult(np.repeat(np.repeat(image.pixels, 2, 0), 2, 1), None, 8, 2, 2.0, model_name="x2")

    monkeypatch.setattr(upscale_cli, "_write_one", held)
    upscale_cli.run_batch(pairs, serve, progress=False, report_path=report, overlap_writes=True)
    assert seen == [["not_done", "not_done"]]
    assert [f["status"] for f in json.loads(report.read_text())["files"]] == ["ok", "ok"]


def test_a_background_write_is_written_once_it_ended_without_error() -> None:
    from concurrent.futures import Future

    from adassr.runtime.upscale_cli import _Written

    def job(done: Future[None] | None) -> _Written:
        return _Written(Path("a.png"), Path("b.png"), "x2", "(all)", "x2", [], False, done)

    assert job(None).written()  # written in the foreground
    running: Future[None] = Future()
    assert not job(running).written()
    failed: Future[None] = Future()
    failed.set_exception(OSError(28, "No space left on device"))
    assert not job(failed).written()
    cancelled: Future[None] = Future()
    cancelled.cancel()
    assert not job(cancelled).written()
    ended: Future[None] = Future()
    ended.set_result(None)
    assert job(ended).written()

