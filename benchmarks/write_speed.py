"""Speed and size of the PNG, JPEG and TIFF encoders (``runtime/images/*_writer.py``) against OpenCV and Pillow.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/write_speed.py [--width 6000] [--repeats 3] [--threads N]
        [--out-dir benchmarks/results]

The image: the bundled Canon photo (``samples/cameras/canon/xmp_test.jpg``, 2000x1072) resized
bicubically to ``--width`` pixels wide (6000: 6000x3216, 58 MB of RGB), as an upscaled output looks.
Each encoder writes it into memory (no disk in the timing), with the settings ``write_image`` uses:
PNG at zlib level 1, JPEG at quality 95 (4:4:4), TIFF Deflate at level 1 with the horizontal
predictor (OpenCV: its default LZW; Pillow: Deflate without a predictor). This project's encoders
run on 1 thread and on every usable core (``--threads``). Reported: the median time over
``--repeats`` runs after a warm-up, MB/s of raw pixels, and the file size.

Results: ``<out-dir>/write_speed_<machine>.md`` and ``.json`` (``_<width>`` added for another width).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import output_dir, positive_int, run_script  # noqa: E402

PHOTO = ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg"


def _timed(fn: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    size = len(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def _encoders(pixels: np.ndarray, threads: int) -> list[tuple[str, str, Callable[[], bytes]]]:
    """(format, encoder, run) of every encoder timed."""
    from adassr.runtime.images.jpeg_writer import write_jpeg
    from adassr.runtime.images.png_writer import write_png
    from adassr.runtime.images.tiff_writer import write_tiff

    def ours(writer: Callable[..., None], n: int, **options: object) -> Callable[[], bytes]:
        def run() -> bytes:
            buf = io.BytesIO()
            writer(buf, pixels, threads=n, **options)
            return buf.getvalue()
        return run

    def opencv(suffix: str, params: list[int]) -> Callable[[], bytes]:
        def run() -> bytes:
            ok, data = cv2.imencode(suffix, pixels[..., ::-1], params)
            assert ok
            return data.tobytes()
        return run

    def pillow(fmt: str, **options: object) -> Callable[[], bytes]:
        def run() -> bytes:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format=fmt, **options)
            return buf.getvalue()
        return run

    out: list[tuple[str, str, Callable[[], bytes]]] = []
    cv = f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)"
    pil = f"Pillow {Image.__version__}"
    for fmt, writer, options, cv_args, pil_args in (
        ("PNG", write_png, {"level": 1}, (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]), ("PNG", {"compress_level": 1})),
        ("JPEG q95", write_jpeg, {"quality": 95}, (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95,
                                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]),
         ("JPEG", {"quality": 95, "subsampling": 0})),
        ("TIFF", write_tiff, {"level": 1}, (".tif", []), ("TIFF", {"compression": "tiff_adobe_deflate"})),
    ):
        out.append((fmt, "adassr, 1 thread", ours(writer, 1, **options)))
        out.append((fmt, f"adassr, {threads} threads", ours(writer, threads, **options)))
        out.append((fmt, cv, opencv(*cv_args)))
        out.append((fmt, pil, pillow(pil_args[0], **pil_args[1])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads of the parallel run (default: every core)")
    parser.add_argument("--out-dir", type=output_dir, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.width < 64 or args.repeats < 1:
        parser.error("--width must be at least 64 and --repeats at least 1")

    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import intra_op_threads, report_tag
    from adassr.runtime.store import atomic_write_bytes

    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    height = round(photo.shape[0] * args.width / photo.shape[1])
    pixels = np.ascontiguousarray(cv2.resize(photo, (args.width, height), interpolation=cv2.INTER_CUBIC))
    threads = args.threads or intra_op_threads()

    rows = []
    for fmt, name, fn in _encoders(pixels, threads):
        seconds, size = _timed(fn, args.repeats)
        rows.append({"format": fmt, "encoder": name, "seconds": round(seconds, 3),
                     "mb_per_s": round(pixels.nbytes / seconds / 1e6), "file_mb": round(size / 1e6, 3)})
    machine = machine_name()
    result = {"machine": machine, "width": args.width, "height": height, "raw_mb": round(pixels.nbytes / 1e6, 1),
              "repeats": args.repeats, "rows": rows}
    lines = ["# Write speed: PNG, JPEG, TIFF", "",
             f"Machine: {machine}. The Canon photo resized to {args.width}x{height} ({pixels.nbytes / 1e6:.1f} MB "
             f"of RGB), encoded into memory; median of {args.repeats} runs after a warm-up.", "",
             "| format | encoder | time | raw MB/s | file |", "|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['encoder']} | {r['seconds']:.3f} s | {r['mb_per_s']} | {r['file_mb']:.3f} MB |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    if args.width != 6000:
        tag += f"_{args.width}"
    atomic_write_bytes(args.out_dir / f"write_speed_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"write_speed_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
