"""How far to trust the estimated kernel's angle: its error against the per-image direction agreement.

``estimate_kernel`` fits each image of a group alone as well and reports how well their blur
directions agree (``diagnostics["direction_agreement"]``, :mod:`adassr.adapt.kernel.agreement`);
below ``DIRECTION_AGREEMENT_WARN`` an elongated estimate gets a warning. This benchmark measures
whether the agreement predicts the group's angle error: 36 anisotropic kernels (HR sigmas
(1.6, 1.0), (2.4, 1.2), (2.4, 1.6), (3.2, 1.6), (3.2, 2.0), (2.0, 1.2) x angles 0-150 deg) blur
and x4-downsample a group of photos, under the given noise and JPEG conditions, and the angle
errors are binned by agreement. Photos: the development photos (default) or the calibration crops
of ``kernel_calibration.py``, on which the thresholds were chosen; tests/data/hr, the acceptance
images, only with --held-out, to check the fixed thresholds on photos they were not chosen on.

    python benchmarks/kernel_direction_agreement.py [--conditions 5/60,0/none] [--calibration-crops] [--round]
        [--out DIR]
    python benchmarks/kernel_direction_agreement.py --hr-dir tests/data/hr --held-out --round  # held-out check
    python benchmarks/kernel_direction_agreement.py --single --angles 0,60,120 [...]  # each photo alone

``--single`` estimates each photo alone: the direction check then fits the image's tiles (or, for
an image of one tile, its quadrants) one by one (``diagnostics["direction_check"] == "parts"``).

Writes <out>/kernel_direction_agreement_<photos>[_single].{md,json} (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from kernel_estimation import (  # noqa: E402
    _jpeg,
    _save,
    angle_error,
    load_hr,
    support_kernel,
    synthesize,
    this_machine,
)
from script_cli import existing_dir, output_dir, run_script  # noqa: E402

from adassr.adapt.kernel import estimate_kernel  # noqa: E402
from adassr.adapt.kernel.agreement import DIRECTION_AGREEMENT_WARN, warn_threshold  # noqa: E402

DEV_PHOTOS = ROOT / "benchmarks" / "data" / "dev_photos"
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = ((1.6, 1.0), (2.4, 1.2), (2.4, 1.6), (3.2, 1.6), (3.2, 2.0), (2.0, 1.2))
ANGLES = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
ROUND = (1.0, 1.2, 1.6, 2.0, 2.4, 3.2)  # --round: isotropic kernels, where a warning is a false alarm
BINS = ((0.0, 0.5), (0.5, DIRECTION_AGREEMENT_WARN), (DIRECTION_AGREEMENT_WARN, 0.85), (0.85, 1.0 + 1e-9))
MISS_DEG = 15.0  # an angle error above this counts as a miss (the acceptance target's bound)


def parse_conditions(text: str) -> list[tuple[float, int | None]]:
    """``"5/60,0/none"`` -> ``[(5.0, 60), (0.0, None)]``: noise sigma in 1/255 and JPEG quality."""
    out: list[tuple[float, int | None]] = []
    for item in text.split(","):
        noise, sep, quality = item.strip().partition("/")
        if not sep:
            raise SystemExit(f"--conditions: {item!r} is not NOISE/QUALITY (e.g. 5/60 or 0/none)")
        try:
            q = None if quality.strip().lower() == "none" else int(quality)
        except ValueError:
            raise SystemExit(f"--conditions: JPEG quality {quality!r} is not an integer or none") from None
        if q is not None and not 1 <= q <= 100:
            raise SystemExit(f"--conditions: JPEG quality {q} is not in 1-100 (or none)")
        try:
            sigma = float(noise)
        except ValueError:
            raise SystemExit(f"--conditions: noise {noise!r} is not a number (sigma in 1/255)") from None
        if not 0 <= sigma <= 50:
            raise SystemExit(f"--conditions: noise {sigma:g} is not in 0-50 (sigma in 1/255)")
        out.append((sigma, q))
    return out


def kernels(with_round: bool, angles: tuple[float, ...] = ANGLES) -> list[tuple[float, float, float]]:
    out = [(a, b, t) for a, b in SHAPES for t in angles]
    return out + [(s, s, 0.0) for s in ROUND] if with_round else out


def run(photos: list[tuple[str, np.ndarray]], conditions: list[tuple[float, int | None]],
        with_round: bool = False, *, single: bool = False, angles: tuple[float, ...] = ANGLES) -> list[dict]:
    """One row per kernel and condition: the group of all ``photos`` (or, ``single``, each photo alone,
    whose direction check fits the image's tiles or quadrants one by one)."""
    rows = []
    for noise, quality in conditions:
        t0 = time.perf_counter()
        for i, (a, b, theta) in enumerate(kernels(with_round, angles)):
            rng = np.random.default_rng(i)
            lrs = [_jpeg(synthesize(hr, (a, b, theta), noise, rng), quality) for _, hr in photos]
            inputs = [([lr], name) for lr, (name, _) in zip(lrs, photos, strict=True)] if single else [(lrs, "group")]
            for images, name in inputs:
                est = estimate_kernel(images, scale=4)
                before = est.diagnostics.get("estimate_before_fallback", {"sigma_x": est.sigma_x,
                                                                          "sigma_y": est.sigma_y,
                                                                          "theta_deg": est.theta_deg})
                estimate = [before["sigma_x"], before["sigma_y"], before["theta_deg"]]
                rows.append({"noise": noise, "quality": quality, "true": [a, b, theta], "estimate": estimate,
                             "photos": name, "method": est.method, "direction_agreement": est.direction_agreement,
                             "warned": est.direction_warning() is not None,
                             "angle_error": angle_error(estimate[2], theta),
                             "dist": float(np.linalg.norm(support_kernel(*estimate) - support_kernel(a, b, theta))),
                             "per_image_theta_deg": est.diagnostics.get("per_image_theta_deg"),
                             "per_part_theta_deg": est.diagnostics.get("per_part_theta_deg")})
        print(f"noise {noise:g} JPEG {quality}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def _stats(errors: list[float]) -> str:
    if not errors:
        return "- | - | -"
    return f"{len(errors)} | {np.median(errors):.1f} | {100 * np.mean(np.array(errors) > MISS_DEG):.0f} %"


def report(rows: list[dict], label: str, machine: str, wall: float, *, single: bool = False) -> str:
    measured = [r for r in rows if r["direction_agreement"] is not None and r["true"][0] > r["true"][1]]
    round_rows = [r for r in rows if r["true"][0] == r["true"][1]]
    n_round = len({tuple(r["true"]) for r in round_rows})
    n_aniso = len({tuple(r["true"]) for r in rows if r["true"][0] > r["true"][1]})
    what = "per-part (tiles or quadrants of one image)" if single else "per-image"
    mode = "single-image mode (each photo alone; 'groups' below are images)" if single else "group mode"
    lines = [f"# Angle error against the {what} direction agreement ({label})", "",
             f"Machine: {machine}. Wall time {wall:.0f} s. {n_aniso} anisotropic kernels per condition"
             f"{f' and {n_round} round ones' if n_round else ''}, {mode}, x4.",
             f"A miss: angle error above {MISS_DEG:g} deg. Warned: agreement below "
             f"{warn_threshold('parts' if single else 'images'):g} "
             "and an estimate elongated enough to have an angle.", "",
             "| condition | median agreement | groups | median angle error | misses | warned |",
             "|---|---|---|---|---|---|"]
    for cond in dict.fromkeys((r["noise"], r["quality"]) for r in rows):
        sel = [r for r in measured if (r["noise"], r["quality"]) == cond]
        agreement = f"{np.median([r['direction_agreement'] for r in sel]):.2f}" if sel else "-"
        name = f"noise {cond[0]:g}, JPEG {cond[1] or 'none'}"
        lines.append(f"| {name} | {agreement} | {_stats([r['angle_error'] for r in sel])} | "
                     f"{sum(r['warned'] for r in sel)} |")
    lines += ["", "All conditions pooled, by agreement:", "",
              "| agreement | groups | median angle error | misses |", "|---|---|---|---|"]
    for lo, hi in BINS:
        sel = [r["angle_error"] for r in measured if lo <= r["direction_agreement"] < hi]
        lines.append(f"| {lo:.2f}-{min(hi, 1.0):.2f} | {_stats(sel)} |")
    warned = [r["angle_error"] for r in measured if r["warned"]]
    quiet = [r["angle_error"] for r in measured if not r["warned"]]
    if single:
        lines += ["", "By photo (anisotropic kernels, all conditions):", "",
                  "| photo | median agreement | images | median angle error | misses | warned |",
                  "|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["photos"] for r in measured):
            sel = [r for r in measured if r["photos"] == name]
            lines.append(f"| {name} | {np.median([r['direction_agreement'] for r in sel]):.2f} | "
                         f"{_stats([r['angle_error'] for r in sel])} | {sum(r['warned'] for r in sel)} |")
    lines += ["", f"Anisotropic kernels, warned groups: {_stats(warned).replace(' | ', ', ')} (count, median error, "
                  f"misses); not warned: {_stats(quiet).replace(' | ', ', ')}.",
              "Anisotropic kernels without the measurement (fixed-Gaussian fallback"
              f"{', or an image too small for quadrants' if single else ''}): "
              f"{sum(r['direction_agreement'] is None and r['true'][0] > r['true'][1] for r in rows)}."]
    if round_rows:
        agreements = [r["direction_agreement"] for r in round_rows if r["direction_agreement"] is not None]
        lines.append(f"Round kernels (no direction to find): {len(round_rows)} groups, warned "
                     f"{sum(r['warned'] for r in round_rows)}, median agreement "
                     f"{np.median(agreements) if agreements else float('nan'):.2f}, median estimated axis ratio "
                     f"{np.median([r['estimate'][0] / r['estimate'][1] for r in round_rows]):.2f}.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default="5/60,0/none", help="NOISE/QUALITY list (noise in 1/255)")
    parser.add_argument("--hr-dir", type=existing_dir, default=DEV_PHOTOS, help="the group's sharp photos")
    parser.add_argument("--calibration-crops", action="store_true", help="use the calibration crops instead")
    parser.add_argument("--round", action="store_true", help=f"add {len(ROUND)} round kernels (false alarms)")
    parser.add_argument("--held-out", action="store_true",
                        help="allow --hr-dir tests/data/hr: a check of the thresholds chosen elsewhere, never a choice")
    parser.add_argument("--single", action="store_true",
                        help="estimate each photo alone (the direction check then compares its tiles or quadrants)")
    parser.add_argument("--angles", default=",".join(f"{a:g}" for a in ANGLES),
                        help="comma-separated true angles in degrees (default 0-150 in steps of 30)")
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    args = parser.parse_args(argv)
    conditions = parse_conditions(args.conditions)
    try:
        angles = tuple(float(a) for a in args.angles.split(",") if a.strip())
    except ValueError:
        raise SystemExit(f"--angles: {args.angles!r} is not a comma-separated list of numbers") from None
    if not angles:
        raise SystemExit("--angles: give at least one angle")
    if args.calibration_crops:
        from kernel_calibration import calibration_images

        photos, label = calibration_images(), "calibration_crops"
    else:
        acceptance = args.hr_dir.resolve() == (ROOT / "tests" / "data" / "hr").resolve()
        if acceptance and not args.held_out:
            raise SystemExit("--hr-dir tests/data/hr: the acceptance images are not used to choose settings; "
                             "pass other photos, or --held-out to score the fixed thresholds on them")
        photos, label = load_hr(args.hr_dir), ("acceptance_hr_held_out" if acceptance else args.hr_dir.name)
    t0 = time.perf_counter()
    rows = run(photos, conditions, args.round, single=args.single, angles=angles)
    wall = time.perf_counter() - t0
    machine = this_machine()
    text = report(rows, label, machine, wall, single=args.single)
    print(text)
    suffix = "_single" if args.single else ""
    _save(args.out, f"kernel_direction_agreement_{label}{suffix}", text,
          {"machine": machine, "wall_s": wall, "photos": [name for name, _ in photos], "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)
