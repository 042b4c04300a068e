"""``adassr bench latency``: runtime latency per backend and input size, against PyTorch eager.

For each LR size (square crops of a photo: ``--image``, else the bundled sample of a checkout):
one warm-up, then ``--repeats`` timed calls; p50/p95/p99 latency, output megapixels per second
and the process's peak RSS during that row's calls (reset before each row where Linux allows it;
otherwise the peak since the process started, which the report says). The same weights run in
PyTorch eager fp32 (the way Real-ESRGAN's inference script runs them) for the speed ratio, and the
largest size also runs tiled vs untiled in the runtime. Results are written as JSON and Markdown
under ``--out`` (default ``benchmarks/results``), named after the machine. The command line (parsing, saving) is
:mod:`adassr.export.bench_cli`.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyOptions:
    """What ``adassr bench latency`` times; the fields mirror its command-line options."""

    store: Path = Path("models")
    camera: str = "_fallback"
    backend: str = "onnxruntime"
    precision: str = "fp32"
    batch: int = 1
    gpu: int | None = None
    frame: str | None = None
    cuda_graph: bool = False
    providers: str = "cpu"
    sizes: str = "64,128"
    tiled_size: int = 256
    tile: int = 0
    tile_overlap: int = 16
    repeats: int = 5
    threads: int | None = None
    no_torch: bool = False
    out: Path = Path("benchmarks/results")
    image: Path | None = None  # the photo the timed crops come from (None: the checkout's bundled sample)


def bench_photo(image: Path | None) -> Path:
    """The photo ``bench latency`` cuts its crops from: ``image``, else the bundled
    ``samples/cameras/nokia/iptc.jpg`` of this project's checkout (an installed package has none)."""
    from adassr.export.crops import SAMPLE_PHOTO, checkout_file
    from adassr.runtime.errors import ConfigError

    if image is not None:
        if not Path(image).is_file():
            what = "is a folder" if Path(image).is_dir() else "no such file"
            raise ConfigError(f"--image {image}: {what}; pass a photo")
        return Path(image)
    bundled = checkout_file(SAMPLE_PHOTO)
    if bundled is None:
        raise ConfigError(f"no photo to time on: the bundled {SAMPLE_PHOTO} comes with a checkout of adassr, not "
                          "with an installed package; pass one with --image PHOTO")
    return bundled


def _sizes(text: str) -> list[int]:
    from adassr.runtime.errors import ConfigError

    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < MIN_SIDE or max(sizes) > MAX_SIDE:
        raise ConfigError(f"--sizes needs sizes from {MIN_SIDE} to {MAX_SIDE}, got {text!r}")
    return list(dict.fromkeys(sizes))  # a size given twice is timed once


MIN_SIDE = 8
"""The smallest LR side a latency case may have."""
MAX_SIDE = 4096
"""The largest LR side a latency case may have (its x4 output is 16384 px wide: 3 GB of float32)."""
MAX_REPEATS = 10_000
"""The most timed calls per case (2**70 was accepted and never ended)."""
MAX_CALL_OUTPUT_PIXELS = (4 * MAX_SIDE) ** 2
"""The most x4 output pixels one timed call (``--batch`` frames) may make: one frame of the largest side."""



def parse_frame(text: str) -> tuple[int, int]:
    """``--frame WIDTHxHEIGHT`` as ``(height, width)``, each side at least :data:`MIN_SIDE`."""
    from adassr.runtime.errors import ConfigError

    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--frame must be WIDTHxHEIGHT, e.g. 480x270, got {text!r}") from None
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise ConfigError(f"--frame needs both sides from {MIN_SIDE} to {MAX_SIDE}, got {text!r}")
    return height, width


def uses_gpu_report(options: LatencyOptions) -> bool:
    """True for the GPU report (``--gpu`` or a backend other than onnxruntime), else the CPU report."""
    return options.gpu is not None or options.backend != "onnxruntime"


