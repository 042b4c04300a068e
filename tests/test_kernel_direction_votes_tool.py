"""benchmarks/kernel_direction_votes.py: its votes on made-up fits, and its report."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_direction_votes.py")


def _image(tool: ModuleType, theta_deg: float, ratio: float, depth: float) -> dict:
    """A fit at ``theta_deg`` whose loss profile dips by ``depth`` (relative) at that direction."""
    phis = np.radians(tool.PHIS)
    profile = 1.0 + depth * np.sin(phis - math.radians(theta_deg)) ** 2
    return {"major": ratio, "minor": 1.0, "theta": math.radians(theta_deg), "profile": profile.tolist()}


def test_the_votes_weigh_the_images_as_documented(tool: ModuleType) -> None:
    # two long images agree on 30 deg with little angular information; one round-ish image says 120 deg
    # with a deep profile
    images = [_image(tool, 30.0, 3.0, 0.05), _image(tool, 32.0, 3.0, 0.05), _image(tool, 120.0, 1.1, 5.0)]
    votes = {name: vote(images) % 180.0 for name, vote in tool.VOTES.items()}
    assert abs(votes["elongation (the product's)"] - 31.0) < 2.0  # the elongation outvotes the round one
    assert tool.angle_error(votes["contrast"], 120.0) < 5.0  # the angular information wins there
    assert tool.angle_error(votes["sum of raw profiles"], 120.0) < 3.0
    assert abs(votes["trimmed (30 deg)"] - 31.0) < 1.0
    assert abs(votes["L1 (equal)"] - 32.0) <= 0.5  # the median of three axes
    assert abs(votes["reweighted (equal)"] - 31.0) < 1.0  # the outlier's weight goes to 0 (cos 2 x 89 deg < 0)
    # equal weights: 120 deg is 90 deg from 30 deg, so their doubled angles cancel and 32 deg is left
    assert votes["equal"] == pytest.approx(32.0, abs=0.01)
    assert tool.angle_error(votes["elongation x contrast"], 120.0) < 5.0  # 5.0 contrast x 0.1 beats 0.05 x 1.1
    assert tool.angle_error(votes["sum of relative profiles"], 120.0) < 3.0  # the deep profile decides
    assert set(votes) == set(tool.VOTES) and len(votes) == 10
    assert abs(tool._profile_minimum(np.asarray(_image(tool, 47.0, 2.0, 1.0)["profile"])) - 47.0) < 0.5


def test_score_and_report(tool: ModuleType) -> None:
    rows = [{"noise": 5.0, "quality": 60, "true": [2.4, 1.2, 30.0],
             "images": [_image(tool, 30.0, 2.0, 1.0), _image(tool, 50.0, 2.0, 1.0)]},
            {"noise": 0.0, "quality": None, "true": [2.4, 1.2, 90.0],
             "images": [_image(tool, 70.0, 2.0, 1.0), _image(tool, 70.0, 2.0, 1.0)]},
            {"noise": 0.0, "quality": None, "true": [2.0, 2.0, 0.0], "images": [_image(tool, 10.0, 1.2, 1.0)]}]
    scores = tool.score(rows)
    product = scores["elongation (the product's)"]
    assert product["median_by_condition"] == pytest.approx({"5/60": 10.0, "0/none": 20.0}, abs=1e-6)
    assert product["miss_rate"] == 0.5  # the round kernel is not scored
    bias = tool.signed_errors_by_angle(rows)
    assert bias == {"5/60": {"30": pytest.approx(10.0)}, "0/none": {"90": pytest.approx(-20.0)}}
    text = tool.report(scores, bias, "made-up", "test machine", 1.0, len(rows))
    record = tool._row_record(rows[0])
    assert record["images"][1]["theta_deg"] == pytest.approx(50.0) and "profile" not in record["images"][0]
    assert "| elongation (the product's) | 10.0 | 20.0 | 15.0 | 50 % | 15.0 |" in text
    assert "| 5/60 | +10 | - |" in text and "| 0/none | - | -20 |" in text


def test_collect_fits_each_image_of_a_group(tool: ModuleType) -> None:
    """Against the estimator's own helpers (it called them with their old signatures before)."""
    photos = [(name, hr[:256, :256]) for name, hr in tool.load_hr()[:2]]
    rows = tool.collect(photos, [(0.0, None)], tool.KernelEstimationConfig())
    assert len(rows) == len(tool.kernels(False)) and all(r["noise"] == 0.0 and r["quality"] is None for r in rows)
    assert all(len(r["images"]) == 2 for r in rows)
    assert all(len(image["profile"]) == len(tool.PHIS) and image["major"] >= image["minor"] > 0
               for r in rows for image in r["images"])
