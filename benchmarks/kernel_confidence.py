"""How far a kernel estimate's confidence can be trusted, and the data its model was fitted on.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/kernel_confidence.py collect --hr-dir benchmarks/data/dev_photos \\
        --groups 300 --seed 0 --out /tmp/conf_dev.json
    PYTHONPATH=. python benchmarks/kernel_confidence.py collect --hr-dir tests/data/hr --groups 150 \\
        --seed 1 --out /tmp/conf_hr.json
    PYTHONPATH=. python benchmarks/kernel_confidence.py report --fit /tmp/conf_dev.json \\
        --check /tmp/conf_hr.json [--machine "..."] [--out-dir benchmarks/results]

``collect``: synthetic camera groups made from the photos of ``--hr-dir``, each with a random
anisotropic Gaussian kernel (HR sigmas 0.8-3.2 px, axis ratio up to 3, any angle), a number of scenes
(1, 2, 3, 4 or 8, each photo one scene; a group of 8 frames shows its scenes in turn, every frame with
its own noise draw), Gaussian noise 0, 2 or 5 /255 and JPEG quality none, 95, 75 or 60; per group the
estimator's diagnostics (what the confidence model reads), its estimate and whether that is closer to
the true kernel than the fixed G(1.6) (L2 over a 26-tap HR support). The photos of
``benchmarks/kernel_letterbox.py`` are used as it crops them (768 x 576, LR 192 x 144) when they are
large enough, else whole (cropped to a multiple of the scale). ``--scale 2`` / ``3`` makes x2 / x3 groups:
each photo is resized by 1/2 / 3/4 first, so that the frames show the same content at the same LR size.

``report``: fits the confidence model (:mod:`adassr.adapt.kernel.confidence`: a logistic regression of
"closer than G(1.6)" on its features) on the ``--fit`` rows, and shows on the ``--check`` rows (other
photos, never used to fit) how the model's confidence and the estimator's current confidence sort the
estimates (AUC: the chance that a closer estimate gets the higher confidence) and how often the
estimates of each confidence band were closer. Results: ``<out-dir>/kernel_confidence[_<tag>].{md,json}``.
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

from kernel_clipping import SCALE  # noqa: E402
from kernel_overlays import FIXED  # noqa: E402
from script_cli import (  # noqa: E402
    default_machine,
    existing_dir,
    folder_label,
    int_at_least,
    output_dir,
    run_script,
    write_report,
)

SCENES = (1, 2, 3, 4, 8)
FRAMES = 8
NOISES = (0.0, 2.0, 5.0)
QUALITIES: tuple[int | None, ...] = (None, 95, 75, 60)
RECORDED = ("mode", "n_scenes", "images_used", "residual_rms", "n_pixels", "fixed_gaussian_loss_gap",
            "fallback_gap_allowed", "jpeg_blockiness", "noise_sigma", "direction_agreement", "direction_check",
            "estimate_before_fallback", "raw_sigma_lr")
BANDS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0001)


def load_scenes(hr_dir: Path, scale: int = SCALE) -> list[np.ndarray]:
    """The photos of ``hr_dir`` as HR scenes: cropped as ``kernel_letterbox`` crops them when all are
    large enough, else whole. At a ``scale`` other than 4 each is first resized by ``scale / 4`` (area
    averaging), so that the frames show the same content at the same LR size at every scale; then cropped
    to a multiple of ``scale``."""
    import cv2
    from kernel_estimation import load_hr
    from kernel_letterbox import HEIGHT, WIDTH

    photos = [hr for _, hr in load_hr(hr_dir)]
    if all(p.shape[0] >= HEIGHT and p.shape[1] >= WIDTH for p in photos):
        cropped = []
        for p in photos:
            top, left = (p.shape[0] - HEIGHT) // 2, (p.shape[1] - WIDTH) // 2
            cropped.append(p[top: top + HEIGHT, left: left + WIDTH])
        photos = cropped
    out = []
    for p in photos:
        if scale != SCALE:
            size = (round(p.shape[1] * scale / SCALE), round(p.shape[0] * scale / SCALE))
            p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
        h, w = (p.shape[0] // scale) * scale, (p.shape[1] // scale) * scale
        out.append(np.ascontiguousarray(p[:h, :w]))
    return out


def kernel_distance(a: tuple[float, float, float], b: tuple[float, float, float], scale: int = SCALE) -> float:
    """L2 distance between two Gaussian kernels (sigmas in HR px, angle in deg) on the support the
    confidence's distance uses at ``scale`` (:func:`adassr.adapt.kernel.confidence.kernel_distance`)."""
    from adassr.adapt.kernel.confidence import kernel_distance as distance

    return distance(a, b, scale)


