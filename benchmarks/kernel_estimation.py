"""Accuracy and speed of blur-kernel estimation on synthetic cameras.

The five clean photos of tests/data/hr are blurred with known anisotropic Gaussian kernels
(HR sigmas 0.8-3.2 px, axis ratios up to 3, six angles), downsampled x4 with
adassr.adapt.degradation.blur_downsample, with and without Gaussian noise (sigma 2/255). Each kernel is
estimated once from all five LR images (group mode, the camera-group case) and once per image
(single-image mode). The estimator's calibration was fitted on other photos
(benchmarks/kernel_calibration.py); nothing here is tuned to these images.

Yardstick: bicubic x4 is close to a Gaussian of sigma 1.57, so the best fixed guess for this
grid is G(1.6). "closer" counts estimates whose L2 distance to the true kernel (normalised
kernels at HR resolution, same 26x26 support) is smaller than G(1.6)'s. Relative sigma error is
per principal axis (estimated major vs true major, minor vs minor); axes with a true sigma
below 1.2 HR px (aliased at x4) are reported separately. Angle error (mod 180 degrees) is over
kernels with axis ratio >= 2.

Targets: group mode closer >= 85 %, median relative sigma error <= 20 %, median angle error
<= 15 degrees; single-image mode closer >= 75 %, median relative sigma error <= 25 %.

    python benchmarks/kernel_estimation.py [--quick] [--out DIR]
    python benchmarks/kernel_estimation.py --robustness [--quick]
    python benchmarks/kernel_estimation.py --report-from results/kernel_robustness.json  # rebuild the report
    python benchmarks/kernel_estimation.py --robustness --qualities none,95 --out /tmp/a &  # 2 cores
    python benchmarks/kernel_estimation.py --robustness --qualities 75,60 --out /tmp/b
    python benchmarks/kernel_estimation.py --merge-rows /tmp/a/kernel_robustness.json /tmp/b/kernel_robustness.json
    python benchmarks/kernel_estimation.py --robustness --hr-dir benchmarks/data/dev_photos  # other photos

Writes <out>/kernel_estimation.md and kernel_estimation.json (default benchmarks/results); with
--robustness kernel_robustness.{md,json} (6 angles) or kernel_robustness_quick.{md,json} (--quick,
3 angles), the file chosen by the angles of the rows, also for --report-from and --merge-rows.
With --hr-dir the group is made of that folder's photos instead of tests/data/hr (a check that the
acceptance images are not a special case), and the files get the folder's name appended, e.g.
kernel_robustness_dev_photos.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from script_cli import existing_dir, output_dir, positive_float, run_script  # noqa: E402

from adassr.adapt.degradation import (  # noqa: E402
    bicubic_kernel,
    blur_downsample,
    gaussian_kernel,
    jpeg_roundtrip,
)
from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel  # noqa: E402
from adassr.export.bench import machine_name  # noqa: E402
from adassr.runtime.errors import ConfigError  # noqa: E402
from adassr.runtime.store import atomic_write_bytes  # noqa: E402

HR_DIR = ROOT / "tests" / "data" / "hr"
RESULTS = ROOT / "benchmarks" / "results"
UNRECORDED = "machine not recorded"
SCALE = 4
SUPPORT = 26  # even (x4 parity), covers +-3 sigma of 3.2 HR px with margin
SIGMAS = (0.8, 1.2, 1.6, 2.4, 3.2)
ANGLES = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
QUICK_ANGLES = (0.0, 60.0, 120.0)  # --quick
NOISES = (0.0, 2.0)  # Gaussian noise sigma, in 1/255
TARGETS = {"group": {"closer": 0.85, "rel": 0.20, "angle": 15.0},
           "single": {"closer": 0.75, "rel": 0.25, "angle": None}}


def this_machine() -> str:
    """The machine this run measures on, as the reports name it (CPU model, cores, Python, numpy)."""
    return f"CPU {machine_name()}, no GPU (Python {platform.python_version()}, numpy {np.__version__})"


def kernel_grid(sigmas: tuple[float, ...] = SIGMAS, angles: tuple[float, ...] = ANGLES,
                max_ratio: float = 3.0) -> list[tuple[float, float, float]]:
    """(major, minor, angle_deg): isotropic kernels once, anisotropic ones at every angle."""
    out = []
    for major in sigmas:
        for minor in sigmas:
            if minor > major or major / minor > max_ratio + 1e-9:
                continue
            out.extend([(major, minor, 0.0)] if major == minor else [(major, minor, a) for a in angles])
    return out


HR_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_hr(hr_dir: Path = HR_DIR) -> list[tuple[str, np.ndarray]]:
    """The sharp photos of ``hr_dir`` (PNG and JPEG, sorted by name), cropped to a multiple of the scale."""
    paths = sorted(p for p in hr_dir.glob("*") if p.suffix.lower() in HR_SUFFIXES) if hr_dir.is_dir() else []
    if len(paths) < 2:
        raise SystemExit(f"--hr-dir {hr_dir}: need a folder with at least two PNG or JPEG photos "
                         f"(found {len(paths)}); group mode pools one group of them")
    out = []
    for path in paths:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        h, w = (img.shape[0] // SCALE) * SCALE, (img.shape[1] // SCALE) * SCALE
        out.append((path.stem, np.ascontiguousarray(img[:h, :w])))
    return out


def synthesize(hr: np.ndarray, k: tuple[float, float, float], noise_255: float,
               rng: np.random.Generator) -> np.ndarray:
    lr = blur_downsample(hr, gaussian_kernel(k[0], k[1], math.radians(k[2]), scale=SCALE), SCALE)
    if noise_255 > 0:
        lr = lr + rng.normal(0.0, noise_255 / 255.0, lr.shape).astype(np.float32)
    return np.clip(lr, 0.0, 1.0)


def support_kernel(sx: float, sy: float, theta_deg: float) -> np.ndarray:
    return gaussian_kernel(sx, sy, math.radians(theta_deg), scale=SCALE, size=SUPPORT)


def angle_error(a: float, b: float) -> float:
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


@dataclass
class Row:
    mode: str
    image: str
    noise: float
    true: tuple[float, float, float]
    est: tuple[float, float, float]
    dist_est: float
    dist_g16: float
    seconds: float
    confidence: float

    @property
    def closer(self) -> bool:
        return self.dist_est < self.dist_g16

    @property
    def aliased(self) -> bool:
        return self.true[1] < 1.2


def evaluate(true: tuple[float, float, float], est, mode: str, image: str, noise: float,
             seconds: float, g16: np.ndarray) -> Row:
    kt = support_kernel(*true)
    ke = support_kernel(est.sigma_x, est.sigma_y, est.theta_deg)
    return Row(mode, image, noise, true, (est.sigma_x, est.sigma_y, est.theta_deg),
               float(np.linalg.norm(ke - kt)), float(np.linalg.norm(g16 - kt)), seconds, est.confidence)


@dataclass
class Summary:
    n: int
    closer: float
    rel_main: float
    rel_aliased: float
    angle: float
    p90_rel_main: float
    extra: dict = field(default_factory=dict)


def summarize(rows: list[Row]) -> Summary:
    rel_main, rel_alias, angles = [], [], []
    for r in rows:
        for t, e in ((r.true[0], r.est[0]), (r.true[1], r.est[1])):
            (rel_main if t >= 1.2 else rel_alias).append(abs(e - t) / t)
        if r.true[0] / r.true[1] >= 2.0:
            angles.append(angle_error(r.est[2], r.true[2]))

    def med(v: list[float]) -> float:
        return float(np.median(v)) if v else float("nan")

    return Summary(
        n=len(rows),
        closer=float(np.mean([r.closer for r in rows])) if rows else float("nan"),
        rel_main=med(rel_main),
        rel_aliased=med(rel_alias),
        angle=med(angles),
        p90_rel_main=float(np.quantile(rel_main, 0.9)) if rel_main else float("nan"),
    )


def run(quick: bool, config: KernelEstimationConfig) -> dict:
    hrs = load_hr()
    kernels = kernel_grid(angles=(0.0, 60.0, 120.0)) if quick else kernel_grid()
    g16 = support_kernel(1.6, 1.6, 0.0)
    bic = bicubic_kernel(SCALE)
    pad = (SUPPORT - bic.shape[0]) // 2
    bic = np.pad(bic, pad)
    rows: list[Row] = []
    bicubic_closer = []
    rng = np.random.default_rng(0)
    for noise in NOISES:
        for k in kernels:
            lrs = [synthesize(hr, k, noise, rng) for _, hr in hrs]
            t0 = time.perf_counter()
            est = estimate_kernel(lrs, scale=SCALE, config=config)
            rows.append(evaluate(k, est, "group", "all", noise, time.perf_counter() - t0, g16))
            for (name, _), lr in zip(hrs, lrs, strict=True):
                t0 = time.perf_counter()
                est = estimate_kernel([lr], scale=SCALE, config=config)
                rows.append(evaluate(k, est, "single", name, noise, time.perf_counter() - t0, g16))
            if noise == NOISES[0]:
                kt = support_kernel(*k)
                bicubic_closer.append(float(np.linalg.norm(bic - kt)) < float(np.linalg.norm(g16 - kt)))
    lr_sizes = {name: [s // SCALE for s in hr.shape[:2]] for name, hr in hrs}
    return {"rows": rows, "kernels": kernels, "bicubic_closer_than_g16": float(np.mean(bicubic_closer)),
            "lr_sizes": lr_sizes}


NOTES = [
    "## Method and limits",
    "",
    "Cross-scale derivative-energy matching (adapt/kernel): for a candidate LR blur covariance C, "
    "z = (y * G(3C)) downsampled x2 (all four phases pooled) has the same blur relative to its grid "
    "as y; C is chosen so that y and z have the same contrast-free statistics (per direction, the "
    "ratio of mean squared 2nd to 1st directional derivative, and the directional shape of the 1st "
    "derivative energy), averaged over the group's images; 1-D isotropic search then Nelder-Mead on "
    "the matrix logarithm of C; then the linear calibration per mode.",
    "",
    "- The only group-mode misses are the kernels next to the yardstick itself: G(1.6) is exact for "
    "(1.6, 1.6) and within 0.047 L2 of (1.6, 1.2), and the estimates there come out 10-20 % too wide. "
    "On the sigma >= 1.2 subset that makes 'closer' 82 %; all aliased kernels (an axis of 0.8) are closer.",
    "- Scene content biases one image's raw estimate by up to about +-30 % (fur, lattices, smooth "
    "shading, depth of field; see the per-photo table); group mode averages much of it out and is "
    "the mode to use. In development the raw estimates on these five photos came out about 15-20 % "
    "wider than on the calibration crops for the same kernels; the calibration (slope 1.29 at x4, "
    "fitted on the calibration crops alone, where raw major axes also grow faster than the truth) "
    "compresses large sigmas and removes most of that here. Expect group biases of 10-20 % on "
    "cameras whose scenes differ from both sets. Sigmas of 0.8 HR px (0.2 LR px) are aliased and "
    "cannot be resolved: the search stops at 0.18 LR px and such axes come out near 1.0-1.3 HR px.",
    "- Calibration: benchmarks/kernel_calibration.py (results/kernel_calibration.json): median "
    "|log error| on the calibration crops 0.09 (group) and 0.11 (single) at x4.",
]


def _fmt(v: float, pct: bool = False) -> str:
    if v != v:  # nan
        return "-"
    return f"{100 * v:.0f} %" if pct else f"{v:.1f}"


def report(result: dict, config: KernelEstimationConfig, wall: float, machine: str = UNRECORDED) -> tuple[str, dict]:
    rows: list[Row] = result["rows"]
    lines = [
        "# Blur-kernel estimation accuracy",
        "",
        f"Machine: {machine}. "
        f"Generated by `benchmarks/kernel_estimation.py` in {wall:.0f} s.",
        "",
        f"Test images: tests/data/hr (5 photos; LR sizes {result['lr_sizes']}). Kernels: "
        f"{len(result['kernels'])} anisotropic Gaussians, HR sigmas in {list(SIGMAS)}, axis ratio <= 3, "
        f"angles {list(ANGLES)} deg; x{SCALE}; noise sigma {list(NOISES)} /255. The calibration "
        "(adapt/kernel/estimate.py CALIBRATION) was fitted by benchmarks/kernel_calibration.py on "
        "other photos (canon xmp_test, fujifilm, Kodak ref_I04/I06); nothing was fitted on these.",
        "",
        "closer = L2 distance to the true kernel (normalised, HR resolution, 26x26 support) below "
        "that of the fixed G(1.6); rel = median relative sigma error per principal axis; angle = "
        "median angle error for axis ratio >= 2. 'aliased' = kernels with a true sigma < 1.2 HR px "
        "(reported separately: the LR image has aliased them). For reference, the bicubic kernel is closer "
        f"than G(1.6) for {100 * result['bicubic_closer_than_g16']:.0f} % of these kernels.",
        "",
        "| mode | noise /255 | kernels | n | closer | rel (axes >= 1.2) | p90 rel | rel (axes < 1.2) | angle (deg) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    data: dict = {"machine": machine, "summaries": [], "targets": TARGETS}
    verdicts = []
    for mode in ("group", "single"):
        for noise in (*NOISES, None):
            for subset in ("all", "sigma >= 1.2", "aliased"):
                sel = [r for r in rows if r.mode == mode and (noise is None or r.noise == noise)]
                if subset == "sigma >= 1.2":
                    sel = [r for r in sel if not r.aliased]
                elif subset == "aliased":
                    sel = [r for r in sel if r.aliased]
                s = summarize(sel)
                noise_label = "both" if noise is None else f"{noise:g}"
                lines.append(
                    f"| {mode} | {noise_label} | {subset} | {s.n} | {_fmt(s.closer, True)} | "
                    f"{_fmt(s.rel_main, True)} | {_fmt(s.p90_rel_main, True)} | {_fmt(s.rel_aliased, True)} | "
                    f"{_fmt(s.angle)} |")
                data["summaries"].append({"mode": mode, "noise": noise_label, "subset": subset,
                                          **{k: v for k, v in s.__dict__.items() if k != "extra"}})
                if noise is None and subset == "all":
                    t = TARGETS[mode]
                    ok_closer = s.closer >= t["closer"]
                    ok_rel = s.rel_main <= t["rel"]
                    ok_angle = t["angle"] is None or s.angle <= t["angle"]
                    verdicts.append(
                        f"- {mode}: closer {_fmt(s.closer, True)} (target >= {100 * t['closer']:.0f} %) "
                        f"{'PASS' if ok_closer else 'FAIL'}; median rel sigma error {_fmt(s.rel_main, True)} "
                        f"(target <= {100 * t['rel']:.0f} %) {'PASS' if ok_rel else 'FAIL'}"
                        + ("" if t["angle"] is None else
                           f"; median angle error {_fmt(s.angle)} deg (target <= {t['angle']:.0f}) "
                           f"{'PASS' if ok_angle else 'FAIL'}"))
    group_t = [r.seconds for r in rows if r.mode == "group"]
    single_t = [r.seconds for r in rows if r.mode == "single"]
    lines += ["", "Acceptance (both noise levels, all kernels; relative error over axes >= 1.2 px):", *verdicts,
              "", f"Speed: group of 5 images median {np.median(group_t):.2f} s (max {max(group_t):.2f} s); "
              f"single image median {np.median(single_t):.2f} s (max {max(single_t):.2f} s); one process, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.", "", *NOTES, "",
              "## Group-mode estimates per kernel (HR px, degrees)", "",
              "| true (sx, sy, deg) | noise | estimate (sx, sy, deg) | dist est | dist G(1.6) | closer |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        if r.mode != "group":
            continue
        lines.append(f"| {r.true[0]:.1f}, {r.true[1]:.1f}, {r.true[2]:.0f} | {r.noise:g} | "
                     f"{r.est[0]:.2f}, {r.est[1]:.2f}, {r.est[2]:.0f} | {r.dist_est:.4f} | {r.dist_g16:.4f} | "
                     f"{'yes' if r.closer else 'no'} |")
    lines += ["", "## Single-image mode per photo (both noise levels, all kernels)", "",
              "| photo | closer | rel (axes >= 1.2) | angle (deg) |", "|---|---|---|---|"]
    for name in sorted({r.image for r in rows if r.mode == "single"}):
        s = summarize([r for r in rows if r.mode == "single" and r.image == name])
        lines.append(f"| {name} | {_fmt(s.closer, True)} | {_fmt(s.rel_main, True)} | {_fmt(s.angle)} |")
    data["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}
    data["rows"] = [{**r.__dict__, "closer": r.closer} for r in rows]
    data["seconds"] = {"group_median": float(np.median(group_t)), "single_median": float(np.median(single_t))}
    return "\n".join(lines) + "\n", data


def _save(out: Path, stem: str, text: str, data: dict) -> None:
    """``<out>/<stem>.md`` and ``<stem>.json``, each written atomically."""
    atomic_write_bytes(out / f"{stem}.md", text.encode("utf-8"))
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(data, indent=1) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- robustness grid

ROBUST_NOISES = (0.0, 2.0, 5.0)
ROBUST_QUALITIES: tuple[int | None, ...] = (None, 95, 75, 60)
ROBUST_TARGETS = {"closer": 0.85, "rel": 0.20, "angle": 15.0}
YARDSTICK_TOLERANCE = 1e-9  # L2 distance below which a true kernel *is* G(1.6)
DEFAULT_SCORED = {"dir": "tests/data/hr", "images": ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"]}
"""What result files written before ``scored`` was recorded scored (the five acceptance photos)."""


def _jpeg(lr: np.ndarray, quality: int | None) -> np.ndarray:
    return lr if quality is None else jpeg_roundtrip(lr, quality)


def scored_label(hr_dir: Path) -> str:
    """How reports name the scored folder: relative to the repository when inside it."""
    try:
        return str(hr_dir.resolve().relative_to(ROOT))
    except ValueError:
        return str(hr_dir)


def robustness(angles: tuple[float, ...], config: KernelEstimationConfig,
               noises: tuple[float, ...] = ROBUST_NOISES,
               qualities: tuple[int | None, ...] = ROBUST_QUALITIES, hr_dir: Path = HR_DIR) -> dict:
    """Group mode over kernels x noise x JPEG quality; the estimate before and after the fallback.

    Each (noise, quality) condition draws its noise from its own ``default_rng(0)``, so a run over a
    subset of ``noises`` and ``qualities`` gives exactly the rows of the whole run for those
    conditions (the parts of a split run are joined with ``--merge-rows``). ``hr_dir``: the photos
    that make the group (default tests/data/hr, the acceptance images)."""
    hrs = load_hr(hr_dir)
    kernels = kernel_grid(angles=angles)
    g16 = support_kernel(1.6, 1.6, 0.0)
    rows = []
    for noise in noises:
        for quality in qualities:
            rng = np.random.default_rng(0)
            for k in kernels:
                lrs = [_jpeg(synthesize(hr, k, noise, rng), quality) for _, hr in hrs]
                t0 = time.perf_counter()
                est = estimate_kernel(lrs, scale=SCALE, config=config)
                seconds = time.perf_counter() - t0
                final = {"sigma_x": est.sigma_x, "sigma_y": est.sigma_y, "theta_deg": est.theta_deg}
                before = est.diagnostics.get("estimate_before_fallback", final)
                kt = support_kernel(*k)
                d_before = float(np.linalg.norm(support_kernel(before["sigma_x"], before["sigma_y"],
                                                               before["theta_deg"]) - kt))
                d_final = float(np.linalg.norm(support_kernel(est.sigma_x, est.sigma_y, est.theta_deg) - kt))
                rows.append({"noise": noise, "quality": quality, "true": list(k),
                             "estimate": [before["sigma_x"], before["sigma_y"], before["theta_deg"]],
                             "final": [est.sigma_x, est.sigma_y, est.theta_deg], "method": est.method,
                             "confidence": est.confidence, "dist_estimate": d_before, "dist_final": d_final,
                             "dist_g16": float(np.linalg.norm(g16 - kt)), "seconds": seconds,
                             "blockiness": float(est.diagnostics.get("jpeg_blockiness", float("nan"))),
                             "gap": float(est.diagnostics.get("fixed_gaussian_loss_gap", float("nan")))})
            print(f"noise {noise:g} JPEG {quality}: done", flush=True)
    scored = {"dir": scored_label(hr_dir), "images": [name for name, _ in hrs],
              "lr_sizes": {name: [s // SCALE for s in hr.shape[:2]] for name, hr in hrs}}
    return {"rows": rows, "kernels": kernels, "scored": scored}


def _robust_summary(rows: list[dict]) -> dict:
    rel, angles = [], []
    for r in rows:
        t, e = r["true"], r["estimate"]
        for true_s, est_s in ((t[0], e[0]), (t[1], e[1])):
            if true_s >= 1.2:
                rel.append(abs(est_s - true_s) / true_s)
        if r["true"][0] / r["true"][1] >= 1.5:
            angles.append(angle_error(r["estimate"][2], r["true"][2]))
    others = [r for r in rows if r["dist_g16"] > YARDSTICK_TOLERANCE]
    return {
        "n": len(rows),
        "closer_estimate": float(np.mean([r["dist_estimate"] < r["dist_g16"] for r in rows])),
        "closer_final": float(np.mean([r["dist_final"] < r["dist_g16"] for r in rows])),
        "not_worse_final": float(np.mean([r["dist_final"] <= r["dist_g16"] + 1e-12 for r in rows])),
        # The grid contains G(1.6) itself; no kernel can be strictly closer to it than G(1.6).
        "n_others": len(others),
        "closer_final_others": float(np.mean([r["dist_final"] < r["dist_g16"] for r in others]))
        if others else float("nan"),
        "mean_dist_estimate": float(np.mean([r["dist_estimate"] for r in rows])),
        "mean_dist_final": float(np.mean([r["dist_final"] for r in rows])),
        "mean_dist_g16": float(np.mean([r["dist_g16"] for r in rows])),
        "fallback_rate": float(np.mean([r["method"] != "cross-scale-derivative-energy" for r in rows])),
        "rel": float(np.median(rel)) if rel else float("nan"),
        "angle": float(np.median(angles)) if angles else float("nan"),
        "confidence": float(np.median([r["confidence"] for r in rows])),
    }


def non_default_settings(config: KernelEstimationConfig) -> str:
    """``name value, ...`` for the fields of ``config`` that differ from the defaults, or ``none``."""
    default = KernelEstimationConfig()
    changed = [f"{f.name} {getattr(config, f.name)}" for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(default, f.name)]
    return ", ".join(changed) or "none"


def robustness_report(result: dict, config: KernelEstimationConfig, wall: float,
                      machine: str = UNRECORDED) -> tuple[str, dict]:
    rows = result["rows"]
    scored = result.get("scored", DEFAULT_SCORED)
    lines = [
        "# Blur-kernel estimation under noise and JPEG (group mode)", "",
        f"Machine: {machine}; `benchmarks/kernel_estimation.py --robustness` in {wall:.0f} s.", "",
        f"Scored images: {scored['dir']} ({len(scored['images'])} photos, one group: "
        f"{', '.join(scored['images'])}). Kernels: {len(result['kernels'])} anisotropic "
        f"Gaussians (HR sigmas {list(SIGMAS)}, axis ratio <= 3), x{SCALE}; Gaussian noise sigma "
        f"{list(ROBUST_NOISES)} /255 then JPEG quality {['none' if q is None else q for q in ROBUST_QUALITIES]} "
        "(OpenCV, 4:2:0). The calibration and the fallback thresholds were fitted on other photos "
        "(benchmarks/kernel_calibration.py, benchmarks/kernel_fallback_calibration.py: canon, fujifilm, "
        f"Kodak); fallback settings here: gap {config.fallback_gap}, per blockiness "
        f"{config.fallback_gap_per_blockiness}. Estimator settings other than the defaults: "
        f"{non_default_settings(config)}.", "",
        "estimate = the cross-scale estimate before the fallback; final = the kernel returned (G(1.6) "
        "when the fallback fires). closer = L2 distance to the true kernel below G(1.6)'s; not worse "
        "= below or equal; others = closer (final) over the kernels of the grid other than G(1.6) "
        "itself (the grid contains (1.6, 1.6), which no estimate can beat strictly); "
        "rel = median relative sigma error over axes >= 1.2 HR px (of the estimate); "
        "angle = median angle error of the estimate for axis ratio >= 1.5.", "",
        "| noise /255 | JPEG | n | closer (estimate) | closer (final) | not worse (final) | others | "
        "fallback | rel | angle (deg) | confidence |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = []
    for noise in (*ROBUST_NOISES, None):
        for quality in (*ROBUST_QUALITIES, "all"):
            if noise is None and quality != "all":
                continue
            sel = [r for r in rows if (noise is None or r["noise"] == noise)
                   and (quality == "all" or r["quality"] == quality)]
            if not sel:
                continue
            s = _robust_summary(sel)
            s.update({"noise": "all" if noise is None else noise, "quality": quality})
            summaries.append(s)
            q_label = "none" if quality is None else str(quality)
            lines.append(f"| {'all' if noise is None else f'{noise:g}'} | {q_label} | {s['n']} | "
                         f"{100 * s['closer_estimate']:.0f} % | {100 * s['closer_final']:.0f} % | "
                         f"{100 * s['not_worse_final']:.0f} % | "
                         f"{100 * s['closer_final_others']:.0f} % ({s['n_others']}) | "
                         f"{100 * s['fallback_rate']:.0f} % | "
                         f"{100 * s['rel']:.0f} % | {s['angle']:.1f} | {s['confidence']:.2f} |")
    worst = {k: (min if k.startswith("closer") else max)(s[k] for s in summaries if s["quality"] != "all"
                                                          and s["noise"] != "all")
             for k in ("closer_estimate", "closer_final", "closer_final_others", "rel", "angle")}
    total = next(s for s in summaries if s["noise"] == "all" and s["quality"] == "all")
    t = ROBUST_TARGETS
    lines += ["", "Targets (group mode, every noise/JPEG condition): closer >= 85 %, median rel sigma error "
              "<= 20 %, median angle error <= 15 deg (axis ratio >= 1.5).",
              f"- worst condition: closer (estimate) {100 * worst['closer_estimate']:.0f} % "
              f"{'PASS' if worst['closer_estimate'] >= t['closer'] else 'FAIL'}; rel {100 * worst['rel']:.0f} % "
              f"{'PASS' if worst['rel'] <= t['rel'] else 'FAIL'}; angle {worst['angle']:.1f} deg "
              f"{'PASS' if worst['angle'] <= t['angle'] else 'FAIL'}",
              f"- worst condition, the kernel returned: closer {100 * worst['closer_final']:.0f} % "
              f"{'PASS' if worst['closer_final'] >= t['closer'] else 'FAIL'} over the whole grid; "
              f"{100 * worst['closer_final_others']:.0f} % "
              f"{'PASS' if worst['closer_final_others'] >= t['closer'] else 'FAIL'} over the kernels other "
              "than G(1.6) itself",
              f"- all conditions pooled: closer (estimate) {100 * total['closer_estimate']:.0f} %, rel "
              f"{100 * total['rel']:.0f} %, angle {total['angle']:.1f} deg; mean L2 distance to the truth: "
              f"estimate {total['mean_dist_estimate']:.4f}, final {total['mean_dist_final']:.4f}, "
              f"G(1.6) {total['mean_dist_g16']:.4f}",
              f"- speed: group of {len(scored['images'])} median {np.median([r['seconds'] for r in rows]):.2f} s"]
    data = {"machine": machine, "wall_seconds": wall, "scored": scored, "summaries": summaries, "worst": worst,
            "targets": ROBUST_TARGETS,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
            "rows": rows}
    return "\n".join(lines) + "\n", data


def config_from_json(values: dict) -> KernelEstimationConfig:
    """A ``KernelEstimationConfig`` from its JSON form (tuples are stored as lists)."""
    return KernelEstimationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_argument(text: str) -> KernelEstimationConfig:
    """``--config-json``: KernelEstimationConfig overrides as inline JSON (``'{"pixel_snr": 4}'``) or the path
    of a JSON file holding that object."""
    source = "the inline JSON"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is neither inline JSON (an object, '{{\"name\": value}}') "
                                             "nor the path of a JSON file")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise argparse.ArgumentTypeError(f"{source} must be a JSON object of KernelEstimationConfig settings")
    known = {f.name for f in fields(KernelEstimationConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown KernelEstimationConfig setting(s) {unknown}; "
                                         f"choose from {sorted(known)}")
    try:
        return config_from_json(values)
    except (ConfigError, TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_robustness_result(path: Path, option: str) -> dict:
    """A result file of ``--robustness``, with its ``rows`` and ``config``; a clear error otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{option} {path}: not a kernel_robustness.json written by --robustness "
                         f"({exc})") from exc
    missing = [key for key in ("rows", "config") if not isinstance(data, dict) or key not in data]
    if missing:
        raise SystemExit(f"{option} {path}: not a kernel_robustness.json written by --robustness "
                         f"(no {' or '.join(missing)})")
    return data


