"""Blur-kernel estimation on flat frames after JPEG (a wall, a covered lens, a night sky, a vignetted blank frame).

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/kernel_flat_frames.py [--hr-dir benchmarks/data/dev_photos]
        [--noises 0,2,3,5,8] [--qualities none,95,90,75,60,50] [--machine "..."]
        [--out-dir benchmarks/results] [--tag NAME] [--max-photos N]

Frames alone: frames of 256 x 320 LR px (HR 1024 x 1280 blurred by G(1.6) and downsampled by 4), each
kind (flat grey at 0.25, 0.5 and 0.8; a vignette, 0.6 falling to 0.3 at the corners; a linear
gradient 0.2 -> 0.7 across), with Gaussian noise of each ``--noises`` sigma (8-bit levels; noise 0
rounded to 8 bits), then JPEG at each ``--qualities``. Nothing in them carries blur information. Alone,
the estimate should either be the bicubic fallback (``method="fallback-bicubic"``, confidence 0:
no structure above the noise) or say it read faint structure only
(``diagnostics["faint_structure_only"]``, which ``adapt`` turns into a warning); a dim, densely
textured photo looks the same, so a group of such frames only is still fitted. Each cell: the
method, the confidence and the flag.

Groups: the photos of ``--hr-dir`` (centre crops of 768 x 576 px, LR 192 x 144) as one camera, each of
the six kernels of ``kernel_clipping.py``, at noise/JPEG pairs (2, q75), (3, q90), (5, q75), (5, q60),
estimated with and without a grey frame of the same noise and JPEG added to the group: the mean L2
distance of the 26-tap HR kernels to the truth both ways, how often the frame was skipped, and how
often a photo was (it should never be).

Dim photos alone: each photo's crop at a half and a quarter of its contrast (about its mean), clean
(8-bit rounding only), one estimate per photo and kernel: the mean L2 distance, how many fell back to
bicubic, how many were flagged faint. Dimming must not cost a photo its fit.

Run it on another commit with ``PYTHONPATH=<that checkout>`` and ``--tag before`` for the comparison.
Results: ``<out-dir>/kernel_flat_frames_<folder>[_<tag>].{md,json}`` (atomic writes), the machine named.
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

from kernel_clipping import KERNELS, SCALE, _distance  # noqa: E402
from kernel_letterbox import _qualities, load_photos  # noqa: E402
from script_cli import (  # noqa: E402
    default_machine,
    existing_dir,
    float_list,
    folder_label,
    non_negative_float,
    output_dir,
    positive_int,
    run_script,
    write_report,
)

FRAME_HR = (1024, 1280)
"""HR size of the frames alone (LR 256 x 320)."""
GROUP_CONDITIONS: list[tuple[float, int]] = [(2.0, 75), (3.0, 90), (5.0, 75), (5.0, 60)]
"""(noise in 8-bit levels, JPEG quality) of the group rows."""
FLAT_LEVEL = 0.4
"""Grey level of the flat frame added to a group."""


def frame_kinds() -> dict[str, np.ndarray]:
    """The HR frames (float32, H x W x 3): flat greys, a vignette and a linear gradient."""
    h, w = FRAME_HR
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / ((h / 2) ** 2 + (w / 2) ** 2)
    planes = {f"grey {level:g}": np.full((h, w), level, np.float32) for level in (0.25, 0.5, 0.8)}
    planes["vignette"] = 0.6 * (1.0 - 0.5 * radius)
    planes["gradient"] = 0.2 + 0.5 * xx / w
    return {name: np.repeat(plane[..., None], 3, axis=2) for name, plane in planes.items()}


def degrade(hr: np.ndarray, kernel: tuple[float, float, float], noise: float, quality: int | None,
            seed: int) -> np.ndarray:
    """Blur, downsample by :data:`SCALE`, add noise (``noise`` in [0, 1] units; 0: round to 8 bits), JPEG."""
    from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip

    lr = blur_downsample(hr, gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=SCALE), SCALE)
    if noise:
        lr = lr + np.random.default_rng(seed).normal(0.0, noise, lr.shape).astype(np.float32)
    else:
        lr = np.round(lr * 255.0) / 255.0
    lr = np.clip(lr, 0.0, 1.0).astype(np.float32)
    return lr if quality is None else jpeg_roundtrip(lr, quality)


def run_frames(noises: list[float], qualities: list[int | None]) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import estimate_kernel

    rows = []
    for name, hr in frame_kinds().items():
        for noise in noises:
            for quality in qualities:
                frame = degrade(hr, (1.6, 1.6, 0.0), noise / 255.0, quality, seed=0)
                est = estimate_kernel([frame], scale=SCALE)
                rows.append({"frame": name, "noise": noise, "quality": quality, "method": est.method,
                             "confidence": est.confidence,
                             "faint": bool(est.diagnostics.get("faint_structure_only", False))})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def run_groups(photos: list[np.ndarray]) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import estimate_kernel

    flat_hr = np.full((photos[0].shape[0], photos[0].shape[1], 3), FLAT_LEVEL, np.float32)
    rows = []
    for noise, quality in GROUP_CONDITIONS:
        start = time.perf_counter()
        alone, added, frame_skipped, photos_skipped = [], [], 0, 0
        for index, true in enumerate(KERNELS):
            lrs = [degrade(hr, true, noise / 255.0, quality, seed=100 * index + i) for i, hr in enumerate(photos)]
            frame = degrade(flat_hr, true, noise / 255.0, quality, seed=100 * index + 99)
            a = estimate_kernel(lrs, scale=SCALE)
            b = estimate_kernel([*lrs, frame], scale=SCALE)
            alone.append(_distance((a.sigma_x, a.sigma_y, a.theta_deg), true))
            added.append(_distance((b.sigma_x, b.sigma_y, b.theta_deg), true))
            skipped = b.diagnostics["images_skipped_flat"]
            frame_skipped += len(photos) in skipped
            photos_skipped += len([i for i in skipped if i < len(photos)])
        rows.append({"noise": noise, "quality": quality, "mean_l2_photos": float(np.mean(alone)),
                     "mean_l2_with_frame": float(np.mean(added)), "frame_skipped": frame_skipped,
                     "photos_skipped": photos_skipped, "groups": len(KERNELS),
                     "seconds": time.perf_counter() - start})
        print(json.dumps(rows[-1]), flush=True)
    return rows


DIM_CONTRASTS = (0.5, 0.25)
"""Contrast factors of the dim photos (about each crop's mean)."""


def run_dim_photos(photos: list[np.ndarray]) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import estimate_kernel

    rows = []
    for factor in DIM_CONTRASTS:
        dists, fallbacks, faint = [], 0, 0
        for index, true in enumerate(KERNELS):
            for i, hr in enumerate(photos):
                dim = np.clip(hr.mean() + factor * (hr - hr.mean()), 0.0, 1.0).astype(np.float32)
                est = estimate_kernel([degrade(dim, true, 0.0, None, seed=100 * index + i)], scale=SCALE)
                dists.append(_distance((est.sigma_x, est.sigma_y, est.theta_deg), true))
                fallbacks += est.method == "fallback-bicubic"
                faint += bool(est.diagnostics.get("faint_structure_only", False))
        rows.append({"contrast": factor, "mean_l2": float(np.mean(dists)), "fallbacks": fallbacks,
                     "faint": faint, "estimates": len(dists)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    frames = result["frames"]
    flat = sum(r["method"] == "fallback-bicubic" for r in frames)
    said = sum(r["method"] == "fallback-bicubic" or bool(r.get("faint")) for r in frames)
    lines = [f"# Kernel estimation on flat frames after JPEG{' (' + result['tag'] + ')' if result['tag'] else ''}",
             "", f"Machine: {result['machine']}.", "",
             f"## Frames alone ({FRAME_HR[1] // SCALE} x {FRAME_HR[0] // SCALE} LR): {flat} of {len(frames)} "
             f"found flat (bicubic fallback, confidence 0); {said} of {len(frames)} either that or flagged as "
             "read from faint structure only", "",
             "| frame | noise /255 | JPEG | method | confidence | faint structure only |", "|---|---|---|---|---|---|"]
    for r in frames:
        quality = "none" if r["quality"] is None else f"q{r['quality']}"
        faint = "-" if "faint" not in r else ("yes" if r["faint"] else "no")
        lines.append(f"| {r['frame']} | {r['noise']:g} | {quality} | {r['method']} | {r['confidence']:.2f} "
                     f"| {faint} |")
    lines += ["", f"## Groups: {result['n_photos']} photos of `{result['hr_dir']}` (centre crops, LR "
              f"{result['lr_size']}) with and without a grey {FLAT_LEVEL:g} frame", "",
              "| noise /255 | JPEG | mean L2 photos alone | mean L2 with the frame | frame skipped | photos skipped |",
              "|---|---|---|---|---|---|"]
    for r in result["groups"]:
        lines.append(f"| {r['noise']:g} | q{r['quality']} | {r['mean_l2_photos']:.4f} | {r['mean_l2_with_frame']:.4f} "
                     f"| {r['frame_skipped']} of {r['groups']} | {r['photos_skipped']} |")
    lines += ["", f"## Dim photos alone (the same crops, clean, at a fraction of their contrast; "
              f"{len(result['kernels'])} kernels)", "",
              "| contrast | mean L2 | bicubic fallbacks | flagged faint |", "|---|---|---|---|"]
    for r in result.get("dim_photos", []):
        lines.append(f"| {r['contrast']:g} | {r['mean_l2']:.4f} | {r['fallbacks']} of {r['estimates']} "
                     f"| {r['faint']} of {r['estimates']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hr-dir", type=existing_dir, default=ROOT / "benchmarks" / "data" / "dev_photos")
    parser.add_argument("--noises", type=float_list(non_negative_float), default="0,2,3,5,8",
                        help="comma-separated Gaussian noise sigmas of the frames alone, in 8-bit levels (>= 0)")
    parser.add_argument("--qualities", type=_qualities, default="none,95,90,75,60,50",
                        help="comma-separated JPEG qualities of the frames alone, 'none' for none")
    parser.add_argument("--machine", default=None, help="the machine, as the report names it (default: the CPU)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--max-photos", type=positive_int, default=None, help="use the first N photos (>= 1)")
    args = parser.parse_args(argv)
    photos = load_photos(args.hr_dir)[: args.max_photos]
    result = {"machine": default_machine(args.machine), "tag": args.tag, "hr_dir": folder_label(args.hr_dir, ROOT),
              "n_photos": len(photos), "lr_size": f"{photos[0].shape[1] // SCALE} x {photos[0].shape[0] // SCALE}",
              "kernels": KERNELS, "frames": run_frames(args.noises, args.qualities), "groups": run_groups(photos),
              "dim_photos": run_dim_photos(photos)}
    name = f"kernel_flat_frames_{args.hr_dir.name}" + (f"_{args.tag}" if args.tag else "")
    write_report(args.out_dir, name, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
