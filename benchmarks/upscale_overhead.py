"""Whole ``adassr upscale`` of one photo against the network time of its tiles, in one process.

Usage (from the repository root, after ``adassr export``)::

    PYTHONPATH=. python benchmarks/upscale_overhead.py [--store models] [--camera _fallback]
        [--image samples/cameras/nokia/iptc.jpg] [--tiles auto,512] [--out benchmarks/results]

For each ``--tiles`` setting it runs the real CLI function (``run_upscale``: reading, routing,
checksum, session creation, tiling, blending, encoding, atomic write, progress) on the photo and
times, in the same process, every call into the onnxruntime session (the network) and the
session creation. The ratio whole / network is what the CLI adds around the model; it stays
meaningful while other processes share the cores because both are measured under the same load.
Also records each plan's tiles and input pixels (the network's work). Results:
``<out>/upscale_overhead_<cpu>.{json,md}``, with the CPU named (model and flags).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from script_cli import ScriptError, existing_dir, existing_file, output_dir, run_script  # noqa: E402


def _measure(image: Path, store: Path, camera: str, tile: str) -> dict[str, Any]:
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from adassr.runtime.images import read_image
    from adassr.runtime.tile_shape import tile_argument, tiling_options
    from adassr.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_PRE_PAD, plan_tiles
    from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale

    calls: list[tuple[tuple[int, ...], float]] = []
    opened: list[float] = []
    original_infer = OnnxRuntimeBackend._infer
    original_open = OnnxRuntimeBackend._open

    def timed_infer(self: OnnxRuntimeBackend, batch: Any) -> Any:
        start = time.perf_counter()
        out = original_infer(self, batch)
        calls.append((tuple(batch.shape), time.perf_counter() - start))
        return out

    def timed_open(self: OnnxRuntimeBackend) -> None:
        start = time.perf_counter()
        original_open(self)
        opened.append(time.perf_counter() - start)

    loaded = read_image(image)
    plan = plan_tiles(loaded.height, loaded.width, tiling_options(
        tile_argument(tile), overlap=DEFAULT_OVERLAP, pre_pad=DEFAULT_PRE_PAD, batch_size=1, pad_to_tile=False))
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "out.png"
        args = parser.parse_args(["-i", str(image), "-o", str(out_path), "--store", str(store),
                                  "--camera", camera, "--tile", tile])
        OnnxRuntimeBackend._infer = timed_infer  # type: ignore[method-assign]
        OnnxRuntimeBackend._open = timed_open  # type: ignore[method-assign]
        try:
            start = time.perf_counter()
            errors = io.StringIO()
            code = run_upscale(args, stdout=io.StringIO(), stderr=errors)
            whole = time.perf_counter() - start
        finally:
            OnnxRuntimeBackend._infer = original_infer  # type: ignore[method-assign]
            OnnxRuntimeBackend._open = original_open  # type: ignore[method-assign]
        if code != 0:
            said = (errors.getvalue().strip().splitlines() or ["no message"])[-1]
            raise ScriptError(f"upscale failed with exit status {code}: {said}")
        size = out_path.stat().st_size
    network = sum(t for _, t in calls)
    th, tw = plan.tile_shape
    return {
        "tile": tile, "tiles": plan.n_tiles, "tile_shape": [th, tw],
        "input_pixels": plan.n_tiles * th * tw, "image": [loaded.height, loaded.width],
        "whole_s": whole, "network_s": network, "session_open_s": sum(opened),
        "outside_network_s": whole - network, "whole_over_network": whole / network,
        "calls": [{"shape": list(s), "s": t} for s, t in calls], "png_bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=existing_dir, default=Path("models"), help="the store (default ./models)")
    parser.add_argument("--camera", default="_fallback")
    parser.add_argument("--image", type=existing_file, default=ROOT / "samples" / "cameras" / "nokia" / "iptc.jpg")
    parser.add_argument("--tiles", default="auto,512", help="--tile settings to compare (default auto,512)")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    parser.add_argument("--out", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from adassr.runtime.cpu_info import detect_cpu
    from adassr.runtime.tiling import DEFAULT_OVERLAP

    for tile in args.tiles.split(","):  # before any timing: the CLI's overlap error names an option this lacks
        if tile.strip() != "auto" and not (tile.strip().isdigit()
                                           and (int(tile) == 0 or int(tile) > 2 * DEFAULT_OVERLAP)):
            parser.error(f"--tiles takes auto, 0 (untiled) or tile sizes above twice the CLI's tile overlap "
                         f"{DEFAULT_OVERLAP}, got {tile.strip()!r}")
    cpu = detect_cpu()
    rows: list[dict[str, Any]] = []
    for tile in args.tiles.split(","):
        rows.append(_measure(args.image, args.store, args.camera, tile.strip()))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "calls"}), flush=True)
        _write(args, cpu, rows)  # after every row: a run stopped later keeps what it measured
    return 0


def _write(args: argparse.Namespace, cpu: Any, rows: list[dict[str, Any]]) -> None:
    import os

    from adassr.runtime.cpu_info import intra_op_threads, report_tag
    from adassr.runtime.store import atomic_write_bytes

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"cpu": cpu.label, "threads": intra_op_threads(cpu), "load_average_1min_at_end": load,
              "note": args.note, "image": str(args.image.relative_to(ROOT) if args.image.is_relative_to(ROOT)
                                               else args.image), "rows": rows}
    lines = [f"# Whole upscale vs network time ({cpu.label})", "",
             f"Image {result['image']} ({rows[0]['image'][1]}x{rows[0]['image'][0]}), `adassr upscale` run "
             f"in-process; {result['threads']} threads; 1-minute load average at the end: "
             f"{'-' if load is None else f'{load:.1f}'} (on 2 cores: above 2 means other processes "
             "shared them, so compare ratios, not seconds).", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| --tile | tiles | tile shape | input pixels | network s | session open s | whole s "
              "| outside network s | whole / network |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tile']} | {r['tiles']} | {r['tile_shape'][0]}x{r['tile_shape'][1]} | {r['input_pixels']} "
                     f"| {r['network_s']:.1f} | {r['session_open_s']:.2f} | {r['whole_s']:.1f} "
                     f"| {r['outside_network_s']:.1f} | {r['whole_over_network']:.3f} |")
    if len(rows) > 1:
        base = rows[-1]
        for r in rows[:-1]:
            lines.append("")
            pixels = r["input_pixels"] / base["input_pixels"]
            lines.append(f"- --tile {r['tile']} vs --tile {base['tile']}: {pixels:.2f}x "
                         f"the input pixels, {r['network_s'] / base['network_s']:.2f}x the network time, "
                         f"{r['whole_s'] / base['whole_s']:.2f}x the whole time")
    text = "\n".join(lines) + "\n"
    tag = report_tag(cpu.model_name, cpu)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / f"upscale_overhead_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out / f"upscale_overhead_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
