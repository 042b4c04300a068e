"""CPU roofline for ``adassr bench latency``: achieved GFLOP/s of the network against the CPU's peak.

- Work: 2 x the multiply-accumulates of every Conv of the ONNX graph per input pixel
  (:func:`conv_macs_per_input_pixel`, from ONNX shape inference at a fixed probe size; RRDBNet x4:
  17,926,848 MAC per LR pixel). Other ops (concat, add, resize) and the 1x1 Convs that stand for a
  scalar multiply (export/ort_layout.py) are not counted.
- Nominal peak: :func:`adassr.runtime.cpu_info.fp32_peak` (cores x clock x FMA units x fp32 lanes
  x 2, formula printed). onnxruntime runs the CPU's own ISA (MLAS chooses by ``cpuid``); PyTorch
  runs the ISA that ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` allow.
- Measured ceiling: the best of a few fp32 GEMMs (2048 x 2048 x 2048) on the same threads, timed
  just after each benchmark row (onnxruntime MatMul, i.e. MLAS SGEMM, and ``torch.mm`` for PyTorch).
  When other processes share the cores, the ratio to this ceiling is steadier than the ratio to
  the nominal peak: both were measured under the same load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from adassr.export.ort_layout import SCALE_AS_CONV_SUFFIX
from adassr.runtime.cpu_info import CpuInfo, detect_cpu, fp32_peak, isa_cap_from_env

GEMM_SIZE = 2048


def conv_macs_per_input_pixel(onnx_path: str | Path, probe: int = 16) -> float:
    """Conv multiply-accumulates per input pixel of an NCHW image model (shapes inferred at ``probe``)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, probe, probe), strict=False):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    total = 0
    for node in inferred.graph.node:
        if node.op_type != "Conv" or node.name.endswith(SCALE_AS_CONV_SUFFIX):
            continue  # the 1x1 scalings of export/ort_layout.py stand for a Mul: not the model's work
        w = weights.get(node.input[1])
        out = shapes.get(node.output[0])
        if w is None or not out or len(out) != 4 or 0 in out:
            raise ValueError(f"cannot size Conv {node.name!r} of {onnx_path} (weight {w}, output {out})")
        total += out[2] * out[3] * int(np.prod(w))
    return total / float(probe * probe)


def _best_gflops(fn: Any, flop: float, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flop / best / 1e9


def ort_gemm_gflops(threads: int, n: int = GEMM_SIZE, repeats: int = 5) -> float:
    """fp32 GEMM GFLOP/s of onnxruntime's CPU MatMul (MLAS SGEMM) on ``threads`` threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)}
    return _best_gflops(lambda: session.run(None, feeds), 2.0 * n**3, repeats)


def torch_gemm_gflops(threads: int, n: int = GEMM_SIZE, repeats: int = 5) -> float:
    """fp32 GEMM GFLOP/s of ``torch.mm`` on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    return _best_gflops(lambda: torch.mm(a, b), 2.0 * n**3, repeats)


def cpu_roofline(rows: list[dict[str, Any]], macs_per_pixel: float, threads: int,
                 cpu: CpuInfo | None = None) -> dict[str, Any]:
    """Roofline record of benchmark ``rows`` (``backend``, ``size``, ``p50_ms``, optional ``gemm_gflops``
    measured just after that row) on this CPU."""
    cpu = cpu or detect_cpu()
    cap = isa_cap_from_env()
    kinds = {"torch" if row["backend"].startswith("torch") else "onnxruntime" for row in rows}
    cores = min(threads, cpu.physical_cores)  # threads beyond the cores share them: no more peak
    peaks = {kind: fp32_peak(cpu, isa_cap=cap if kind == "torch" else None, cores=cores) for kind in sorted(kinds)}
    out_rows = []
    for row in rows:
        peak = peaks["torch" if row["backend"].startswith("torch") else "onnxruntime"]
        flop = 2.0 * macs_per_pixel * row["size"] ** 2
        achieved = flop / (row["p50_ms"] / 1000.0) / 1e9
        ceiling = row.get("gemm_gflops")
        out_rows.append({
            "backend": row["backend"], "size": row["size"], "gflop_per_call": flop / 1e9,
            "achieved_gflops": achieved, "gemm_gflops": ceiling,
            "of_nominal_peak": None if peak.gflops is None else achieved / peak.gflops,
            "of_measured_gemm": None if not ceiling else achieved / ceiling,
        })
    return {
        "cpu": cpu.label,
        "threads": threads,
        "clock_source": cpu.clock_source,
        "isa_cap_for_torch": cap,
        "macs_per_input_pixel": macs_per_pixel,
        "nominal_peak": {k: {"gflops": p.gflops, "formula": p.formula} for k, p in peaks.items()},
        "rows": out_rows,
        "note": "onnxruntime's MLAS picks its kernels by cpuid (no run-time ISA switch); "
                "ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA limit only PyTorch",
    }


def roofline_markdown(roof: dict[str, Any]) -> list[str]:
    """Markdown lines for a :func:`cpu_roofline` record."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = ["", f"## CPU roofline ({roof['cpu']}, {roof['threads']} threads)", "",
             f"Work: 2 x {roof['macs_per_input_pixel'] / 1e6:.2f} M MAC per input pixel (Conv only).", ""]
    for kind, peak in roof["nominal_peak"].items():
        lines.append(f"- nominal fp32 peak, {kind}: {peak['formula']} (clock from {roof['clock_source']})")
    lines.append(f"- measured ceiling: fp32 GEMM {GEMM_SIZE}^3 of the same library on the same threads, "
                 "timed just after each row")
    lines += ["", "| backend | LR size | GFLOP per call | achieved GFLOP/s | GEMM GFLOP/s | of nominal peak "
              "| of measured GEMM |", "|---|---|---|---|---|---|---|"]
    for r in roof["rows"]:
        gemm = "-" if r["gemm_gflops"] is None else f"{r['gemm_gflops']:.1f}"
        lines.append(f"| {r['backend']} | {r['size']} | {r['gflop_per_call']:.1f} | {r['achieved_gflops']:.1f} "
                     f"| {gemm} | {pct(r['of_nominal_peak'])} | {pct(r['of_measured_gemm'])} |")
    lines.append("")
    lines.append(f"Note: {roof['note']}.")
    return lines