def report_from(path: Path, wall: float | None, machine: str | None) -> tuple[str, dict]:
    """The robustness report rebuilt from the rows and settings stored in an earlier result file."""
    data = _read_robustness_result(path, "--report-from")
    rows = data["rows"]
    wall = data.get("wall_seconds", wall)
    if wall is None:
        raise SystemExit(f"--report-from {path}: the file does not record the run's wall time; "
                         "give it with --wall-seconds (the 'in N s' of the matching .md)")
    config = config_from_json(data["config"])
    kernels = sorted({tuple(r["true"]) for r in rows})
    text, rebuilt = robustness_report({"rows": rows, "kernels": kernels,
                                       "scored": data.get("scored", DEFAULT_SCORED)}, config, float(wall),
                                      machine or data.get("machine", UNRECORDED))
    # what the rebuild does not make is kept (a merged result's record of its parts): rebuilt in place, the
    # file lost its merged_from
    rebuilt = {**{k: v for k, v in data.items() if k not in rebuilt}, **rebuilt}
    parts = rebuilt.get("merged_from")
    if isinstance(parts, list) and parts and all(isinstance(p, dict) for p in parts):
        walls = [float(p.get("wall_seconds", 0.0)) for p in parts]
        text += (f"\nMerged by `--merge-rows` from {len(parts)} partial runs that ran side by side "
                 f"({', '.join(f'{w:.0f} s' for w in walls)}; the time shown is the longest, {sum(walls):.0f} s "
                 "in all).\n")
    return text + "\nRebuilt from the stored rows by `--report-from` (no estimation re-run).\n", rebuilt