def random_kernel(rng: np.random.Generator) -> tuple[float, float, float]:
    """HR sigmas log-uniform in [0.8, 3.2] (major) with an axis ratio log-uniform in [1, 3], the minor at
    least 0.8; the angle uniform in [0, 180) deg."""
    major = float(math.exp(rng.uniform(math.log(0.8), math.log(3.2))))
    minor = max(major / float(math.exp(rng.uniform(0.0, math.log(3.0)))), 0.8)
    return round(major, 3), round(min(minor, major), 3), round(float(rng.uniform(0.0, 180.0)), 1)


def camera_frames(scenes: list[np.ndarray], kernel: tuple[float, float, float], *, noise: float,
                  quality: int | None, rng: np.random.Generator, scale: int = SCALE) -> list[np.ndarray]:
    """:data:`FRAMES` LR frames showing ``scenes`` in turn: blurred, downsampled by ``scale``, noisy
    (``noise`` /255), JPEG."""
    from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip

    k = gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=scale)
    lrs = [blur_downsample(hr, k, scale) for hr in scenes]
    frames = []
    for i in range(FRAMES):
        lr = lrs[i % len(lrs)]
        if noise:
            lr = lr + rng.normal(0.0, noise / 255.0, lr.shape).astype(np.float32)
        lr = np.clip(lr, 0.0, 1.0).astype(np.float32)
        frames.append(lr if quality is None else jpeg_roundtrip(lr, quality))
    return frames


def collect(photos: list[np.ndarray], groups: int, seed: int, out: Any, scale: int = SCALE) -> list[dict[str, Any]]:
    """``groups`` rows (see the module doc) at ``scale``, each written to ``out`` (a text file) as a JSON
    line when done."""
    from adassr.adapt.kernel import estimate_kernel

    rng = np.random.default_rng(seed)
    choices = [k for k in SCENES if k <= len(photos)]
    rows: list[dict[str, Any]] = []
    for g in range(groups):
        kernel = random_kernel(rng)
        k = int(rng.choice(choices))
        picked = [photos[int(i)] for i in rng.choice(len(photos), size=k, replace=False)]
        noise = float(rng.choice(NOISES))
        quality = QUALITIES[int(rng.integers(len(QUALITIES)))]
        frames = camera_frames(picked, kernel, noise=noise, quality=quality, rng=rng, scale=scale)
        start = time.perf_counter()
        est = estimate_kernel(frames, scale=scale)
        dist = kernel_distance((est.sigma_x, est.sigma_y, est.theta_deg), kernel, scale)
        before = est.diagnostics.get("estimate_before_fallback")
        dist_before = dist if before is None else kernel_distance(
            (before["sigma_x"], before["sigma_y"], before["theta_deg"]), kernel, scale)
        rows.append({"group": g, "scale": scale, "kernel": kernel, "scenes": k, "noise": noise, "quality": quality,
                     "method": est.method,
                     "estimate": [est.sigma_x, est.sigma_y, est.theta_deg], "dist": dist,
                     "dist_before_fallback": dist_before, "dist_g16": kernel_distance(FIXED, kernel, scale),
                     "diagnostics": {key: est.diagnostics.get(key) for key in RECORDED},
                     "seconds": time.perf_counter() - start})
        out.write(json.dumps(rows[-1]) + "\n")
        out.flush()
        print(json.dumps({key: rows[-1][key] for key in ("group", "scenes", "noise", "quality", "dist", "dist_g16")}),
              flush=True)
    return rows


