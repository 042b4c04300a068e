"""Does adaptation work? A synthetic camera with ground truth.

The camera: the five clean photos of tests/data/hr blurred with one fixed anisotropic Gaussian
kernel, downsampled x4, with Gaussian noise and JPEG compression. `adapt_camera` adapts the
backbone to that group using only the LR images (the kernel is estimated, not given); then the
unadapted backbone, the adapted model and bicubic upscaling are scored against the HR photos:
NIQE (no reference) and LPIPS-Alex (full reference, lower is better), plus PSNR-Y for context.

    python benchmarks/adaptation_quality.py [--steps N] [--device cpu|cuda] [--out DIR]

Writes benchmarks/results/adaptation_quality_<device>.{json,md}. Nothing here tunes to these
images: the adaptation runs with the product's defaults for the device (CPU demo budget or
the paper's GPU settings), except the LR patch, which is capped so every photo fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
HR_DIR = ROOT / "tests" / "data" / "hr"
RESULTS = ROOT / "benchmarks" / "results"
CAMERA = {"sigma_x": 2.4, "sigma_y": 1.2, "theta_deg": 30.0, "noise_sigma_255": 3.0, "jpeg_quality": 75}


def synthesize_camera(out_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the synthetic camera's LR PNGs into out_dir/synthcam; return the HR crops by name."""
    from adassr.adapt.degradation import blur_downsample, gaussian_kernel
    from adassr.runtime.images import read_image, to_float32, write_image

    rng = np.random.default_rng(seed)
    kernel = gaussian_kernel(CAMERA["sigma_x"], CAMERA["sigma_y"], np.deg2rad(CAMERA["theta_deg"]), scale=4)
    group = out_dir / "synthcam"
    group.mkdir(parents=True, exist_ok=True)
    hrs = {}
    for path in sorted(HR_DIR.glob("*.png")):
        hr = to_float32(read_image(path).pixels)
        if hr.shape[2] == 1:
            hr = np.repeat(hr, 3, axis=2)
        h, w = (hr.shape[0] // 4) * 4, (hr.shape[1] // 4) * 4
        hr = np.ascontiguousarray(hr[:h, :w])
        lr = blur_downsample(hr, kernel, 4)
        lr = np.clip(lr + rng.normal(0, CAMERA["noise_sigma_255"] / 255, lr.shape), 0, 1)
        u8 = (lr * 255 + 0.5).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, CAMERA["jpeg_quality"]])
        assert ok
        lr_u8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        write_image(group / f"{path.stem}.png", np.ascontiguousarray(lr_u8))
        hrs[path.stem] = hr
    return hrs


def _sr(model: torch.nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()).to(device)
    with torch.no_grad():
        y = model(x).clamp(0, 1)
    return y[0].permute(1, 2, 0).cpu().numpy()


