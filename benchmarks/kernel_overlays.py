"""Blur-kernel estimation on frames with burnt-in text (a timestamp, a camera name) and hot pixels.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/kernel_overlays.py [--hr-dir benchmarks/data/dev_photos]
        [--variants clean,stamp,...] [--conditions 0:none,2:90,3:75,5:60] [--keep-too-sharp]
        [--keep-fixed-defects]
        [--machine "..."] [--out-dir benchmarks/results] [--tag NAME]

Each synthetic camera: the photos of ``--hr-dir`` (centre crops of 768 x 576 px, LR 192 x 144 at x4, as
``kernel_letterbox.py`` makes them) blurred by each of the six kernels of ``kernel_clipping.py``,
downsampled, given Gaussian noise, then marked as a recorder or a sensor marks them, then
JPEG-compressed (``--conditions``: noise in 8-bit levels and quality, ``none`` for no JPEG):

- ``clean``: nothing drawn;
- ``stamp``: a time (HH:MM:SS, another per frame) at the top left and ``CAM 03`` at the bottom right,
  OpenCV's Hershey simplex at scale 0.3, white over a 3 px black outline, each about a fifth of the width;
- ``stamp-large``: the date and time, scale 0.5, about four fifths of the width;
- ``hot30`` / ``hot50``: 30 or 50 single LR pixels at full white, at the same places in every frame
  (a sensor's defects);
- ``stamp+hot30``: both;
- ``night``: the clean photos plus one dark frame (grey 0.05 with the same noise) carrying the stamp;
- ``static`` / ``static+hot30``: a fixed camera, one scene in every frame (the kernel's photo, in turn,
  as many times as there are photos, each frame with its own noise draw): its texture sits at the same
  places in every frame, as a sensor's defects do.

Per row: the mean L2 distance of the 26-tap HR kernels to the truth, how many of the six estimates are
closer than the fixed G(1.6), the mean confidence, the methods, and the share of counted pixels the
estimator left out as drawn after capture (``diagnostics["n_pixels_too_sharp"]``) and around the
defects found across the frames (``diagnostics["n_pixels_fixed_defects"]``). ``--keep-too-sharp`` runs
the estimator without the first rule (``KernelEstimationConfig.leave_out_too_sharp`` False),
``--keep-fixed-defects`` without the second (``leave_out_fixed_defects`` False), for the comparison.

Results: ``<out-dir>/kernel_overlays_<folder>[_<tag>].{md,json}`` (atomic writes), the machine named.
"""

from __future__ import annotations

import argparse
import json
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
from kernel_letterbox import framed_group, load_photos  # noqa: E402
from script_cli import (  # noqa: E402
    default_machine,
    existing_dir,
    folder_label,
    output_dir,
    run_script,
    write_report,
)

FIXED = (1.6, 1.6, 0.0)
"""The yardstick: the fixed Gaussian G(1.6) HR px."""
VARIANTS: dict[str, dict[str, Any]] = {
    "clean": {},
    "stamp": {"stamp": "small"},
    "stamp-large": {"stamp": "large"},
    "hot30": {"hot": 30},
    "hot50": {"hot": 50},
    "stamp+hot30": {"stamp": "small", "hot": 30},
    "night": {"night": True},
    "static": {"static": True},
    "static+hot30": {"static": True, "hot": 30},
}
CONDITIONS: list[tuple[float, int | None]] = [(0.0, None), (2.0, 90), (3.0, 75), (5.0, 60)]
NIGHT_LEVEL = 0.05
"""Grey level of the night frame added by the ``night`` variant."""