def _belong(options: list[str]) -> str:
    return "belongs" if len(options) == 1 else "belong"


def check_latency_options(options: LatencyOptions, *, gpu_report: bool) -> None:
    """Everything about ``options`` that can be checked before any timing (``ConfigError``): sizes,
    frame (the GPU report's option), repeats, threads, and that the results folder can be written."""
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.preflight import check_output_folders, check_threads

    if not 1 <= options.repeats <= MAX_REPEATS:
        raise ConfigError(f"--repeats must be from 1 to {MAX_REPEATS}, got {options.repeats}")
    if options.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {options.batch}")
    check_threads(options.threads)
    bench_photo(options.image)
    defaults = LatencyOptions()
    if options.frame is None or not gpu_report:
        largest = max(_sizes(options.sizes)) ** 2
    elif options.sizes != defaults.sizes:
        raise ConfigError("--frame and --sizes both give the sizes to time; give one of them")
    else:
        height, width = parse_frame(options.frame)
        largest = height * width
    if gpu_report and options.batch * largest * 16 > MAX_CALL_OUTPUT_PIXELS:  # x4: 16 output pixels each
        fits = max(1, MAX_CALL_OUTPUT_PIXELS // (16 * largest))
        raise ConfigError(f"--batch {options.batch} of the largest size ({largest:,} LR pixels) makes more than "
                          f"{MAX_CALL_OUTPUT_PIXELS:,} output pixels a call (about {MAX_CALL_OUTPUT_PIXELS * 12 >> 30} "
                          f"GB of float32): use --batch <= {fits} or a smaller size")
    if not gpu_report:  # the CPU report's tiled-vs-untiled case
        if not MIN_SIDE <= options.tiled_size <= MAX_SIDE:
            raise ConfigError(f"--tiled-size must be from {MIN_SIDE} to {MAX_SIDE}, got {options.tiled_size}")
        if options.tile_overlap < 0:
            raise ConfigError(f"--tile-overlap must be >= 0, got {options.tile_overlap}")
        tile = _tiled_case_tile(options)
        if tile <= 2 * options.tile_overlap:
            given = (f"--tile {tile}" if options.tile
                     else f"the tile {tile} that --tiled-size {options.tiled_size} gives")
            raise ConfigError(f"{given} must be larger than twice --tile-overlap {options.tile_overlap}; raise "
                              f"{'--tile' if options.tile else '--tiled-size'} or lower --tile-overlap")
        from adassr.runtime.tiling import DEFAULT_PRE_PAD

        if tile >= options.tiled_size + 2 * DEFAULT_PRE_PAD:
            raise ConfigError(f"--tile {tile} covers the whole --tiled-size {options.tiled_size} crop (with its "
                              f"pre-padding) in one tile: tiled and untiled would be the same run; use a --tile "
                              f"below {options.tiled_size + 2 * DEFAULT_PRE_PAD} or 0 (2 x 2 tiles)")
    else:  # the GPU report times whole frames: the CPU report's options would be ignored
        ignored = [flag for flag, given in (
            (f"--tiled-size {options.tiled_size}", options.tiled_size != defaults.tiled_size),
            (f"--tile {options.tile}", options.tile != defaults.tile),
            (f"--tile-overlap {options.tile_overlap}", options.tile_overlap != defaults.tile_overlap),
            ("--no-torch", options.no_torch and options.backend == "torch")) if given]
        if options.backend != "onnxruntime" and options.providers != defaults.providers:
            ignored.append(f"--providers {options.providers}")
        if ignored:
            raise ConfigError(f"{', '.join(ignored)} {_belong(ignored)} to the CPU report of onnxruntime (without "
                              f"--gpu, --backend onnxruntime); the GPU report of --backend {options.backend} times "
                              "whole frames: drop them")
    if Path(options.out).suffix.lower() in (".json", ".md", ".txt", ".csv") and not Path(options.out).is_dir():
        raise ConfigError(f"--out names the results folder (the report's .json and .md are named after the "
                          f"machine), not a file: {options.out}; pass a folder, e.g. --out {Path(options.out).parent}")
    if options.frame is not None:
        parse_frame(options.frame)
    if not gpu_report:  # the CPU report times fp32 crops one at a time: these options would be ignored
        ignored = [flag for flag, given in (("--frame", options.frame is not None),
                                            (f"--precision {options.precision}", options.precision != "fp32"),
                                            (f"--batch {options.batch}", options.batch != 1),
                                            ("--cuda-graph", options.cuda_graph)) if given]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)} {_belong(ignored)} to the GPU report (with --gpu N or --backend "
                              "tensorrt / torch); the CPU report times fp32 square crops one at a time: use --sizes")
    if options.gpu is not None and options.backend == "onnxruntime":
        from adassr.runtime.backends.onnxruntime import resolve_providers

        if all(p == "CPUExecutionProvider" for p in resolve_providers(options.providers)):
            raise ConfigError(f"--gpu {options.gpu} times onnxruntime on the GPU, but --providers {options.providers} "
                              "runs on the CPU: pass --providers cuda (or tensorrt,cuda), or drop --gpu")
    try:
        check_output_folders([Path(options.out) / "latency.json"])
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("choose another -o", "choose another --out")) from None


