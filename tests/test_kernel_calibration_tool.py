"""benchmarks/kernel_calibration.py: native-resolution crops and the per-kind bias report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HR = ROOT / "tests" / "data" / "hr"


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_calibration.py")


def test_bundled_native_photos_exist_and_are_cut_without_resizing(tool: ModuleType) -> None:
    assert all(p.exists() for p in tool.NATIVE), [str(p) for p in tool.NATIVE if not p.exists()]
    named = tool.calibration_images(native=[HR / "stereo_motorcycle.png"])
    native = [(n, img) for n, img in named if n.startswith("native/")]
    assert [n for n, _ in native] == ["native/stereo_motorcycle/00"]  # 741x500: one 480 tile
    with Image.open(HR / "stereo_motorcycle.png") as im:
        photo = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(native[0][1], photo[:480, :480])
    assert not any(n.startswith("native/") for n, _ in tool.calibration_images())  # off by default
    assert {tool._kind(n) for n, _ in named} == {"downscaled", "kodak", "native"}


def test_missing_native_photo_is_a_clear_error(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="native-resolution photo .*nothere.png not found"):
        tool.calibration_images(native=[tmp_path / "nothere.png"])


def test_bias_report_measures_the_calibrated_estimate_per_kind(tool: ModuleType, tmp_path: Path) -> None:
    named = [(f"native/{p.stem}/00", tool._load(p)[:256, :256]) for p in sorted(HR.glob("*.png"))[:2]]
    report = tool.bias_report(named, scale=4, n_kernels=1, seed=0)
    native = report["kinds"]["native"]
    assert set(report["kinds"]) == {"native"} and native["crops"] == 2
    # the calibrated estimator is within a factor 1.5 of the truth on real photos (its documented
    # accuracy is ~10-15 %), so a ratio outside that means the report divides the wrong things
    assert 0.67 < native["group_median_ratio"] < 1.5
    assert native["single_median_ratio"] and all(0.5 < r < 2.0 for r in native["single_median_ratio"].values())
    out = tmp_path / "bias.json"
    tool.atomic_write_json(out, report)
    assert json.loads(out.read_text()) == report
