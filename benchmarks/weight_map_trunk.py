"""The weight maps' trunk on a CPU: PyTorch (fp32, and bf16 where native) against onnxruntime fp32.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/weight_map_trunk.py [--rounds 3] [--out benchmarks/results]

Each loss-weight map of an adaptation costs one pass of the backbone's trunk
(``RRDBNet.trunk_features``) over its LR image resized to a 256-pixel longer side. This times that
pass, with the backbone's real weights and a real photo, the way ``adapt`` runs it:

- ``torch fp32``: :func:`adassr.adapt.attention.trunk_features` (channels-last input);
- ``torch bf16``: the same under bf16 autocast, only where the CPU has native bf16;
- ``onnxruntime fp32``: :class:`adassr.adapt.feature_trunk.OnnxRuntimeTrunk`, what ``adapt`` uses
  on an fp32 CPU; its one-off cost (writing the graph and opening the session) is timed apart.

The engines alternate for ``--rounds`` rounds after one warm-up call each; the median is kept.
Rates count the trunk's convolutions (``export/gpu_bench.macs_per_lr_pixel``) against the CPU's
nominal fp32 peak (``runtime/cpu_info.py``). Results: ``<out>/weight_map_trunk_<cpu>.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cpu_bench_setup import ROOT, cpu_bench, parse_round_args, write_results

PHOTO = ROOT / "tests" / "data" / "hr" / "coffee.png"
SIZES = ((256, 171), (256, 256))  # (width, height) of the resized LR image


def _photo(width: int, height: int) -> np.ndarray:
    import cv2

    from adassr.runtime.images import read_image, to_float32

    image = to_float32(read_image(PHOTO).pixels)[..., :3]
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def _trunk_macs(model: Any) -> int:
    import torch

    from adassr.export.gpu_bench import macs_per_lr_pixel

    class Trunk(torch.nn.Module):  # the weight map's part of the network, for counting its convolutions
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return model.trunk_features(x)

    return macs_per_lr_pixel(Trunk())


def _engines(model: Any, bf16: bool) -> dict[str, Callable[[np.ndarray], Any]]:
    import torch

    from adassr.adapt.feature_trunk import OnnxRuntimeTrunk, torch_trunk
    from adassr.adapt.precision import Precision

    cpu = torch.device("cpu")
    engines = {"torch fp32": torch_trunk(model, device=cpu, precision=Precision("fp32", "cpu"))}
    if bf16:
        engines["torch bf16"] = torch_trunk(model, device=cpu, precision=Precision("bf16", "cpu"))
    engines["onnxruntime fp32"] = OnnxRuntimeTrunk(model)
    return engines


def _seconds(run: Callable[[np.ndarray], Any], image: np.ndarray) -> float:
    start = time.perf_counter()
    run(image)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_round_args(__doc__, argv)

    import torch

    from adassr.adapt.cpu_setup import torch_has_native_bf16

    bench = cpu_bench()
    cpu, threads, peak, model = bench.cpu, bench.threads, bench.peak_gflops, bench.model
    macs = _trunk_macs(model)
    engines = _engines(model, torch_has_native_bf16(cpu))
    rows: list[dict[str, Any]] = []
    first_call: dict[str, float] = {}
    for width, height in SIZES:
        image = _photo(width, height)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for name, run in engines.items():  # warm-up; the session of onnxruntime opens at its first call
            seconds = _seconds(run, image)
            first_call.setdefault(name, seconds)
        for _ in range(args.rounds):
            for name, run in engines.items():
                times[name].append(_seconds(run, image))
        for name in engines:
            median = statistics.median(times[name])
            gflops = 2 * macs * width * height / median / 1e9
            row = {"size": f"{width}x{height}", "engine": name, "median_s": median, "gflops": gflops,
                   "of_peak": None if not peak else gflops / peak, "times": times[name]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    one_off = {name: first_call[name] - statistics.median(
        [r["median_s"] for r in rows if r["engine"] == name and r["size"] == f"{SIZES[0][0]}x{SIZES[0][1]}"])
        for name in engines}
    _write(args.out, cpu, threads, peak, torch.__version__, rows, one_off)
    return 0


def _write(out: Path, cpu: Any, threads: int, peak: float | None, torch_version: str,
           rows: list[dict[str, Any]], one_off: dict[str, float]) -> None:
    import onnxruntime

    result = {"cpu": cpu.label, "threads": threads, "fp32_peak_gflops": peak, "torch": torch_version,
              "onnxruntime": onnxruntime.__version__, "rows": rows, "first_call_extra_s": one_off}
    lines = [f"# The weight maps' trunk on a CPU ({cpu.label})", "",
             f"torch {torch_version}, onnxruntime {onnxruntime.__version__}, {threads} threads, backbone "
             f"realesrgan-x4plus, a real photo; median of the rounds (the engines alternate); nominal fp32 peak "
             f"{'unknown' if peak is None else f'{peak:.1f} GFLOP/s'}.", "",
             "| LR size | engine | median s | GFLOP/s | of fp32 peak | vs torch fp32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b["median_s"] for b in rows if b["size"] == r["size"] and b["engine"] == "torch fp32")
        share = "-" if r["of_peak"] is None else f"{r['of_peak']:.0%}"
        lines.append(f"| {r['size']} | {r['engine']} | {r['median_s']:.2f} | {r['gflops']:.1f} | {share} "
                     f"| {base / r['median_s']:.2f}x |")
    lines += ["", "First call's extra time (warm-up of the first size minus its median; for onnxruntime "
              "the graph is written and the session opened then): "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in one_off.items()) + "."]
    write_results(out, "weight_map_trunk", cpu, result, lines)

if __name__ == "__main__":
    from script_cli import run_script  # this folder is sys.path[0] for a script

    run_script(main)
