"""benchmarks/kernel_direction_agreement.py: its conditions, its report and its refusal of the acceptance images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_direction_agreement.py")


def test_conditions_parse_and_bad_ones_say_what_is_wrong(tool: ModuleType) -> None:
    assert tool.parse_conditions("5/60, 0/none,2/95") == [(5.0, 60), (0.0, None), (2.0, 95)]
    for bad, words in (("5", "NOISE/QUALITY"), ("x/60", "not a number"), ("5/abc", "not an integer"),
                       ("5/0", "1-100"), ("-1/60", "0-50")):
        with pytest.raises(SystemExit, match=words):
            tool.parse_conditions(bad)


def _row(true: list[float], agreement: float | None, error: float, warned: bool,
         estimate: list[float] | None = None) -> dict:
    return {"noise": 5.0, "quality": 60, "true": true, "estimate": estimate or [true[0], true[1], true[2] + error],
            "method": "cross-scale-derivative-energy", "direction_agreement": agreement, "warned": warned,
            "angle_error": error, "dist": 0.03, "per_image_theta_deg": None}


def test_report_bins_anisotropic_groups_and_counts_round_ones_apart(tool: ModuleType) -> None:
    rows = [_row([2.4, 1.2, 30.0], 0.3, 40.0, True),     # disputed and missed
            _row([2.4, 1.2, 60.0], 0.6, 5.0, True),      # disputed but right
            _row([3.2, 1.6, 0.0], 0.9, 2.0, False),      # agreed and right
            _row([3.2, 1.6, 90.0], 0.95, 20.0, False),   # agreed but missed
            _row([2.0, 2.0, 0.0], 0.2, 0.0, True, [2.4, 1.9, -50.0]),  # round: its angle error means nothing
            _row([2.0, 1.2, 0.0], None, 0.0, False)]     # fixed-Gaussian fallback: not measured
    text = tool.report(rows, "photos", "test machine", 12.0)
    assert "test machine" in text and "and 1 round ones" in text
    assert "| noise 5, JPEG 60 | 0.75 | 4 | 12.5 | 50 % | 2 |" in text
    assert "| 0.00-0.50 | 1 | 40.0 | 100 % |" in text and "| 0.85-1.00 | 2 | 11.0 | 50 % |" in text
    assert "warned groups: 2, 22.5, 50 %" in text and "not warned: 2, 11.0, 50 %" in text
    assert "(fixed-Gaussian fallback): 1." in text
    assert "Round kernels (no direction to find): 1 groups, warned 1, median agreement 0.20" in text


def test_single_image_report_names_the_parts_threshold_and_each_photo(tool: ModuleType) -> None:
    rows = [{**_row([2.4, 1.2, 30.0], 0.8, 30.0, True), "photos": "face"},
            {**_row([2.4, 1.2, 30.0], 0.95, 3.0, False), "photos": "field"},
            {**_row([2.4, 1.2, 60.0], None, 0.0, False), "photos": "tiny"}]  # too small for quadrants
    text = tool.report(rows, "photos", "test machine", 5.0, single=True)
    assert "single-image mode" in text and "agreement below 0.85" in text
    assert "| face | 0.80 | 1 | 30.0 | 100 % | 1 |" in text and "| field | 0.95 | 1 | 3.0 | 0 % | 0 |" in text
    assert "or an image too small for quadrants): 1." in text


def test_bad_angles_are_refused(tool: ModuleType) -> None:
    with pytest.raises(SystemExit, match="comma-separated list of numbers"):
        tool.main(["--angles", "0,abc"])
    with pytest.raises(SystemExit, match="at least one angle"):
        tool.main(["--angles", ","])


def test_the_acceptance_images_are_refused(tool: ModuleType) -> None:
    with pytest.raises(SystemExit, match="acceptance images.*--held-out"):
        tool.main(["--hr-dir", str(ROOT / "tests" / "data" / "hr"), "--conditions", "0/none"])
