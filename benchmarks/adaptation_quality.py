"""Does adaptation help? Synthetic camera groups with ground truth, seeds and ablations (v2).

Three synthetic cameras of realistic size (LR short side >= 256 px), each with its own
degradation, are built from crops of the large bundled photos (see ``GROUPS``):

- ``fuji-aniso``: 4 crops of the fujifilm 10 MP photo (left frame), anisotropic Gaussian blur
  (2.8, 1.4) HR px at 45 deg, Gaussian noise 2/255, JPEG q85;
- ``fuji-noisy``: 4 crops of the right frame, smaller anisotropic blur (1.8, 1.0) at 120 deg,
  noise 5/255, JPEG q60;
- ``canon-bicubic``: the two halves of the canon 2000x1072 photo plus two crops of the fujifilm
  left frame that ``fuji-aniso`` does not use, bicubic downscaling (the backbones' training
  kernel), no noise, JPEG q95.

``adapt_camera`` adapts the backbone to each group's LR images (the kernel is estimated, not
given); bicubic upscaling, the backbone and the adapted model are then scored against the
held-out HR crops: NIQE (no reference), LPIPS-Alex and PSNR-Y (full reference). The LR images are
synthesised once (seed 0); ``--seeds`` vary the adaptation's seed. The real camera groups of
``samples/cameras`` (no HR) get NIQE of backbone and adapted model on their most structured
LR crops (``--real-groups``).

Development groups (``DEV_GROUPS``) are for choosing settings without looking at the scored
groups; they run only when named in ``--groups``: ``dev-noisy`` and ``dev-clean`` (384 px crops
of tests/data/hr and the Kodak calibration photos, LR 96 px) and, of realistic size,
``dev-big-aniso``, ``dev-big-noisy`` and ``dev-big-mild`` (1024 px crops of five openly licensed
photos in benchmarks/data/dev_photos, LR 256 px).

Ablations map onto the adaptation config (``--kernel``, ``--no-augment``, ``--no-early-stop``, ``--weights``,
``--trainable``, ``--lambda-perceptual``, ``--lambda-gan``, ``--ema-decay``, ``--feature-bank``); ``--tag`` names
the result files: ``benchmarks/results/adaptation_quality_v2_<device>[_<tag>].{json,md}``.
Results are rewritten after every run, so a cut-off run keeps what it measured.

    python benchmarks/adaptation_quality.py [--seeds 3] [--groups fuji-aniso,...] [--device cpu]

The fujifilm photo is ``samples/large/fujifilm.mpo`` (``--fujifilm`` to use another copy).
Nothing here tunes to these images: the adaptation runs with the
product's defaults for the device unless an ablation flag says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from script_cli import (  # noqa: E402
    ScriptError,
    existing_file,
    output_dir,
    positive_int,
    read_json,
    run_script,
)

from adassr.runtime.store import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CANON = ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg"
FUJI = ROOT / "samples" / "large" / "fujifilm.mpo"
SCALE = 4
HR_SIDE = 1024  # HR crop side: LR 256
BASELINE_CACHE = Path.home() / ".cache" / "adassr" / "benchmark_baselines.json"


@dataclass(frozen=True)
class GroupSpec:
    name: str
    sources: tuple[tuple[str, int, int, int], ...]  # (source, frame, top, left) of HR crops
    kernel: tuple[float, float, float] | None  # (sigma_major, sigma_minor, theta_deg) HR px; None: bicubic
    noise_255: float
    jpeg_quality: int
    hr_side: int = HR_SIDE  # side of the square HR crops

    def describe(self) -> str:
        blur = ("bicubic downscaling" if self.kernel is None else
                f"anisotropic Gaussian ({self.kernel[0]}, {self.kernel[1]}) HR px at {self.kernel[2]} deg")
        return f"{blur}, x{SCALE}, noise {self.noise_255}/255, JPEG q{self.jpeg_quality}"


# Fujifilm frames are 3648x2736: a 3x2 grid of 1024 crops starting at (top, left) multiples below.
_FUJI_GRID = [(top, left) for top in (200, 1400) for left in (300, 1312, 2324)]
GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec("fuji-aniso", tuple(("fuji", 0, t, x) for t, x in _FUJI_GRID[:4]), (2.8, 1.4, 45.0), 2.0, 85),
    GroupSpec("fuji-noisy", tuple(("fuji", 1, t, x) for t, x in _FUJI_GRID[1:5]), (1.8, 1.0, 120.0), 5.0, 60),
    GroupSpec("canon-bicubic", (("canon", 0, 24, 0), ("canon", 0, 24, 976))
              + tuple(("fuji", 0, t, x) for t, x in _FUJI_GRID[4:6]), None, 0.0, 95),
)


# Development groups, for choosing settings without looking at the scored groups above: crops of
# photos the scored groups do not use (tests/data/hr: scikit-image, CC0; tests/data/calibration:
# Kodak via TID2013), 384 px HR (LR 96), degradations fixed before any run. `--groups dev-noisy,dev-clean`.
DEV_GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec("dev-noisy", (("hr:astronaut", 0, 64, 64), ("hr:coffee", 0, 8, 100), ("hr:rocket", 0, 20, 128),
                            ("hr:stereo_motorcycle", 0, 58, 178)), (2.2, 1.2, 70.0), 4.0, 70, hr_side=384),
    GroupSpec("dev-clean", (("kodak:ref_I04", 0, 0, 64), ("kodak:ref_I06", 0, 0, 64), ("hr:astronaut", 0, 128, 128),
                            ("hr:stereo_motorcycle", 0, 100, 357)), (1.4, 1.4, 0.0), 0.0, 95, hr_side=384),
    # Realistic size (LR 256), added after the scored groups' results were known, with degradations
    # fixed before any run: 1024 px crops of five openly licensed photos (benchmarks/data/dev_photos).
    GroupSpec("dev-big-aniso", (("photo:henner-face", 0, 0, 0), ("photo:paumier-hoodie", 0, 0, 0),
                                ("photo:paddy", 0, 0, 0), ("photo:peak", 0, 0, 0)), (2.6, 1.3, 150.0), 1.0, 90),
    GroupSpec("dev-big-noisy", (("photo:henner-shirt", 0, 0, 0), ("photo:paumier-face", 0, 0, 0),
                                ("photo:paddy-trees", 0, 0, 0), ("photo:walker", 0, 0, 0)), (1.6, 1.1, 30.0), 4.0, 70),
    GroupSpec("dev-big-mild", (("photo:henner-shirt", 0, 0, 0), ("photo:paumier-hoodie", 0, 0, 0),
                               ("photo:paddy-trees", 0, 0, 0), ("photo:peak", 0, 0, 0)), (1.8, 1.8, 0.0), 2.0, 80),
)
DEV_PHOTOS = ROOT / "benchmarks" / "data" / "dev_photos"


# --------------------------------------------------------------------------- data


# "<prefix>:<stem>" sources of the development groups: (folder, file suffix)
_NAMED_SOURCES = {"hr": (ROOT / "tests" / "data" / "hr", ".png"),
                  "kodak": (ROOT / "tests" / "data" / "calibration", ".png"),
                  "photo": (DEV_PHOTOS, ".jpg")}


def _load_source(name: str, frame: int, fuji_path: Path) -> np.ndarray:
    prefix, _, stem = name.partition(":")
    if stem:
        folder, suffix = _NAMED_SOURCES[prefix]
        with Image.open(folder / f"{stem}{suffix}") as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    path = CANON if name == "canon" else fuji_path
    with Image.open(path) as im:
        if frame:
            im.seek(frame)
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def degrade(hr: np.ndarray, spec: GroupSpec, rng: np.random.Generator) -> np.ndarray:
    """LR image of ``spec``'s camera for an HR crop (float32 in [0, 1])."""
    from adassr.adapt.degradation import bicubic_kernel, blur_downsample, gaussian_kernel, jpeg_roundtrip

    if spec.kernel is None:
        kernel = bicubic_kernel(SCALE)
    else:
        kernel = gaussian_kernel(spec.kernel[0], spec.kernel[1], math.radians(spec.kernel[2]), scale=SCALE)
    lr = blur_downsample(hr, kernel, SCALE)
    if spec.noise_255 > 0:
        lr = lr + rng.normal(0.0, spec.noise_255 / 255.0, lr.shape).astype(np.float32)
    return jpeg_roundtrip(lr, spec.jpeg_quality)


