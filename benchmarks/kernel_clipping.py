"""Blur-kernel estimation where the sensor clips: blown highlights and their edges.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/kernel_clipping.py [--hr-dir benchmarks/data/dev_photos]
        [--gains 1.0,1.6,2.2] [--noises 0,2,5] [--machine "..."] [--out-dir benchmarks/results]
        [--tag NAME] [--keep-clipped]

Each synthetic camera: the photos of ``--hr-dir`` (centre crops of 512 px, LR 128 at x4) blurred by a
known kernel and downsampled, multiplied by an exposure ``gain``, given Gaussian sensor noise, then
clipped to [0, 1] as an ADC clips (blown areas become exactly white). Six kernels per condition, the
group estimate of :func:`adassr.adapt.kernel.estimate_kernel` scored against the truth: the mean L2
distance of the 26-tap HR kernels, the share closer than the fixed Gaussian G(1.6), the median angle
error where the axis ratio is >= 1.5, and the share of clipped LR pixels.

``--keep-clipped`` finds no pixel clipped (``features.CLIP_MARGIN < 0``): clipped pixels count in the
fit, the noise estimate and the flat-image check, as before clipping was handled. ``--clip-reach N``
sets how far around clipped areas pixels do not count as structure (``features.CLIP_REACH``).

Results: ``<out-dir>/kernel_clipping_<folder>[_<tag>].{md,json}`` (atomic writes), the machine named.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from script_cli import (  # noqa: E402
    default_machine,
    existing_dir,
    float_list,
    folder_label,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    run_script,
    write_report,
)

SCALE = 4
CROP = 512
SUPPORT = 26
KERNELS = [(2.4, 1.2, 30.0), (1.6, 0.8, 120.0), (3.2, 1.6, 75.0), (1.2, 1.2, 0.0), (2.8, 2.0, 160.0), (2.0, 1.0, 0.0)]
"""(sigma_x, sigma_y HR px, angle deg): chosen before measuring, spread over the benchmark grid."""


def _distance(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    from adassr.adapt.degradation import gaussian_kernel

    ka = gaussian_kernel(a[0], a[1], math.radians(a[2]), scale=SCALE, size=SUPPORT)
    kb = gaussian_kernel(b[0], b[1], math.radians(b[2]), scale=SCALE, size=SUPPORT)
    return float(np.linalg.norm(ka - kb))


def angle_error(a: float, b: float) -> float:
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def load_photos(hr_dir: Path) -> list[np.ndarray]:
    from adassr.runtime.images import read_image, to_float32

    paths = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < 2:
        raise SystemExit(f"--hr-dir {hr_dir}: need at least two photos")
    photos = []
    for path in paths:
        image = to_float32(read_image(path).pixels)[..., :3]
        h, w = image.shape[:2]
        top, left = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
        crop = image[top : top + CROP, left : left + CROP]
        crop = crop[: crop.shape[0] // SCALE * SCALE, : crop.shape[1] // SCALE * SCALE]
        photos.append(np.ascontiguousarray(crop))
    return photos


def camera_group(photos: list[np.ndarray], kernel: tuple[float, float, float], *, gain: float, noise: float,
                 seed: int) -> tuple[list[np.ndarray], float]:
    """The LR images of one synthetic camera and their share of clipped (all-white) pixels."""
    from adassr.adapt.degradation import blur_downsample, gaussian_kernel

    k = gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=SCALE)
    lrs, clipped = [], []
    for i, hr in enumerate(photos):
        lr = blur_downsample(hr, k, SCALE) * gain
        if noise:
            lr = lr + np.random.default_rng(seed * 100 + i).normal(0.0, noise, lr.shape).astype(np.float32)
        lr = np.clip(lr, 0.0, 1.0).astype(np.float32)  # the ADC clips after the noise
        clipped.append(float((lr >= 1.0).all(axis=2).mean()))
        lrs.append(lr)
    return lrs, float(np.mean(clipped))


def run(photos: list[np.ndarray], gains: list[float], noises: list[float]) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import estimate_kernel

    rows = []
    for gain in gains:
        for noise in noises:
            start = time.perf_counter()
            dists, closer, angles, clipped = [], [], [], []
            for index, true in enumerate(KERNELS):
                lrs, share = camera_group(photos, true, gain=gain, noise=noise / 255.0, seed=index)
                est = estimate_kernel(lrs, scale=SCALE)
                got = (est.sigma_x, est.sigma_y, est.theta_deg)
                dists.append(_distance(got, true))
                closer.append(_distance(got, true) < _distance((1.6, 1.6, 0.0), true))
                if true[0] / true[1] >= 1.5:
                    angles.append(angle_error(got[2], true[2]))
                clipped.append(share)
            rows.append({"gain": gain, "noise": noise, "clipped": float(np.mean(clipped)),
                         "mean_l2": float(np.mean(dists)), "closer": float(np.mean(closer)),
                         "median_angle_error_deg": float(np.median(angles)),
                         "seconds": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Kernel estimation under sensor clipping ({result['variant']})", "",
             f"Machine: {result['machine']}. Photos: `{result['hr_dir']}` ({result['n_photos']}, centre "
             f"{CROP} px crops, LR {CROP // SCALE} px). {len(KERNELS)} kernels per row, group mode.", "",
             "| gain | noise /255 | clipped LR pixels | mean L2 | closer than G(1.6) | median angle error |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['gain']:g} | {r['noise']:g} | {100 * r['clipped']:.1f}% | {r['mean_l2']:.4f} "
                     f"| {100 * r['closer']:.0f}% | {r['median_angle_error_deg']:.1f} deg |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hr-dir", type=existing_dir, default=ROOT / "benchmarks" / "data" / "dev_photos")
    parser.add_argument("--gains", type=float_list(positive_float), default="1.0,1.6,2.2",
                        help="comma-separated exposure gains (> 0)")
    parser.add_argument("--noises", type=float_list(non_negative_float), default="0,2,5",
                        help="comma-separated Gaussian sensor noise sigmas in 8-bit levels (>= 0)")
    parser.add_argument("--machine", default=None, help="the machine, as the report names it (default: the CPU)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--keep-clipped", action="store_true",
                        help="count clipped pixels as any other (the estimator before clipping was handled)")
    parser.add_argument("--clip-reach", type=non_negative_int, default=None,
                        help="pixels around clipped areas that do not count as structure for the flat-image "
                             "check (default: features.CLIP_REACH)")
    parser.add_argument("--max-photos", type=positive_int, default=None, help="use the first N photos (>= 1)")
    args = parser.parse_args(argv)
    from adassr.adapt.kernel import features

    if args.clip_reach is not None:
        features.CLIP_REACH = args.clip_reach
    if args.keep_clipped:
        features.CLIP_MARGIN = -1.0  # nothing counts as clipped
    photos = load_photos(args.hr_dir)[: args.max_photos]
    rows = run(photos, args.gains, args.noises)
    result = {"machine": default_machine(args.machine), "hr_dir": folder_label(args.hr_dir, ROOT),
              "n_photos": len(photos),
              "variant": ("clipped areas counted (before)" if args.keep_clipped else
                          f"clipped pixels left out; {features.CLIP_REACH} px around them are no structure"),
              "kernels": KERNELS, "rows": rows}
    name = f"kernel_clipping_{args.hr_dir.name}" + (f"_{args.tag}" if args.tag else "")
    write_report(args.out_dir, name, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
