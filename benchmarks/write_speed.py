"""Speed and size of the PNG encoder (``runtime/images/png_writer.py``) against OpenCV and Pillow.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/png_write.py [--width 6000] [--repeats 3] [--out-dir benchmarks/results]

The image: the bundled Canon photo (``samples/cameras/canon/xmp_test.jpg``, 2000x1072) resized
bicubically to ``--width`` pixels wide (6000: 6000x3216, 58 MB of RGB), as an upscaled output looks.
Each encoder writes it at zlib level 1 into memory (no disk in the timing): this encoder with 1
thread and with every usable core (``--threads``), ``cv2.imencode`` and Pillow. Reported: the median
time over ``--repeats`` runs after a warm-up, MB/s of raw pixels, and the file size.

Results: ``<out-dir>/png_write_<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg"


def _timed(fn: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    size = len(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads of the parallel run (default: every core)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.width < 64 or args.repeats < 1:
        parser.error("--width must be at least 64 and --repeats at least 1")

    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import intra_op_threads, report_tag
    from adassr.runtime.images.png_writer import write_png
    from adassr.runtime.store import atomic_write_bytes

    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    height = round(photo.shape[0] * args.width / photo.shape[1])
    pixels = np.ascontiguousarray(cv2.resize(photo, (args.width, height), interpolation=cv2.INTER_CUBIC))
    threads = args.threads or intra_op_threads()

    def ours(n: int) -> Callable[[], bytes]:
        def run() -> bytes:
            buf = io.BytesIO()
            write_png(buf, pixels, level=1, threads=n)
            return buf.getvalue()
        return run

    def opencv() -> bytes:
        ok, data = cv2.imencode(".png", pixels[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        return data.tobytes()

    def pillow() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    rows = []
    for name, fn in (("adassr, 1 thread", ours(1)), (f"adassr, {threads} threads", ours(threads)),
                     (f"OpenCV {cv2.__version__} (cv2 threads: {cv2.getNumThreads()})", opencv),
                     (f"Pillow {Image.__version__}", pillow)):
        seconds, size = _timed(fn, args.repeats)
        rows.append({"encoder": name, "seconds": round(seconds, 3), "mb_per_s": round(pixels.nbytes / seconds / 1e6),
                     "file_mb": round(size / 1e6, 3)})
    machine = machine_name()
    result = {"machine": machine, "width": args.width, "height": height, "raw_mb": round(pixels.nbytes / 1e6, 1),
              "repeats": args.repeats, "rows": rows}
    lines = ["# PNG write speed (zlib level 1)", "",
             f"Machine: {machine}. The Canon photo resized to {args.width}x{height} ({pixels.nbytes / 1e6:.1f} MB "
             f"of RGB), encoded into memory; median of {args.repeats} runs after a warm-up.", "",
             "| encoder | time | raw MB/s | file |", "|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['seconds']:.3f} s | {r['mb_per_s']} | {r['file_mb']:.3f} MB |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    if args.width != 6000:
        tag += f"_{args.width}"
    atomic_write_bytes(args.out_dir / f"png_write_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"png_write_{tag}.md", text.encode())


if __name__ == "__main__":
    main()