def parse_noises(text: str) -> tuple[float, ...]:
    """``--noises``: a comma-separated subset of the grid's noise levels, in the grid's order."""
    try:
        wanted = {float(part) for part in text.split(",") if part.strip()}
    except ValueError as exc:
        raise SystemExit(f"--noises {text!r}: not a comma-separated list of numbers ({exc})") from exc
    unknown = sorted(wanted - set(ROBUST_NOISES))
    if not wanted or unknown:
        raise SystemExit(f"--noises {text!r}: choose from the grid's noise levels {list(ROBUST_NOISES)} "
                         f"(unknown: {unknown or 'none given'})")
    return tuple(n for n in ROBUST_NOISES if n in wanted)


def parse_qualities(text: str) -> tuple[int | None, ...]:
    """``--qualities``: a comma-separated subset of the grid's JPEG qualities ("none" = no JPEG)."""
    try:
        wanted = {None if part.strip().lower() == "none" else int(part) for part in text.split(",") if part.strip()}
    except ValueError as exc:
        raise SystemExit(f"--qualities {text!r}: not a comma-separated list of qualities and 'none' ({exc})") from exc
    unknown = sorted(str(q) for q in wanted - set(ROBUST_QUALITIES))
    if not wanted or unknown:
        grid = ["none" if q is None else q for q in ROBUST_QUALITIES]
        raise SystemExit(f"--qualities {text!r}: choose from the grid's JPEG qualities {grid} "
                         f"(unknown: {unknown or 'none given'})")
    return tuple(q for q in ROBUST_QUALITIES if q in wanted)