def resolve_bench_model(options: LatencyOptions, *, precision: str = "fp32") -> Any:
    """The store's route for ``options.camera``; ``ConfigError`` when a named camera would only be
    served by the fallback (a benchmark of the wrong model is worse than none)."""
    from adassr.runtime.cameras import camera_name, closest_camera_hint
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.routing import resolve_model
    from adassr.runtime.store import FALLBACK_CAMERA, CameraStore, adapt_command, list_cameras, store_option

    route = resolve_model(options.store, camera=options.camera, precision=precision)
    name = camera_name(options.camera)
    if name != FALLBACK_CAMERA and route.is_fallback:
        export = f"`adassr export --camera {name}{store_option(options.store)}`"
        if CameraStore.open(options.store, name).exists():  # adapted, not exported
            advice = f"export it with {export}"
        else:  # the export command alone would fail: nothing was adapted under that name
            known = [c for c in list_cameras(options.store) if c != FALLBACK_CAMERA]
            hint = closest_camera_hint(name, known)
            advice = (f"the store has no such camera ({', '.join(known) or 'none yet'}).{hint} Adapt it with "
                      f"`{adapt_command(name, options.store)}`, then {export}")
        raise ConfigError(f"camera {options.camera!r} has no exported model in {options.store} ({route.reason}); "
                          f"{advice}, or time the fallback with --camera {FALLBACK_CAMERA}")
    return route


def _crop(size: int, photo: Path | None) -> np.ndarray:
    """A ``size`` x ``size`` crop of a real photo (:func:`bench_photo` of ``photo``; resized up if it
    is smaller), float32 RGB."""
    import cv2

    from adassr.export.crops import read_rgb

    image = read_rgb(bench_photo(photo))
    h, w = image.shape[:2]
    if min(h, w) < size:
        f = size / min(h, w)
        image = cv2.resize(image, (int(np.ceil(w * f)), int(np.ceil(h * f))), interpolation=cv2.INTER_CUBIC)
        h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def _release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``; nothing elsewhere). A long-lived
    process keeps freed blocks resident: after a CI run's earlier tests, the GEMM ceiling's 48 MB of matrices,
    freed, stayed in the next row's RSS and so in its peak."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: ``5`` written to ``/proc/self/clear_refs`` resets ``VmHWM``, after the
    freed heap pages are handed back), so that a row's peak is its own, not an earlier row's nor the GEMM ceiling's
    matrices; False where it cannot be."""
    _release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    """The process's peak RSS since :func:`_reset_peak_rss` (``VmHWM``), else since it started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """One warm-up call, then ``repeats`` timed calls; latency percentiles in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    arr = np.asarray(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()), "repeats": repeats}