def load_rows(paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of ``collect`` files (JSON lines: a header, then one row a line; a run stopped early keeps
    the rows it finished), and each file's photos, seed and machine, for the report."""
    rows: list[dict[str, Any]] = []
    sources = []
    for path in paths:
        try:
            header, *lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            found = [row for row in lines if "dist" in row]
            label = f"{header['hr_dir']} (LR {', '.join(header['lr_sizes'])}, x{header.get('scale', SCALE)})"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a file written by 'collect' ({exc})") from exc
        rows.extend(found)
        sources.append(f"{len(found)} groups of {label}, seed {header['seed']}, {header['machine']}")
    return rows, sources


def fitted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose estimate was returned: the fixed-Gaussian fallback's confidence is 0 by definition."""
    from adassr.adapt.kernel.result import METHOD_CROSS_SCALE

    return [r for r in rows if r["method"] == METHOD_CROSS_SCALE]


def old_confidence(diagnostics: dict[str, Any]) -> float:
    """The estimator's confidence before the model (up to commit f834a9a), from the same diagnostics:
    ``clip(1 - residual_rms / 0.3, 0, 1) * min(1, pixels / 4000)``, times
    ``clip((gap - allowed) / (3 allowed), 0, 1)`` where the fixed-Gaussian check is on."""
    d = diagnostics
    value = min(max(1.0 - d["residual_rms"] / 0.3, 0.0), 1.0) * min(1.0, d["n_pixels"] / 4000.0)
    allowed = d["fallback_gap_allowed"]
    if allowed > 0:
        value *= min(max((d["fixed_gaussian_loss_gap"] - allowed) / (3.0 * allowed), 0.0), 1.0)
    return float(value)


def closer(row: dict[str, Any]) -> bool:
    return bool(row["dist"] < row["dist_g16"])


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iterations: int = 50) -> np.ndarray:
    """Intercept and weights of a logistic regression of ``y`` (0/1) on the columns of ``x``, by Newton's
    method on standardised columns with an L2 penalty of ``ridge`` on the weights (not the intercept),
    returned for the raw columns."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], ridge)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    weights = w[1:] / std
    return np.concatenate([[w[0] - float(weights @ mean)], weights])


def auc(scores: list[float], labels: list[bool]) -> float:
    """The chance that a closer estimate has the higher score (ties count half)."""
    pos = [s for s, c in zip(scores, labels, strict=True) if c]
    neg = [s for s, c in zip(scores, labels, strict=True) if not c]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def summary(rows: list[dict[str, Any]], weights: tuple[float, ...]) -> dict[str, Any]:
    """AUC, Brier score, confidence bands, and the mean confidences per scene count and JPEG quality:
    the model's (``new``) against the estimator's as recorded (``old``)."""
    from adassr.adapt.kernel.confidence import kernel_confidence

    fitted = fitted_rows(rows)
    new = [kernel_confidence(r["diagnostics"], r.get("scale", SCALE), weights) for r in fitted]
    old = [old_confidence(r["diagnostics"]) for r in fitted]
    labels = [closer(r) for r in fitted]
    out: dict[str, Any] = {
        "n": len(rows), "n_fitted": len(fitted), "closer": float(np.mean(labels)) if labels else float("nan"),
        "auc_new": auc(new, labels), "auc_old": auc(old, labels),
        "brier_new": float(np.mean([(p - c) ** 2 for p, c in zip(new, labels, strict=True)])),
        "brier_old": float(np.mean([(p - c) ** 2 for p, c in zip(old, labels, strict=True)])),
        "bands": [], "by_scenes": [], "by_quality": []}
    for lo, hi in zip(BANDS, BANDS[1:], strict=False):
        for name, conf in (("new", new), ("old", old)):
            inside = [c for p, c in zip(conf, labels, strict=True) if lo <= p < hi]
            out["bands"].append({"which": name, "band": [lo, min(hi, 1.0)], "n": len(inside),
                                 "closer": float(np.mean(inside)) if inside else None})
    for key, values in (("by_scenes", sorted({r["scenes"] for r in fitted})),
                        ("by_quality", [q for q in QUALITIES if any(r["quality"] == q for r in fitted)])):
        field = "scenes" if key == "by_scenes" else "quality"
        for value in values:
            idx = [i for i, r in enumerate(fitted) if r[field] == value]
            out[key].append({field: value, "n": len(idx), "closer": float(np.mean([labels[i] for i in idx])),
                             "confidence_new": float(np.mean([new[i] for i in idx])),
                             "confidence_old": float(np.mean([old[i] for i in idx]))})
    return out


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"


def to_markdown(result: dict[str, Any]) -> str:
    from adassr.adapt.kernel.confidence import FEATURES

    lines = ["# Kernel estimation: how far its confidence can be trusted", "",
             f"Machine: {result['machine']}. Fitted on: {'; '.join(result['fit_sources'])}. Checked on: "
             f"{'; '.join(result['check_sources'])}.", "",
             "Each row: a synthetic camera group of 8 frames showing 1-8 scenes, a random kernel, noise 0-5/255, "
             "JPEG none-95-75-60. 'closer': the estimate is closer to the true kernel than G(1.6). The model "
             "(`adapt/kernel/confidence.py`) is fitted on the first set only; 'old' is the estimator's confidence "
             "before it (recomputed from the same diagnostics).", "", "## Weights", "",
             "| term | weight |", "|---|---|", f"| intercept | {result['weights'][0]:.4f} |"]
    lines += [f"| {name} | {w:.4f} |" for name, w in zip(FEATURES, result["weights"][1:], strict=True)]
    for part in ("fit", "check"):
        s = result[part]
        lines += ["", f"## {'Fitted on' if part == 'fit' else 'Checked on (held out)'}", "",
                  f"{s['n']} groups, {s['n_fitted']} with the estimate returned (the others got a fallback "
                  f"kernel, the fixed Gaussian or the bicubic one: confidence 0), {100 * s['closer']:.0f} % "
                  "of those closer than G(1.6). AUC (the chance "
                  f"that a closer estimate gets the higher confidence): {s['auc_new']:.3f} (old {s['auc_old']:.3f}); "
                  f"Brier score {s['brier_new']:.3f} (old {s['brier_old']:.3f}).", "",
                  "| confidence | groups (model) | closer (model) | groups (old) | closer (old) |",
                  "|---|---|---|---|---|"]
        bands = s["bands"]
        for new, old in zip(bands[::2], bands[1::2], strict=True):
            lines.append(f"| {new['band'][0]:.1f}-{new['band'][1]:.1f} | {new['n']} | {_percent(new['closer'])} | "
                         f"{old['n']} | {_percent(old['closer'])} |")
        lines += ["", "| scenes | groups | closer | mean confidence (model) | (old) |", "|---|---|---|---|---|"]
        lines += [f"| {r['scenes']} | {r['n']} | {100 * r['closer']:.0f} % | {r['confidence_new']:.2f} | "
                  f"{r['confidence_old']:.2f} |" for r in s["by_scenes"]]
        lines += ["", "| JPEG | groups | closer | mean confidence (model) | (old) |", "|---|---|---|---|---|"]
        lines += [f"| {'none' if r['quality'] is None else 'q' + str(r['quality'])} | {r['n']} | "
                  f"{100 * r['closer']:.0f} % | {r['confidence_new']:.2f} | {r['confidence_old']:.2f} |"
                  for r in s["by_quality"]]
    return "\n".join(lines) + "\n"


def report(fit_paths: list[Path], check_paths: list[Path], machine: str | None) -> dict[str, Any]:
    from adassr.adapt.kernel.confidence import confidence_features

    fit_rows, fit_sources = load_rows(fit_paths)
    check_rows, check_sources = load_rows(check_paths)
    train = fitted_rows(fit_rows)
    if len(train) < 20 or len({closer(r) for r in train}) < 2:
        raise SystemExit(f"--fit: {len(train)} fitted rows, need at least 20 with both outcomes")
    x = np.array([confidence_features(r["diagnostics"], r.get("scale", SCALE)) for r in train])
    y = np.array([float(closer(r)) for r in train])
    weights = tuple(float(v) for v in fit_logistic(x, y))
    return {"machine": default_machine(machine), "fit_sources": fit_sources, "check_sources": check_sources,
            "weights": list(weights), "fit": summary(fit_rows, weights), "check": summary(check_rows, weights)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="estimate kernels of synthetic camera groups and save the rows")
    c.add_argument("--hr-dir", type=existing_dir, default=ROOT / "benchmarks" / "data" / "dev_photos")
    c.add_argument("--groups", type=int_at_least(1), default=300)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, required=True, help="JSON lines: a header, then one row a line")
    c.add_argument("--machine", default=None)
    c.add_argument("--scale", type=int, choices=(2, 3, 4), default=SCALE,
                   help="super-resolution scale (default 4; the photos are resized so that the LR size stays)")
    r = sub.add_parser("report", help="fit the confidence model on --fit rows and check it on --check rows")
    r.add_argument("--fit", type=Path, required=True, nargs="+")
    r.add_argument("--check", type=Path, required=True, nargs="+")
    r.add_argument("--machine", default=None)
    r.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    r.add_argument("--tag", default="", help="results as kernel_confidence_<tag>.{md,json}")
    args = parser.parse_args(argv)
    if args.command == "collect":
        photos = load_scenes(args.hr_dir, args.scale)
        header = {"hr_dir": folder_label(args.hr_dir, ROOT), "seed": args.seed, "groups": args.groups,
                  "scale": args.scale,
                  "lr_sizes": sorted({f"{p.shape[1] // args.scale} x {p.shape[0] // args.scale}" for p in photos}),
                  "machine": default_machine(args.machine)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w") as out:
            out.write(json.dumps(header) + "\n")
            collect(photos, args.groups, args.seed, out, args.scale)
        return 0
    result = report(args.fit, args.check, args.machine)
    write_report(args.out_dir, "kernel_confidence" + (f"_{args.tag}" if args.tag else ""), result, to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    run_script(main)
