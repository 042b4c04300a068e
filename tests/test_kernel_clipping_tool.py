"""benchmarks/kernel_clipping.py: its synthetic clipping camera and its report, on two small photos."""

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
    return load_benchmark("kernel_clipping.py")


def test_the_camera_clips_after_its_noise_and_the_report_is_written(
        tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tool.load_photos(ROOT / "tests" / "data" / "hr")[:2]
    assert all(p.shape[0] % tool.SCALE == 0 and p.shape[1] % tool.SCALE == 0 for p in photos)
    lrs, share = tool.camera_group(photos, (2.4, 1.2, 30.0), gain=2.0, noise=5 / 255, seed=0)
    assert 0.05 < share < 0.9
    white = lrs[0] >= 1.0
    assert white.all(axis=2).mean() == pytest.approx(share * 2 - (lrs[1] >= 1.0).all(axis=2).mean(), abs=1e-6)
    assert float(lrs[0].min()) >= 0.0 and lrs[0].dtype == np.float32
    monkeypatch.setattr(tool, "KERNELS", [(2.4, 1.2, 30.0)])
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        (photo_dir / name).write_bytes((ROOT / "tests" / "data" / "hr" / name).read_bytes())
    assert tool.main(["--hr-dir", str(photo_dir), "--gains", "1.6", "--noises", "2", "--out-dir", str(tmp_path),
                      "--machine", "test"]) == 0
    result = json.loads((tmp_path / "kernel_clipping_photos.json").read_text())
    (row,) = result["rows"]
    assert row["gain"] == 1.6 and row["noise"] == 2 and row["clipped"] > 0 and row["mean_l2"] > 0
    assert "| 1.6 | 2 |" in (tmp_path / "kernel_clipping_photos.md").read_text()