def _row_key(row: dict) -> tuple:
    return (row["noise"], row["quality"], tuple(row["true"]))


def merge_rows(paths: list[Path], machine: str | None) -> tuple[str, dict]:
    """One robustness report from the rows of several partial runs (``--robustness --noises ...``,
    run side by side). Refuses parts with other estimator settings or overlapping rows."""
    parts = []
    for path in paths:
        data = _read_robustness_result(path, "--merge-rows")
        if "wall_seconds" not in data:
            raise SystemExit(f"--merge-rows {path}: the file does not record its run's wall time; "
                             "rewrite it with --report-from --wall-seconds first")
        parts.append((path, data["rows"], data["config"], float(data["wall_seconds"]), data.get("machine"),
                      data.get("scored", DEFAULT_SCORED)))
    first_path, _, first_config, _, first_machine, first_scored = parts[0]
    rows: list[dict] = []
    seen: dict[tuple, Path] = {}
    for path, part_rows, config, _, _, scored in parts:
        if scored["dir"] != first_scored["dir"]:
            raise SystemExit(f"--merge-rows: {path} scored {scored['dir']}, {first_path} scored "
                             f"{first_scored['dir']}; merge only parts of one run")
        if config != first_config:
            changed = sorted(k for k in set(config) | set(first_config) if config.get(k) != first_config.get(k))
            raise SystemExit(f"--merge-rows: {path} was run with other estimator settings than {first_path} "
                             f"({', '.join(changed)}); merge only parts of one run")
        for row in part_rows:
            key = _row_key(row)
            if key in seen:
                raise SystemExit(f"--merge-rows: {path} and {seen[key]} both hold noise {key[0]:g}, JPEG "
                                 f"{key[1]}, kernel {list(key[2])}; merge parts with disjoint --noises or --qualities")
            seen[key] = path
        rows.extend(part_rows)
    config = config_from_json(first_config)
    kernels = sorted({tuple(r["true"]) for r in rows})
    walls = [part[3] for part in parts]
    text, merged = robustness_report({"rows": rows, "kernels": kernels, "scored": first_scored},
                                     config, max(walls), machine or first_machine or UNRECORDED)
    merged["merged_from"] = [{"file": str(path), "wall_seconds": wall, "rows": len(pr)}
                             for path, pr, _, wall, _, _ in parts]
    note = (f"\nMerged by `--merge-rows` from {len(parts)} partial runs that ran side by side "
            f"({', '.join(f'{w:.0f} s' for w in walls)}; the time shown is the longest, {sum(walls):.0f} s in all).\n")
    return text + note, merged


