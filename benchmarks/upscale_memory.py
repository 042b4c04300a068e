"""Peak memory of the upscale pipeline on a large photo (target: peak RSS < 1.6 x output + 400 MB).

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/upscale_memory.py [--width 3000] [--height 2000]
        [--tile 512] [--out-dir benchmarks/results]

What it measures: a trivial x4 ONNX model (nearest-neighbour ``Resize``, built here with
``onnx.helper``, so the model itself costs almost nothing and the number is the pipeline's own)
upscales a seeded random ``height x width`` 8-bit RGB image through
:func:`adassr.runtime.pipeline.upscale_pixels` with the CLI's tiling defaults. Each case runs in a
fresh subprocess; the child reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident
memory, KiB on Linux) after loading onnxruntime and opening the model, and after the upscale.
The target applies to the peak: ``1.6 x (output bytes as uint8 RGB) + 400 MB``.

``--files png,jpg`` adds end-to-end cases, what ``adassr upscale`` does with one photo: the same
random image is saved as a PNG first, and the child reads it with ``read_image``, upscales it and
writes the result with ``write_image`` to a ``.png`` / ``.jpg`` file (the encoder writes straight
into the file), so decoding, encoding and the output file's buffers count too.

Results: ``<out-dir>/upscale_memory_<machine>.md`` and ``.json``, the machine named in them and in
the file name, with ``_<width>x<height>`` added for a size other than 3000x2000
(``upscale_memory.md`` is the first run's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import non_negative_int, output_dir, positive_int, run_script  # noqa: E402

MB = 1_000_000
SCALE = 4


def build_nearest_x4(path: Path) -> None:
    """A valid x4 super-resolution ONNX model: ``sr = Resize(lr, scales=[1, 1, 4, 4], nearest)``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, SCALE, SCALE], np.float32), "scales")
    node = helper.make_node("Resize", ["lr", "", "scales"], ["sr"], mode="nearest")
    graph = helper.make_graph([node], "nearest_x4",
                              [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", 3, "SH", "SW"])],
                              [scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="adassr-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _random_image(width: int, height: int) -> Any:
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _child(model: str, width: int, height: int, tile: int, source: str | None, target: str | None) -> None:
    import resource

    import numpy as np

    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from adassr.runtime.images import read_image, write_image
    from adassr.runtime.pipeline import upscale_pixels
    from adassr.runtime.tiling import TilingOptions

    def peak_kib() -> int:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    with OnnxRuntimeBackend(model, threads=1) as backend:
        base = peak_kib()
        start = time.perf_counter()
        pixels = read_image(source).pixels if source else _random_image(width, height)
        out, _ = upscale_pixels(pixels, backend.infer, scale=SCALE,
                                tiling=TilingOptions(tile=tile, pad_to_tile=False))
        if target:
            write_image(target, out)
        seconds = time.perf_counter() - start
        expected = np.repeat(np.repeat(pixels[:64, :64], SCALE, 0), SCALE, 1)
        exact = bool(np.array_equal(out[: 64 * SCALE, : 64 * SCALE], expected))
    print(json.dumps({"baseline_kib": base, "peak_kib": peak_kib(), "seconds": round(seconds, 2),
                      "output_shape": list(out.shape), "output_dtype": str(out.dtype), "nearest_exact": exact}))


def measure(width: int, height: int, tile: int, file_suffix: str | None = None) -> dict[str, Any]:
    """One case in a fresh subprocess: the pipeline alone, or with ``file_suffix`` the whole
    read-upscale-write of a PNG photo into a file of that suffix."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "nearest_x4.onnx"
        build_nearest_x4(model)
        files: list[str] = []
        if file_suffix:
            from adassr.runtime.images import write_image

            write_image(Path(tmp) / "input.png", _random_image(width, height))
            files = ["--source", str(Path(tmp) / "input.png"), "--target", str(Path(tmp) / f"output.{file_suffix}")]
        proc = subprocess.run([sys.executable, __file__, "--child", str(model), "--width", str(width),
                               "--height", str(height), "--tile", str(tile), *files],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    output_bytes = width * height * SCALE * SCALE * 3
    target = 1.6 * output_bytes + 400 * MB
    row.update({"case": f"read png, upscale, write {file_suffix}" if file_suffix else "upscale_pixels only",
                "width": width, "height": height, "tile": tile, "output_uint8_mb": round(output_bytes / MB, 1),
                "peak_rss_mb": round(row["peak_kib"] * 1024 / MB, 1),
                "baseline_rss_mb": round(row["baseline_kib"] * 1024 / MB, 1),
                "target_mb": round(target / MB, 1), "meets_target": row["peak_kib"] * 1024 < target})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=positive_int, default=3000)
    parser.add_argument("--height", type=positive_int, default=2000)
    parser.add_argument("--tile", type=non_negative_int, default=512)
    parser.add_argument("--out-dir", type=output_dir, default=Path("benchmarks/results"))
    parser.add_argument("--files", default="", help="end-to-end cases: output suffixes, e.g. png,jpg")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.width, args.height, args.tile, args.source, args.target)
        return
    from adassr.export.bench import machine_name
    from adassr.runtime.images import SUPPORTED_WRITE_SUFFIXES
    from adassr.runtime.store import atomic_write_bytes
    from adassr.runtime.tiling import DEFAULT_OVERLAP

    if args.tile < 0 or 0 < args.tile <= 2 * DEFAULT_OVERLAP:  # the children would each fail on it
        parser.error(f"--tile must be 0 (untiled) or more than twice the CLI's tile overlap {DEFAULT_OVERLAP}, "
                     f"got {args.tile}")
    suffixes = [s.strip().lstrip(".") for s in args.files.split(",") if s.strip()]
    unknown = [s for s in suffixes if f".{s.lower()}" not in SUPPORTED_WRITE_SUFFIXES]
    if unknown:  # before the first case, not after it
        parser.error(f"--files takes output suffixes of {', '.join(x.lstrip('.') for x in SUPPORTED_WRITE_SUFFIXES)}, "
                     f"got {', '.join(unknown)}")
    rows = [measure(args.width, args.height, args.tile)]
    rows += [measure(args.width, args.height, args.tile, suffix) for suffix in suffixes]
    machine = machine_name()
    result = {"machine": machine, "model": "nearest x4 (onnx Resize)", "rows": rows,
              "note": "peak RSS of a fresh subprocess (ru_maxrss); baseline = after imports and opening the model"}
    lines = ["# Upscale peak memory", "", f"Machine: {machine}. Model: trivial nearest x4 ONNX; CLI tiling defaults;",
             "each case in a fresh subprocess; peak = ru_maxrss. Target: peak < 1.6 x output (uint8 RGB) + 400 MB.", "",
             "| case | input | tile | output uint8 | baseline RSS | peak RSS | target | meets | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['width']}x{r['height']} | {r['tile']} | {r['output_uint8_mb']} MB | "
                     f"{r['baseline_rss_mb']} MB | "
                     f"{r['peak_rss_mb']} MB | {r['target_mb']} MB | {'yes' if r['meets_target'] else 'NO'} | "
                     f"{r['seconds']} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from adassr.runtime.cpu_info import report_tag

    tag = report_tag(machine)
    if (args.width, args.height) != (3000, 2000):  # another size is another result, beside the default one
        tag += f"_{args.width}x{args.height}"
    atomic_write_bytes(args.out_dir / f"upscale_memory_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"upscale_memory_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
