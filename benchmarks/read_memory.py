"""Peak memory of reading an image, by format and layout, against the decoded array's size.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/read_memory.py [--width 4000] [--height 3000] [--out-dir benchmarks/results]

What it measures: for each layout the runtime reads (8-bit RGB JPEG / PNG / TIFF / WebP, with and
without an EXIF or TIFF orientation, RGBA and grey+alpha PNG, colour and grey palette PNG, 16-bit
RGB PNG and TIFF), a seeded smooth random ``width x height`` image is saved to a temporary folder and
read with :func:`adassr.runtime.images.read_image` in a fresh subprocess. The child forgets the peak
of its imports (Linux: ``/proc/self/clear_refs``), reads the file, and reports the growth of its peak
resident memory (``VmHWM``) over its memory before the read, divided by the decoded arrays' bytes
(pixels and alpha). The decoder's own copy of the image counts: Pillow stores 8-bit RGB, grey+alpha
and RGBA at 4 bytes a pixel.

Results: ``<out-dir>/read_memory_<machine>.md`` and ``.json`` (``_<width>x<height>`` added for a size
other than 4000x3000). Linux only (it reads ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import int_at_least, output_dir, run_script  # noqa: E402

CHILD = r"""
import json, re, sys
from adassr.runtime.images import read_image
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = status("VmRSS")
image = read_image(sys.argv[1], max_pixels=10**9)
size = image.pixels.nbytes + (0 if image.alpha is None else image.alpha.nbytes)
print(json.dumps({"peak_growth": status("VmHWM") - before, "array_bytes": size}))
"""


def _smooth(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """Blocky random content (compresses like a photo more than noise does)."""
    small = rng.integers(0, 256, (-(-height // 8), -(-width // 8), channels)).astype(np.uint8)  # then cropped
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:height, :width])


def _files(folder: Path, width: int, height: int) -> list[tuple[str, Path]]:
    import cv2

    rng = np.random.default_rng(0)
    rgb = _smooth(rng, height, width, 3)
    alpha = _smooth(rng, height, width, 1)[..., 0]
    exif = Image.Exif()
    exif[0x0112] = 6
    made: list[tuple[str, Path]] = []

    def save(case: str, name: str, image: Image.Image, **options: object) -> None:
        path = folder / name
        image.save(path, **options)
        made.append((case, path))

    save("8-bit RGB JPEG", "rgb.jpg", Image.fromarray(rgb), quality=90)
    save("8-bit RGB JPEG, EXIF orientation 6", "rgb_o6.jpg", Image.fromarray(rgb), quality=90, exif=exif)
    save("8-bit RGB PNG", "rgb.png", Image.fromarray(rgb), compress_level=1)
    save("8-bit RGB TIFF", "rgb.tif", Image.fromarray(rgb))
    save("8-bit RGB TIFF, orientation tag 6", "rgb_o6.tif", Image.fromarray(rgb), tiffinfo={274: 6})
    save("8-bit RGB WebP", "rgb.webp", Image.fromarray(rgb), quality=90)
    save("8-bit RGBA PNG", "rgba.png", Image.fromarray(np.dstack([rgb, alpha])), compress_level=1)
    save("8-bit grey+alpha PNG", "la.png", Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA"),
         compress_level=1)
    save("colour palette PNG", "palette.png", Image.fromarray(rgb).quantize(64), compress_level=1)
    grey = Image.fromarray(rgb[..., 0]).convert("P")
    grey.putpalette([v for k in range(256) for v in (k, k, k)])
    save("grey palette PNG", "palette_grey.png", grey, compress_level=1)
    rgb16 = rgb.astype(np.uint16) * 257
    for case, name in (("16-bit RGB PNG", "rgb16.png"), ("16-bit RGB TIFF", "rgb16.tif")):
        path = folder / name
        cv2.imwrite(str(path), np.ascontiguousarray(rgb16[..., ::-1]))
        made.append((case, path))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int_at_least(8), default=4000)
    parser.add_argument("--height", type=int_at_least(8), default=3000)
    parser.add_argument("--out-dir", type=output_dir, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        parser.error("this benchmark reads Linux's /proc/self/status and resets its peak with /proc/self/clear_refs")
    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import report_tag
    from adassr.runtime.store import atomic_write_bytes

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, path in _files(Path(tmp), args.width, args.height):
            done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                                  check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"case": case, "array_bytes": measured["array_bytes"],
                         "peak_growth_bytes": measured["peak_growth"], "file_mb": round(path.stat().st_size / 1e6, 1),
                         "array_mb": round(measured["array_bytes"] / 1e6, 1),
                         "peak_growth_mb": round(measured["peak_growth"] / 1e6, 1),
                         "ratio": round(measured["peak_growth"] / measured["array_bytes"], 2)})
    machine = machine_name()
    result = {"machine": machine, "width": args.width, "height": args.height, "rows": rows}
    lines = ["# Read peak memory", "",
             f"Machine: {machine}. Image {args.width}x{args.height}; each file read in a fresh process; "
             "peak growth = VmHWM after the read minus VmRSS before it (the imports' peak forgotten).", "",
             "| case | file | decoded arrays | peak growth | x arrays |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['file_mb']} MB | {r['array_mb']} MB | {r['peak_growth_mb']} MB | {r['ratio']} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    if (args.width, args.height) != (4000, 3000):
        tag += f"_{args.width}x{args.height}"
    atomic_write_bytes(args.out_dir / f"read_memory_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"read_memory_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
