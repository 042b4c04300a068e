"""``GET /v1/cameras`` shows the blur kernel each camera was adapted with (runtime.server.models.kernel_summary)."""

from __future__ import annotations

import json
import math

from adassr.runtime.server.models import kernel_summary


def _entry() -> dict:
    """A manifest ``kernel`` entry as ``adapt`` writes it (KernelEstimate.to_dict), JSON round-tripped."""
    entry = {"method": "cross-scale-derivative-energy", "scale": 4, "sigma_x": 2.4, "sigma_y": 1.2, "theta_deg": 30.0,
             "confidence": 0.71, "kernel_size": [2, 2], "kernel": [[0.25, 0.25], [0.25, 0.25]],
             "diagnostics": {"mode": "group", "direction_check": "images", "direction_agreement": 0.42,
                             "per_image_theta_deg": [29.0, -61.0]}}
    return json.loads(json.dumps(entry))


def test_the_summary_keeps_the_parameters_and_the_agreement_but_not_the_array() -> None:
    assert kernel_summary(_entry()) == {"method": "cross-scale-derivative-energy", "sigma_x": 2.4, "sigma_y": 1.2,
                                        "theta_deg": 30.0, "confidence": 0.71, "direction_agreement": 0.42,
                                        "direction_check": "images"}
    one = _entry()
    one["diagnostics"].update(mode="single", direction_check="parts")  # one photo: its parts were compared
    assert kernel_summary(one)["direction_check"] == "parts"
    older = _entry()
    del older["diagnostics"]["direction_check"]  # a manifest from before the single-image check
    assert kernel_summary(older)["direction_check"] is None and kernel_summary(older)["direction_agreement"] == 0.42


def test_missing_or_malformed_entries_give_none_not_an_error() -> None:
    assert kernel_summary(None) is None and kernel_summary("bicubic") is None and kernel_summary([1, 2]) is None
    single = _entry()
    del single["diagnostics"]["direction_agreement"]  # not measured (e.g. the fixed-Gaussian fallback)
    assert kernel_summary(single)["direction_agreement"] is None and kernel_summary(single)["direction_check"] is None
    broken = _entry()
    broken.update(method=3, sigma_x="2.4", sigma_y=math.nan, theta_deg=True, diagnostics=[0.5])
    assert kernel_summary(broken) == {"method": None, "sigma_x": None, "sigma_y": None, "theta_deg": None,
                                      "confidence": 0.71, "direction_agreement": None, "direction_check": None}
    json.dumps(kernel_summary(broken), allow_nan=False)  # stays strict JSON (the NaN became None)
