"""16-bit files of 10-, 12- and 14-bit samples: served at their container's range against their sample range.

Usage (from the repository root, after ``adassr export`` or a first ``adassr upscale``)::

    PYTHONPATH=. python benchmarks/sample_range.py [--store models] [--camera _fallback]
        [--image samples/cameras/canon/flower.jpg] [--crop 128] [--out benchmarks/results]

A crop of the photo is made a full-range 16-bit image (8-bit levels x 257) and, for each sample depth,
the same pixels at that depth (integer division, as a camera's ADC would round). Each is upscaled with
the store's model (onnxruntime, untiled) two ways: divided by 65535 (the container's range, how
``upscale`` served every 16-bit file before) and divided by its sample range (``used_peak``, how it
serves them now), and the output brought back to [0, 1] by the same divisor. Recorded per depth: the
output's mean brightness over the full-range output's, and PSNR against the full-range output.
Results: ``<out>/sample_range_<cpu>.{json,md}``, with the CPU named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from script_cli import ScriptError, existing_dir, existing_file, int_at_least, output_dir, run_script  # noqa: E402

DEPTHS = (10, 12, 14)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def measure(image: Path, store: Path, camera: str, crop: int) -> dict[str, Any]:
    from adassr.runtime.images import read_image
    from adassr.runtime.images.convert import used_peak
    from adassr.runtime.pipeline import upscale_pixels
    from adassr.runtime.routing import resolve_model
    from adassr.runtime.tiling import TilingOptions, upscale_tiled

    pixels = read_image(image).pixels
    if pixels.dtype != np.uint8 or pixels.shape[2] != 3:
        raise ScriptError(f"--image {image} must be an 8-bit RGB photo")
    h, w = pixels.shape[:2]
    if min(h, w) < crop:
        raise ScriptError(f"--image {image} is {w}x{h}, smaller than --crop {crop}")
    y, x = (h - crop) // 2, (w - crop) // 2
    full = pixels[y:y + crop, x:x + crop].astype(np.uint16) * 257
    route = resolve_model(store, camera=camera, precision="fp32")
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(route.onnx_path) as backend:
        untiled = TilingOptions(tile=0)
        reference, _ = upscale_pixels(full, backend.infer, scale=route.scale, tiling=untiled)
        ref = reference.astype(np.float64) / 65535
        rows = []
        for bits in DEPTHS:
            top = 2**bits - 1
            samples = (full.astype(np.uint32) * top // 65535).astype(np.uint16)
            assert used_peak(samples) == top
            container = upscale_tiled(samples.astype(np.float32) / np.float32(65535), backend.infer,
                                      scale=route.scale, options=untiled)
            old = np.clip(container, 0.0, 1.0).astype(np.float64) * 65535 / top  # its own range, as now
            new, _ = upscale_pixels(samples, backend.infer, scale=route.scale, tiling=untiled)
            now = new.astype(np.float64) / top
            rows.append({
                "bits": bits, "peak": top,
                "container_range": {"mean_over_full": float(old.mean() / ref.mean()), "psnr_db": _psnr(old, ref)},
                "sample_range": {"mean_over_full": float(now.mean() / ref.mean()), "psnr_db": _psnr(now, ref)},
            })
    return {"image": str(image.relative_to(ROOT) if image.is_relative_to(ROOT) else image), "crop": [y, x, crop],
            "model": f"{route.label} ({route.onnx_path.name})", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=existing_dir, default=Path("models"), help="the store (default ./models)")
    parser.add_argument("--camera", default="_fallback")
    parser.add_argument("--image", type=existing_file, default=ROOT / "samples" / "cameras" / "canon" / "flower.jpg")
    parser.add_argument("--crop", type=int_at_least(16), default=128, help="side of the centre crop (default 128)")
    parser.add_argument("--out", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from adassr.runtime.cpu_info import detect_cpu, report_tag
    from adassr.runtime.store import atomic_write_bytes

    cpu = detect_cpu()
    result = {"cpu": cpu.label, **measure(args.image, args.store, args.camera, args.crop)}
    lines = [f"# 16-bit files of fewer bits: container range vs sample range ({cpu.label})", "",
             f"{result['image']}, centre crop {args.crop} px, made 16-bit (x 257) and cut to each sample depth; "
             f"model {result['model']}, untiled. Mean = output's mean brightness over the full-range file's "
             "output; PSNR against that output (both brought back to [0, 1] by their divisor).", "",
             "| sample bits | divided by 65535: mean | PSNR dB | divided by the sample range: mean | PSNR dB |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        old, now = r["container_range"], r["sample_range"]
        lines.append(f"| {r['bits']} | {old['mean_over_full']:.3f} | {old['psnr_db']:.1f} "
                     f"| {now['mean_over_full']:.3f} | {now['psnr_db']:.1f} |")
    import json

    tag = report_tag(cpu.model_name, cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / f"sample_range_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / f"sample_range_{tag}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