def burn_in_stamp(lr: np.ndarray, index: int, size: str) -> np.ndarray:
    """``lr`` (float32 H x W x 3 in [0, 1]) with a recorder's timestamp and camera name drawn on it (8-bit)."""
    import cv2

    img = np.ascontiguousarray(np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8))
    clock = f"10:{11 + index // 60:02d}:{(7 * index + 3) % 60:02d}"
    text, scale = (f"2026-12-07 {clock}", 0.5) if size == "large" else (clock, 0.3)
    font, h, w = cv2.FONT_HERSHEY_SIMPLEX, img.shape[0], img.shape[1]
    (_, text_h), _ = cv2.getTextSize(text, font, scale, 1)
    (name_w, _), _ = cv2.getTextSize("CAM 03", font, scale, 1)
    for label, origin in ((text, (3, text_h + 3)), ("CAM 03", (w - name_w - 3, h - 4))):
        cv2.putText(img, label, origin, font, scale, (0, 0, 0), 3, cv2.LINE_8)
        cv2.putText(img, label, origin, font, scale, (255, 255, 255), 1, cv2.LINE_8)
    return img.astype(np.float32) / 255.0


def hot_pixel_places(shape: tuple[int, ...], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (row, column) places at least 2 px from the edges: a sensor's defects."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, shape[0] - 2, count), rng.integers(2, shape[1] - 2, count)


def camera_group(photos: list[np.ndarray], kernel: tuple[float, float, float], *, noise: float,
                 quality: int | None, seed: int, stamp: str | None = None, hot: int = 0,
                 night: bool = False, static: bool = False) -> list[np.ndarray]:
    """The LR frames of one synthetic camera (``noise`` in [0, 1] units), marked, then JPEG: blurred, downsampled
    and noisy as ``kernel_letterbox.framed_group`` makes them (without bars or JPEG), then marked. ``static``:
    photo number ``seed`` (modulo their count) in every frame."""
    from adassr.adapt.degradation import jpeg_roundtrip

    hrs = [photos[seed % len(photos)]] * len(photos) if static else list(photos)
    if night:
        hrs.append(np.full_like(photos[0], NIGHT_LEVEL))
    places = None
    frames = []
    for i, lr in enumerate(framed_group(hrs, kernel, bar=None, noise=noise, quality=None, seed=seed)):
        if stamp is not None:
            lr = burn_in_stamp(lr, i, stamp)
        if night and i == len(photos):
            lr = burn_in_stamp(lr, i, "small")
        if hot:
            places = places if places is not None else hot_pixel_places(lr.shape, hot, seed + 777)
            lr = lr.copy()
            lr[places[0], places[1]] = 1.0
        frames.append(lr if quality is None else jpeg_roundtrip(lr, quality))
    return frames


def run(photos: list[np.ndarray], variants: list[str], conditions: list[tuple[float, int | None]],
        leave_out: bool, leave_out_defects: bool = True) -> list[dict[str, Any]]:
    from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel

    config = KernelEstimationConfig(leave_out_too_sharp=leave_out, leave_out_fixed_defects=leave_out_defects)
    rows = []
    for name in variants:
        for noise, quality in conditions:
            start = time.perf_counter()
            dists, closer, confidence, methods, dropped, defects = [], 0, [], [], [], []
            for index, true in enumerate(KERNELS):
                frames = camera_group(photos, true, noise=noise / 255.0, quality=quality, seed=index,
                                      **VARIANTS[name])
                est = estimate_kernel(frames, scale=SCALE, config=config)
                dist = _distance((est.sigma_x, est.sigma_y, est.theta_deg), true)
                dists.append(dist)
                closer += dist < _distance(FIXED, true)
                confidence.append(est.confidence)
                methods.append(est.method)
                drawn = est.diagnostics.get("n_pixels_too_sharp", 0)
                near_defects = est.diagnostics.get("n_pixels_fixed_defects", 0)
                counted = max(est.diagnostics.get("n_pixels", 0) + drawn + near_defects, 1)
                dropped.append(drawn / counted)
                defects.append(near_defects / counted)
            rows.append({"variant": name, "noise": noise, "quality": quality, "mean_l2": float(np.mean(dists)),
                         "fixed_l2": float(np.mean([_distance(FIXED, k) for k in KERNELS])), "closer": closer,
                         "estimates": len(KERNELS), "mean_confidence": float(np.mean(confidence)),
                         "methods": {m: methods.count(m) for m in sorted(set(methods))},
                         "left_out_share": float(np.mean(dropped)), "defects_share": float(np.mean(defects)),
                         "seconds": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    rule = "left out" if result["leave_out_too_sharp"] else "kept (--keep-too-sharp: the estimator without the rule)"
    defects = ("left out" if result.get("leave_out_fixed_defects", True)
               else "kept (--keep-fixed-defects: the estimator without the rule)")
    tag = f" ({result['tag']})" if result["tag"] else ""
    lines = [f"# Kernel estimation on frames with burnt-in text and hot pixels{tag}",
             "", f"Machine: {result['machine']}. Photos: `{result['hr_dir']}` ({result['n_photos']}, LR "
             f"{result['lr_size']}); {len(KERNELS)} kernels per row, group mode; content drawn after capture "
             f"{rule}; a sensor's defects found across the frames {defects}. The fixed G(1.6)'s mean L2 "
             f"distance to these kernels: {result['fixed_l2']:.4f}.", "",
             "| frames | noise /255 | JPEG | mean L2 | closer than G(1.6) | mean confidence | methods "
             "| counted pixels left out: drawn after capture | around defects |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        quality = "none" if r["quality"] is None else f"q{r['quality']}"
        methods = ", ".join(f"{m} {n}" for m, n in r["methods"].items())
        lines.append(f"| {r['variant']} | {r['noise']:g} | {quality} | {r['mean_l2']:.4f} | {r['closer']} of "
                     f"{r['estimates']} | {r['mean_confidence']:.2f} | {methods} | {100 * r['left_out_share']:.1f} % "
                     f"| {100 * r.get('defects_share', 0.0):.1f} % |")
    return "\n".join(lines) + "\n"


def _variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants are a comma-separated list of {', '.join(VARIANTS)}; "
                                         f"got {text!r}")
    return names


def _conditions(text: str) -> list[tuple[float, int | None]]:
    out: list[tuple[float, int | None]] = []
    for part in text.split(","):
        noise, _, quality = part.strip().partition(":")
        try:
            level = float(noise)
            q = None if quality == "none" else int(quality)
        except ValueError:
            level, q = -1.0, None
        if not (0.0 <= level <= 255.0) or (q is not None and not 1 <= q <= 100) or not quality:
            raise argparse.ArgumentTypeError(f"each condition is NOISE:QUALITY, noise in 8-bit levels (0-255) and "
                                             f"quality 1-100 or 'none', e.g. 2:90; got {part.strip()!r}")
        out.append((level, q))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hr-dir", type=existing_dir, default=ROOT / "benchmarks" / "data" / "dev_photos")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--conditions", type=_conditions, default=CONDITIONS,
                        help="comma-separated NOISE:QUALITY pairs (default 0:none,2:90,3:75,5:60)")
    parser.add_argument("--keep-too-sharp", action="store_true",
                        help="the estimator without the rule that leaves out content drawn after capture")
    parser.add_argument("--keep-fixed-defects", action="store_true",
                        help="the estimator without the rule that leaves out a sensor's defects found across frames")
    parser.add_argument("--machine", default=None, help="the machine, as the report names it (default: the CPU)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    photos = load_photos(args.hr_dir)
    result = {"machine": default_machine(args.machine), "tag": args.tag, "hr_dir": folder_label(args.hr_dir, ROOT),
              "n_photos": len(photos), "lr_size": f"{photos[0].shape[1] // SCALE} x {photos[0].shape[0] // SCALE}",
              "leave_out_too_sharp": not args.keep_too_sharp,
              "leave_out_fixed_defects": not args.keep_fixed_defects, "kernels": KERNELS,
              "fixed_l2": float(np.mean([_distance(FIXED, k) for k in KERNELS])),
              "rows": run(photos, args.variants, args.conditions, not args.keep_too_sharp,
                          not args.keep_fixed_defects)}
    name = f"kernel_overlays_{args.hr_dir.name}" + (f"_{args.tag}" if args.tag else "")
    write_report(args.out_dir, name, result, to_markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
