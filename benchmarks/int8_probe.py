"""Would an int8 model help onnxruntime on the CPU? Speed and output error against the fp32 model.

Quantises a camera's exported fp32 ONNX model with onnxruntime's static quantiser (QDQ format,
per-channel int8 weights, uint8 activations), calibrated on 48 px crops of the bundled camera
photos, then times both models on LR 128 x 128 crops with the CPU provider and compares their
outputs (PSNR of the int8 output against the fp32 output, and the largest absolute difference,
on [0, 1] RGB). The exported models' tolerance is 1e-4 (fp32) and the fp16 export's error is
about 4e-3 (README), so an int8 model would be offered only if it came close to that.

    python benchmarks/int8_probe.py --model models/nokia/model.<sha>.onnx [--method percentile]

Writes <out>/int8_probe_<cpu>.json and .md (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from script_cli import ScriptError, non_negative_int, output_dir, positive_int, run_script  # noqa: E402

PHOTOS = sorted((ROOT / "samples" / "cameras").glob("*/*.jp*g"))


def crops(n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` random ``size`` x ``size`` crops of the bundled camera photos as 1x3xHxW float32."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = cv2.imread(str(PHOTOS[i % len(PHOTOS)]), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        y = int(rng.integers(0, img.shape[0] - size))
        x = int(rng.integers(0, img.shape[1] - size))
        out.append(np.ascontiguousarray(img[y:y + size, x:x + size].transpose(2, 0, 1)[None]))
    return out


def quantise(model: Path, out: Path, input_name: str, method: str, n_calib: int) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(crops(n_calib, 48, seed=1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    calibration = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
    start = time.perf_counter()
    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=calibration)
    return time.perf_counter() - start


def open_model(ort: Any, model: Path, options: Any) -> Any:
    """An onnxruntime CPU session of ``model``; a file onnxruntime cannot load is a :class:`ScriptError`."""
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's load errors derive from Exception only
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScriptError(f"{model} is not an ONNX model onnxruntime can load ({reason}); pass an exported "
                          "fp32 model.<sha>.onnx (adassr export --camera NAME)") from None


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from adassr.adapt.quality.psnr_ssim import psnr
    from adassr.runtime.cpu_info import detect_cpu
    from adassr.runtime.store import atomic_write_bytes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported fp32 model.<sha>.onnx")
    parser.add_argument("--method", choices=("minmax", "percentile"), nargs="+", default=["minmax", "percentile"])
    parser.add_argument("--calibration-crops", type=positive_int, default=8)
    parser.add_argument("--threads", type=non_negative_int, default=2, help="0: onnxruntime's default")
    parser.add_argument("--out", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} not found: export a camera first (adassr export --camera NAME)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    fp32 = open_model(ort, args.model, options)
    name = fp32.get_inputs()[0].name
    tests = crops(3, 128, seed=7)

    def timed(session: Any) -> list[float]:
        session.run(None, {name: tests[0]})  # warm-up
        times = []
        for x in tests:
            start = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - start)
        return times

    cpu = detect_cpu()
    result: dict[str, Any] = {"cpu": cpu.model_name, "flags": sorted(cpu.flags & {"avx2", "avx512f", "avx512_vnni",
                                                                                   "avx_vnni", "amx_int8"}),
                              "threads": args.threads, "model": args.model.name, "fp32_s": timed(fp32), "int8": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.method:
            path = Path(tmp) / f"int8_{method}.onnx"
            quant_s = quantise(args.model, path, name, method, args.calibration_crops)
            int8 = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            psnr_db, max_abs = [], []
            for x in tests:  # NCHW outputs as HxWx3 in [0, 1]
                a = np.clip(fp32.run(None, {name: x})[0][0], 0, 1).astype(np.float64).transpose(1, 2, 0)
                b = np.clip(int8.run(None, {name: x})[0][0], 0, 1).astype(np.float64).transpose(1, 2, 0)
                psnr_db.append(psnr(b, a, channel="rgb"))
                max_abs.append(float(np.abs(a - b).max()))
            result["int8"][method] = {"quantise_s": round(quant_s, 1), "size_mb": round(path.stat().st_size / 1e6, 1),
                                      "int8_s": timed(int8), "psnr_vs_fp32_db": psnr_db, "max_abs_vs_fp32": max_abs}
            print(method, json.dumps(result["int8"][method]), flush=True)
    slug = "".join(c if c.isalnum() else "-" for c in cpu.model_name.lower()).strip("-")[:40]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / f"int8_probe_{slug}.json", (json.dumps(result, indent=1) + "\n").encode())
    fp32_med = float(np.median(result["fp32_s"]))
    lines = [f"# int8 vs fp32 on the onnxruntime CPU provider ({cpu.model_name})", "",
             f"Flags: {', '.join(result['flags'])}; {args.threads} threads; model `{args.model.name}`; "
             f"LR 128 x 128 crops of the bundled camera photos; `benchmarks/int8_probe.py`.", "",
             "| model | s per call (median of 3) | speed-up | PSNR vs fp32 output (dB, 3 crops) | max abs diff |",
             "|---|---|---|---|---|", f"| fp32 | {fp32_med:.2f} | 1.00x | - | - |"]
    for method, r in result["int8"].items():
        med = float(np.median(r["int8_s"]))
        lines.append(f"| int8 QDQ, {method} calibration | {med:.2f} | {fp32_med / med:.2f}x | "
                     + ", ".join(f"{v:.1f}" for v in r["psnr_vs_fp32_db"]) + " | "
                     + ", ".join(f"{v:.3f}" for v in r["max_abs_vs_fp32"]) + " |")
    atomic_write_bytes(args.out / f"int8_probe_{slug}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
