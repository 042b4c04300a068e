"""Other ways for a group's images to vote on the blur direction, compared offline.

In group mode ``estimate_kernel`` fits each image alone and takes the direction the fits agree on,
each image voting with its elongation (``consensus_direction``). This benchmark asks whether a vote
that weights each image by how much its own data says about the direction does better: it records
every image's fit and its loss profile over the direction (the loss at the image's own sigmas,
turned in 5 deg steps), then scores several votes on the same fits, without refitting.

Votes (each gives the direction; the angle error is against the true kernel's, for axis ratio >= 1.5):

- ``elongation``: the product's vote, weights log(major / minor) (where every fit is round the
  product keeps the pooled fit's direction, which is not computed here: this vote then says 0 deg;
  no scored group of the recorded runs had only round fits);
- ``equal``: every image the same weight;
- ``contrast``: weights (max - min) / min of the image's loss profile (its angular information);
- ``elongation x contrast`` and its square root;
- ``sum of relative profiles``: the direction minimising sum_i L_i(phi) / min L_i;
- ``sum of raw profiles``: the direction minimising sum_i L_i(phi) (the images with the steepest
  losses decide, as in the pooled fit);
- ``trimmed``: the elongation vote again without the images more than 30 deg from it;
- ``reweighted (equal)``: equal weights times max(0, cos 2 delta), delta each image's distance from
  the current vote, five times;
- ``L1 (equal)``: the direction minimising sum_i |sin(theta_i - phi)|.

``--mirror`` flips the photos left-right first: a direction error that comes from the photos'
content then flips too (true 30 deg behaves as 150 deg did), one from the estimator does not.

    python benchmarks/kernel_direction_votes.py [--calibration-crops] [--conditions 5/60,0/none,0/60,5/none]
        [--mirror] [--out DIR]

Photos: the development photos (default) or the calibration crops, never tests/data/hr. Writes
<out>/kernel_direction_votes_<photos>[_mirrored].{md,json} (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from kernel_direction_agreement import DEV_PHOTOS, RESULTS, kernels, parse_conditions  # noqa: E402
from kernel_estimation import _jpeg, _save, angle_error, load_hr, synthesize, this_machine  # noqa: E402
from script_cli import output_dir, run_script  # noqa: E402

from adassr.adapt.kernel.estimate import (  # noqa: E402
    KernelEstimationConfig,
    _checked_lumas,
    _fit_covariance,
    _select_images,
    _usable_tiles,
)
from adassr.adapt.kernel.features import FeatureSpec  # noqa: E402

PROFILE_STEP = 5.0  # deg between the directions of an image's loss profile
PHIS = np.arange(0.0, 180.0, PROFILE_STEP)
MIN_RATIO = 1.5  # kernels scored: axis ratio at least this (the acceptance target's)
MISS_DEG = 15.0

Image = dict[str, Any]  # one image's fit: major, minor (raw LR sigmas), theta (rad), profile


def _log_cov(major: float, minor: float, phi: float) -> np.ndarray:
    """The log-covariance vector the estimator's loss takes, for axes ``major``/``minor`` at ``phi``."""
    along, across = 2.0 * math.log(major), 2.0 * math.log(minor)
    c, s = math.cos(phi), math.sin(phi)
    return np.array([along * c * c + across * s * s, along * s * s + across * c * c, (along - across) * c * s])


