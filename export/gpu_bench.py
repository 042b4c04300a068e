"""Inference latency on a GPU against the compute bound: PyTorch modes, TensorRT, onnxruntime-gpu.

The work of one call is counted from the model itself (:func:`macs_per_lr_pixel`: every Conv2d's
multiply-accumulates per LR input pixel, measured with forward hooks; RRDBNet x4 with 23 blocks
gives 17.93 M). One frame of H x W LR pixels costs ``2 * MACs * H * W`` FLOP (4.65 TFLOP for
480 x 270); the *compute bound* is that divided by the GPU's dense fp16 tensor-core peak
(:data:`GPU_PEAKS`), and each measurement is reported as the fraction of that bound reached
(bound time / measured time) together with its effective TFLOP/s.

Timing: ``warmup`` calls, then ``repeats`` calls each ended by a device synchronisation;
p50 / p95 / p99 in milliseconds. ``device`` rows time the model on a tensor already on the GPU;
``end-to-end`` rows include the host copies of a numpy frame in and out (what the runtime does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GPU_PEAKS: dict[str, float] = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.5e12,
    "A100": 312e12,
    "L40S": 362e12,
    "RTX 4090": 165.2e12,
}
"""Dense fp16 tensor-core peak FLOP/s (fp32 accumulate where the vendor lists it), by GPU name."""


def gpu_peak(name: str) -> tuple[str, float] | None:
    """The peak table entry whose words all occur in the device ``name`` (longest match first)."""
    low = name.lower().replace("-", " ")
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if all(word.lower() in low for word in key.split()):
            return key, GPU_PEAKS[key]
    if "h100" in low:
        return "H100 SXM", GPU_PEAKS["H100 SXM"]
    return None


def macs_per_lr_pixel(model: Any, *, side: int = 16) -> float:
    """Conv2d multiply-accumulates per LR input pixel, counted on a ``side`` x ``side`` input."""
    import torch

    total = 0

    def hook(module: torch.nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    param = next(model.parameters())
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return total / float(side * side)


@dataclass(frozen=True)
class Roofline:
    """The compute bound of one call."""

    macs_per_lr_pixel: float
    lr_pixels: int
    peak_flops: float | None
    peak_name: str | None

    @property
    def flop(self) -> float:
        return 2.0 * self.macs_per_lr_pixel * self.lr_pixels

    @property
    def bound_ms(self) -> float | None:
        return None if not self.peak_flops else self.flop / self.peak_flops * 1e3

    def row(self, label: str, times_ms: list[float], out_pixels: int, **extra: Any) -> dict[str, Any]:
        arr = np.asarray(times_ms)
        p50 = float(np.percentile(arr, 50))
        row: dict[str, Any] = {
            "mode": label, "p50_ms": p50, "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "repeats": len(times_ms),
            "out_mpix_per_s": out_pixels / 1e6 / (p50 / 1e3), "effective_tflops": self.flop / (p50 / 1e3) / 1e12,
        }
        bound = self.bound_ms
        row["fraction_of_bound"] = None if bound is None else bound / p50
        row.update(extra)
        return row

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flop": self.flop, "bound_ms": self.bound_ms}


def time_ms(fn: Callable[[], object], sync: Callable[[], None], *, warmup: int, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` (each followed by ``sync``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def torch_rows(model_factory: Callable[[], Any], frame: np.ndarray, roofline: Roofline, *, device: str,
               modes: list[tuple[str, bool, bool]], warmup: int, repeats: int, scale: int) -> list[dict[str, Any]]:
    """PyTorch rows for ``modes`` = ``[(precision, channels_last, cuda_graph), ...]``; errors become rows."""
    import torch

    from adassr.adapt.gpu_infer import TorchRunner, TorchRunOptions

    is_cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize()

    n, _, h, w = frame.shape
    out_pixels = n * h * w * scale * scale
    rows = []
    for precision, channels_last, graph in modes:
        options = TorchRunOptions(device, precision, channels_last, graph)
        label = f"torch {options.label}"
        try:
            if is_cuda:
                torch.cuda.reset_peak_memory_stats()
            runner = TorchRunner(model_factory(), options)
            x = torch.from_numpy(frame).to(device)

            def on_device(runner: TorchRunner = runner, x: torch.Tensor = x) -> object:
                return runner.run_tensor(x)

            def end_to_end(runner: TorchRunner = runner) -> object:
                return runner(frame)

            dev = time_ms(on_device, sync, warmup=warmup, repeats=repeats)
            e2e = time_ms(end_to_end, sync, warmup=1, repeats=repeats)
            memory = torch.cuda.max_memory_allocated() / 2**20 if is_cuda else None
            rows.append(roofline.row(label + " (device)", dev, out_pixels, gpu_memory_mib=memory))
            rows.append(roofline.row(label + " (end-to-end)", e2e, out_pixels, gpu_memory_mib=memory))
            del runner, x
        except Exception as exc:  # noqa: BLE001 - one failing mode must not hide the others
            rows.append({"mode": label, "error": f"{type(exc).__name__}: {exc}"})
        if is_cuda:
            torch.cuda.empty_cache()
    return rows


def backend_row(label: str, infer: Callable[[np.ndarray], np.ndarray], frame: np.ndarray, roofline: Roofline, *,
                warmup: int, repeats: int, scale: int, **extra: Any) -> dict[str, Any]:
    """An end-to-end row for a runtime backend's ``infer`` (numpy in, numpy out, synchronous)."""
    n, _, h, w = frame.shape
    times = time_ms(lambda: infer(frame), lambda: None, warmup=warmup, repeats=repeats)
    return roofline.row(label, times, n * h * w * scale * scale, **extra)