def robustness_stem(rows: list[dict], scored: dict) -> str:
    """The file name of a robustness report: the quick grid (3 angles) and the full one (6) are kept
    apart, and so are groups of other photos than tests/data/hr (``_<folder name>`` appended)."""
    angles = {float(row["true"][2]) for row in rows}
    stem = "kernel_robustness_quick" if angles <= set(QUICK_ANGLES) else "kernel_robustness"
    folder = scored["dir"]
    return stem if folder == DEFAULT_SCORED["dir"] else f"{stem}_{Path(folder).name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 angles instead of 6")
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    parser.add_argument("--config-json", type=config_argument, default="{}", metavar="JSON",
                        help="KernelEstimationConfig overrides (development): inline JSON, e.g. "
                             "'{\"pixel_snr\": 4}', or the path of a JSON file holding such an object")
    parser.add_argument("--robustness", action="store_true",
                        help="group mode over noise 0/2/5 and JPEG none/95/75/60 (kernel_robustness.*; with --quick "
                             "kernel_robustness_quick.*)")
    parser.add_argument("--report-from", type=Path, metavar="JSON",
                        help="rewrite the report of an earlier --robustness result from its rows (no estimation "
                             "is run), under the JSON's own name in --out (a variant, e.g. "
                             "kernel_robustness_hr_q60_vote.json, replaced the headline kernel_robustness.*)")
    parser.add_argument("--wall-seconds", type=positive_float,
                        help="with --report-from: the original run's wall time, for files written before "
                             "it was recorded")
    parser.add_argument("--noises", type=parse_noises, default=ROBUST_NOISES, metavar="LIST",
                        help="with --robustness: only these noise levels of the grid, e.g. 0,2 (split a run "
                             "over processes, then --merge-rows the parts)")
    parser.add_argument("--qualities", type=parse_qualities, default=ROBUST_QUALITIES, metavar="LIST",
                        help="with --robustness: only these JPEG qualities of the grid, e.g. none,95")
    parser.add_argument("--merge-rows", nargs="+", type=Path, metavar="JSON",
                        help="write kernel_robustness.{md,json} from the rows of partial --robustness runs (--name "
                             "for a variant's)")
    parser.add_argument("--name", metavar="STEM",
                        help="with --merge-rows or --report-from: the results' file name without suffix (default: "
                             "kernel_robustness[_quick][_<folder>] for --merge-rows, the JSON's own for --report-from)")
    parser.add_argument("--machine", help="the machine, as the report names it")
    parser.add_argument("--hr-dir", type=existing_dir, default=HR_DIR, metavar="DIR",
                        help="with --robustness: make the group from these photos instead of tests/data/hr "
                             "(e.g. benchmarks/data/dev_photos); files kernel_robustness[_quick]_<folder name>.*")
    args = parser.parse_args(argv)
    if args.hr_dir != HR_DIR and not args.robustness:
        raise SystemExit("--hr-dir goes with --robustness (the single-image benchmark scores tests/data/hr); "
                         "add --robustness")
    config = args.config_json
    machine = args.machine or this_machine()
    t0 = time.perf_counter()
    if args.name is not None and not (args.merge_rows or args.report_from):
        raise SystemExit("--name goes with --merge-rows or --report-from")
    if args.name is not None and (not args.name or Path(args.name).name != args.name):
        raise SystemExit(f"--name takes a file name without folder or suffix, got {args.name!r}")
    if args.merge_rows:
        text, data = merge_rows(args.merge_rows, args.machine)
        stem, shown = args.name or robustness_stem(data["rows"], data["scored"]), text
    elif args.report_from is not None:
        text, data = report_from(args.report_from, args.wall_seconds, args.machine)
        stem, shown = args.name or args.report_from.stem, text
    elif args.robustness:
        rresult = robustness(QUICK_ANGLES if args.quick else ANGLES, config, args.noises, args.qualities,
                             args.hr_dir)
        text, data = robustness_report(rresult, config, time.perf_counter() - t0, machine)
        stem, shown = robustness_stem(data["rows"], data["scored"]), text
    else:
        text, data = report(run(args.quick, config), config, time.perf_counter() - t0, machine)
        stem, shown = "kernel_estimation", text.split("## Group-mode")[0]
    _save(args.out, stem, text, data)
    print(shown)
    return 0


if __name__ == "__main__":
    run_script(main)