def build_group(spec: GroupSpec, fuji_path: Path, cache: dict[tuple[str, int], np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(HR crops, LR images) by image name; LR synthesised with a fixed seed per group."""
    rng = np.random.default_rng(sum(map(ord, spec.name)))
    hrs, lrs = {}, {}
    for source, frame, top, left in spec.sources:
        key = (source, frame)
        if key not in cache:
            cache[key] = _load_source(source, frame, fuji_path)
        full = cache[key]
        side = spec.hr_side
        hr = np.ascontiguousarray(full[top:top + side, left:left + side])
        if hr.shape[:2] != (side, side):
            raise RuntimeError(f"{source} frame {frame} crop at ({top}, {left}) is {hr.shape[:2]}")
        name = f"{source.replace(':', '-')}{frame}_{top}_{left}"
        hrs[name] = hr
        lrs[name] = degrade(hr, spec, rng)
    return hrs, lrs


# --------------------------------------------------------------------------- scoring


def super_resolve(model: torch.nn.Module, lr: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(lr.transpose(2, 0, 1)[None].copy())
    with torch.inference_mode():
        y = model(x).clamp(0, 1)
    return y[0].permute(1, 2, 0).numpy()


def bicubic_up(lr: np.ndarray) -> np.ndarray:
    return np.clip(cv2.resize(lr, (lr.shape[1] * SCALE, lr.shape[0] * SCALE), interpolation=cv2.INTER_CUBIC), 0, 1)


def score(outputs: dict[str, np.ndarray], hrs: dict[str, np.ndarray], lpips_model: Any) -> dict[str, Any]:
    from adassr.adapt.quality.niqe import niqe
    from adassr.adapt.quality.psnr_ssim import psnr

    per: dict[str, dict[str, float]] = {}
    for name, sr in outputs.items():
        hr = hrs[name]
        with torch.inference_mode():
            a = torch.from_numpy(sr.transpose(2, 0, 1)[None].copy())
            b = torch.from_numpy(hr.transpose(2, 0, 1)[None].copy())
            lp = float(lpips_model(a, b).reshape(-1)[0])
        per[name] = {"niqe": float(niqe(sr, crop_border=SCALE)), "lpips": lp,
                     "psnr_y": float(psnr(sr, hr, crop_border=SCALE, channel="y"))}
    mean = {k: float(np.nanmean([v[k] for v in per.values()])) for k in ("niqe", "lpips", "psnr_y")}
    return {**mean, "per_image": per}


def hr_niqe(hrs: dict[str, np.ndarray]) -> dict[str, Any]:
    """NIQE of the ground-truth HR crops themselves (same border crop as the outputs): the naturalness
    a faithful output would have. An output whose NIQE is below it is not more faithful to the photo."""
    from adassr.adapt.quality.niqe import niqe

    per = {name: float(niqe(hr, crop_border=SCALE)) for name, hr in hrs.items()}
    return {"niqe": float(np.mean(list(per.values()))), "per_image": per}


def fill_hr_niqe(paths: list[Path], fuji_path: Path) -> int:
    """Add the HR crops' NIQE to result files written before it was recorded, and rewrite them."""
    specs = {g.name: g for g in GROUPS + DEV_GROUPS}
    cache: dict[tuple[str, int], np.ndarray] = {}
    results = [(path, read_result(path)) for path in paths]  # every file is checked before any is rewritten
    for path, result in results:
        for name, g in result["groups"].items():
            if "hr" not in g and name in specs:
                g["hr"] = hr_niqe(build_group(specs[name], fuji_path, cache)[0])
        _save(result, path.parent, path.stem)
        print(f"rewrote {path} and its .md")
    return 0


def read_result(path: Path) -> dict[str, Any]:
    """A result file of this script (``adaptation_quality_v2_*.json``); anything else is a :class:`ScriptError`."""
    what = "a result file of benchmarks/adaptation_quality.py (adaptation_quality_v2_*.json)"
    data = read_json(path, what)
    if not (isinstance(data, dict) and isinstance(data.get("groups"), dict) and {"machine", "ablation"} <= set(data)):
        raise ScriptError(f"{path} is no result of this script: pass {what}")
    return data


def baseline_key(lrs: dict[str, np.ndarray], backbone_sha256: str) -> str:
    """What the bicubic and backbone scores depend on: the LR images (names and pixels) and the backbone."""
    import hashlib

    digest = hashlib.sha256(f"scoring-v1\0{backbone_sha256}\0{HR_SIDE}".encode())
    for name in sorted(lrs):
        digest.update(name.encode() + b"\0" + np.ascontiguousarray(lrs[name], dtype=np.float32).tobytes())
    return digest.hexdigest()


def stored_baselines(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        print(f"ignoring the baseline cache {path} ({exc})", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def store_baselines(path: Path, key: str, scores: dict[str, Any]) -> None:
    data = stored_baselines(path)
    data[key] = scores
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- config


def build_config(args: argparse.Namespace, device: torch.device) -> Any:
    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults

    config = gpu_defaults() if device.type == "cuda" else cpu_demo_defaults()
    config = config.with_overrides(steps=args.steps, device=device.type, trainable=args.trainable,
                                   lambda_gan=args.lambda_gan, lambda_perceptual=args.lambda_perceptual,
                                   ema_decay=args.ema_decay, kernel=args.kernel, feature_bank=args.feature_bank,
                                   precision=args.precision)
    if args.no_augment:
        config = replace(config, augment=False)
    if args.no_early_stop:
        config = replace(config, early_stop=False)
    if args.weights:
        config = replace(config, attention=replace(config.attention, mode=args.weights))
    return config


def ablation_label(args: argparse.Namespace) -> str:
    parts = []
    for flag in ("kernel", "weights", "trainable", "lambda_perceptual", "lambda_gan", "ema_decay", "steps",
                 "feature_bank", "precision"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"{flag}={value}")
    if args.no_augment:
        parts.append("augment=off")
    if args.no_early_stop:
        parts.append("early stop=off (last weights kept)")
    return ", ".join(parts) or "product defaults"


# --------------------------------------------------------------------------- run


def _load_lr_png(path: Path) -> np.ndarray:
    from adassr.runtime.images import read_image, to_float32

    pixels = to_float32(read_image(path).pixels)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def lr_file_name(image_name: str) -> str:
    """The group folder's file name for an LR image. Images cut from ``tests/data/hr`` are named
    ``hr-...``, and an ``hr`` token marks a file as ground truth, which groups leave out
    (adassr.adapt.groups): the file says ``photo-`` instead."""
    return ("photo-" + image_name[3:] if image_name.startswith("hr-") else image_name) + ".png"


def adapt_group(images: dict[str, np.ndarray], name: str, config: Any, work: Path,
                on_event: Callable[[Any], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Write ``images`` as a group folder, adapt, return (outcome, trace with losses and NIQE).
    ``on_event`` also sees every progress event (weight_selection.py copies the evaluated weights)."""
    from adassr.adapt.groups import select_group
    from adassr.adapt.run import adapt_camera
    from adassr.runtime.images import write_image

    folder = work / "groups" / name
    folder.mkdir(parents=True, exist_ok=True)
    for image_name, lr in images.items():
        write_image(folder / lr_file_name(image_name), (np.clip(lr, 0, 1) * 255 + 0.5).astype(np.uint8))
    group = select_group(work / "groups", name)
    trace: dict[str, list[list[float]]] = {"loss": [], "niqe": []}

    def progress(event: Any) -> None:
        if event.loss is not None:
            trace["loss"].append([event.step, float(event.loss)])
        if event.niqe is not None:
            trace["niqe"].append([event.step, float(event.niqe)])
        if on_event is not None:
            on_event(event)

    # replace: every run is scored on its own result (a camera's current model, from an earlier seed or
    # variant, must not stand in for it)
    outcome = adapt_camera(group, config, store_root=work / "store", progress=progress, replace=True)
    return outcome, trace


def _machine(device: torch.device) -> str:
    from adassr.export.bench import machine_name

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16") if f" {f}" in flags]
    return (f"CPU {machine_name()} ({os.cpu_count()} cores; {', '.join(isa) or 'no avx2'}), "
            f"{torch.get_num_threads()} torch threads")


def _commit() -> str:
    from cpu_bench_setup import source_commit

    return source_commit()


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _niqe_gap(scores: dict[str, Any], hr: dict[str, Any]) -> float:
    """Mean over images of abs(NIQE of the output - NIQE of its HR photo) (NaN NIQEs left out)."""
    gaps = [abs(scores["per_image"][name]["niqe"] - value) for name, value in hr["per_image"].items()]
    return float(np.nanmean(gaps))


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per group: mean and spread over seeds of the adapted scores; totals over groups and seeds."""
    summary: dict[str, Any] = {"groups": {}}
    all_delta_lpips, all_delta_niqe = [], []
    for gname, g in result["groups"].items():
        runs = g.get("runs", [])
        if not runs or "backbone" not in g:
            continue
        row: dict[str, Any] = {}
        for metric in ("niqe", "lpips", "psnr_y"):
            values = [r["adapted"][metric] for r in runs]
            row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values),
                           "backbone": g["backbone"][metric], "bicubic": g["bicubic"][metric]}
        row["delta_lpips"] = row["lpips"]["mean"] - g["backbone"]["lpips"]
        row["delta_niqe"] = row["niqe"]["mean"] - g["backbone"]["niqe"]
        row["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        if "hr" in g:  # how far each model's NIQE is from the ground truth's, per image (closer is more faithful)
            row["hr_niqe"] = g["hr"]["niqe"]
            row["niqe_gap_to_hr"] = {"backbone": _niqe_gap(g["backbone"], g["hr"]),
                                     "adapted": float(np.mean([_niqe_gap(r["adapted"], g["hr"]) for r in runs]))}
        all_delta_lpips += [r["adapted"]["lpips"] - g["backbone"]["lpips"] for r in runs]
        all_delta_niqe += [r["adapted"]["niqe"] - g["backbone"]["niqe"] for r in runs]
        summary["groups"][gname] = row
    if all_delta_lpips:
        worst = max(v["delta_lpips"] for v in summary["groups"].values())
        summary["total"] = {
            "delta_lpips_mean": float(np.mean(all_delta_lpips)),
            "delta_niqe_mean": float(np.mean(all_delta_niqe)),
            "worst_group_delta_lpips": float(worst),
            "runs": len(all_delta_lpips),
            "target_met": bool(np.mean(all_delta_lpips) <= -0.01 and np.mean(all_delta_niqe) <= -0.1
                               and worst <= 0.005),
        }
        gaps = [v["niqe_gap_to_hr"] for v in summary["groups"].values() if "niqe_gap_to_hr" in v]
        if gaps:  # per group, then averaged over groups
            summary["total"]["niqe_gap_to_hr"] = {k: float(np.mean([gp[k] for gp in gaps]))
                                                  for k in ("backbone", "adapted")}
    return summary


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [f"# Adaptation quality v2 on synthetic camera groups ({result['machine']})", "",
             f"Ablation: **{result['ablation']}**. Seeds: {result['seeds']}. Script: "
             "`benchmarks/adaptation_quality.py` (the docstring describes the groups).",
             f"Timings measured while other jobs shared the machine (1-min load average at start "
             f"{result['load_start']:.1f}).", "",
             "| group | degradation | model | NIQE | LPIPS-Alex | PSNR-Y dB | steps | stop | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for gname, g in result["groups"].items():
        if "backbone" not in g:
            continue
        reference = [("HR photo (ground truth)", f"{g['hr']['niqe']:.3f} | - | -")] if "hr" in g else []
        reference += [(label, f"{g[label]['niqe']:.3f} | {g[label]['lpips']:.4f} | {g[label]['psnr_y']:.2f}")
                      for label in ("bicubic", "backbone")]
        for i, (label, cells) in enumerate(reference):  # the degradation is named on the group's first row
            lines.append(f"| {gname} | {g['degradation'] if i == 0 else ''} | {label} | {cells} | | | |")
        for run in g.get("runs", []):
            r = run["adapted"]
            kept = " (backbone kept)" if run["kept_backbone"] else ""
            lines.append(f"| {gname} | | adapted, seed {run['seed']}{kept} | {r['niqe']:.3f} | {r['lpips']:.4f} | "
                         f"{r['psnr_y']:.2f} | {run['steps']} | {run['stop_reason']} | {run['wall_s']:.0f} |")
    summary = result.get("summary", {})
    if summary.get("groups"):
        lines += ["", "## Summary (adapted minus backbone; mean +- std over seeds)", "",
                  "| group | dNIQE | dLPIPS | NIQE adapted | LPIPS adapted | PSNR-Y adapted | runs "
                  "| NIQE HR | mean abs(NIQE - NIQE HR) backbone / adapted |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for gname, row in summary["groups"].items():
            gap = row.get("niqe_gap_to_hr")
            hr_cells = (f"{row['hr_niqe']:.3f} | {gap['backbone']:.3f} / {gap['adapted']:.3f}" if gap else "n/a | n/a")
            lines.append(f"| {gname} | {row['delta_niqe']:+.3f} | {row['delta_lpips']:+.4f} | "
                         f"{row['niqe']['mean']:.3f} +- {row['niqe']['std']:.3f} | "
                         f"{row['lpips']['mean']:.4f} +- {row['lpips']['std']:.4f} | "
                         f"{row['psnr_y']['mean']:.2f} +- {row['psnr_y']['std']:.2f} | {row['niqe']['n']} | "
                         f"{hr_cells} |")
        t = summary.get("total")
        if t:
            lines += ["", f"Total over {t['runs']} runs: mean dLPIPS {t['delta_lpips_mean']:+.4f} (target <= -0.01), "
                      f"mean dNIQE {t['delta_niqe_mean']:+.3f} (target <= -0.1), worst group dLPIPS "
                      f"{t['worst_group_delta_lpips']:+.4f} (target <= +0.005): "
                      f"{'met' if t['target_met'] else 'NOT met'}."]
            if "niqe_gap_to_hr" in t:
                lines += ["", f"Mean over groups of abs(NIQE - NIQE of the HR photo): backbone "
                          f"{t['niqe_gap_to_hr']['backbone']:.3f}, adapted {t['niqe_gap_to_hr']['adapted']:.3f} "
                          "per image (lower is closer to the ground truth's naturalness; an output whose NIQE is "
                          "below its HR photo's is not more faithful to it)."]
    real = result.get("real_groups", {})
    if real:
        lines += ["", "## Real camera groups (samples/cameras, no HR): NIQE on the evaluation crops", "",
                  "| group | images | NIQE backbone | NIQE adapted | steps | stop | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for gname, r in real.items():
            lines.append(f"| {gname} | {r['images']} | {r['niqe_before']:.3f} | {r['niqe_after']:.3f} | {r['steps']} | "
                         f"{r['stop_reason']} | {r['wall_s']:.0f} |")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_result(result: dict[str, Any], out: Path, stem: str,
                 markdown: Callable[[dict[str, Any], Path], None]) -> None:
    """``<out>/<stem>.json`` (atomically) and ``<stem>.md`` (written by ``markdown``)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{stem}.json", (json.dumps(result, indent=1) + "\n").encode())
    markdown(result, out / f"{stem}.md")


def _save(result: dict[str, Any], out: Path, stem: str) -> None:
    result["summary"] = summarise(result)
    write_result(result, out, stem, write_markdown)


def merge_results(paths: list[Path], out: Path, tag: str) -> int:
    """Union of the groups (and real groups) of several result files of the same ablation; a group in
    several files (other seeds, ``--first-seed``) gets the union of its runs."""
    parts = [read_result(p) for p in paths]
    ablations = {p["ablation"] for p in parts}
    if len(ablations) != 1:
        print(f"refusing to merge different ablations: {sorted(ablations)}", file=sys.stderr)
        return 2
    merged = dict(parts[0])
    merged["groups"], merged["real_groups"] = {}, {}
    merged["merged_from"] = [{"machine": p["machine"], "commit": p.get("commit"), "started": p.get("started"),
                              "load_start": p.get("load_start"), "groups": sorted(p["groups"])} for p in parts]
    for part, path in zip(parts, paths, strict=True):
        for name, group in part["groups"].items():
            if name not in merged["groups"]:
                merged["groups"][name] = copy.deepcopy(group)
                continue
            have = merged["groups"][name]  # the same group run with other seeds: join the runs
            if have["backbone"]["per_image"] != group["backbone"]["per_image"]:
                print(f"refusing to merge {path}: group {name} has other LR images or another backbone",
                      file=sys.stderr)
                return 2
            clash = {r["seed"] for r in have["runs"]} & {r["seed"] for r in group["runs"]}
            if clash:
                print(f"refusing to merge {path}: group {name} seed(s) {sorted(clash)} appear twice", file=sys.stderr)
                return 2
            have["runs"] = sorted(have["runs"] + group["runs"], key=lambda r: r["seed"])
        merged["real_groups"].update(part.get("real_groups", {}))
    merged["seeds"] = sorted({s for p in parts for s in p["seeds"]})
    merged["load_start"] = max(p.get("load_start", float("nan")) for p in parts)
    stem = "adaptation_quality_v2_" + ("gpu" if "GPU" in merged["machine"] or "NVIDIA" in merged["machine"]
                                       else "cpu") + (f"_{tag}" if tag else "")
    _save(merged, out, stem)
    print((out / f"{stem}.md").read_text())
    return 0


def _seed_spread(part: dict[str, Any], groups: list[str], metric: str) -> str:
    """``mean`` or ``mean +- std`` over seeds of the per-seed mean (over groups) of adapted minus backbone."""
    per_seed: dict[int, list[float]] = {}
    for gname in groups:
        g = part["groups"].get(gname, {})
        for r in g.get("runs", []):
            per_seed.setdefault(r["seed"], []).append(r["adapted"][metric] - g["backbone"][metric])
    means = [float(np.mean(v)) for v in per_seed.values()]
    digits = 4 if metric == "lpips" else 3
    text = f"{np.mean(means):+.{digits}f}"
    return text + (f" +- {np.std(means):.{digits}f}" if len(means) > 1 else "")


def ablation_table(paths: list[Path], out: Path) -> int:
    """One Markdown table comparing result files (one ablation each) by group: dLPIPS and dNIQE vs the
    backbone, with the machine of each file (the CPU budget is a time budget, so steps depend on it)."""
    parts = [read_result(p) for p in paths]
    groups = sorted({g for part in parts for g, v in part["groups"].items() if v.get("runs")})
    machines = sorted({part["machine"] for part in parts})
    label = {m: chr(ord("A") + i) for i, m in enumerate(machines)}
    lines = ["# Adaptation quality v2: ablations (adapted minus backbone; mean over the seeds run)", "",
             "Each row is one result file of `benchmarks/adaptation_quality.py`; negative is better for both "
             "metrics. With several seeds the means are +- the standard deviation over seeds of each seed's "
             "mean over the groups. `kept` counts runs whose early stop kept the backbone. The CPU budget "
             "is a time budget (270 s per run), so a slower machine trains fewer steps: compare rows of the "
             "same machine.", "",
             "| ablation | machine | seeds | " + " | ".join(f"{g} dLPIPS / dNIQE" for g in groups)
             + " | mean dLPIPS | mean dNIQE | kept | mean steps | mean wall s | file |",
             "|---|---|---|" + "---|" * len(groups) + "---|---|---|---|---|---|"]
    for path, part in zip(paths, parts, strict=True):
        cells, steps, walls, kept, n_runs = [], [], [], 0, 0
        for gname in groups:
            g = part["groups"].get(gname, {})
            runs = g.get("runs", [])
            if not runs:
                cells.append("-")
                continue
            dl = [r["adapted"]["lpips"] - g["backbone"]["lpips"] for r in runs]
            dn = [r["adapted"]["niqe"] - g["backbone"]["niqe"] for r in runs]
            cells.append(f"{np.mean(dl):+.4f} / {np.mean(dn):+.3f}")
            steps += [r["steps"] for r in runs]
            walls += [r["wall_s"] for r in runs]
            kept += sum(bool(r["kept_backbone"]) for r in runs)
            n_runs += len(runs)
        seeds = sorted({r["seed"] for g in part["groups"].values() for r in g.get("runs", [])})
        lines.append(f"| {part['ablation']} | {label[part['machine']]} | {len(seeds)} | " + " | ".join(cells)
                     + f" | {_seed_spread(part, groups, 'lpips')} | {_seed_spread(part, groups, 'niqe')} | "
                     f"{kept}/{n_runs} | {np.mean(steps):.0f} | {np.mean(walls):.0f} | `{path.name}` |")
    lines += ["", "Machines: " + "; ".join(f"{label[m]}: {m}" for m in machines) + ".", ""]
    atomic_write_bytes(out, "\n".join(lines).encode())
    print(out.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seeds", type=int, default=3, help="how many adaptation seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed: seeds run first..first+N-1 (default 0); --merge joins the runs")
    parser.add_argument("--groups", default=",".join(g.name for g in GROUPS), help="comma-separated group names")
    parser.add_argument("--fujifilm", type=Path, default=FUJI, help="path of fujifilm.mpo (Pillow's test image)")
    parser.add_argument("--real-groups", default="", help="comma-separated samples/cameras groups to adapt "
                        "and score by NIQE (e.g. canon,nintendo,nokia); default none")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--no-pictures", action="store_true", help="skip the PNG crop grids and curves")
    ablation = parser.add_argument_group("ablations (default: the product's defaults for the device)")
    ablation.add_argument("--steps", type=positive_int, default=None)
    ablation.add_argument("--kernel", choices=("estimate", "bicubic"), default=None)
    ablation.add_argument("--no-augment", action="store_true", help="plain crops, no augmentation")
    ablation.add_argument("--no-early-stop", action="store_true",
                          help="no NIQE early stop: train to the step or time budget, keep the last weights")
    ablation.add_argument("--weights", choices=("attention", "uniform", "gradient", "similarity"), default=None)
    ablation.add_argument("--trainable", choices=("auto", "all", "tail"), default=None)
    ablation.add_argument("--lambda-perceptual", type=float, default=None)
    ablation.add_argument("--lambda-gan", type=float, default=None)
    ablation.add_argument("--ema-decay", type=float, default=None)
    ablation.add_argument("--feature-bank", type=positive_int, default=None,
                          help="tail mode: pairs per evaluation period")
    ablation.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                          help="training autocast (default auto: bf16 where the CPU has it natively and it is "
                          "faster, else fp32); fp32 on a bf16 CPU shows the quality AVX2-only CPUs get")
    parser.add_argument("--baseline-cache", type=Path, default=BASELINE_CACHE,
                        help="JSON file of bicubic/backbone scores by LR images and backbone, reused by "
                             "runs without pictures (ablations)")
    parser.add_argument("--tag", default="", help="suffix of the result files (for ablations)")
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    parser.add_argument("--ablation-table", nargs="+", type=existing_file, metavar="JSON",
                        help="write results/adaptation_quality_v2_cpu_ablations.md comparing these result files")
    parser.add_argument("--hr-niqe", nargs="+", type=existing_file, metavar="JSON",
                        help="add the HR crops' NIQE to result files that lack it, rewrite them and exit")
    parser.add_argument("--merge", nargs="+", type=existing_file, metavar="JSON",
                        help="combine result files of one ablation run as separate processes (e.g. one per "
                        "group) into <out>/adaptation_quality_v2_cpu[_<tag>].*, then exit")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_results(args.merge, args.out, args.tag)
    if args.hr_niqe:
        return fill_hr_niqe(args.hr_niqe, args.fujifilm)
    if args.ablation_table:
        return ablation_table(args.ablation_table, args.out / "adaptation_quality_v2_cpu_ablations.md")
    if args.threads:
        torch.set_num_threads(args.threads)

    from adassr.adapt.precision import resolve_device
    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.weights import load_backbone, load_safetensors_weights

    device = resolve_device(args.device)
    config = build_config(args, device)
    specs = {g.name: g for g in GROUPS + DEV_GROUPS}
    names = [n for n in args.groups.split(",") if n]
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {list(specs)}")
    real_names = [n for n in args.real_groups.split(",") if n]
    if real_names:  # before the synthetic groups run (an hour on a CPU), not after them
        from adassr.adapt.groups import default_images_dir, select_group
        from adassr.runtime.errors import CameraError

        try:
            for real in real_names:
                select_group(default_images_dir(), real)
        except CameraError as exc:
            parser.error(f"--real-groups: {exc}")
    needs_fuji = any(s[0] == "fuji" for n in names for s in specs[n].sources)
    if needs_fuji and not args.fujifilm.is_file():
        parser.error(f"{args.fujifilm} not found: pass --fujifilm PATH (Pillow's Tests/images/fujifilm.mpo)")
    stem = f"adaptation_quality_v2_{'gpu' if device.type == 'cuda' else 'cpu'}" + (f"_{args.tag}" if args.tag else "")
    if args.seeds < 1 or args.first_seed < 0:
        parser.error("--seeds must be >= 1 and --first-seed >= 0")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result: dict[str, Any] = {"machine": _machine(device), "ablation": ablation_label(args),
                              "seeds": seeds, "config": config.to_dict(),
                              "load_start": _load(), "commit": _commit(), "groups": {},
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    lpips_model = load_lpips("alex")
    loaded = load_backbone(device="cpu")
    backbone, backbone_sha = loaded.model.eval(), loaded.weights_sha256
    cache: dict[tuple[str, int], np.ndarray] = {}
    plots = None
    if not args.no_pictures:
        try:
            import quality_plots as plots
        except ImportError as exc:  # matplotlib missing: the numbers still come
            print(f"pictures skipped ({exc}); install the plots extra")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            spec = specs[name]
            hrs, lrs = build_group(spec, args.fujifilm, cache)
            g: dict[str, Any] = {"degradation": spec.describe(),
                                 "images": {k: list(v.shape[:2]) for k, v in lrs.items()},
                                 "sources": [list(s) for s in spec.sources], "runs": [], "hr": hr_niqe(hrs)}
            result["groups"][name] = g
            t0 = time.perf_counter()
            key = baseline_key(lrs, backbone_sha)
            known = {} if plots is not None else stored_baselines(args.baseline_cache).get(key, {})
            backbone_sr = None
            if known:  # the same LR images and backbone were scored before: the scores cannot differ
                g["bicubic"], g["backbone"] = known["bicubic"], known["backbone"]
                g["baselines_from"] = str(args.baseline_cache)
            else:
                g["bicubic"] = score({k: bicubic_up(v) for k, v in lrs.items()}, hrs, lpips_model)
                backbone_sr = {k: super_resolve(backbone, v) for k, v in lrs.items()}
                g["backbone"] = score(backbone_sr, hrs, lpips_model)
                store_baselines(args.baseline_cache, key, {"bicubic": g["bicubic"], "backbone": g["backbone"]})
            g["backbone_scoring_s"] = round(time.perf_counter() - t0, 1)
            print(f"[{name}] bicubic LPIPS {g['bicubic']['lpips']:.4f}, backbone NIQE {g['backbone']['niqe']:.3f} "
                  f"LPIPS {g['backbone']['lpips']:.4f}", flush=True)
            _save(result, args.out, stem)
            for seed in seeds:
                run_config = replace(config, seed=seed)
                start = time.perf_counter()
                outcome, trace = adapt_group(lrs, f"{name}-s{seed}", run_config, work)
                wall = time.perf_counter() - start
                manifest = json.loads((outcome.store_dir / "manifest.json").read_text())
                adapted = load_safetensors_weights(outcome.weights_path, device="cpu").model.eval()
                adapted_sr = {k: super_resolve(adapted, v) for k, v in lrs.items()}
                run = {"seed": seed, "wall_s": round(wall, 1), "steps": outcome.steps,
                       "stop_reason": outcome.stop_reason,
                       "kept_backbone": outcome.kept_backbone, "best_step": manifest.get("best_step"),
                       "timing": manifest.get("timing"),
                       "precision": manifest.get("precision"), "trainable": manifest.get("trainable"),
                       "kernel": {k: v for k, v in manifest["kernel"].items() if k not in ("kernel", "convention")},
                       "niqe_eval_crops": {"before": outcome.niqe_before, "after": outcome.niqe_after},
                       "trace": trace, "load_1min": _load(),
                       "adapted": score(adapted_sr, hrs, lpips_model)}
                g["runs"].append(run)
                print(f"[{name} seed {seed}] {outcome.steps} steps, {wall:.0f} s, NIQE {run['adapted']['niqe']:.3f} "
                      f"LPIPS {run['adapted']['lpips']:.4f} ({outcome.stop_reason})", flush=True)
                _save(result, args.out, stem)
                if plots is not None:
                    plots.curves(result, args.out / f"{stem}_curves.png")
                    if seed == 0 and backbone_sr is not None:
                        plots.crop_grid({"lr": lrs, "hr": hrs, "backbone": backbone_sr, "adapted": adapted_sr},
                                        args.out / f"{stem}_crops_{name}.png", title=f"{name}: {spec.describe()}")
        for name in real_names:
            from adassr.adapt.run import adapt_camera

            start = time.perf_counter()
            group = select_group(default_images_dir(), name)
            outcome = adapt_camera(group, config, store_root=work / "real-store", replace=True)
            result.setdefault("real_groups", {})[name] = {
                "images": len(group.members), "niqe_before": outcome.niqe_before, "niqe_after": outcome.niqe_after,
                "steps": outcome.steps, "stop_reason": outcome.stop_reason, "kept_backbone": outcome.kept_backbone,
                "wall_s": round(time.perf_counter() - start, 1)}
            _save(result, args.out, stem)
    _save(result, args.out, stem)
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    run_script(main)