def machine_name() -> str:
    """The CPU's model name and the physical cores this process may use (affinity and cgroup quota
    applied: a container limited to 2 cores of a 64-core host is a 2-core machine here)."""
    from adassr.runtime.cpu_info import detect_cpu

    cpu = detect_cpu()
    model = cpu.model_name or platform.processor() or platform.machine()
    return f"{model}, {cpu.physical_cores} cores"


def run_latency(options: LatencyOptions) -> dict[str, Any]:
    """Time the runtime backend (and PyTorch eager unless ``no_torch``) per LR size, plus tiled vs untiled."""
    from adassr.export.roofline import conv_macs_per_input_pixel, cpu_roofline
    from adassr.runtime.backends import open_backend
    from adassr.runtime.cpu_info import intra_op_threads

    check_latency_options(options, gpu_report=False)
    sizes = _sizes(options.sizes)
    route = resolve_bench_model(options)
    threads = options.threads or intra_op_threads()
    torch_model = None if options.no_torch else _torch_model(route, threads)
    with open_backend(options.backend, route.onnx_path, providers=tuple(options.providers.split(",")),
                      threads=threads, input_name=route.input_name, output_name=route.output_name) as backend:
        on_cpu = tuple(backend.providers) == ("CPUExecutionProvider",)
        rows: list[dict[str, Any]] = []
        for size in sizes:
            rows += _size_rows(options, backend, torch_model, size, route.scale, threads, on_cpu)
        tiled_vs_untiled = _tiled_vs_untiled(options, backend.infer, route.scale)
    roofline = cpu_roofline(rows, conv_macs_per_input_pixel(route.onnx_path), threads) if on_cpu else None
    return {
        "cpu_roofline": roofline,
        "machine": machine_name(),
        "model": {"camera": route.model_camera, "file": str(route.onnx_path), "sha256": route.sha256,
                  "scale": route.scale, "reason": route.reason},
        "threads": threads,
        "rows": rows,
        "onnxruntime_speedup_vs_torch": _speedups(rows, sizes),
        "tiled_vs_untiled": tiled_vs_untiled,
    }


def _size_rows(options: LatencyOptions, backend: Any, torch_model: Callable[[np.ndarray], np.ndarray] | None,
               size: int, scale: int, threads: int, on_cpu: bool) -> list[dict[str, Any]]:
    """The backend's row (and PyTorch eager's) for one square LR size."""
    from adassr.export.roofline import ort_gemm_gflops, torch_gemm_gflops

    x = _crop(size, options.image).transpose(2, 0, 1)[None].copy()
    out_mp = (size * scale) ** 2 / 1e6
    own = _reset_peak_rss()
    stats = time_calls(functools.partial(backend.infer, x), options.repeats)
    rss = _peak_rss_mb()  # before the GEMM ceiling: its matrices are not the model's memory
    ceiling = {"gemm_gflops": ort_gemm_gflops(threads)} if on_cpu else {}  # measured just after
    rows = [{"backend": f"{options.backend} ({','.join(backend.providers)})", "size": size, **stats,
             "out_mpix_per_s": out_mp / (stats["p50_ms"] / 1000.0), "peak_rss_mb": rss, "peak_rss_of_row": own,
             **ceiling}]
    if torch_model is not None:
        own = _reset_peak_rss()
        t_stats = time_calls(functools.partial(torch_model, x), options.repeats)
        t_rss = _peak_rss_mb()
        rows.append({"backend": "torch eager fp32", "size": size, **t_stats,
                     "out_mpix_per_s": out_mp / (t_stats["p50_ms"] / 1000.0), "peak_rss_mb": t_rss,
                     "peak_rss_of_row": own, "gemm_gflops": torch_gemm_gflops(threads)})
    return rows


