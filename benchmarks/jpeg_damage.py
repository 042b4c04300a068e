"""How often the JPEG reader notices damaged data, whether it ever refuses a good file, and its speed.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/jpeg_damage.py [--copies 40] [--seed 0] [--out-dir benchmarks/results]

What it measures:

- detection: for every JPEG of ``benchmarks/data/dev_photos`` and the canon sample, as it is (baseline)
  and re-encoded progressive, ``--copies`` damaged copies (seeded), in turn of five kinds: a stretch of
  1-2000 bytes lost inside the scans (a dropped packet), a stretch of 1-2000 bytes repeated (a packet
  delivered twice), the scans cut at a random point with the end-of-image marker written after them (an
  interrupted write), the scans' data zeros from a random point on, the length and the end marker kept
  (unwritten sectors), one flipped bit inside the scans; and for the progressive layout, the file cut at
  each of its scan boundaries with the end marker written after it (every one, not sampled: a progressive
  file's writer interrupted between scans). Each copy is read with
  :func:`adassr.runtime.images.read_image`: refused (ImageError) or read, to the good file's pixels
  or to others, and with a note or without (a progressive file's scans that stop short are noted, not
  refused: the standard allows such a file);
- false refusals: every JPEG and MPO in the repository (samples, benchmark photos) must read, to
  Pillow's pixels;
- speed: the median time of ``read_image`` on the 10 MP ``samples/large/fujifilm.mpo`` and the
  2000x1072 canon photo, through the TurboJPEG path and through Pillow's (the reader as it was), in
  alternation.

Results: ``<out-dir>/jpeg_damage_<machine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import non_negative_int, output_dir, run_script  # noqa: E402

KINDS = ("bytes lost", "a stretch repeated", "cut, end marker kept", "the rest zero-filled", "one bit flipped")
AT_SCAN_BOUNDARIES = "cut at a scan boundary, end marker kept"
"""Not one of the random kinds (their seeded sequence stays as it was): every boundary of the progressive layout."""
LAYOUTS = ("baseline", "progressive")


def _scan_start(data: bytes) -> int:
    """The image's first entropy-coded byte (not an EXIF thumbnail's)."""
    from adassr.runtime.images.jpeg_reader import scan_data_start

    start = scan_data_start(data)
    if start is None:
        raise SystemExit("a photo of the benchmark has a header that cannot be followed to its scan")
    return start


def _damaged(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    start = _scan_start(data)
    at = int(rng.integers(start, len(data) - 2))
    if kind == "bytes lost":
        return data[:at] + data[at + int(rng.integers(1, 2001)) :]
    if kind == "a stretch repeated":  # a packet delivered twice
        return data[:at] + data[max(start, at - int(rng.integers(1, 2001))) :]
    if kind == "cut, end marker kept":
        return data[:at] + b"\xff\xd9"
    if kind == "the rest zero-filled":  # unwritten sectors, a download's missing range filled in
        return data[:at] + b"\x00" * (len(data) - 2 - at) + b"\xff\xd9"
    flipped = bytearray(data)
    flipped[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(flipped)


def _progressive(source: Path) -> bytes:
    """The photo re-encoded as a progressive JPEG (quality 95, 4:2:0)."""
    import io

    with Image.open(source) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95, progressive=True)
    return buf.getvalue()


def _scan_boundaries(data: bytes) -> list[int]:
    """Offsets of the SOS markers of the image's scans after its first one (not an EXIF thumbnail's)."""
    first = data.rfind(b"\xff\xda", 0, _scan_start(data))
    found, at = [], data.find(b"\xff\xda", first + 2)
    while at >= 0:
        found.append(at)
        at = data.find(b"\xff\xda", at + 2)
    return found


def detection(files: list[Path], copies: int, seed: int) -> dict[str, dict[str, dict[str, int]]]:
    """{layout: {kind: counts}} over ``copies`` damaged copies of each file in each layout."""
    from adassr.runtime.errors import ImageError
    from adassr.runtime.images import read_image

    rng = np.random.default_rng(seed)
    def blank() -> dict[str, int]:
        return {"copies": 0, "refused": 0, "read_changed": 0, "read_unchanged": 0, "read_noted": 0}

    counts = {layout: {kind: blank() for kind in KINDS} for layout in LAYOUTS}
    counts["progressive"][AT_SCAN_BOUNDARIES] = blank()
    with tempfile.TemporaryDirectory() as tmp:
        for source in files:
            for layout in LAYOUTS:
                data = source.read_bytes() if layout == "baseline" else _progressive(source)
                original = Path(tmp) / "good.jpg"
                original.write_bytes(data)
                good = read_image(original).pixels
                damaged = [(KINDS[k % len(KINDS)], _damaged(data, KINDS[k % len(KINDS)], rng)) for k in range(copies)]
                if layout == "progressive":
                    damaged += [(AT_SCAN_BOUNDARIES, data[:at] + b"\xff\xd9") for at in _scan_boundaries(data)]
                for k, (kind, copy) in enumerate(damaged):
                    path = Path(tmp) / f"{source.stem}_{layout}_{k}.jpg"
                    path.write_bytes(copy)
                    tally = counts[layout][kind]
                    tally["copies"] += 1
                    notes: list[str] = []
                    try:
                        pixels = read_image(path, notes=notes).pixels
                    except ImageError:
                        tally["refused"] += 1
                        continue
                    same = pixels.shape == good.shape and np.array_equal(pixels, good)
                    tally["read_unchanged" if same else "read_changed"] += 1
                    tally["read_noted"] += bool(notes)
    return counts


def false_refusals(files: list[Path]) -> list[dict[str, object]]:
    from adassr.runtime.images import read_image

    rows = []
    for path in files:
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im))  # read_image turns by the EXIF orientation too
        expected = expected[..., None] if expected.ndim == 2 else expected
        try:
            pixels = read_image(path).pixels
            rows.append({"file": str(path.relative_to(ROOT)), "read": True,
                         "pillows_pixels": bool(pixels.shape == expected.shape and np.array_equal(pixels, expected))})
        except Exception as exc:  # noqa: BLE001 - a refusal of a good file is the finding, recorded with its reason
            rows.append({"file": str(path.relative_to(ROOT)), "read": False, "error": str(exc)})
    return rows


def speed(files: list[Path], rounds: int) -> list[dict[str, object]]:
    import adassr.runtime.images.read as reader
    from adassr.runtime.images import read_image

    turbo = reader.decode_jpeg_checked
    pillow: Callable[..., None] = lambda *_a: None  # noqa: E731 - the reader falls back to Pillow on None
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(rounds):
            for name, decoder in (("pillow", pillow), ("turbojpeg", turbo)):
                reader.decode_jpeg_checked = decoder  # type: ignore[assignment]
                for path in files:
                    began = time.perf_counter()
                    read_image(path)
                    times.setdefault((name, path.name), []).append(time.perf_counter() - began)
    finally:
        reader.decode_jpeg_checked = turbo
    return [{"path": file, "decoder": name, "median_ms": round(1e3 * statistics.median(values), 1)}
            for (name, file), values in times.items()]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / max(whole, 1):.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=40, help="damaged copies per photo and layout (default 40)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--rounds", type=int, default=15, help="timed reads per file and path (default 15)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.copies < 1 or args.rounds < 1:
        parser.error("--copies and --rounds must be at least 1")
    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import report_tag
    from adassr.runtime.store import atomic_write_bytes

    photos = sorted((ROOT / "benchmarks" / "data" / "dev_photos").glob("*.jpg"))
    photos.append(ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg")
    every = sorted({*ROOT.glob("samples/**/*.jpg"), *ROOT.glob("samples/**/*.mpo"),
                    *ROOT.glob("benchmarks/data/**/*.jpg")})
    counts = detection(photos, args.copies, args.seed)
    good = false_refusals(every)
    timed = speed([ROOT / "samples" / "large" / "fujifilm.mpo", photos[-1]], args.rounds)
    machine = machine_name()
    result = {"machine": machine, "copies_per_photo": args.copies, "seed": args.seed,
              "photos": [str(p.relative_to(ROOT)) for p in photos], "detection": counts, "good_files": good,
              "speed": timed}
    lines = ["# Damaged JPEG data: detection, false refusals, speed", "",
             f"Machine: {machine}. {len(photos)} photos as they are (baseline) and re-encoded progressive, "
             f"{args.copies} damaged copies of each (seed {args.seed}), the kinds in turn; the progressive files also "
             "cut at every scan boundary.", "",
             "| layout | damage | copies | refused | read, pixels changed | read, pixels unchanged "
             "| read with a note |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {layout} | {kind} | {c['copies']} | {c['refused']} ({_share(c['refused'], c['copies'])}) "
              f"| {c['read_changed']} | {c['read_unchanged']} | {c['read_noted']} |"
              for layout, kinds in counts.items() for kind, c in kinds.items()]
    refused = [g for g in good if not g["read"]]
    unlike = [g for g in good if g["read"] and not g["pillows_pixels"]]
    lines += ["", f"Good files: {len(good)} JPEG/MPO files of the repository; refused {len(refused)}, "
              f"read to pixels other than Pillow's {len(unlike)}.", ""]
    lines += [f"- refused: {g['file']}: {g['error']}" for g in refused]
    lines += ["| read_image | decoder | median |", "|---|---|---|"]
    lines += [f"| {t['path']} | {t['decoder']} | {t['median_ms']} ms |" for t in timed]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = report_tag(machine)
    atomic_write_bytes(args.out_dir / f"jpeg_damage_{tag}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"jpeg_damage_{tag}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
