"""A folder run with and without writing each output in the background while the next image is upscaled.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/overlapped_writes.py [--images 6] [--model-seconds 1.0] [--formats png,jpg]

What it measures: ``--images`` crops (750x1000) of the 10 MP ``samples/large/fujifilm.mpo`` are upscaled x4
(3000x4000 outputs) by :func:`adassr.runtime.upscale_cli.run_batch` with a stand-in for a model that runs
elsewhere (a GPU, a Triton server): it waits ``--model-seconds`` without using the CPU, as the local process
does while a GPU computes, and returns the crop's bicubic x4 image (made before the timing: it compresses
like a photo). Each format is run with
``overlap_writes`` off and on, alternately, ``--rounds`` times; the medians of the whole runs are reported
with the time of one write alone. The output files of the two modes are compared byte for byte.

What it does not measure: a real GPU model (the device machines were not lent to this work); where the
model computes on the local CPU, ``adassr upscale`` does not overlap (the encoders would share the cores
with it).

Results: ``<out-dir>/overlapped_writes_<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import output_dir, run_script  # noqa: E402


def _crops(folder: Path, count: int) -> list[Path]:
    from adassr.runtime.images import read_image, write_image

    photo = read_image(ROOT / "samples" / "large" / "fujifilm.mpo").pixels
    height, width = photo.shape[:2]
    paths = []
    for k in range(count):
        top = (k * 331) % (height - 750)
        left = (k * 577) % (width - 1000)
        path = folder / f"crop{k}.png"
        write_image(path, np.ascontiguousarray(photo[top : top + 750, left : left + 1000]))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--model-seconds", type=float, default=1.0,
                        help="time the stand-in model takes per image, without using the CPU (default 1.0)")
    parser.add_argument("--formats", default="png,jpg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    formats = [f.strip().lstrip(".") for f in args.formats.split(",") if f.strip()]
    if args.images < 2 or args.rounds < 1 or args.model_seconds < 0 or not formats:
        parser.error("--images must be at least 2, --rounds at least 1, --model-seconds >= 0, --formats non-empty")
    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import report_tag
    from adassr.runtime.images import LoadedImage, read_image, write_image
    from adassr.runtime.pipeline import UpscaleResult
    from adassr.runtime.store import atomic_write_bytes
    from adassr.runtime.upscale_cli import run_batch

    outputs: dict[str, np.ndarray] = {}

    def serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
        time.sleep(args.model_seconds)  # the model computes elsewhere; this process waits
        assert image.path is not None
        return UpscaleResult(pixels=outputs[image.path.name].copy(), alpha=None, bit_depth=8, scale=4, outscale=4.0,
                             model_name="stand-in")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = _crops(Path(tmp), args.images)
        for source in sources:  # photo-like outputs (bicubic x4), made before the timing
            pixels = read_image(source).pixels
            outputs[source.name] = cv2.resize(pixels, (4 * pixels.shape[1], 4 * pixels.shape[0]),
                                              interpolation=cv2.INTER_CUBIC)
        for fmt in formats:
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for overlap in (False, True):
                    out = Path(tmp) / f"out_{fmt}_{overlap}"
                    pairs = [(s, out / f"{s.stem}.{fmt}") for s in sources]
                    began = time.perf_counter()
                    code = run_batch(pairs, serve, progress=False, stdout=io.StringIO(), stderr=io.StringIO(),
                                     overlap_writes=overlap)
                    times[overlap].append(time.perf_counter() - began)
                    if code != 0:
                        raise SystemExit(f"the {fmt} run with overlap_writes={overlap} failed")
            same = all((Path(tmp) / f"out_{fmt}_False" / f"{s.stem}.{fmt}").read_bytes()
                       == (Path(tmp) / f"out_{fmt}_True" / f"{s.stem}.{fmt}").read_bytes() for s in sources)
            big = outputs[sources[0].name]
            one = []
            for _ in range(args.rounds):
                began = time.perf_counter()
                write_image(Path(tmp) / f"alone.{fmt}", big)
                one.append(time.perf_counter() - began)
            plain, overlapped = statistics.median(times[False]), statistics.median(times[True])
            rows.append({"format": fmt, "plain_s": round(plain, 2), "overlapped_s": round(overlapped, 2),
                         "speedup": round(plain / overlapped, 2), "one_write_s": round(statistics.median(one), 2),
                         "identical_files": same})
    machine = machine_name()
    result = {"machine": machine, "images": args.images, "model_seconds": args.model_seconds,
              "rounds": args.rounds, "rows": rows}
    lines = ["# Folder runs: writing in the background while the next image is upscaled", "",
             f"Machine: {machine}. {args.images} crops 750x1000 -> 3000x4000 (x4), a stand-in model that waits "
             f"{args.model_seconds} s per image without using the CPU (as a GPU or a server); medians of "
             f"{args.rounds} alternating runs.", "",
             "| format | plain | overlapped | speed-up | one write alone | identical files |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['plain_s']} s | {r['overlapped_s']} s | {r['speedup']}x | {r['one_write_s']} s "
              f"| {'yes' if r['identical_files'] else 'NO'} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    atomic_write_bytes(args.out_dir / f"overlapped_writes_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"overlapped_writes_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
