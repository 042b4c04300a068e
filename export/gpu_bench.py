"""Inference latency on a GPU against the compute bound: PyTorch modes, TensorRT, onnxruntime-gpu.

The work of one call is counted from the model itself (``adassr bench latency`` counts every Conv's
multiply-accumulates per LR input pixel in the fp32 ONNX graph,
:func:`adassr.export.roofline.conv_macs_per_input_pixel`; :func:`macs_per_lr_pixel` counts the same with
forward hooks on a PyTorch model; RRDBNet x4 with 23 blocks gives 17.93 M). One frame of H x W LR
pixels costs ``2 * MACs * H * W`` FLOP (4.65 TFLOP for 480 x 270); the *compute bound* is that
divided by the GPU's dense fp16 tensor-core peak (:data:`GPU_PEAKS`), and each measurement is
reported as the fraction of that bound reached (bound time / measured time) together with its
effective TFLOP/s.

Timing: ``warmup`` calls, then ``repeats`` calls each ended by a device synchronisation;
p50 / p95 / p99 in milliseconds. ``device`` rows time the model on a tensor already on the GPU;
``end-to-end`` rows include the host copies of a numpy frame in and out (what the runtime does).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from adassr.export.bench import LatencyOptions

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
    words = set(re.findall(r"[a-z0-9]+", low))  # whole words: "A100" is not in "RTX A1000"
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if all(word.lower() in words for word in key.split()):
            return key, GPU_PEAKS[key]
    if "h100" in words:
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


# -- `adassr bench latency` on a GPU (or with --backend torch / tensorrt) ----------------------------


def _sides(args: LatencyOptions) -> list[tuple[int, int]]:
    """LR (height, width) cases: ``--frame WxH`` if given, else the square ``--sizes``."""
    from adassr.export.bench import _sizes, parse_frame

    if getattr(args, "frame", None):
        return [parse_frame(str(args.frame))]
    return [(s, s) for s in _sizes(str(args.sizes))]


def _gpu_name(device: int) -> str | None:
    try:
        from adassr.runtime.gpu import device_identity

        return device_identity(device).name
    except Exception:  # noqa: BLE001 - no cuda-python or no driver: try torch, else unknown
        try:
            import torch

            return str(torch.cuda.get_device_name(device)) if torch.cuda.is_available() else None
        except ImportError:
            return None


def _device_used_mib() -> float | None:
    try:
        from adassr.runtime.gpu import memory_info

        free, total = memory_info()
        return (total - free) / 2**20
    except Exception:  # noqa: BLE001 - memory is reported when cuda-python can read it
        return None


def run_gpu_latency(args: LatencyOptions) -> dict[str, Any]:
    """Latency rows for ``--backend onnxruntime|tensorrt|torch`` with ``--precision``, ``--batch``, ``--gpu``."""
    from adassr.export.bench import _crop, check_latency_options, machine_name, resolve_bench_model
    from adassr.export.roofline import conv_macs_per_input_pixel
    from adassr.runtime.errors import ConfigError

    check_latency_options(args, gpu_report=True)
    precision = args.precision
    if args.backend == "onnxruntime" and precision == "bf16":
        raise ConfigError("onnxruntime has no bf16 model; use --precision fp32 or fp16, or --backend tensorrt / torch")
    route = resolve_bench_model(args, precision="fp16" if precision == "fp16" else "fp32")
    fp32_route = resolve_bench_model(args)
    macs = conv_macs_per_input_pixel(fp32_route.onnx_path)
    device = 0 if args.gpu is None else args.gpu
    on_gpu = args.gpu is not None or args.backend == "tensorrt"
    name = _gpu_name(device) if on_gpu else None
    peak = gpu_peak(name) if name else None
    rows: list[dict[str, Any]] = []
    for h, w in _sides(args):
        crop = _crop(max(h, w), args.image)[:h, :w].transpose(2, 0, 1)
        frame = np.ascontiguousarray(np.repeat(crop[None], args.batch, axis=0))
        roofline = Roofline(macs, args.batch * h * w, peak[1] if peak else None, peak[0] if peak else None)
        common = {"lr_size": f"{w}x{h}", "batch": args.batch, "precision": precision}
        if args.backend == "torch":
            rows += [{**common, **row} for row in _torch_bench_rows(args, route, frame, roofline, on_gpu, device)]
        elif args.backend == "tensorrt":
            rows.append({**common, **_tensorrt_bench_row(args, frame, roofline, device)})
        else:
            rows.append({**common, **_ort_bench_row(args, route, frame, roofline, on_gpu, device)})
    return {"machine": name or machine_name(), "gpu": name, "peak": peak, "macs_per_lr_pixel": macs,
            "model": {"camera": route.model_camera, "file": route.onnx_path.name, "sha256": route.sha256},
            "backend": args.backend, "rows": rows}


def _torch_bench_rows(args: LatencyOptions, route: Any, frame: np.ndarray, roofline: Roofline, on_gpu: bool,
                      device: int) -> list[dict[str, Any]]:
    import torch

    from adassr.adapt.infer import choose_weights
    from adassr.adapt.precision import select_gpu

    if on_gpu:
        select_gpu(device)
    if args.threads:  # the CPU rows run on the threads asked for, as onnxruntime's do
        torch.set_num_threads(args.threads)
    target = torch.device("cuda", device) if on_gpu else torch.device("cpu")
    camera = None if route.is_fallback else route.model_camera
    backbone = (route.manifest.get("backbone") or {}).get("name", "realesrgan-x4plus")
    choice = choose_weights(route.store.root, camera, backbone, torch.device("cpu"))
    state = {k: v.clone() for k, v in choice.model.state_dict().items()}

    def factory() -> Any:
        model = choose_weights(route.store.root, camera, backbone, torch.device("cpu")).model
        model.load_state_dict(state)
        return model

    modes = [(args.precision, on_gpu, False)] + ([(args.precision, True, True)] if on_gpu and args.cuda_graph else [])
    return torch_rows(factory, frame, roofline, device=str(target), modes=modes, warmup=2, repeats=args.repeats,
                      scale=route.scale)


def _tensorrt_bench_row(args: LatencyOptions, frame: np.ndarray, roofline: Roofline, device: int) -> dict[str, Any]:
    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines import exact_profile
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine
    from adassr.runtime.store import FALLBACK_CAMERA

    n, _, h, w = frame.shape
    request = EngineRequest(args.store, args.camera or FALLBACK_CAMERA, args.precision, (exact_profile(n, h, w),),
                            device=device)
    result = ensure_camera_engine(request, TensorRTToolkit())
    before = _device_used_mib()
    with TensorRTBackend(result.path, device=device, cuda_graph=args.cuda_graph, streams=1) as backend:
        after = _device_used_mib()
        memory = None if before is None or after is None else after - before
        label = f"tensorrt {args.precision}{' CUDA graph' if args.cuda_graph else ''}"
        scale = backend.infer(frame).shape[2] // h  # the engine's own scale (the camera's model may not be x4)
        return backend_row(label, backend.infer, frame, roofline, warmup=3, repeats=args.repeats, scale=scale,
                           gpu_memory_mib=memory, engine=result.path.name, engine_built=result.built,
                           refit_s=result.record.refit_s)


def _ort_bench_row(args: LatencyOptions, route: Any, frame: np.ndarray, roofline: Roofline, on_gpu: bool,
                   device: int) -> dict[str, Any]:
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from adassr.runtime.backends.ort_options import GpuProviderSettings, ort_trt_cache_dir
    from adassr.runtime.engines import exact_profile

    n, _, h, w = frame.shape
    profiles = (exact_profile(n, h, w),)
    import onnxruntime

    cache = ort_trt_cache_dir(route.store.directory, route.sha256, route.precision, profiles, onnxruntime.__version__)
    settings = GpuProviderSettings(device_id=device, fp16=route.precision == "fp16", cache_dir=cache,
                                   profiles=profiles, input_name=route.input_name or "lr")
    before = _device_used_mib() if on_gpu else None
    with OnnxRuntimeBackend(route.verify(), providers=args.providers, threads=args.threads, gpu=settings,
                            require=True, input_name=route.input_name, output_name=route.output_name) as backend:
        after = _device_used_mib() if on_gpu else None
        memory = None if before is None or after is None else after - before
        return backend_row(f"onnxruntime {route.precision} ({','.join(backend.providers)})", backend.infer, frame,
                           roofline, warmup=3, repeats=args.repeats, scale=route.scale, gpu_memory_mib=memory)


def gpu_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of :func:`run_gpu_latency`."""
    peak = result.get("peak")
    bound = f"{peak[0]} dense fp16 peak {peak[1] / 1e12:.0f} TFLOP/s." if peak else "an unknown peak (no GPU entry)."
    lines = [f"# Latency, {result['backend']} ({result['machine']})", "",
             f"Model: {result['model']['camera']} ({result['model']['file']}); "
             f"{result['macs_per_lr_pixel'] / 1e6:.2f} M MAC per LR pixel; compute bound at {bound}",
             "", "| mode | LR | batch | p50 ms | p95 ms | p99 ms | output MP/s | TFLOP/s | of bound | GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r.get('lr_size', '')} | {r.get('batch', '')} | error: {r['error']} |||||||")
            continue
        frac = "-" if r.get("fraction_of_bound") is None else f"{r['fraction_of_bound']:.1%}"
        mem = "-" if r.get("gpu_memory_mib") is None else f"{r['gpu_memory_mib']:.0f}"
        lines.append(f"| {r['mode']} | {r['lr_size']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['out_mpix_per_s']:.2f} | {r['effective_tflops']:.2f} | {frac} | {mem} |")
    return "\n".join(lines) + "\n"
