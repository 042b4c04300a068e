"""What ``adassr serve --max-models`` costs: loading a parked model at a request, and memory.

Usage (from the repository root)::

    adassr export --backbone realesrgan-x4plus --store /tmp/bench_store     # once: a real RRDBNet x4
    PYTHONPATH=. python benchmarks/serve_models.py --store /tmp/bench_store [--cameras 6]
        [--max-models 2] [--rounds 12] [--threads 2] [--out-dir benchmarks/results]

What it measures, in this process, with the server's own registry
(:class:`adassr.runtime.server.models.ModelRegistry`) and onnxruntime on the CPU:

1. A store of ``--cameras`` camera folders, each a copy of the first exported camera of ``--store``
   (its manifest, the model file hard-linked where the file system allows).
2. ``refresh`` with ``--max-models``: the manifests read, no model hashed or opened.
3. ``--rounds`` passes over the cameras in turn, one request each (route, then one 64x64 tile
   through the model): with more cameras than ``--max-models`` every request opens its model and
   closes the least recently used one. Reported: the time to route (verify and open the parked
   model), the first model call, and a request whose model is open (the same camera again).
4. Resident memory (VmRSS) after the refresh, after each pass and, in another fresh process, with
   every camera open at once (``--max-models 0``, the default of ``serve``): the models closed must
   give their memory back (RSS stays flat from pass to pass).

Results: ``<out-dir>/serve_models_<machine>.md`` and ``.json``. Linux only (``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import existing_dir, output_dir, positive_int, run_script  # noqa: E402

MB = 1e6


def _rss() -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert match is not None
    return int(match.group(1)) * 1024


def _copy_store(source: Path, target: Path, cameras: int) -> str:
    """``cameras`` camera folders under ``target``, each a copy of the first exported camera of
    ``source``; returns its name."""
    from adassr.runtime.routing import resolve_model
    from adassr.runtime.store import list_cameras

    for name in list_cameras(source):
        try:
            decision = resolve_model(source, camera=name, verify=False)
        except Exception:  # noqa: BLE001 - not exported: try the next
            continue
        if decision.model_camera == name:
            break
    else:
        raise SystemExit(f"no camera of {source} has an exported model; run `adassr export --backbone "
                         f"realesrgan-x4plus --store {source}` first")
    folder = source / name
    for k in range(cameras):
        dest = target / f"cam{k:02d}"
        dest.mkdir(parents=True)
        shutil.copy2(folder / "manifest.json", dest / "manifest.json")
        try:
            os.link(decision.onnx_path, dest / decision.onnx_path.name)
        except OSError:
            shutil.copy2(decision.onnx_path, dest / decision.onnx_path.name)
    return name


def _request(registry: Any, camera: str, image: Any, tile: np.ndarray) -> tuple[float, float]:
    """One request: seconds to route (and open a parked model) and for its first model call."""
    start = time.perf_counter()
    with registry.serving(camera, image) as route:
        routed = time.perf_counter()
        route.model.backend.infer(tile)
        called = time.perf_counter()
    return routed - start, called - routed


def _child(store: Path, mode: str, max_models: int, rounds: int, threads: int) -> dict[str, Any]:
    """One measurement in a fresh process (memory freed by one phase is reused by the next in one)."""
    from adassr.runtime.images import LoadedImage
    from adassr.runtime.server.models import ModelRegistry, default_opener

    opener = default_opener("onnxruntime", providers=("CPUExecutionProvider",), threads=threads)
    image = LoadedImage(np.zeros((64, 64, 3), np.uint8), None, 8, None, None, None)
    tile = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    cameras = sorted(p.name for p in store.iterdir())
    base = _rss()
    registry = ModelRegistry(store, open_model=opener, max_models=max_models if mode == "lazy" else 0)
    start = time.perf_counter()
    registry.refresh()
    out: dict[str, Any] = {"refresh_s": time.perf_counter() - start, "rss_start": base,
                           "rss_after_refresh": _rss()}
    if mode == "eager":
        for camera in cameras:
            _request(registry, camera, image, tile)
        out["rss_every_camera_open"] = _rss()
        return out
    assert not registry.models and len(registry.parked) == len(cameras)
    loads, first_calls, warm, passes = [], [], [], []
    for _ in range(rounds):
        for camera in cameras:
            routed, called = _request(registry, camera, image, tile)
            loads.append(routed)
            first_calls.append(called)
            warm.append(sum(_request(registry, camera, image, tile)))
        passes.append(_rss())
        assert len(registry.models) == max_models
    out.update(loads=loads, first_calls=first_calls, warm=warm, rss_after_each_pass=passes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=existing_dir, required=True,
                        help="a store with an exported camera (or _fallback)")
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--max-models", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=positive_int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--out-dir", type=output_dir, default=Path("benchmarks/results"))
    parser.add_argument("--child", choices=("lazy", "eager"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.store, args.child, args.max_models, args.rounds, args.threads)))
        return
    if not Path("/proc/self/status").exists():
        parser.error("this benchmark reads Linux's /proc/self/status")
    if args.max_models < 1 or args.cameras <= args.max_models or args.rounds < 1:
        parser.error("--max-models must be >= 1, --cameras above it, --rounds >= 1")

    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import report_tag
    from adassr.runtime.store import atomic_write_bytes

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        source = _copy_store(args.store, store, args.cameras)
        runs = {}
        for mode in ("lazy", "eager"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--store", str(store),
                                   "--max-models", str(args.max_models), "--rounds", str(args.rounds),
                                   "--threads", str(args.threads)], capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"the {mode} measurement failed:\n{done.stderr[-3000:]}")
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    lazy, eager = runs["lazy"], runs["eager"]
    loads, passes = lazy["loads"], lazy["rss_after_each_pass"]
    machine = machine_name()
    per_model = (eager["rss_every_camera_open"] - passes[-1]) / (args.cameras - args.max_models)
    result = {
        "machine": machine, "source_camera": source, "cameras": args.cameras, "max_models": args.max_models,
        "rounds": args.rounds, "threads": args.threads,
        "refresh_s": round(lazy["refresh_s"], 2), "eager_refresh_s": round(eager["refresh_s"], 2),
        "load_s_median": round(statistics.median(loads), 3), "load_s_max": round(max(loads), 3),
        "first_call_s_median": round(statistics.median(lazy["first_calls"]), 3),
        "warm_request_s_median": round(statistics.median(lazy["warm"]), 3),
        "rss_mb": {"lazy_start": round(lazy["rss_start"] / MB),
                   "lazy_after_refresh": round(lazy["rss_after_refresh"] / MB),
                   "lazy_after_each_pass": [round(p / MB) for p in passes],
                   "eager_start": round(eager["rss_start"] / MB),
                   "eager_every_camera_open": round(eager["rss_every_camera_open"] / MB)},
        "mb_per_further_open_model": round(per_model / MB),
    }
    lines = [
        "# serve --max-models: loading at a request, and memory", "",
        f"Machine: {machine}. {args.cameras} cameras (copies of `{source}`'s model), `--max-models "
        f"{args.max_models}`, {args.rounds} passes over the cameras in turn (every request opens its model and "
        f"closes the least recently used), onnxruntime CPU with {args.threads} threads, one 64x64 tile per request; "
        "each mode measured in a fresh process.",
        "",
        "| what | value |", "|---|---|",
        f"| refresh: {args.cameras} manifests read, no model hashed or opened | {lazy['refresh_s']:.2f} s |",
        f"| refresh with every model opened (`--max-models 0`) | {eager['refresh_s']:.2f} s |",
        f"| request to a parked model: route, verify and open (median / max) | {statistics.median(loads):.3f} s / "
        f"{max(loads):.3f} s |",
        f"| its first model call (64x64 tile) | {statistics.median(lazy['first_calls']):.3f} s |",
        f"| request to an open model (route and call) | {statistics.median(lazy['warm']):.3f} s |",
        f"| RSS before the registry / after the refresh | {lazy['rss_start'] / MB:.0f} / "
        f"{lazy['rss_after_refresh'] / MB:.0f} MB |",
        f"| RSS after each pass ({args.max_models} open, {args.cameras * args.rounds} loads in all) | "
        + ", ".join(f"{p / MB:.0f}" for p in passes) + " MB |",
        f"| RSS with all {args.cameras} open (`--max-models 0`; {eager['rss_start'] / MB:.0f} MB before) | "
        f"{eager['rss_every_camera_open'] / MB:.0f} MB |",
        f"| so each open model beyond {args.max_models} costs about | {per_model / MB:.0f} MB |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    atomic_write_bytes(args.out_dir / f"serve_models_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"serve_models_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
