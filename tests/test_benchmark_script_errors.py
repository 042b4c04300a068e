"""The benchmark scripts refuse bad input with one ``error:`` line and exit 2, before any work.

Each script runs as a user runs it (a subprocess of ``python benchmarks/<script>.py``) with one bad
argument: a count out of range, a missing path, a folder for a file, a file for a folder, a file that
is not JSON or not an ONNX model. The refusal must name the option or the path, show no traceback,
and leave no result file behind (every case fails at start-up, in seconds).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
pytest.importorskip("torch")  # most scripts import torch at start-up


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def _assert_refused(done: subprocess.CompletedProcess[str], names: str) -> None:
    """Exit 2, no traceback, exactly one ``error:`` line, and that line names ``names``."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert names in errors[0], errors[0]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """``out``: a results folder that must stay absent; ``file``: a plain file (empty); ``folder``: an
    empty folder; ``text``: a file that is neither JSON nor an ONNX model."""
    (tmp_path / "a_file").write_bytes(b"")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "notes.json").write_text("these are notes, not JSON\n")
    return {"out": tmp_path / "out", "file": tmp_path / "a_file", "folder": tmp_path / "a_folder",
            "text": tmp_path / "notes.json"}


CASES = [
    # (script, arguments with {out} / {file} / {folder} / {text} placeholders, what the error line names)
    ("kernel_fallback_calibration.py", ["--kernels", "-2", "--out", "{out}"], "--kernels"),
    ("kernel_fallback_calibration.py", ["--out", "{file}"], "--out"),
    ("kernel_fallback_calibration.py", ["--evaluate", "{file}", "--out", "{out}"], "--name"),
    ("kernel_fallback_calibration.py", ["--name", "x", "--out", "{out}"], "--name"),
    ("kernel_fallback_calibration.py", ["--evaluate", "{text}", "--name", "x", "--out", "{out}"], "{text}"),
    ("adaptation_quality.py", ["--steps", "0", "--out", "{out}"], "--steps"),
    ("adaptation_quality.py", ["--ema-decay", "2", "--out", "{out}"], "--ema-decay"),  # adassr's ConfigError
    ("adaptation_quality.py", ["--merge", "{folder}", "--out", "{out}"], "{folder}"),
    ("adaptation_quality.py", ["--ablation-table", "{out}/none.json", "--out", "{out}"], "{out}/none.json"),
    ("adaptation_quality.py", ["--hr-niqe", "{text}"], "{text}"),
    ("adaptation_speed.py", ["--threads", "-1", "--out", "{out}"], "--threads"),
    ("kernel_calibration.py", ["--scales", "0", "--out", "{out}/calibration.json"], "--scales"),
    ("kernel_calibration.py", ["--native-photo", "{folder}", "--out", "{out}/calibration.json"], "{folder}"),
    ("kernel_clipping.py", ["--max-photos", "-1", "--out-dir", "{out}"], "--max-photos"),
    ("kernel_clipping.py", ["--hr-dir", "{file}", "--out-dir", "{out}"], "{file}"),
    ("kernel_clipping.py", ["--gains", "abc", "--out-dir", "{out}"], "--gains"),
    ("kernel_letterbox.py", ["--qualities", "101", "--out-dir", "{out}"], "--qualities"),
    ("kernel_letterbox.py", ["--hr-dir", "{file}", "--out-dir", "{out}"], "{file}"),
    ("kernel_flat_frames.py", ["--qualities", "0", "--out-dir", "{out}"], "--qualities"),
    ("kernel_flat_frames.py", ["--noises", "-1", "--out-dir", "{out}"], "--noises"),
    ("kernel_overlays.py", ["--variants", "clean,nosuch", "--out-dir", "{out}"], "--variants"),
    ("kernel_overlays.py", ["--conditions", "2:101", "--out-dir", "{out}"], "--conditions"),
    ("kernel_overlays.py", ["--conditions", "2", "--out-dir", "{out}"], "--conditions"),
    ("kernel_overlays.py", ["--hr-dir", "{file}", "--out-dir", "{out}"], "{file}"),
    ("niqe_speed.py", ["--torch-device", "nosuch", "--out-dir", "{out}"], "--torch-device"),
    ("niqe_speed.py", ["--repeats", "0", "--out-dir", "{out}"], "--repeats"),
    ("int8_probe.py", ["--model", "{text}", "--out", "{out}"], "{text}"),
    ("quality_plots.py", ["--images", "{folder}", "--out", "{out}/maps.png"], "{folder}"),
    ("serve_load.py", ["--duration", "0", "--out-dir", "{out}"], "--duration"),
    ("serve_load.py", ["--store", "{file}", "--out-dir", "{out}"], "{file}"),
    ("upscale_overhead.py", ["--store", "{out}/no_store", "--out", "{out}"], "{out}/no_store"),
    ("upscale_memory.py", ["--files", "nosuch", "--width", "64", "--height", "64", "--out-dir", "{out}"], "--files"),
    ("weight_selection.py", ["--resummarise", "{folder}"], "{folder}"),
    ("kernel_estimation.py", ["--config-json", "{text}", "--out", "{out}"], "--config-json"),
    ("read_memory.py", ["--out-dir", "{file}"], "{file}"),
    ("memory_format.py", ["--out", "{file}"], "{file}"),
]


@pytest.mark.parametrize(("script", "args", "names"), CASES,
                         ids=[f"{c[0]}:{' '.join(c[1][:2])}" for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2_with_nothing_written(
        script: str, args: list[str], names: str, places: dict[str, Path]) -> None:
    fill = {key: str(path) for key, path in places.items()}
    before = {p: p.read_bytes() for p in (places["file"], places["text"])}
    done = _run(script, *(a.format(**fill) for a in args))
    _assert_refused(done, names.format(**fill))
    assert not places["out"].exists()  # no results folder, no half-written file
    assert _files_under(places["folder"]) == []
    assert {p: p.read_bytes() for p in before} == before  # an input given in the wrong place is left as it was
    assert sorted(p.name for p in places["out"].parent.iterdir()) == ["a_file", "a_folder", "notes.json"]


def test_a_json_file_that_is_no_result_is_refused_by_name(places: dict[str, Path]) -> None:
    other = places["folder"] / "other.json"
    other.write_text('{"rows": []}\n')
    done = _run("adaptation_quality.py", "--merge", str(other), "--out", str(places["out"]))
    _assert_refused(done, str(other))
    assert "adaptation_quality" in done.stderr and not places["out"].exists()


def test_zero_kernels_are_refused_and_the_committed_results_stay_as_they_are(places: dict[str, Path]) -> None:
    committed = BENCHMARKS / "results" / "kernel_fallback_calibration.json"
    digest = hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None
    done = _run("kernel_fallback_calibration.py", "--kernels", "0", "--out", str(places["out"]))
    _assert_refused(done, "--kernels")
    assert "must be at least 1" in done.stderr
    assert not places["out"].exists()
    assert (hashlib.sha256(committed.read_bytes()).hexdigest() if committed.exists() else None) == digest
