"""Blur-kernel estimation on frames with letterbox bars (a recorder's black or grey bars, added after capture).

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/kernel_letterbox.py [--hr-dir benchmarks/data/dev_photos]
        [--noises 0,2] [--qualities none,75] [--machine "..."] [--out-dir benchmarks/results]
        [--tag NAME] [--bar-margin N]

Each synthetic camera: the photos of ``--hr-dir`` (centre crops of 768 x 576 px, LR 192 x 144 at x4, the
size where a helper's hunt saw bars pull the estimate) blurred by a known kernel and downsampled, given
Gaussian noise, then framed by bars (none; black, 0; video black, 16/255; grey, 128/255) of 1/8 of the
height at the top and the bottom, then JPEG-compressed (``--qualities``, ``none`` for none: a recorder
encodes the framed picture). Six kernels per condition (those of ``kernel_clipping.py``), the group
estimate of :func:`adassr.adapt.kernel.estimate_kernel` scored against the truth: the mean L2 distance
of the 26-tap HR kernels, the share closer than G(1.6), the median angle error where the axis ratio is
>= 1.5, and the mean confidence.

``--bar-margin 0`` is the estimator that leaves no bar out (``KernelEstimationConfig.bar_margin``).
Results: ``<out-dir>/kernel_letterbox_<folder>[_<tag>].{md,json}`` (atomic writes), the machine named.
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

from kernel_clipping import KERNELS, SCALE, _distance, angle_error  # noqa: E402
from script_cli import (  # noqa: E402
    default_machine,
    existing_dir,
    float_list,
    folder_label,
    non_negative_float,
    non_negative_int,
    output_dir,
    positive_int,
    run_script,
    write_report,
)

HEIGHT, WIDTH = 576, 768
BARS: dict[str, float | None] = {"none": None, "black": 0.0, "video black": 16 / 255, "grey": 128 / 255}
"""Bar colours (luma levels in [0, 1]); None: no bars."""


def load_photos(hr_dir: Path) -> list[np.ndarray]:
    from adassr.runtime.images import read_image, to_float32

    paths = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < 2:
        raise SystemExit(f"--hr-dir {hr_dir}: need at least two photos")
    photos = []
    for path in paths:
        image = to_float32(read_image(path).pixels)[..., :3]
        h, w = image.shape[:2]
        if h < HEIGHT or w < WIDTH:
            continue
        top, left = (h - HEIGHT) // 2, (w - WIDTH) // 2
        photos.append(np.ascontiguousarray(image[top: top + HEIGHT, left: left + WIDTH]))
    if len(photos) < 2:
        raise SystemExit(f"--hr-dir {hr_dir}: need at least two photos of {WIDTH} x {HEIGHT} px or more")
    return photos


def framed_group(photos: list[np.ndarray], kernel: tuple[float, float, float], *, bar: float | None,
                 noise: float, quality: int | None, seed: int) -> list[np.ndarray]:
    """The LR frames of one synthetic camera: blurred, downsampled, noisy, framed by bars, JPEG."""
    from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip

    k = gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=SCALE)
    frames = []
    for i, hr in enumerate(photos):
        lr = blur_downsample(hr, k, SCALE)
        if noise:
            lr = lr + np.random.default_rng(seed * 100 + i).normal(0.0, noise, lr.shape).astype(np.float32)
        lr = np.clip(lr, 0.0, 1.0).astype(np.float32)
        if bar is not None:
            depth = lr.shape[0] // 8
            lr[:depth] = bar
            lr[-depth:] = bar
        frames.append(lr if quality is None else jpeg_roundtrip(lr, quality))
    return frames


def run(photos: list[np.ndarray], noises: list[float], qualities: list[int | None],
        bar_margin: int) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel

    config = KernelEstimationConfig(bar_margin=bar_margin)
    rows = []
    for name, bar in BARS.items():
        for noise in noises:
            for quality in qualities:
                start = time.perf_counter()
                dists, closer, angles, confidence = [], [], [], []
                for index, true in enumerate(KERNELS):
                    frames = framed_group(photos, true, bar=bar, noise=noise / 255.0, quality=quality, seed=index)
                    est = estimate_kernel(frames, scale=SCALE, config=config)
                    got = (est.sigma_x, est.sigma_y, est.theta_deg)
                    dists.append(_distance(got, true))
                    closer.append(_distance(got, true) < _distance((1.6, 1.6, 0.0), true))
                    if true[0] / true[1] >= 1.5:
                        angles.append(angle_error(got[2], true[2]))
                    confidence.append(est.confidence)
                rows.append({"bars": name, "noise": noise, "quality": quality, "mean_l2": float(np.mean(dists)),
                             "closer": float(np.mean(closer)), "median_angle_error_deg": float(np.median(angles)),
                             "mean_confidence": float(np.mean(confidence)),
                             "seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Kernel estimation on frames with letterbox bars (bar_margin {result['bar_margin']})", "",
             f"Machine: {result['machine']}. Photos: `{result['hr_dir']}` ({result['n_photos']}, centre "
             f"{WIDTH} x {HEIGHT} px crops, LR {WIDTH // SCALE} x {HEIGHT // SCALE}), bars of 1/8 of the height "
             f"at top and bottom. {len(KERNELS)} kernels per row, group mode.", "",
             "| bars | noise /255 | JPEG | mean L2 | closer than G(1.6) | median angle error | mean confidence |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        quality = "none" if r["quality"] is None else f"q{r['quality']}"
        lines.append(f"| {r['bars']} | {r['noise']:g} | {quality} | {r['mean_l2']:.4f} | {100 * r['closer']:.0f}% "
                     f"| {r['median_angle_error_deg']:.1f} deg | {r['mean_confidence']:.2f} |")
    return "\n".join(lines) + "\n"


def _qualities(text: str) -> list[int | None]:
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "none":
            values.append(None)
            continue
        if not part.isdigit() or not 1 <= int(part) <= 100:
            raise argparse.ArgumentTypeError(f"each quality is 'none' or 1-100, got {part!r}")
        values.append(int(part))
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hr-dir", type=existing_dir, default=ROOT / "benchmarks" / "data" / "dev_photos")
    parser.add_argument("--noises", type=float_list(non_negative_float), default="0,2",
                        help="comma-separated Gaussian noise sigmas in 8-bit levels (>= 0)")
    parser.add_argument("--qualities", type=_qualities, default="none,75",
                        help="comma-separated JPEG qualities of the framed pictures, 'none' for none")
    parser.add_argument("--bar-margin", type=non_negative_int, default=None,
                        help="KernelEstimationConfig.bar_margin (default: the estimator's; 0 leaves no bar out)")
    parser.add_argument("--machine", default=None, help="the machine, as the report names it (default: the CPU)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--max-photos", type=positive_int, default=None, help="use the first N photos (>= 1)")
    args = parser.parse_args(argv)
    from adassr.adapt.kernel import KernelEstimationConfig

    margin = KernelEstimationConfig().bar_margin if args.bar_margin is None else args.bar_margin
    photos = load_photos(args.hr_dir)[: args.max_photos]
    rows = run(photos, args.noises, args.qualities, margin)
    result = {"machine": default_machine(args.machine), "hr_dir": folder_label(args.hr_dir, ROOT),
              "n_photos": len(photos), "bar_margin": margin, "kernels": KERNELS, "rows": rows}
    name = f"kernel_letterbox_{args.hr_dir.name}" + (f"_{args.tag}" if args.tag else "")
    write_report(args.out_dir, name, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
