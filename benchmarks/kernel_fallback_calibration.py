"""Fit the kernel estimator's fallback to the fixed Gaussian G(1.6) under noise and JPEG.

On the calibration crops of ``kernel_calibration.calibration_images()`` (canon xmp_test at x2/x3/x4, Kodak
ref_I04/I06 -- never tests/data/hr, the images ``kernel_estimation.py`` scores), random
anisotropic kernels are applied with noise sigma in {0, 2, 5}/255 and JPEG quality in {none, 95,
75, 60}; each group of five crops is estimated once with the fallback disabled, recording the
estimate's and G(1.6)'s L2 distance to the true kernel, the relative loss gap of G(1.6) and the
JPEG blockiness. The fallback thresholds (gap0, gap per unit of blockiness) are then chosen on a
grid to minimise the mean L2 distance of the returned kernel to the truth.

    python benchmarks/kernel_fallback_calibration.py [--kernels 12] [--out DIR]

Writes <out>/kernel_fallback_calibration.json (default benchmarks/results).

    python benchmarks/kernel_fallback_calibration.py --evaluate ROWS... --name STEM [--out DIR]

scores the same thresholds without estimating anything, on rows recorded by other benchmarks: the
JSON lines of ``kernel_confidence.py collect`` and the JSON of ``kernel_estimation.py --robustness``
(rows that record the loss gap ``gap``; older ones did not and are refused), or this script's own
result. Writes
<out>/STEM.{json,md}: for each file and for all together, the mean L2 distance of the returned kernel
to the truth, the share closer than G(1.6) and how often the rule fired on an estimate that was the
closer of the two.
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
for extra in (ROOT, ROOT / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from kernel_calibration import calibration_images  # noqa: E402
from script_cli import ScriptError, non_negative_int, output_dir, positive_int, run_script  # noqa: E402

from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip  # noqa: E402
from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel  # noqa: E402
from adassr.runtime.store import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCALE = 4
SUPPORT = 26
NOISES = (0.0, 2.0, 5.0)
QUALITIES = (None, 95, 75, 60)
# The rows are collected with the fallback off, so that ``est`` is always the estimate itself (with
# the product's fallback on, a row where it fired would record G(1.6)'s distance as the estimate's).
NO_FALLBACK = KernelEstimationConfig(fallback_gap=0.0, fallback_gap_per_blockiness=0.0)
PREVIOUS_DEFAULT = (0.0, 0.05)
"""(fallback_gap, fallback_gap_per_blockiness) as fitted at commit 5753206 and the default until 7 December
2026 (off since: benchmarks/README.md, "The fixed-Gaussian fallback, refitted")."""


def jpeg(lr: np.ndarray, quality: int | None) -> np.ndarray:
    return lr if quality is None else jpeg_roundtrip(lr, quality)


def degrade(hr: np.ndarray, k: tuple[float, float, float], noise_255: float, quality: int | None,
            rng: np.random.Generator) -> np.ndarray:
    h, w = (hr.shape[0] // SCALE) * SCALE, (hr.shape[1] // SCALE) * SCALE
    lr = blur_downsample(hr[:h, :w], gaussian_kernel(k[0], k[1], math.radians(k[2]), scale=SCALE), SCALE)
    if noise_255 > 0:
        lr = lr + rng.normal(0.0, noise_255 / 255.0, lr.shape).astype(np.float32)
    return jpeg(np.clip(lr, 0.0, 1.0), quality)


def support_kernel(sx: float, sy: float, theta_deg: float) -> np.ndarray:
    return gaussian_kernel(sx, sy, math.radians(theta_deg), scale=SCALE, size=SUPPORT)


def scored_rule(rows: list[dict[str, Any]], g0: float, gb: float) -> dict[str, Any]:
    """The rule ``gap <= g0 + gb * blockiness`` (off where that allowance is 0) applied to ``rows``: the
    mean distance of the returned kernel to the truth, how often it fired and on which estimates."""
    gap = np.array([r["gap"] for r in rows])
    block = np.array([r["blockiness"] for r in rows])
    d_est = np.array([r["dist_est"] for r in rows])
    d_fix = np.array([r["dist_g16"] for r in rows])
    allowed = g0 + gb * block
    use_fixed = (allowed > 0) & (gap <= allowed)
    returned = np.where(use_fixed, d_fix, d_est)
    return {"mean_dist": float(returned.mean()), "gap0": g0, "per_blockiness": gb, "fired": int(use_fixed.sum()),
            "fallback_rate": float(use_fixed.mean()), "closer_rate": float((returned < d_fix).mean()),
            "fallback_when_estimate_closer": int((use_fixed & (d_est < d_fix)).sum()),
            "fallback_when_estimate_further": int((use_fixed & (d_est >= d_fix)).sum())}


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Grid search of (gap0, per_blockiness) minimising the mean distance of the returned kernel."""
    baseline = scored_rule(rows, 0.0, 0.0)
    best = baseline
    for g0 in (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2):
        for gb in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
            candidate = scored_rule(rows, g0, gb)
            if candidate["mean_dist"] < best["mean_dist"] - 1e-9:
                best = candidate
    default = KernelEstimationConfig()
    return {"best": best, "no_fallback": baseline,
            "product_default": scored_rule(rows, default.fallback_gap, default.fallback_gap_per_blockiness),
            "previous_default": scored_rule(rows, *PREVIOUS_DEFAULT)}


