"""benchmarks/kernel_overlays.py: its marked frames, the rows and the report, on three development photos."""

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
    ramp = np.repeat(np.linspace(0.2, 0.8, 128, dtype=np.float32)[None, :, None], 96, axis=0).repeat(3, axis=2)
    static = tool.camera_group([photo, ramp, photo], (1.6, 1.6, 0.0), noise=2 / 255, quality=None, seed=1,
                               static=True)
    assert len(static) == 3 and all(np.ptp(f.mean(axis=(0, 2))) > 0.3 for f in static)  # the ramp (photo 1) thrice
    assert not np.array_equal(static[0], static[1])  # each frame with its own noise


def test_the_report_compares_the_variants(tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in ("paddy.jpg", "walker.jpg", "peak.jpg"):
        (photo_dir / name).write_bytes((ROOT / "benchmarks" / "data" / "dev_photos" / name).read_bytes())
    monkeypatch.setattr(tool, "KERNELS", [(3.2, 1.6, 75.0)])
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "clean,stamp", "--conditions", "2:90",
                      "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    result = json.loads((tmp_path / "kernel_overlays_photos.json").read_text())
    clean, stamp = result["rows"]
    assert (clean["variant"], stamp["variant"]) == ("clean", "stamp") and clean["quality"] == 90
    assert clean["left_out_share"] == 0 == clean["defects_share"]
    assert stamp["left_out_share"] > 0 and stamp["left_out_share"] + stamp["defects_share"] > 0.005  # either rule
    assert result["leave_out_too_sharp"] and result["n_photos"] == 3
    text = (tmp_path / "kernel_overlays_photos.md").read_text()
    assert f"| stamp | 2 | q90 | {stamp['mean_l2']:.4f} | {stamp['closer']} of 1 |" in text
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "stamp", "--conditions", "2:90", "--keep-too-sharp",
                      "--tag", "before", "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    before = json.loads((tmp_path / "kernel_overlays_photos_before.json").read_text())
    assert not before["leave_out_too_sharp"] and before["rows"][0]["left_out_share"] == 0
    assert before["rows"][0]["mean_l2"] > stamp["mean_l2"]  # the stamp pulled the estimate off before
    assert "kept (--keep-too-sharp" in (tmp_path / "kernel_overlays_photos_before.md").read_text()
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "hot30", "--conditions", "3:75", "--tag", "defects",
                      "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    assert tool.main(["--hr-dir", str(photo_dir), "--variants", "hot30", "--conditions", "3:75", "--keep-fixed-defects",
                      "--tag", "kept", "--out-dir", str(tmp_path), "--machine", "test"]) == 0
    found = json.loads((tmp_path / "kernel_overlays_photos_defects.json").read_text())
    kept = json.loads((tmp_path / "kernel_overlays_photos_kept.json").read_text())
    assert found["leave_out_fixed_defects"] and not kept["leave_out_fixed_defects"]
    assert found["rows"][0]["defects_share"] > 0.02 and kept["rows"][0]["defects_share"] == 0
    assert "kept (--keep-fixed-defects" in (tmp_path / "kernel_overlays_photos_kept.md").read_text()
    assert f"| {100 * found['rows'][0]['defects_share']:.1f} % |" in (
        tmp_path / "kernel_overlays_photos_defects.md").read_text()
