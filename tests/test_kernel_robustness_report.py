"""benchmarks/kernel_estimation.py: the robustness report and its rebuild from stored rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_estimation.py")


def _row(true: list[float], d_final: float, d_g16: float, method: str = "cross-scale-derivative-energy") -> dict:
    return {"noise": 0.0, "quality": 60, "true": true, "estimate": [true[0] * 1.1, true[1] * 1.1, true[2]],
            "final": true, "method": method, "confidence": 0.7, "dist_estimate": d_final,
            "dist_final": d_final, "dist_g16": d_g16, "seconds": 1.0, "blockiness": 0.26}


def _result_file(tool: ModuleType, tmp_path: Path, wall: float | None) -> Path:
    rows = [_row([1.6, 1.6, 0.0], 0.04, 0.0),    # the yardstick itself: nothing beats it strictly
            _row([3.2, 1.6, 60.0], 0.01, 0.10),   # closer
            _row([1.6, 1.2, 0.0], 0.06, 0.05)]    # a miss
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in tool.KernelEstimationConfig().__dict__.items()}
    data: dict = {"machine": "test machine", "config": config, "rows": rows}
    if wall is not None:
        data["wall_seconds"] = wall
    path = tmp_path / "kernel_robustness.json"
    path.write_text(json.dumps(data))
    return path


def test_report_counts_the_yardstick_kernel_separately(tool: ModuleType, tmp_path: Path) -> None:
    text, data = tool.report_from(_result_file(tool, tmp_path, 12.0), None, None)
    cell = next(s for s in data["summaries"] if s["noise"] == 0.0 and s["quality"] == 60)
    assert cell["n"] == 3 and cell["n_others"] == 2
    assert cell["closer_final"] == pytest.approx(1 / 3)
    assert cell["closer_final_others"] == pytest.approx(1 / 2)
    assert data["worst"]["closer_final_others"] == pytest.approx(1 / 2)
    assert "| 50 % (2) |" in text and "test machine" in text and "in 12 s" in text
    assert "50 % FAIL over the kernels other than G(1.6) itself" in text


def test_report_from_needs_the_wall_time_and_a_result_file(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--wall-seconds"):
        tool.report_from(_result_file(tool, tmp_path, None), None, None)
    text, data = tool.report_from(_result_file(tool, tmp_path, None), 7.0, "other machine")
    assert data["wall_seconds"] == 7.0 and "other machine" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{\"rows\": []}")
    with pytest.raises(SystemExit, match="not a kernel_robustness.json"):
        tool.report_from(bad, 1.0, None)


def test_noise_and_quality_subsets_are_checked(tool: ModuleType) -> None:
    assert tool.parse_noises("5, 0") == (0.0, 5.0)  # the grid's order, whatever the order given
    assert tool.parse_qualities("60,none") == (None, 60)
    with pytest.raises(SystemExit, match=r"choose from the grid's noise levels \[0.0, 2.0, 5.0\]"):
        tool.parse_noises("3")
    with pytest.raises(SystemExit, match="not a comma-separated list"):
        tool.parse_noises("two")
    with pytest.raises(SystemExit, match="unknown: \\['50'\\]"):
        tool.parse_qualities("none,50")
    with pytest.raises(SystemExit, match="none given"):
        tool.parse_qualities(",")


def _small_grid(tool: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """One kernel and two 192 px crops, so that a real estimation takes a second."""
    crops = [(name, np.ascontiguousarray(hr[:192, :192])) for name, hr in tool.load_hr()[:2]]
    monkeypatch.setattr(tool, "load_hr", lambda hr_dir=tool.HR_DIR: crops)
    monkeypatch.setattr(tool, "kernel_grid", lambda angles: [(2.4, 1.2, 30.0)])


def test_a_split_run_merges_into_the_rows_of_the_whole_run(tool: ModuleType, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _small_grid(tool, monkeypatch)
    config = tool.KernelEstimationConfig()
    whole = tool.robustness((0.0,), config, noises=(2.0,), qualities=(None, 60))
    files = []
    for quality in (None, 60):
        part = tool.robustness((0.0,), config, noises=(2.0,), qualities=(quality,))
        _, data = tool.robustness_report(part, config, 10.0 + (quality or 0), "test machine")
        files.append(tmp_path / f"part{quality}.json")
        files[-1].write_text(json.dumps(data))
    text, merged = tool.merge_rows(files, None)

    def strip(rows: list[dict]) -> list[dict]:
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=str)

    assert strip(merged["rows"]) == strip(json.loads(json.dumps(whole["rows"])))
    assert {(s["noise"], s["quality"]) for s in merged["summaries"]} >= {(2.0, None), (2.0, 60)}
    assert "in 70 s" in text and "80 s in all" in text and "test machine" in text

    with pytest.raises(SystemExit, match="both hold noise 2, JPEG 60"):
        tool.merge_rows([files[1], files[1]], None)
    other = json.loads(files[0].read_text())
    other["config"]["fallback_gap"] = 0.5
    changed = tmp_path / "other.json"
    changed.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"other estimator settings .*\(fallback_gap\)"):
        tool.merge_rows([files[1], changed], None)
    with pytest.raises(SystemExit, match="not a kernel_robustness.json"):
        tool.merge_rows([tmp_path / "missing.json"], None)


def test_the_quick_and_the_full_grid_are_written_to_their_own_files(tool: ModuleType, tmp_path: Path) -> None:
    source = _result_file(tool, tmp_path, 12.0)  # angles 0 and 60 only: rows of the quick grid
    assert tool.main(["--merge-rows", str(source), "--out", str(tmp_path / "quick")]) == 0
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == [
        "kernel_robustness_quick.json", "kernel_robustness_quick.md"]
    data = json.loads(source.read_text())
    data["rows"].append(_row([2.4, 1.2, 30.0], 0.02, 0.08))  # an angle only the full grid has
    source.write_text(json.dumps(data))
    assert tool.main(["--merge-rows", str(source), "--out", str(tmp_path / "full")]) == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["kernel_robustness.json", "kernel_robustness.md"]
    assert "Machine: test machine;" in (tmp_path / "full" / "kernel_robustness.md").read_text()
    assert tool.main(["--merge-rows", str(source), "--name", "kernel_robustness_variant", "--out",
                      str(tmp_path / "named")]) == 0
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == [
        "kernel_robustness_variant.json", "kernel_robustness_variant.md"]


def test_report_from_rewrites_the_report_under_its_own_name(tool: ModuleType, tmp_path: Path) -> None:
    """Rebuilding a variant (kernel_robustness_hr_q60_vote.json) from its rows wrote the headline
    kernel_robustness.{md,json} next to it, replacing the full-grid result with the variant's rows."""
    results = tmp_path / "results"
    results.mkdir()
    headline = results / "kernel_robustness.md"
    headline.write_text("the headline result")
    variant = results / "kernel_robustness_hr_q60_vote.json"
    variant.write_text(_result_file(tool, tmp_path, 12.0).read_text())
    assert tool.main(["--report-from", str(variant), "--out", str(results)]) == 0
    assert headline.read_text() == "the headline result"
    assert sorted(p.name for p in results.iterdir()) == [
        "kernel_robustness.md", "kernel_robustness_hr_q60_vote.json", "kernel_robustness_hr_q60_vote.md"]
    merged = json.loads(variant.read_text())  # a merged result rebuilt in place keeps its record of the parts
    merged["merged_from"] = [{"file": "/tmp/ka/x.json", "wall_seconds": 505.0, "rows": 2},
                             {"file": "/tmp/kb/x.json", "wall_seconds": 243.0, "rows": 1}]
    variant.write_text(json.dumps(merged))
    assert tool.main(["--report-from", str(variant), "--out", str(results)]) == 0
    assert json.loads(variant.read_text())["merged_from"] == merged["merged_from"]
    assert "Merged by `--merge-rows` from 2 partial runs" in (results / "kernel_robustness_hr_q60_vote.md").read_text()
    with pytest.raises(SystemExit, match="--name goes with --merge-rows or --report-from"):
        tool.main(["--name", "x", "--out", str(results)])
    with pytest.raises(SystemExit, match="without folder or suffix"):
        tool.main(["--report-from", str(variant), "--name", "a/b", "--out", str(results)])