def _tiled_case_tile(options: LatencyOptions) -> int:
    """``--tile``, or (0) the smallest tile that covers the ``--tiled-size`` crop with 2x2 tiles."""
    from adassr.runtime.tiling import DEFAULT_PRE_PAD

    return options.tile or -(-(options.tiled_size + 2 * DEFAULT_PRE_PAD + options.tile_overlap) // 2)


def _tiled_vs_untiled(options: LatencyOptions, infer: Callable[[np.ndarray], np.ndarray],
                      scale: int) -> dict[str, Any]:
    """Tiled vs untiled runtime upscaling of one ``tiled_size`` square crop."""
    from adassr.runtime.tiling import TilingOptions, plan_tiles, upscale_tiled

    big = options.tiled_size
    image = _crop(big, options.image)
    untiled_opts = TilingOptions(tile=0, pad_to_tile=False)
    untiled = time_calls(lambda: upscale_tiled(image, infer, scale=scale, options=untiled_opts), options.repeats)
    tile = _tiled_case_tile(options)
    tiling = TilingOptions(tile=tile, overlap=options.tile_overlap, pad_to_tile=False)
    tiled = time_calls(lambda: upscale_tiled(image, infer, scale=scale, options=tiling), options.repeats)
    return {"size": big, "tile": tile, "overlap": options.tile_overlap,
            "tiles": plan_tiles(big, big, tiling).n_tiles,
            "untiled": untiled, "tiled": tiled,
            "ratio": tiled["p50_ms"] / untiled["p50_ms"]}


def _speedups(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, float]:
    """PyTorch eager p50 over the backend's p50, per LR size that has both rows."""
    ratios = {}
    for size in sizes:
        ort = next(r for r in rows if r["size"] == size and not r["backend"].startswith("torch"))
        tor = next((r for r in rows if r["size"] == size and r["backend"].startswith("torch")), None)
        if tor is not None:
            ratios[str(size)] = tor["p50_ms"] / ort["p50_ms"]
    return ratios


def _torch_model(route: Any, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The same weights in PyTorch eager fp32."""
    import torch

    from adassr.adapt.infer import choose_weights

    if threads:
        torch.set_num_threads(threads)
    camera = None if route.is_fallback else route.model_camera
    backbone = (route.manifest.get("backbone") or {}).get("name", "realesrgan-x4plus")
    choice = choose_weights(route.store.root, camera, backbone, torch.device("cpu"))
    model = choice.model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def _ms(value: float) -> str:
    """Milliseconds to three significant digits, whole ones from 100 ms (``0.512``, ``12.3``, ``734``)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Latency ({result['machine']})", "",
             f"Model: {result['model']['camera']} ({Path(result['model']['file']).name}, x{result['model']['scale']}); "
             f"threads: {result['threads'] or 'default'}.", "",
             "| backend | LR size | p50 ms | p95 ms | p99 ms | output MP/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['backend']} | {r['size']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} "
                     f"| {r['out_mpix_per_s']:.3f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    if not all(r.get("peak_rss_of_row", False) for r in result["rows"]):
        lines += ["Peak RSS: the process's peak since it started (this system could not reset it per row), so a "
                  "row may show an earlier row's or the GEMM ceiling's memory.", ""]
    for size, ratio in result["onnxruntime_speedup_vs_torch"].items():
        how = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        lines.append(f"- onnxruntime vs PyTorch eager fp32 at LR {size}x{size}: {how} (p50)")
    t = result["tiled_vs_untiled"]
    lines.append(f"- tiled ({t['tiles']} tiles of {t['tile']}, overlap {t['overlap']}) vs untiled at LR "
                 f"{t['size']}x{t['size']}: "
                 f"{t['ratio']:.2f}x the untiled time (p50)")
    if result.get("cpu_roofline"):
        from adassr.export.roofline import roofline_markdown

        lines += roofline_markdown(result["cpu_roofline"])
    return "\n".join(lines) + "\n"
