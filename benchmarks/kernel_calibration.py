"""Fit the linear calibration of the blur-kernel estimator (adassr.adapt.kernel.estimate.CALIBRATION).

The estimator's raw output is an LR-pixel sigma per principal axis. This script synthesises LR
images with known anisotropic Gaussian kernels from photos that are NOT the acceptance images
(tests/data/hr is never read here):

* samples/cameras/canon/xmp_test.jpg (2000x1072) and, with ``--extra-photo PATH``, the first
  frame of further large photos (the published table also used a 3648x2736 Fujifilm MPO),
  each downscaled by 2, 3 and 4 with antialiasing (cv2.INTER_AREA) to act as sharp HR, cut
  into non-overlapping 480x480 crops;
* tests/data/calibration/ref_I04.png and ref_I06.png (Kodak, 512x384) as they are;
* with ``--native-photo PATH``, photos at their own resolution, cut into 480x480 crops without
  any downscaling.

The published constants use the first two kinds only. ``--bias`` checks that choice: with the
current constants it reports the median ratio estimated / true sigma separately for the
downscaled crops, the Kodak crops and native-resolution photos (``NATIVE``:
benchmarks/data/kernel_calibration/ -- a field, grass, a microscope slide -- and the first frames
of the two Nintendo 3DS photos in samples/cameras/nintendo), per photo in single mode. A camera's
full-resolution photo carries its own lens, demosaicing, sharpening and compression; if such
photos came out consistently wider than the downscaled ones, the constants should be fitted on
them instead (they did not: benchmarks/README.md, "Why q60 ...").

Random kernels (sigma_major uniform in [0.8, 3.4] HR px, axis ratio uniform in [1, 3] with
sigma_minor >= 0.8, any angle;
half of the images with Gaussian noise of sigma 2/255) are applied with
adassr.adapt.degradation.blur_downsample; the raw estimates of random groups of five crops (group
mode) and of single crops (single mode) are regressed on the truth with a robust (soft-L1)
fit of ``log((raw - b) / a) = log(true)`` over both axes. Paste the printed table into
adapt/kernel/estimate.py.

    python benchmarks/kernel_calibration.py [--scales 2 3 4] [--kernels 40] [--seed 0] \
        [--extra-photo PATH] [--native-photo PATH]
    python benchmarks/kernel_calibration.py --bias [--kernels 16] [--extra-photo PATH]

Writes benchmarks/results/kernel_calibration.json (the constants and fit residuals), or with
``--bias`` benchmarks/results/kernel_calibration_bias.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from script_cli import existing_file, int_at_least, non_negative_int, output_file, positive_int, run_script  # noqa: E402

from adassr.adapt.degradation import blur_downsample, gaussian_kernel  # noqa: E402
from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel  # noqa: E402
from adassr.runtime.store import atomic_write_json  # noqa: E402

CANON = ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg"
KODAK = [ROOT / "tests" / "data" / "calibration" / f"ref_I0{i}.png" for i in (4, 6)]
_NATIVE_DIR = ROOT / "benchmarks" / "data" / "kernel_calibration"
NATIVE = (_NATIVE_DIR / "field.jpg", _NATIVE_DIR / "grass.png", _NATIVE_DIR / "ihc.png",
          ROOT / "samples" / "cameras" / "nintendo" / "sugarshack.mpo",
          ROOT / "samples" / "cameras" / "nintendo" / "frozenpond.mpo")
RESULTS = ROOT / "benchmarks" / "results"
CROP = 480


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.seek(0)  # first frame of an MPO
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _crops(name: str, img: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping CROP x CROP tiles of ``img`` (one smaller tile when a side is under CROP)."""
    h, w = img.shape[:2]
    out = []
    for r in range(0, max(1, h // CROP)):
        for c in range(0, max(1, w // CROP)):
            crop = img[r * CROP:(r + 1) * CROP, c * CROP:(c + 1) * CROP]
            if min(crop.shape[:2]) >= 256:
                out.append((f"{name}/{r}{c}", np.ascontiguousarray(crop)))
    return out


def calibration_images(extra: list[Path] | None = None,
                       native: Sequence[Path] = ()) -> list[tuple[str, np.ndarray]]:
    """Calibration crops (name, float32 RGB): the bundled photo and the ``extra`` ones downscaled by
    2-4 (sharp HR), the Kodak crops, and the ``native`` photos at their own resolution."""
    out: list[tuple[str, np.ndarray]] = []
    sources = [("canon", CANON), *((p.stem, p) for p in extra or [])]
    for name, path in sources:
        if not path.exists():
            print(f"warning: {path} not found, calibrating without it", file=sys.stderr)
            continue
        img = _load(path)
        for factor in (2, 3, 4):
            h, w = img.shape[:2]
            small = cv2.resize(img, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
            out += _crops(f"{name}/x{factor}", small)
    for path in KODAK:
        out.append((f"kodak/{path.stem}", _load(path)))
    for path in native:
        if not path.exists():
            raise SystemExit(f"error: native-resolution photo {path} not found; check the path "
                             "(the bundled ones are listed in kernel_calibration.NATIVE)")
        out += _crops(f"native/{path.stem}", _load(path))
    return out


def _degrade(hr: np.ndarray, k: tuple[float, float, float], scale: int, noise: float,
             rng: np.random.Generator) -> np.ndarray:
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    lr = blur_downsample(hr[:h, :w], gaussian_kernel(*k, scale=scale), scale)
    if noise > 0:
        lr = lr + rng.normal(0.0, noise, lr.shape).astype(np.float32)
    return np.clip(lr, 0.0, 1.0)


def random_kernel(rng: np.random.Generator) -> tuple[float, float, float]:
    """(sigma_major, sigma_minor, theta) HR px: major uniform in [0.8, 3.4], axis ratio in [1, 3]
    with minor >= 0.8, any angle."""
    major = rng.uniform(0.8, 3.4)
    minor = major / rng.uniform(1.0, min(3.0, major / 0.8))
    return major, minor, rng.uniform(0.0, math.pi)


def collect(images: list[np.ndarray], scale: int, n_kernels: int, seed: int,
            config: KernelEstimationConfig) -> dict[str, list[tuple[float, float, float, float]]]:
    """Raw estimates: mode -> [(true_major, true_minor, raw_major, raw_minor)] in LR pixels."""
    rng = np.random.default_rng(seed + 1000 * scale)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"group": [], "single": []}
    for _ in range(n_kernels):
        k = random_kernel(rng)
        major, minor = k[0], k[1]
        noise = 2.0 / 255.0 if rng.random() < 0.5 else 0.0
        for _group in range(2):
            members = rng.choice(len(images), size=min(5, len(images)), replace=False)
            lrs = [_degrade(images[i], k, scale, noise, rng) for i in members]
            est = estimate_kernel(lrs, scale=scale, config=config)
            rows["group"].append((major / scale, minor / scale, *est.diagnostics["raw_sigma_lr"]))
        for i in rng.choice(len(images), size=min(4, len(images)), replace=False):
            est = estimate_kernel([_degrade(images[i], k, scale, noise, rng)], scale=scale, config=config)
            rows["single"].append((major / scale, minor / scale, *est.diagnostics["raw_sigma_lr"]))
    return rows


def fit(rows: list[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """Robust fit of raw = a * true + b (LR px); returns (a, b, median |log error| after the map)."""
    arr = np.asarray(rows)
    true = np.concatenate([arr[:, 0], arr[:, 1]])
    raw = np.concatenate([arr[:, 2], arr[:, 3]])

    def residual(p: np.ndarray) -> np.ndarray:
        a, b = p
        est = np.maximum((raw - b) / a, 1e-3)
        return np.log(est) - np.log(true)

    res = least_squares(residual, x0=[1.0, 0.0], loss="soft_l1", f_scale=0.1,
                        bounds=([0.3, -1.0], [3.0, 1.0]))
    a, b = (float(v) for v in res.x)
    return a, b, float(np.median(np.abs(residual(res.x))))


def _kind(name: str) -> str:
    return name.split("/", 1)[0] if name.startswith(("kodak/", "native/")) else "downscaled"


def bias_report(named: list[tuple[str, np.ndarray]], *, scale: int, n_kernels: int, seed: int) -> dict[str, Any]:
    """Median ratio estimated / true sigma (both axes, calibrated as the product does) per kind of
    crop (downscaled, kodak, native): group mode on groups of up to five crops of one kind, and
    single mode per photo. Noise-free, random kernels as in :func:`collect`, no fallback."""
    config = replace(KernelEstimationConfig(), fallback_gap=0.0, fallback_gap_per_blockiness=0.0)
    kinds: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, img in named:
        kinds.setdefault(_kind(name), []).append((name, img))
    report: dict[str, Any] = {"scale": scale, "kernels": n_kernels, "seed": seed, "kinds": {}}
    for kind, members in kinds.items():
        rng = np.random.default_rng(seed)
        group: list[float] = []
        single: dict[str, list[float]] = {}
        for _ in range(n_kernels):
            k = random_kernel(rng)
            truth = np.array(k[:2])
            picked = rng.choice(len(members), size=min(5, len(members)), replace=False)
            lrs = [_degrade(members[i][1], k, scale, 0.0, rng) for i in picked]
            est = estimate_kernel(lrs, scale=scale, config=config)
            group += list(np.array([est.sigma_x, est.sigma_y]) / truth)
            for i, lr in zip(picked[:2], lrs[:2], strict=True):
                one = estimate_kernel([lr], scale=scale, config=config)
                photo = members[i][0].rsplit("/", 1)[0]
                single.setdefault(photo, []).extend(np.array([one.sigma_x, one.sigma_y]) / truth)
        group_ratio = round(float(np.median(group)), 3)
        single_ratio = {p: round(float(np.median(v)), 3) for p, v in sorted(single.items())}
        report["kinds"][kind] = {"crops": len(members), "group_median_ratio": group_ratio,
                                 "single_median_ratio": single_ratio}
        print(f"{kind:10s} ({len(members)} crops): group est/true {group_ratio:.3f}; single "
              + ", ".join(f"{p} {r:.3f}" for p, r in single_ratio.items()), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int_at_least(2), nargs="+", default=[2, 3, 4], help="scales (>= 2)")
    parser.add_argument("--kernels", type=positive_int, default=40, help="random kernels per scale (>= 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=output_file, default=None, help="default: results/kernel_calibration.json, "
                        "with --bias results/kernel_calibration_bias.json")
    parser.add_argument("--extra-photo", type=Path, action="append", default=[],
                        help="another large sharp photo to calibrate on, downscaled by 2-4 (repeatable)")
    parser.add_argument("--native-photo", type=existing_file, action="append", default=[],
                        help="a photo to calibrate on at its own resolution (repeatable)")
    parser.add_argument("--bias", action="store_true",
                        help="report the current constants' bias per kind of photo instead of fitting "
                             "(with --native-photo: those instead of the bundled NATIVE ones)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("kernel_calibration_bias.json" if args.bias else "kernel_calibration.json")
    if args.bias:
        named = calibration_images(args.extra_photo, args.native_photo or NATIVE)
        atomic_write_json(out, bias_report(named, scale=4, n_kernels=args.kernels, seed=args.seed))
        print(f"wrote {out}")
        return 0

    named = calibration_images(args.extra_photo, args.native_photo)
    images = [img for _, img in named]
    print(f"{len(images)} calibration crops: {', '.join(n for n, _ in named)}")
    raw_config = replace(KernelEstimationConfig(), calibrate=False)
    table: dict[int, dict[str, tuple[float, float]]] = {}
    report: dict[str, object] = {"images": [n for n, _ in named], "kernels_per_scale": args.kernels,
                                 "seed": args.seed, "scales": {}}
    for scale in args.scales:
        t0 = time.perf_counter()
        rows = collect(images, scale, args.kernels, args.seed, raw_config)
        table[scale] = {}
        entry: dict[str, object] = {"seconds": round(time.perf_counter() - t0, 1)}
        for mode, data in rows.items():
            a, b, med = fit(data)
            table[scale][mode] = (round(a, 4), round(b, 4))
            entry[mode] = {"a": round(a, 4), "b": round(b, 4), "n": len(data),
                           "median_abs_log_error": round(med, 4)}
            print(f"x{scale} {mode:6s}: a={a:.4f} b={b:+.4f} (n={len(data)}, median |log err| {med:.3f})")
        report["scales"][str(scale)] = entry  # type: ignore[index]
    print("\nCALIBRATION = MappingProxyType({")
    for scale, modes in sorted(table.items()):
        inner = ", ".join(f'"{m}": {v}' for m, v in modes.items())
        print(f"    {scale}: MappingProxyType({{{inner}}}),")
    print("})")
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_script(main)