def collect(photos: list[tuple[str, np.ndarray]], conditions: list[tuple[float, int | None]],
            config: KernelEstimationConfig) -> list[dict[str, Any]]:
    """Per kernel and condition: every image's own fit and its loss profile over the direction."""
    spec = FeatureSpec(derivative_sigma=config.derivative_sigma, orders=config.orders,
                       n_directions=config.n_directions, anisotropy_weight=config.anisotropy_weight)
    rows = []
    for noise, quality in conditions:
        t0 = time.perf_counter()
        for i, (a, b, theta) in enumerate(kernels(False)):
            rng = np.random.default_rng(i)  # the same draws as kernel_direction_agreement.py
            lrs = [_jpeg(synthesize(hr, (a, b, theta), noise, rng), quality) for _, hr in photos]
            chosen = _select_images(len(lrs), config.max_images)
            usable = _usable_tiles(_checked_lumas(lrs, config, chosen), chosen, spec, config)
            images = []
            for tiles in usable.per_image:
                fit = _fit_covariance([tiles], config)
                profile = [fit.loss(_log_cov(fit.raw_major, fit.raw_minor, math.radians(p))) for p in PHIS]
                images.append({"major": fit.raw_major, "minor": fit.raw_minor, "theta": fit.theta,
                               "profile": profile})
            rows.append({"noise": noise, "quality": quality, "true": [a, b, theta], "images": images})
        print(f"noise {noise:g} JPEG {quality}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


# -- votes ------------------------------------------------------------------------------------------
def _weighted(images: Sequence[Image], weights: Sequence[float]) -> float:
    """Half the angle (deg) of the weighted mean of the doubled angles."""
    re = sum(w * math.cos(2.0 * im["theta"]) for im, w in zip(images, weights, strict=True))
    im_ = sum(w * math.sin(2.0 * im["theta"]) for im, w in zip(images, weights, strict=True))
    return math.degrees(0.5 * math.atan2(im_, re))


def _elongation(im: Image) -> float:
    return math.log(im["major"] / im["minor"])


def _contrast(im: Image) -> float:
    p = np.asarray(im["profile"])
    return float((p.max() - p.min()) / p.min())


def _profile_minimum(curve: np.ndarray) -> float:
    """The direction (deg) of the smallest value of a profile over :data:`PHIS`, refined by a parabola."""
    k, n = int(np.argmin(curve)), len(curve)
    y0, y1, y2 = curve[(k - 1) % n], curve[k], curve[(k + 1) % n]
    den = y0 - 2.0 * y1 + y2
    return float((PHIS[k] + (PROFILE_STEP * 0.5 * (y0 - y2) / den if den > 0 else 0.0)) % 180.0)


def _trimmed(images: Sequence[Image], within: float = 30.0) -> float:
    first = _weighted(images, [_elongation(im) for im in images])
    kept = [im for im in images if angle_error(math.degrees(im["theta"]), first) <= within]
    return _weighted(kept, [_elongation(im) for im in kept]) if kept else first


def _reweighted(images: Sequence[Image], rounds: int = 5) -> float:
    vote = _weighted(images, [1.0] * len(images))
    for _ in range(rounds):
        weights = [max(0.0, math.cos(2.0 * math.radians(angle_error(math.degrees(im["theta"]), vote))))
                   for im in images]
        if sum(weights) <= 0:
            break
        vote = _weighted(images, weights)
    return vote


def _l1(images: Sequence[Image]) -> float:
    phis = np.arange(0.0, 180.0, 0.5)
    cost = [sum(abs(math.sin(im["theta"] - math.radians(p))) for im in images) for p in phis]
    return float(phis[int(np.argmin(cost))])


VOTES: dict[str, Callable[[Sequence[Image]], float]] = {
    "elongation (the product's)": lambda ims: _weighted(ims, [_elongation(im) for im in ims]),
    "equal": lambda ims: _weighted(ims, [1.0] * len(ims)),
    "contrast": lambda ims: _weighted(ims, [_contrast(im) for im in ims]),
    "elongation x contrast": lambda ims: _weighted(ims, [_elongation(im) * _contrast(im) for im in ims]),
    "sqrt(elongation x contrast)": lambda ims: _weighted(ims, [math.sqrt(_elongation(im) * _contrast(im))
                                                                for im in ims]),
    "sum of relative profiles": lambda ims: _profile_minimum(sum(np.asarray(im["profile"]) / min(im["profile"])
                                                                 for im in ims)),
    "sum of raw profiles": lambda ims: _profile_minimum(sum(np.asarray(im["profile"]) for im in ims)),
    "trimmed (30 deg)": _trimmed,
    "reweighted (equal)": _reweighted,
    "L1 (equal)": _l1,
}


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["true"][0] / r["true"][1] >= MIN_RATIO and r["images"]]


