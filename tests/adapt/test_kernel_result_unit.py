"""The KernelEstimate record on its own: the manifest round trip keeps every field, malformed entries
are ConfigErrors, and the one-line description names the kernel's kind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adassr.adapt.degradation import gaussian_kernel
from adassr.adapt.kernel import METHOD_CROSS_SCALE, KernelEstimate, bicubic_kernel_estimate
from adassr.runtime.errors import ConfigError


def _estimate(sigma_x: float = 2.4, sigma_y: float = 1.2, **diagnostics: object) -> KernelEstimate:
    theta = math.radians(30.0)
    return KernelEstimate(sigma_x=sigma_x, sigma_y=sigma_y, theta=theta, scale=4,
                          kernel=gaussian_kernel(sigma_x, sigma_y, theta, scale=4), method=METHOD_CROSS_SCALE,
                          confidence=0.42, diagnostics=diagnostics)


def test_the_manifest_round_trip_keeps_confidence_and_diagnostics() -> None:
    est = _estimate(direction_agreement=np.float64(0.93), direction_check="parts", tiles=np.int64(4),
                    flat=np.bool_(True), measured=False, raw_sigma_lr=np.array([0.5, 0.75]))
    d = json.loads(json.dumps(est.to_dict()))  # numpy scalars, bools and arrays are JSON-ready
    assert d["confidence"] == 0.42 and d["kernel_size"] == list(est.kernel.shape)
    assert d["diagnostics"] == {"direction_agreement": 0.93, "direction_check": "parts", "tiles": 4, "flat": True,
                                "measured": False, "raw_sigma_lr": [0.5, 0.75]}
    assert d["diagnostics"]["flat"] is True and d["diagnostics"]["measured"] is False  # not 1 / 0
    back = KernelEstimate.from_dict(d)
    assert back.confidence == 0.42 and back.direction_agreement == pytest.approx(0.93)
    assert back.diagnostics["direction_check"] == "parts" and back.describe() == est.describe()


def test_a_malformed_manifest_entry_is_a_config_error() -> None:
    d = _estimate().to_dict()
    for bad in ({"sigma_x": "wide"}, {"scale": None}, {"kernel": [0.5, 0.5]}, {"kernel": [[[1.0]]]},
                {"kernel": (np.asarray(d["kernel"]) * 1.01).tolist()}):
        with pytest.raises(ConfigError):
            KernelEstimate.from_dict({**d, **bad})


def test_the_record_does_not_follow_later_changes_to_its_inputs() -> None:
    kernel = gaussian_kernel(2.0, 2.0, 0.0, scale=4)
    diagnostics = {"mode": "group"}
    est = KernelEstimate(sigma_x=2.0, sigma_y=2.0, theta=0.0, scale=4, kernel=kernel, method=METHOD_CROSS_SCALE,
                         confidence=1.0, diagnostics=diagnostics)
    kernel[0, 0] += 1.0
    diagnostics["mode"] = "single"
    assert est.kernel.sum() == pytest.approx(1.0) and est.diagnostics["mode"] == "group"
    with pytest.raises(ValueError):
        est.kernel[0, 0] = 1.0
    with pytest.raises(TypeError):
        est.diagnostics["mode"] = "single"  # type: ignore[index]


def test_describe_names_a_fallback_bicubic_and_a_slightly_elongated_gaussian() -> None:
    assert bicubic_kernel_estimate(4, reason="flat images").describe().startswith("bicubic (closest Gaussian sigma")
    text = _estimate(1.6, 1.5).describe()
    assert text.startswith("Gaussian sigma 1.60 x 1.50 HR px, major axis at 30 deg"), text


def test_describe_says_how_much_was_left_out_as_drawn_after_capture() -> None:
    assert "drawn after capture" not in _estimate(n_pixels=9700, n_pixels_too_sharp=0).describe()
    text = _estimate(n_pixels=9700, n_pixels_too_sharp=300).describe()
    assert text.endswith("confidence 0.42, 3.0 % of the pixels left out as drawn after capture: burnt-in text, "
                         "hot pixels)"), text


def test_describe_says_how_much_was_left_out_around_the_sensor_s_defects() -> None:
    assert "defects" not in _estimate(n_pixels=9700, n_pixels_fixed_defects=0).describe()
    text = _estimate(n_pixels=9500, n_pixels_too_sharp=300, n_pixels_fixed_defects=200).describe()
    assert text.endswith("confidence 0.42, 3.0 % of the pixels left out as drawn after capture: burnt-in text, "
                         "hot pixels, 2.0 % left out around the sensor's defects: pixels that stand out at the "
                         "same places in most frames)"), text


@pytest.mark.parametrize("scale", [True, 0, -1, 2.0])
def test_bicubic_estimate_refuses_a_scale_that_is_not_a_positive_int(scale: object) -> None:
    with pytest.raises(ConfigError, match="scale must be a positive integer"):
        bicubic_kernel_estimate(scale)  # type: ignore[arg-type]
