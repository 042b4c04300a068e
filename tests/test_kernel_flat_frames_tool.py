"""benchmarks/kernel_flat_frames.py: its flat frames, the group rows and the report, on two development photos."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_flat_frames.py")


def test_the_frames_carry_no_structure_but_their_noise(tool: ModuleType) -> None:
    frames = tool.frame_kinds()
    assert list(frames) == ["grey 0.25", "grey 0.5", "grey 0.8", "vignette", "gradient"]
    assert all(f.shape == (*tool.FRAME_HR, 3) and f.dtype == np.float32 for f in frames.values())
    lr = tool.degrade(frames["grey 0.5"], (1.6, 1.6, 0.0), 0.0, None, seed=0)
    assert lr.shape == (tool.FRAME_HR[0] // tool.SCALE, tool.FRAME_HR[1] // tool.SCALE, 3)
    assert np.all(lr == np.float32(round(0.5 * 255) / 255))  # noise 0: rounded to 8 bits
    noisy = tool.degrade(frames["grey 0.5"], (1.6, 1.6, 0.0), 5 / 255, None, seed=0)
    assert np.std(noisy) == pytest.approx(5 / 255, rel=0.1)
    ramp = frames["gradient"][0, :, 0]
    assert ramp[0] == pytest.approx(0.2) and np.all(np.diff(ramp) > 0)


def test_the_report_has_the_frames_and_the_groups(tool: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in ("paddy.jpg", "walker.jpg"):
        (photo_dir / name).write_bytes((ROOT / "benchmarks" / "data" / "dev_photos" / name).read_bytes())
    monkeypatch.setattr(tool, "KERNELS", [(2.4, 1.2, 30.0)])
    monkeypatch.setattr(tool, "GROUP_CONDITIONS", [(5.0, 75)])
    monkeypatch.setattr(tool, "FRAME_HR", (512, 640))
    monkeypatch.setattr(tool, "DIM_CONTRASTS", (0.5,))
    assert tool.main(["--hr-dir", str(photo_dir), "--noises", "5", "--qualities", "75", "--out-dir",
                      str(tmp_path), "--machine", "test"]) == 0
    result = json.loads((tmp_path / "kernel_flat_frames_photos.json").read_text())
    assert [r["frame"] for r in result["frames"]] == ["grey 0.25", "grey 0.5", "grey 0.8", "vignette", "gradient"]
    grey = result["frames"][1]  # alone, a flat JPEG frame is fitted but flagged (a dim group looks the same)
    assert grey["faint"] and grey["method"] != "fallback-bicubic"
    [group] = result["groups"]
    assert group["frame_skipped"] == 1 and group["photos_skipped"] == 0 and group["groups"] == 1
    assert group["mean_l2_with_frame"] == group["mean_l2_photos"] > 0
    [dim] = result["dim_photos"]
    assert dim["contrast"] == 0.5 and dim["estimates"] == 2 and dim["fallbacks"] == 0 and dim["mean_l2"] > 0
    text = (tmp_path / "kernel_flat_frames_photos.md").read_text()
    assert f"| grey 0.5 | 5 | q75 | {grey['method']} | {grey['confidence']:.2f} | yes |" in text
    assert "| 5 | q75 |" in text and "| 0.5 |" in text
