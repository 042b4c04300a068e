"""``adassr bench``: the command line of :mod:`adassr.export.bench` (options, report files)."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

from adassr.export.bench import LatencyOptions, run_latency, to_markdown, uses_gpu_report
from adassr.runtime.store import store_argument


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    lat = sub.add_parser("latency", help="upscaling latency per backend and size")
    # -v after `latency` too (the umbrella adds it to `bench` only); its count adds to `bench -v`'s
    lat.add_argument("-v", "--verbose", dest="verbose_latency", action="count", default=0,
                     help="more log output (-vv: debug)")
    lat.add_argument("--camera", default="_fallback",
                     help="camera whose exported model to time (default: the fallback); a camera without an "
                          "export is an error, not the fallback")
    lat.add_argument("--store", type=store_argument, default=Path("models"), help="model store (default ./models)")
    lat.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt", "torch"),
                     help="onnxruntime (default), tensorrt (an engine for each size, built or reused from the "
                          "store) or torch; tensorrt, torch and --gpu switch to the GPU report (p50/p95/p99, "
                          "MP/s, effective TFLOP/s and the fraction of the compute bound)")
    lat.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                     help="model precision for the GPU report (default fp32)")
    lat.add_argument("--batch", type=int, default=1, help="frames per call in the GPU report (default 1)")
    lat.add_argument("--gpu", type=int, default=None, metavar="N", help="CUDA device: time on the GPU")
    lat.add_argument("--frame", default=None, metavar="WxH",
                     help="GPU report only: one LR frame size instead of --sizes, e.g. 480x270 (1920x1080 output)")
    lat.add_argument("--cuda-graph", action="store_true",
                     help="tensorrt / torch on a GPU: also time CUDA-graph replay")
    lat.add_argument("--providers", default="cpu", help="onnxruntime providers (default cpu)")
    lat.add_argument("--sizes", default="64,128", help="LR sizes, comma separated (default 64,128)")
    lat.add_argument("--tiled-size", type=int, default=256,
                     help="LR size of the tiled-vs-untiled comparison (default 256)")
    lat.add_argument("--tile", type=int, default=0,
                     help="tile size for that comparison; 0 = the smallest tile that covers the image with 2x2 tiles")
    lat.add_argument("--tile-overlap", type=int, default=16, help="tile overlap (default 16)")
    lat.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    lat.add_argument("--threads", type=int, default=None, help="threads for both onnxruntime and torch")
    lat.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    lat.add_argument("--image", type=Path, default=None, metavar="PHOTO",
                     help="photo the timed crops are cut from (default: samples/cameras/nokia/iptc.jpg of the "
                          "adassr checkout; an installed package needs this option)")
    lat.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                     help="results folder for the report's .md and .json, named after this machine (a GPU "
                          "report also after its backend, and its precision and batch where not fp32 and 1; a "
                          "camera other than the fallback and a PyTorch ISA cap are named too; default "
                          "./benchmarks/results; a report of the same name is replaced, also when other options "
                          "such as --threads, --sizes or --frame differ: give such runs their own --out)")


def latency_options(args: argparse.Namespace) -> LatencyOptions:
    """The :class:`LatencyOptions` parsed by :func:`add_bench_arguments` (``bench latency``)."""
    return LatencyOptions(**{f.name: getattr(args, f.name) for f in fields(LatencyOptions) if hasattr(args, f.name)})


def _variant_tag(options: LatencyOptions) -> str:
    """What else makes a report another report than the default one of the machine: the backend, the
    precision and the batch of the GPU report, a camera other than the fallback, and a PyTorch ISA cap
    (``ATEN_CPU_CAPABILITY``); so that a torch run does not replace the onnxruntime report of the machine."""
    from adassr.runtime.cameras import camera_name
    from adassr.runtime.cpu_info import isa_cap_from_env
    from adassr.runtime.store import FALLBACK_CAMERA

    parts = []
    if uses_gpu_report(options):
        parts += [options.backend] + ([options.precision] if options.precision != "fp32" else [])
        parts += [f"batch{options.batch}"] if options.batch != 1 else []
    if camera_name(options.camera) != FALLBACK_CAMERA:
        parts.append(f"camera-{camera_name(options.camera)}")
    cap = isa_cap_from_env()
    if cap is not None:
        parts.append(f"torch-{cap}")
    return "".join(f"-{re.sub(r'[^a-z0-9]+', '-', p.lower()).strip('-')}" for p in parts)


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` command: build :class:`LatencyOptions` from ``args``, time, print and save the report."""
    from adassr.runtime.cpu_info import detect_cpu, report_tag
    from adassr.runtime.store import atomic_write_bytes

    options = latency_options(args)
    if uses_gpu_report(options):
        from adassr.export.gpu_bench import gpu_markdown, run_gpu_latency

        result = run_gpu_latency(options)
        text = gpu_markdown(result)
    else:
        result = run_latency(options)
        text = to_markdown(result)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    tag = report_tag(result["machine"], cpu=None if result.get("gpu") else detect_cpu()) + _variant_tag(options)
    atomic_write_bytes(out / f"latency_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / f"latency_{tag}.md", text.encode())
    print(text)  # after the files: a reader that went away (`| head`) does not cost the report
    print(f"results: {out / f'latency_{tag}.md'}")
    return 0