def test_other_photos_are_scored_into_their_own_files(tool: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--hr-dir: the group is made of that folder's photos, and the report names them and goes to
    kernel_robustness[_quick]_<folder>.*, never over the acceptance images' results."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, hr in tool.load_hr()[:2]:  # two of the bundled photos, one as PNG and one as JPEG
        crop = (np.clip(hr[:192, :192], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(crop).save(photos / (f"{name}.png" if name < "b" else f"{name}.jpg"), quality=95)
    (photos / "notes.txt").write_text("not a photo")
    loaded = tool.load_hr(photos)
    assert [name for name, _ in loaded] == sorted(p.stem for p in photos.iterdir() if p.suffix != ".txt")
    assert all(hr.shape == (192, 192, 3) and hr.dtype == np.float32 for _, hr in loaded)

    monkeypatch.setattr(tool, "kernel_grid", lambda angles: [(2.4, 1.2, 0.0)])
    out = tmp_path / "out"
    assert tool.main(["--robustness", "--quick", "--noises", "0", "--qualities", "60", "--hr-dir", str(photos),
                      "--out", str(out), "--machine", "test machine"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["kernel_robustness_quick_photos.json",
                                                     "kernel_robustness_quick_photos.md"]
    data = json.loads((out / "kernel_robustness_quick_photos.json").read_text())
    assert data["scored"]["dir"] == str(photos) and len(data["rows"]) == 1
    assert f"Scored images: {photos} (2 photos, one group: " in (out / "kernel_robustness_quick_photos.md").read_text()

    rebuilt = tmp_path / "rebuilt"  # --report-from keeps the photos and the file name
    assert tool.main(["--report-from", str(out / "kernel_robustness_quick_photos.json"), "--out", str(rebuilt)]) == 0
    assert sorted(p.name for p in rebuilt.iterdir()) == ["kernel_robustness_quick_photos.json",
                                                         "kernel_robustness_quick_photos.md"]
    acceptance = _result_file(tool, tmp_path, 12.0)  # written before `scored` existed: tests/data/hr
    with pytest.raises(SystemExit, match="scored tests/data/hr"):
        tool.merge_rows([out / "kernel_robustness_quick_photos.json", acceptance], None)


def test_hr_dir_needs_photos_and_the_robustness_grid(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="at least two PNG or JPEG photos \\(found 0\\)"):
        tool.load_hr(tmp_path)
    with pytest.raises(SystemExit, match="--hr-dir goes with --robustness"):
        tool.main(["--hr-dir", str(tmp_path)])


def test_report_names_the_estimator_settings_that_differ_from_the_defaults(tool: ModuleType,
                                                                           tmp_path: Path) -> None:
    """A run with other settings (e.g. ``--config-json '{"noise_share": 0}'``) says so in its report;
    a default one says none, so the two cannot be mistaken for each other."""
    text, _ = tool.report_from(_result_file(tool, tmp_path, 12.0), None, None)
    assert "Estimator settings other than the defaults: none." in text
    opted = tool.KernelEstimationConfig(noise_share=0.0, pixel_snr=4.0)
    assert tool.non_default_settings(opted) == "pixel_snr 4.0, noise_share 0.0"
    path = _result_file(tool, tmp_path, 12.0)
    data = json.loads(path.read_text())
    data["config"]["noise_share"] = 0
    path.write_text(json.dumps(data))
    text, _ = tool.report_from(path, None, None)
    assert "Estimator settings other than the defaults: noise_share 0." in text