def score(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per vote: median angle error per condition, and pooled median, miss rate and mean."""
    scored = _scored(rows)
    conditions = list(dict.fromkeys((r["noise"], r["quality"]) for r in scored))
    out: dict[str, dict[str, Any]] = {}
    for name, vote in VOTES.items():
        errors = [angle_error(vote(r["images"]), r["true"][2]) for r in scored]
        by_condition = {f"{noise:g}/{quality or 'none'}": float(np.median(
            [e for e, r in zip(errors, scored, strict=True) if (r["noise"], r["quality"]) == (noise, quality)]))
            for noise, quality in conditions}
        out[name] = {"median_by_condition": by_condition, "median": float(np.median(errors)),
                     "miss_rate": float(np.mean(np.array(errors) > MISS_DEG)), "mean": float(np.mean(errors))}
    return out


def signed_errors_by_angle(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per condition and true angle: the median signed error (deg) of the product's vote."""
    vote = VOTES["elongation (the product's)"]
    errors: dict[str, dict[str, list[float]]] = {}
    for r in _scored(rows):
        key = f"{r['noise']:g}/{r['quality'] or 'none'}"
        err = (vote(r["images"]) - r["true"][2] + 90.0) % 180.0 - 90.0
        errors.setdefault(key, {}).setdefault(f"{r['true'][2]:g}", []).append(err)
    return {k: {t: float(np.median(v)) for t, v in by.items()} for k, by in errors.items()}


def report(scores: dict[str, dict[str, Any]], bias: dict[str, dict[str, float]], label: str, machine: str,
           wall: float, n_rows: int) -> str:
    conditions = list(next(iter(scores.values()))["median_by_condition"])
    lines = [f"# Direction votes compared offline ({label})", "",
             f"Machine: {machine}. Wall time {wall:.0f} s. {n_rows} groups (kernel x condition); scored: axis "
             f"ratio >= {MIN_RATIO:g}. Median angle error (deg) by condition (noise /255 / JPEG quality), then "
             f"pooled: median, share above {MISS_DEG:g} deg, mean.", "",
             "| vote | " + " | ".join(conditions) + " | median | misses | mean |",
             "|---|" + "---|" * (len(conditions) + 3)]
    for name, s in scores.items():
        cells = " | ".join(f"{s['median_by_condition'][c]:.1f}" for c in conditions)
        lines.append(f"| {name} | {cells} | {s['median']:.1f} | {100 * s['miss_rate']:.0f} % | {s['mean']:.1f} |")
    angles = sorted({t for by in bias.values() for t in by}, key=float)
    lines += ["", "The product's vote, median signed error (deg) by true angle:", "",
              "| condition | " + " | ".join(f"{a} deg" for a in angles) + " |", "|---|" + "---|" * len(angles)]
    for cond, by in bias.items():
        lines.append(f"| {cond} | " + " | ".join(f"{by[a]:+.0f}" if a in by else "-" for a in angles) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default="5/60,0/none,0/60,5/none", help="NOISE/QUALITY list (noise in 1/255)")
    parser.add_argument("--calibration-crops", action="store_true", help="the calibration crops instead of the "
                                                                          "development photos")
    parser.add_argument("--mirror", action="store_true", help="flip the photos left-right first")
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    args = parser.parse_args(argv)
    conditions = parse_conditions(args.conditions)
    if args.calibration_crops:
        from kernel_calibration import calibration_images

        photos, label = calibration_images(), "calibration_crops"
    else:
        photos, label = load_hr(DEV_PHOTOS), DEV_PHOTOS.name
    if args.mirror:
        photos = [(name, np.ascontiguousarray(hr[:, ::-1])) for name, hr in photos]
        label += "_mirrored"
    t0 = time.perf_counter()
    rows = collect(photos, conditions, KernelEstimationConfig())
    wall = time.perf_counter() - t0
    scores, bias, machine = score(rows), signed_errors_by_angle(rows), this_machine()
    text = report(scores, bias, label, machine, wall, len(rows))
    print(text)
    _save(args.out, f"kernel_direction_votes_{label}", text,
          {"machine": machine, "wall_s": wall, "photos": [name for name, _ in photos], "scores": scores,
           "signed_error_by_angle": bias,
           "rows": [_row_record(r) for r in rows]})
    return 0


def _row_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the JSON file keeps it: angles in degrees, each image's fit without its loss profile."""
    images = [{"major_lr": im["major"], "minor_lr": im["minor"], "theta_deg": math.degrees(im["theta"])}
              for im in row["images"]]
    return {"noise": row["noise"], "quality": row["quality"], "true_sigmas_theta_deg": row["true"], "images": images}


if __name__ == "__main__":
    run_script(main)