def score(outputs: dict[str, np.ndarray], hrs: dict[str, np.ndarray], lpips_model) -> dict[str, float]:
    from adassr.adapt.quality.niqe import niqe
    from adassr.adapt.quality.psnr_ssim import psnr

    niqes, lpipss, psnrs = [], [], []
    for name, sr in outputs.items():
        hr = hrs[name]
        niqes.append(niqe(sr, crop_border=4))
        psnrs.append(psnr(sr, hr, crop_border=4, channel="y"))
        with torch.no_grad():
            a = torch.from_numpy(sr.transpose(2, 0, 1)[None].copy())
            b = torch.from_numpy(hr.transpose(2, 0, 1)[None].copy())
            lpipss.append(float(lpips_model(a, b).reshape(-1)[0]))
    return {"niqe": float(np.mean(niqes)), "lpips": float(np.mean(lpipss)), "psnr_y": float(np.mean(psnrs)),
            "per_image_niqe": [float(v) for v in niqes], "per_image_lpips": [float(v) for v in lpipss]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="override the device default")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--trainable", choices=("auto", "all", "tail"), default=None, help="override the default")
    parser.add_argument("--lambda-gan", type=float, default=None, help="internal patch-GAN weight (default off)")
    parser.add_argument("--tag", default="", help="suffix of the result files (for variants)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults
    from adassr.adapt.groups import select_group
    from adassr.adapt.pairs import PairConfig, min_image_size
    from adassr.adapt.precision import resolve_device
    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.run import adapt_camera
    from adassr.adapt.weights import load_backbone, load_safetensors_weights

    device = resolve_device(args.device)
    config = gpu_defaults() if device.type == "cuda" else cpu_demo_defaults()
    config = config.with_overrides(steps=args.steps, device=device.type, trainable=args.trainable,
                                   lambda_gan=args.lambda_gan)
    with tempfile.TemporaryDirectory() as tmp:
        hrs = synthesize_camera(Path(tmp))
        group = select_group(tmp, "synthcam")
        from adassr.runtime.images import read_image, to_float32

        lrs = {m.path.stem: to_float32(read_image(m.path).pixels) for m in group.members}
        smallest = min(min(v.shape[:2]) for v in lrs.values())
        patch = config.lr_patch
        while patch > 8 and min_image_size(PairConfig(scale=4, lr_patch=patch), (24, 24)) > smallest:
            patch -= 2
        config = replace(config, lr_patch=patch)
        start = time.perf_counter()
        outcome = adapt_camera(group, config, store_root=Path(tmp) / "store")
        adapt_s = time.perf_counter() - start
        manifest = json.loads((outcome.store_dir / "manifest.json").read_text())

        backbone = load_backbone(device=str(device)).model.eval()
        adapted = load_safetensors_weights(outcome.weights_path, device=str(device)).model.eval()
        lpips_model = load_lpips("alex")
        rows = {}
        for label, model in (("backbone (Real-ESRGAN x4plus)", backbone), ("AdaSSR adapted", adapted)):
            rows[label] = score({n: _sr(model, lr, device) for n, lr in lrs.items()}, hrs, lpips_model)
        bicubic = {n: np.clip(cv2.resize(lr, (lr.shape[1] * 4, lr.shape[0] * 4), interpolation=cv2.INTER_CUBIC), 0, 1)
                   for n, lr in lrs.items()}
        rows["bicubic"] = score(bicubic, hrs, lpips_model)

    from adassr.export.bench import machine_name

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU {machine_name()}, {torch.get_num_threads()} torch threads")
    result = {
        "device": device_name, "camera": CAMERA, "images": sorted(lrs), "adapt_wall_s": round(adapt_s, 1),
        "config": config.to_dict(), "steps": outcome.steps, "stop_reason": outcome.stop_reason,
        "kept_backbone": outcome.kept_backbone, "kernel_estimate": manifest["kernel"],
        "niqe_eval_crops": {"before": outcome.niqe_before, "after": outcome.niqe_after},
        "scores": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = ("gpu" if device.type == "cuda" else "cpu") + (f"_{args.tag}" if args.tag else "")
    (args.out / f"adaptation_quality_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Adaptation quality on a synthetic camera ({device_name})", "",
        f"Camera: anisotropic Gaussian blur sigma ({CAMERA['sigma_x']}, {CAMERA['sigma_y']}) HR px at "
        f"{CAMERA['theta_deg']} deg, x4, Gaussian noise {CAMERA['noise_sigma_255']}/255, "
        f"JPEG q{CAMERA['jpeg_quality']}; "
        f"images: {', '.join(sorted(lrs))} (tests/data/hr).",
        f"Adaptation: {outcome.steps} steps, LR patch {patch}, trainable {config.trainable}, lambda_gan "
        f"{config.lambda_gan}, {adapt_s:.0f} s; stop: {outcome.stop_reason}.",
        f"Estimated kernel: {json.dumps({k: v for k, v in manifest['kernel'].items() if k != 'kernel'})}", "",
        "| model | NIQE (lower better) | LPIPS-Alex vs HR (lower better) | PSNR-Y dB |", "|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['niqe']:.3f} | {r['lpips']:.4f} | {r['psnr_y']:.2f} |")
    b, a = rows["backbone (Real-ESRGAN x4plus)"], rows["AdaSSR adapted"]
    lines += ["", f"Target (NIQE lower by >= 0.1, LPIPS not higher): NIQE {a['niqe'] - b['niqe']:+.3f}, "
              f"LPIPS {a['lpips'] - b['lpips']:+.4f} -> "
              f"{'met' if a['niqe'] <= b['niqe'] - 0.1 and a['lpips'] <= b['lpips'] else 'NOT met'}."]
    (args.out / f"adaptation_quality_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