EVALUATED = ((0.0, 0.0), (0.0, 0.05), (0.0, 0.2), (0.01, 0.0), (0.05, 0.0), (0.05, 0.2), (0.2, 0.8))
"""The (gap0, per blockiness) pairs ``--evaluate`` reports: off, the old default 0.05, and wider ones."""


def _row_of(gap: Any, blockiness: Any, dist_est: Any, dist_g16: Any) -> dict[str, float]:
    return {"gap": float(gap), "blockiness": float(blockiness), "dist_est": float(dist_est),
            "dist_g16": float(dist_g16)}


def _with_an_estimate(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """The rows where an estimate was made: a robustness row of the bicubic fallback records its loss gap
    and blockiness as NaN, and ``dist_estimate`` is then the bicubic kernel's."""
    return [r for r in rows if math.isfinite(r["gap"]) and math.isfinite(r["blockiness"])]


def recorded_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` as ``choose`` takes them (``gap``, ``blockiness``, ``dist_est``: the estimate
    before any fallback, ``dist_g16``): JSON lines of ``kernel_confidence.py collect`` (rows without an
    estimate, the bicubic fallback's, left out), a ``kernel_estimation.py --robustness`` JSON, or this
    script's own ``kernel_fallback_calibration.json``."""
    try:
        text = path.read_text()
        if path.suffix == ".jsonl":
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
            return [_row_of(r["diagnostics"]["fixed_gaussian_loss_gap"], r["diagnostics"]["jpeg_blockiness"],
                            r["dist_before_fallback"], r["dist_g16"])
                    for r in lines[1:] if "estimate_before_fallback" in r.get("diagnostics", {})]
        rows = json.loads(text)["rows"]
        if rows and "dist_est" in rows[0]:  # this script's own result
            return _with_an_estimate([_row_of(r["gap"], r["blockiness"], r["dist_est"], r["dist_g16"])
                                      for r in rows])
        if rows and "gap" not in rows[0]:
            raise ScriptError(f"{path} has no loss gap per row (written before kernel_estimation.py "
                              "recorded it); run its --robustness again")
        return _with_an_estimate([_row_of(r["gap"], r["blockiness"], r["dist_estimate"], r["dist_g16"])
                                  for r in rows])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScriptError(f"{path}: not rows of kernel_confidence.py collect (.jsonl), of "
                          f"kernel_estimation.py --robustness or of this script (.json): {exc!r}") from exc


def evaluate(paths: list[Path]) -> dict[str, Any]:
    """The thresholds of :data:`EVALUATED` scored on each file's rows and on all of them ("all"). A file is
    named by its file name, or by its absolute path where two files share a name (or one is named "all"); the same
    file twice is refused (its rows would count twice in "all")."""
    resolved = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in paths if resolved.count(p.resolve()) > 1})
    if twice:
        raise ScriptError(f"{', '.join(twice)} given more than once to --evaluate; give each file once")
    names = [p.name for p in paths]
    labels = [p.name if names.count(p.name) == 1 and p.name != "all" else str(r) for p, r in zip(paths, resolved,
                                                                                                 strict=True)]
    sets = {label: recorded_rows(p) for label, p in zip(labels, paths, strict=True)}
    sets["all"] = [r for rows in list(sets.values()) for r in rows]
    out: dict[str, Any] = {}
    for name, rows in sets.items():
        if not rows:
            raise ScriptError(f"{name}: no rows with an estimate")
        out[name] = {"n": len(rows), "thresholds": [scored_rule(rows, g0, gb) for g0, gb in EVALUATED]}
    return out


def evaluation_markdown(result: dict[str, Any]) -> str:
    lines = ["# The fixed-Gaussian fallback's thresholds on recorded rows", "",
             "Scored offline by `kernel_fallback_calibration.py --evaluate` (no estimation run): the rule "
             "returns G(1.6) where the loss gap <= gap0 + per_blockiness x JPEG blockiness. closer: the "
             "returned kernel's L2 distance to the truth below G(1.6)'s. Fired on the closer: the rule "
             "replaced an estimate that was closer to the truth than G(1.6).", "",
             "| rows | n | gap0 | per blockiness | fired | fired on the closer | mean L2 | closer |",
             "|---|---|---|---|---|---|---|---|"]
    for name, block in result["sets"].items():
        for t in block["thresholds"]:
            lines.append(f"| {name} | {block['n']} | {t['gap0']:g} | {t['per_blockiness']:g} | "
                         f"{t['fired']} | {t['fallback_when_estimate_closer']} | {t['mean_dist']:.5f} | "
                         f"{100 * t['closer_rate']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=positive_int, default=12, help="random kernels per condition (>= 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=output_dir, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--evaluate", type=Path, nargs="+", metavar="ROWS",
                        help="score the thresholds on these recorded rows instead (see the module doc)")
    parser.add_argument("--name", help="with --evaluate: the results' file name without suffix")
    args = parser.parse_args(argv)
    if args.evaluate:
        if not args.name:
            parser.error("--evaluate needs --name (the results' file name without suffix)")
        if Path(args.name).name != args.name or args.name in (".", ".."):
            parser.error(f"--name {args.name!r}: give a file name without a folder (the results go to --out)")
        result = {"sets": evaluate(args.evaluate)}
        atomic_write_bytes(args.out / f"{args.name}.json", (json.dumps(result, indent=1) + "\n").encode("utf-8"))
        atomic_write_bytes(args.out / f"{args.name}.md", evaluation_markdown(result).encode("utf-8"))
        print(evaluation_markdown(result))
        return 0
    if args.name:
        parser.error("--name goes with --evaluate")
    images = [img for _, img in calibration_images()]
    rng = np.random.default_rng(args.seed)
    g16 = support_kernel(1.6, 1.6, 0.0)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for noise in NOISES:
        for quality in QUALITIES:
            for _ in range(args.kernels):
                major = float(rng.uniform(0.8, 3.4))
                minor = major / float(rng.uniform(1.0, min(3.0, major / 0.8)))
                k = (major, minor, float(rng.uniform(0.0, 180.0)))
                members = rng.choice(len(images), size=min(5, len(images)), replace=False)
                lrs = [degrade(images[i], k, noise, quality, rng) for i in members]
                est = estimate_kernel(lrs, scale=SCALE, config=NO_FALLBACK)
                kt = support_kernel(*k)
                ke = support_kernel(est.sigma_x, est.sigma_y, est.theta_deg)
                rows.append({"noise": noise, "quality": quality, "true": k,
                             "est": [est.sigma_x, est.sigma_y, est.theta_deg],
                             "gap": float(est.diagnostics["fixed_gaussian_loss_gap"]),
                             "blockiness": float(est.diagnostics["jpeg_blockiness"]),
                             "dist_est": float(np.linalg.norm(ke - kt)), "dist_g16": float(np.linalg.norm(g16 - kt))})
            print(f"noise {noise} quality {quality}: {len(rows)} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    fit = choose(rows)
    blockiness = {f"{q}": float(np.median([r["blockiness"] for r in rows if r["quality"] == q])) for q in QUALITIES}
    result = {"images": "kernel_calibration.calibration_images() (canon x2/x3/x4 crops, Kodak ref_I04/I06)",
              "kernels_per_condition": args.kernels, "noises_255": NOISES, "qualities": QUALITIES,
              "median_blockiness_by_quality": blockiness, "fit": fit, "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_bytes(args.out / "kernel_fallback_calibration.json",
                       (json.dumps(result, indent=1) + "\n").encode("utf-8"))
    print(json.dumps({"fit": fit, "median_blockiness_by_quality": blockiness}, indent=1))
    return 0


if __name__ == "__main__":
    run_script(main)
