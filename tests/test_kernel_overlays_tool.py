"""benchmarks/kernel_overlays.py: its marked frames, the rows and the report, on two development photos."""

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
    return load_benchmark("kernel_overlays.py")


def test_the_frames_carry_what_each_variant_draws(tool: ModuleType) -> None:
    photo = np.full((96, 128, 3), 0.5, np.float32)
    clean = tool.camera_group([photo, photo], (1.6, 1.6, 0.0), noise=0.0, quality=None, seed=0)
    assert len(clean) == 2 and all(f.shape == (24, 32, 3) for f in clean)
    assert all(np.ptp(f) < 1e-5 for f in clean)  # a flat photo stays flat
    stamped = tool.camera_group([photo, photo], (1.6, 1.6, 0.0), noise=0.0, quality=None, seed=0, stamp="small")
    assert all(f.max() == 1.0 and f.min() == 0.0 for f in stamped)  # white text on a black outline
    assert not np.array_equal(stamped[0], stamped[1])  # another time on each frame
    hot = tool.camera_group([photo, photo], (1.6, 1.6, 0.0), noise=0.0, quality=None, seed=0, hot=5)
    places = [set(zip(*np.nonzero(f[..., 0] == 1.0), strict=True)) for f in hot]
    assert len(places[0]) >= 4 and places[0] == places[1]  # the same defects in every frame
    night = tool.camera_group([photo], (1.6, 1.6, 0.0), noise=0.0, quality=75, seed=0, night=True)
    assert len(night) == 2 and np.median(night[1]) < 0.1 and night[1].max() > 0.5  # a dark frame with the stamp


def test_the_report_compares_the_variants(tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in ("paddy.jpg", "walker.jpg"):
        (photo_dir / name).write_bytes((ROOT / "benchmarks" / "data" / "dev_photos" / name).read_bytes())
    monkeypatch.setattr(tool, "KERNELS", [(3.2, 1.6, 75.0)])
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "clean,stamp", "--conditions", "2:90",
                      "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    result = json.loads((tmp_path / "kernel_overlays_photos.json").read_text())
    clean, stamp = result["rows"]
    assert (clean["variant"], stamp["variant"]) == ("clean", "stamp") and clean["quality"] == 90
    assert clean["left_out_share"] == 0 and stamp["left_out_share"] > 0.005
    assert result["leave_out_too_sharp"] and result["n_photos"] == 2
    text = (tmp_path / "kernel_overlays_photos.md").read_text()
    assert f"| stamp | 2 | q90 | {stamp['mean_l2']:.4f} | {stamp['closer']} of 1 |" in text
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "stamp", "--conditions", "2:90", "--keep-too-sharp",
                      "--tag", "before", "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    before = json.loads((tmp_path / "kernel_overlays_photos_before.json").read_text())
    assert not before["leave_out_too_sharp"] and before["rows"][0]["left_out_share"] == 0
    assert before["rows"][0]["mean_l2"] > stamp["mean_l2"]  # the stamp pulled the estimate off before
    assert "kept (--keep-too-sharp" in (tmp_path / "kernel_overlays_photos_before.md").read_text()
