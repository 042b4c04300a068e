"""benchmarks/kernel_letterbox.py: its framed synthetic camera and its report, on two development photos."""

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
    return load_benchmark("kernel_letterbox.py")


def test_the_frames_carry_their_bars_after_the_noise_and_the_report_is_written(
        tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name in ("paddy.jpg", "walker.jpg"):
        (photo_dir / name).write_bytes((ROOT / "benchmarks" / "data" / "dev_photos" / name).read_bytes())
    photos = tool.load_photos(photo_dir)
    assert [p.shape for p in photos] == [(tool.HEIGHT, tool.WIDTH, 3)] * 2
    frames = tool.framed_group(photos, (2.4, 1.2, 30.0), bar=16 / 255, noise=2 / 255, quality=None, seed=0)
    depth = frames[0].shape[0] // 8
    assert frames[0].shape == (tool.HEIGHT // tool.SCALE, tool.WIDTH // tool.SCALE, 3)
    assert np.all(frames[0][:depth] == np.float32(16 / 255)) and np.all(frames[1][-depth:] == np.float32(16 / 255))
    assert np.std(frames[0][depth:-depth]) > 0.01  # the picture between them
    monkeypatch.setattr(tool, "KERNELS", [(2.4, 1.2, 30.0)])
    monkeypatch.setattr(tool, "BARS", {"none": None, "black": 0.0})
    assert tool.main(["--hr-dir", str(photo_dir), "--noises", "0", "--qualities", "none", "--out-dir",
                      str(tmp_path), "--machine", "test"]) == 0
    result = json.loads((tmp_path / "kernel_letterbox_photos.json").read_text())
    assert [r["bars"] for r in result["rows"]] == ["none", "black"] and result["bar_margin"] == 8
    assert all(r["mean_l2"] > 0 and 0 <= r["mean_confidence"] <= 1 for r in result["rows"])
    assert "| black | 0 | none |" in (tmp_path / "kernel_letterbox_photos.md").read_text()
