"""``adassr upscale``: upscale a file or a folder with the camera's exported model (torch-free).

- ``-i FILE -o OUT``: OUT is the output file when it has a writable image suffix (and is not an
  existing folder), otherwise a folder (created) that receives ``<stem>.<ext>``. An image suffix
  that cannot be written (``result.gif``, ``x.bmp``) is an error, never a folder name.
- ``-i DIR -o OUTDIR``: every image directly inside DIR (suffixes of
  ``adassr.runtime.images.SUPPORTED_READ_SUFFIXES``, sorted by name) goes to ``OUTDIR/<stem>.<ext>``,
  and every image of a subfolder one level down (``DIR/nikon/x.jpg``, the layout ``adapt --images``
  reads) to ``OUTDIR/<subfolder>/<stem>.<ext>``; the output folder itself is never read, nor is a
  subfolder an earlier run wrote (it holds :data:`adassr.runtime.output_plan.OUTPUT_MARKER`; a
  warning names it), and one of DIR's subfolders that holds images of its own is refused as OUTDIR
  unless an earlier run wrote it (also where OUTDIR is a link to it, or it a link to OUTDIR).
  An output that is one of the run's input files (a link in OUTDIR back into DIR) is refused
  before any work. Two inputs that would get the same name, or a name a mirrored subfolder
  takes, keep their input suffix in the stem (``a_jpg.png``), and a number when that name is taken
  too (``a_jpg_2.png``): no output ever overwrites another. OUTDIR
  with an image suffix (``-o result.png``) is refused: it reads as a file name.
  A bad file is reported on stderr (file and reason) and skipped; it never aborts the batch nor
  leaves a partial output (files are written atomically). Files of DIR in camera formats that are
  not read (HEIF, raw: :mod:`adassr.runtime.images.camera_formats`) are named in one note. When
  no input's header can be read, no model is prepared or opened: each input fails as it is read.
- An output file that exists already is replaced, and the summary counts the replaced files;
  ``--skip-existing`` keeps it and skips its input instead (an interrupted folder run resumes where
  it stopped: outputs are written atomically, so an existing one is complete). The output names are
  planned from all inputs first, so they are the same whether or not some are skipped.
- ``--ext auto`` keeps the input's format where it can be written (MPO, JFIF -> jpg, BMP -> png); WebP is
  written lossy at ``--quality`` (a lossless WebP input too).
- Each image prints which model served it; a summary line ends the run.
- Exit status: 0 all images done, 1 some failed, 2 a whole-run problem, checked before the first
  image and raised as AdassrError for the umbrella CLI to print once: bad arguments (``--threads``,
  ``--outscale`` above 16, an unwritable output suffix), an output folder that is not writable,
  ``--require-providers`` that this onnxruntime cannot meet, a missing or empty store, a first
  model that fails to open (damaged, or a backend that cannot start).
- ``--backend NAME`` picks an upscaler from the registry the caller passes (see
  :mod:`adassr.runtime.upscalers`); on its own the runtime offers ``onnxruntime``, and the umbrella
  CLI adds ``torch`` from the adapt layer. The runtime never imports torch.
- ``--triton URL [--triton-model NAME]`` sends the images to a Triton Inference Server instead
  (see :mod:`adassr.runtime.server.triton_upscale`); the store and local backend options are unused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adassr.runtime.cameras import camera_name, closest_camera_hint, validate_group_name
from adassr.runtime.console import lost_stream, one_line, printable, say
from adassr.runtime.cpu_info import intra_op_threads, limit_opencv_threads
from adassr.runtime.errors import AdassrError, ConfigError, StoreError, unexpected_error
from adassr.runtime.fields import named_by_option
from adassr.runtime.images import (
    ImageWarning,
    LoadedImage,
    PreparedWrite,
    check_quality,
    check_writable_size,
    prepare_write,
    read_image,
    read_image_size,
)
from adassr.runtime.images.convert import parse_sample_bits
from adassr.runtime.links import broken_link
from adassr.runtime.output_plan import (
    entry_exists,
    given_path,
    mark_output_in_input,
    plan_outputs,
    remove_stale_outputs,
    skip_existing,
)
from adassr.runtime.pipeline import OutputCheck, RuntimeOptions, UpscaleResult
from adassr.runtime.preflight import check_output_folders, check_required_providers, check_threads
from adassr.runtime.routing import SERVING_PRECISIONS
from adassr.runtime.server.triton_client import DEFAULT_PREFIX as DEFAULT_TRITON_PREFIX
from adassr.runtime.signals import last_words
from adassr.runtime.store import (
    DEFAULT_STORE,
    FALLBACK_BACKBONE,
    FALLBACK_CAMERA,
    CameraStore,
    adapt_command,
    list_cameras,
    store_argument,
)
from adassr.runtime.tile_shape import AUTO_TILE, mem_available_bytes, tile_argument, tiling_options
from adassr.runtime.tiling import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_PRE_PAD, DEFAULT_TILE, MAX_PRE_PAD
from adassr.runtime.upscale_report import check_report_path
from adassr.runtime.upscalers import ImageUpscaler, TileProgress, UpscalerRegistry, runtime_upscalers

if TYPE_CHECKING:
    from adassr.runtime.server.triton_upscale import TritonRunOptions

log = logging.getLogger(__name__)


def add_upscale_arguments(parser: argparse.ArgumentParser, upscalers: UpscalerRegistry | None = None) -> None:
    """Add the ``adassr upscale`` options to ``parser``; ``--backend`` offers the upscalers of ``upscalers``
    (default: the runtime's own, :func:`~adassr.runtime.upscalers.runtime_upscalers`)."""
    registry = upscalers if upscalers is not None else runtime_upscalers()
    parser.add_argument("-i", "--input", required=True, type=given_path, help="an image file or a folder of images")
    parser.add_argument("-o", "--output", required=True, type=given_path,
                        help="output file (for one input file) or folder")
    parser.add_argument("--camera", default=None,
                        help="camera group whose model to use (default: each image's folder, EXIF Make or "
                             "RealSR-style name prefix, as adapt groups them)")
    parser.add_argument("--store", type=store_argument, default=DEFAULT_STORE,
                        help=f"model store (default ./{DEFAULT_STORE})")
    parser.add_argument("--backend", choices=registry.names(), default=registry.names()[0],
                        help=f"upscaler: {registry.describe()} (default %(default)s)")
    parser.add_argument("--gpu", type=int, default=None, metavar="N",
                        help="CUDA device for --backend tensorrt / torch and onnxruntime's cuda / tensorrt "
                             "providers (default 0)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="--backend tensorrt / torch on a GPU: replay each tile shape as a CUDA graph")
    parser.add_argument("--providers", default="cpu",
                        help="onnxruntime execution providers in priority order, from tensorrt,cuda,cpu (default cpu)")
    parser.add_argument("--require-providers", action="store_true",
                        help="fail instead of falling back when a requested provider is not in use")
    parser.add_argument("--precision", choices=SERVING_PRECISIONS, default="fp32",
                        help="model precision (default fp32); bf16: --backend tensorrt only, an engine built from "
                             "model.onnx with bf16 layers")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per usable physical core, or $ADASSR_THREADS)")
    parser.add_argument("--tile", type=tile_argument, default=AUTO_TILE,
                        help="tile size in input pixels, 0 = no tiling, or auto (default): the least work "
                             "with tiles that fit half the free memory (the whole image when it fits)")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help=f"input pixels shared by neighbouring tiles (default {DEFAULT_OVERLAP}, shrunk to fit a "
                             "small tile: less than half of it; a value given here must fit)")
    parser.add_argument("--tile-batch", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"tiles per model call (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--pre-pad", type=int, default=DEFAULT_PRE_PAD,
                        help=f"reflect padding around the image, input pixels (default {DEFAULT_PRE_PAD}, "
                             f"at most {MAX_PRE_PAD})")
    parser.add_argument("--outscale", type=float, default=None,
                        help="final upscaling factor (default: the model's scale, e.g. 4); the output size is rounded "
                             "to the nearest pixel, halves up, and is at least 1 pixel a side")
    parser.add_argument("--sample-bits", type=sample_bits_argument, default=None, metavar="{auto,9..16}",
                        help="16-bit inputs: the bits of the camera's samples, whose top level stands for white for "
                             "the model and in JPEG / WebP outputs (default auto: a file whose values stop at 1023, "
                             "4095 or 16383 is taken for 10-, 12- or 14-bit samples; 16 for a dark 16-bit photo)")
    parser.add_argument("--ext", default="auto",
                        help="output format for folders / output folders: auto (as the input), png, jpg, webp, tif")
    parser.add_argument("--quality", type=int, default=95,
                        help="JPEG / WebP quality (default 95); WebP is written lossy at every quality, 100 too "
                             "(a lossless WebP input gives a lossy output: --ext png keeps every pixel)")
    parser.add_argument("--no-exif", action="store_true",
                        help="write outputs without the photos' EXIF (camera, date, GPS, ...), which they carry "
                             "by default; the colour profile stays")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (off a terminal there is no bar anyway: one line per image)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave alone every output file that exists already and skip its input (resume an "
                             "interrupted folder run); without it existing outputs are replaced, and counted")
    parser.add_argument("--report", type=given_path, default=None, metavar="FILE",
                        help="write a JSON report when the run ends, however it ends: every input with its "
                             "status (ok, failed with the error, skipped, not_done), output, camera group and "
                             "model")
    triton = parser.add_argument_group("a Triton Inference Server instead of local models")
    triton.add_argument("--triton", default=None, metavar="URL",
                        help="upscale on the Triton server at URL (host:port of its HTTP endpoint) serving "
                             "the repository of `adassr export --triton-repo`; tiles are cut here")
    triton.add_argument("--triton-model", default=None, metavar="NAME",
                        help="Triton model for every image (default: by --camera, else the image's camera as adapt "
                             "groups it, else "
                             f"{DEFAULT_TRITON_PREFIX}{FALLBACK_CAMERA})")
    triton.add_argument("--triton-prefix", default=DEFAULT_TRITON_PREFIX, metavar="P",
                        help="model name prefix the repository was written with (default %(default)s)")
    parser.add_argument("--backbone", default=FALLBACK_BACKBONE,
                        help="backbone for cameras without adapted weights: exported as the store's fallback "
                             "model on first use, or run directly by --backend torch (default %(default)s)")
    torch_opts = parser.add_argument_group("upscalers that run the model themselves (--backend torch)")
    torch_opts.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                            help="device for --backend torch (default auto)")


# -- progress ---------------------------------------------------------------------------------
def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed stream
        return False


class _Progress:
    """Images done (a folder) or tiles done (one file), on stderr.

    On a terminal: tqdm's bar when it is installed (it is not a runtime dependency), else a counter
    redrawn in place. Elsewhere (a log file, a pipe, CI) nothing is redrawn: a folder run writes one
    ``[i/n] name`` line per image and a single image's tiles are not counted (carriage-return
    redraws filled logs with ``^M`` lines).
    """

    def __init__(self, total: int, *, enabled: bool, stream: TextIO) -> None:
        self._stream = stream
        self._total = total
        self._done = 0
        self._enabled = enabled
        self._interactive = _is_terminal(stream)
        self._tqdm: Any = None
        if enabled and self._interactive and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self._tqdm = tqdm
        self._bar: Any = None
        if enabled and total > 1:
            self._bar = self._make_bar(total, "img", leave=True)

    def _make_bar(self, total: int, unit: str, *, leave: bool) -> Any:
        if self._tqdm is None:
            return None
        return self._tqdm(total=total, unit=unit, file=self._stream, dynamic_ncols=True, leave=leave)

    def write(self, line: str, *, file: TextIO | None) -> None:
        line = one_line(line)  # one line per image, whatever its file name holds
        if self._bar is None or file is None:
            say(line, file)
            return
        try:
            self._bar.write(printable(line, file), file=file)
        except OSError as exc:
            lost_stream(file, exc)

    def advance(self, name: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._enabled and self._total > 1:
            say(f"[{self._done}/{self._total}] {one_line(name)}", self._stream)

    def tiles(self) -> Callable[[int, int], None] | None:
        """A tile-progress callback for a single-image run on a terminal (None for folders, other streams
        or when disabled)."""
        if not self._enabled or self._total != 1 or not self._interactive:
            return None

        def update(done: int, total: int) -> None:
            if total <= 1:
                return
            if self._tqdm is None:
                say(f"\rtiles {done}/{total}", self._stream, end="\n" if done == total else "")
                return
            if self._bar is None:
                self._bar = self._make_bar(total, "tile", leave=False)
            self._bar.update(done - self._bar.n)
            if done == total:
                self._bar.close()
                self._bar = None

        return update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# -- run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Outcome:
    """What happened to one input (no pixels: a folder run keeps one of these per image)."""

    source: Path
    target: Path | None
    group: str | None  # camera group the image was routed as
    model: str | None  # the model that served it
    error: str | None
    replaced: bool = False  # the output file existed before and was replaced
    route: str | None = None  # the model and why it was chosen, as the output line names it
    notes: tuple[str, ...] = ()  # what was tolerated about the image (the ``note:`` lines)


def sample_bits_argument(text: str) -> int | None:
    """``--sample-bits``: None for auto, else the bits (9-16) of a 16-bit file's samples."""
    try:
        return parse_sample_bits(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("sample bits ")) from None


def _upscale_one(
    serve: Serve,
    source: Path,
    target: Path,
    *,
    quality: int,
    tiles: Callable[[int, int], None] | None,
    threads: int | None = None,
    exif: bool = True,
    sample_bits: int | None = None,
) -> tuple[UpscaleResult, PreparedWrite, list[str]]:
    """Read and upscale one image and prepare its output file (checked, converted, warned about; not written);
    the notes are the reader's and the writer's :class:`ImageWarning` messages, each starting with the file it
    is about. Runs in the calling thread: warnings are recorded process-wide. ``sample_bits``: a 16-bit image's
    samples' bits (``--sample-bits``; None: the values decide)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        image = read_image(source)
        if sample_bits is not None and image.bit_depth == 16:
            image = replace(image, sample_peak=(1 << sample_bits) - 1)
        result = serve(image, tiles, lambda height, width: check_writable_size(target, height, width))
        prepared = prepare_write(target, result.pixels, alpha=result.alpha, quality=quality,
                                 icc_profile=image.icc_profile, threads=threads, exif=image.exif if exif else None,
                                 peak=image.white())  # a 12-bit file's 4095 is white in a JPEG
    named = (f"{source}: ", f"{target}: ")
    notes = [message if message.startswith(named) else f"{target}: {message}"
             for message in (str(w.message) for w in caught if issubclass(w.category, ImageWarning))]
    profile_note = image.profile_note()
    if profile_note is not None:
        notes.append(f"{source}: {profile_note}")
    for w in caught:  # re-emit anything that is not ours to handle
        if not issubclass(w.category, ImageWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, prepared, notes


def _write_one(prepared: PreparedWrite) -> None:
    prepared.write(remove_stale=False)  # stale temporary files were removed for every output before the run


OVERLAP_MEMORY_SHARE = 4
"""A folder run writes an image in the background while the next one is upscaled when the output's pixels
are at most 1/``OVERLAP_MEMORY_SHARE`` of the memory available then (``MemAvailable``): the overlap holds
one more output image."""
OVERLAP_MAX_BYTES_UNKNOWN = 512 << 20
"""The same bound where the available memory is unknown (no ``/proc/meminfo``)."""


def overlap_fits(nbytes: int, available: int | None) -> bool:
    """Whether an output of ``nbytes`` may be written in the background (see :data:`OVERLAP_MEMORY_SHARE`)."""
    if available is None:
        return nbytes <= OVERLAP_MAX_BYTES_UNKNOWN
    return nbytes * OVERLAP_MEMORY_SHARE <= available


def _runs_on_cpu(args: argparse.Namespace, options: RuntimeOptions) -> bool:
    """Whether the options ask for the CPU (onnxruntime without a GPU provider, torch on the CPU); where the
    opened model runs is the upscaler's ``computes_on_cpu`` (a requested GPU may fall back to the CPU)."""
    gpu_providers = any("cuda" in p.lower() or "tensorrt" in p.lower() for p in options.providers)
    return ((options.backend == "onnxruntime" and not gpu_providers)
            or (options.backend == "torch" and getattr(args, "device", "auto") == "cpu"))


def _check_device_options(args: argparse.Namespace, options: RuntimeOptions) -> None:
    """ConfigError for a device option the chosen backend would ignore without a word (``--device cuda``,
    ``--gpu 2`` and ``--cuda-graph`` ran the default onnxruntime CPU backend, on the CPU, exit 0)."""
    device, gpu, graph = getattr(args, "device", "auto"), getattr(args, "gpu", None), options.cuda_graph
    if device != "auto" and options.backend != "torch":
        raise ConfigError(f"--device {device} chooses the device of --backend torch; --backend {options.backend} "
                          "runs where its own options say (onnxruntime: --providers; tensorrt: --gpu): drop "
                          "--device, or use --backend torch")
    if graph and options.backend == "onnxruntime":
        raise ConfigError("--cuda-graph replays the tiles on a GPU with --backend tensorrt / torch; onnxruntime does "
                          "not use it: drop it, or use one of those backends")
    on_cpu = _runs_on_cpu(args, options)
    if on_cpu and (gpu is not None or graph):
        given = " and ".join(([f"--gpu {gpu}"] if gpu is not None else []) + (["--cuda-graph"] if graph else []))
        runs = (f"--providers {getattr(args, 'providers', 'cpu')}" if options.backend == "onnxruntime"
                else "--device cpu")
        fix = ("pass --providers cuda (or tensorrt,cuda,cpu)" if options.backend == "onnxruntime"
               else "drop --device cpu")
        raise ConfigError(f"{given} choose{'s' if ' and ' not in given else ''} a GPU, but {runs} runs on the CPU: "
                          f"{fix}, or drop {given}")


_OPTION_OF_FIELD = {"pre_pad": "--pre-pad", "outscale": "--outscale", "tile batch size": "--tile-batch",
                    "tile overlap": "--tile-overlap", "gpu": "--gpu", "threads": "--threads"}
"""Message starts of the runtime's option checks and the ``upscale`` options they are about."""


def options_from_args(args: argparse.Namespace, upscalers: UpscalerRegistry) -> RuntimeOptions:
    """The runtime options of parsed ``adassr upscale`` arguments (validated)."""
    entry = upscalers.get(args.backend)
    tile = args.tile
    if not entry.any_size and tile == AUTO_TILE:
        tile = DEFAULT_TILE  # fixed-shape models (TensorRT engines) are built for one tile shape
    # A model that takes any size runs a small image at its own size, not padded to a full tile.
    overlap = args.tile_overlap
    if overlap is None:  # the default shrinks to fit a small tile (`--tile 64` failed: overlap 32 must be < 32)
        overlap = min(DEFAULT_OVERLAP, (tile - 1) // 2) if isinstance(tile, int) and tile > 0 else DEFAULT_OVERLAP
    tiling = tiling_options(tile, overlap=overlap, pre_pad=args.pre_pad,
                            batch_size=args.tile_batch, pad_to_tile=not entry.any_size)
    return RuntimeOptions(
        store=args.store,
        backend=entry.name,
        providers=tuple(args.providers.split(",")) if isinstance(args.providers, str) else tuple(args.providers),
        precision=args.precision,
        threads=args.threads,
        require_providers=args.require_providers,
        tiling=tiling,
        outscale=args.outscale,
        gpu=0 if args.gpu is None else args.gpu,
        cuda_graph=args.cuda_graph,
        device=args.device,
        backbone=args.backbone,
    )


def _run_pairs(
    upscaler: ImageUpscaler,
    pairs: list[tuple[Path, Path]],
    args: argparse.Namespace,
    *,
    camera: str | None,
    stdout: TextIO | None,
    stderr: TextIO | None,
    skipped: int = 0,
    overlap_writes: bool = False,
    planned: Sequence[tuple[Path, Path]] | None = None,
) -> int:
    """The batch loop over ``pairs`` with one upscaler (local backend or Triton server); ``skipped``: the
    outputs ``--skip-existing`` left out (counted in the summary); ``overlap_writes``: see :func:`run_batch`;
    ``planned``: every pair before ``--skip-existing`` (for ``--report``)."""
    return run_batch(
        pairs,
        lambda image, tiles, check: upscaler.upscale(image, camera=camera, progress=tiles, check_output=check),
        quality=args.quality,
        exif=not getattr(args, "no_exif", False),
        progress=not args.no_progress,
        stdout=stdout,
        stderr=stderr,
        skipped=skipped,
        threads=args.threads,
        overlap_writes=overlap_writes,
        report_path=getattr(args, "report", None),
        planned=planned,
        sample_bits=getattr(args, "sample_bits", None),
    )


def run_upscale(
    args: argparse.Namespace,
    *,
    upscalers: UpscalerRegistry | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``adassr upscale`` with the upscaler ``args.backend`` of ``upscalers`` (default: the runtime's).

    Returns the exit status (0 ok, 1 some images failed). Argument and store problems raise
    :class:`AdassrError` before any image is read (the umbrella CLI prints them, exit 2).
    """
    registry = upscalers if upscalers is not None else runtime_upscalers()
    check_quality(args.quality, what="--quality")
    triton = _triton_options(args)
    check_threads(args.threads)
    if triton is not None and (unused := _local_options_given(args, registry)):
        say(f"note: {' '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with --triton: the server runs "
            "the models of its repository, whose tile and batch `adassr export --triton-repo` fixed",
            stderr if stderr is not None else sys.stderr)
    # with --triton the repository fixes the tile and the batch: --tile and --tile-batch are not used, so they are
    # not checked against local rules either (--tile 64 was refused for the default overlap of an unused tile)
    try:
        options = (options_from_args(args, registry) if triton is None
                   else RuntimeOptions(args.store, threads=args.threads))
    except ConfigError as exc:  # the checks name the fields; the user typed options
        raise ConfigError(named_by_option(str(exc), _OPTION_OF_FIELD)) from None
    cores = intra_op_threads()  # a bad ADASSR_THREADS is a usage error before any image, even with --threads
    limit_opencv_threads(options.threads or cores)
    left_out: list[str] = []
    pairs = plan_outputs(args.input, args.output, args.ext, notes=left_out)
    for note in left_out:
        say(f"note: {note}", stderr if stderr is not None else sys.stderr)
    if args.input.is_file() and not args.output.exists() and args.output.suffix and pairs[0][1] != args.output:
        say(f"note: {args.output} has no image suffix, so it is taken as a folder: writing "  # a typo such as .jgp
            f"{pairs[0][1]}", stderr if stderr is not None else sys.stderr)
    camera: str | None = args.camera
    if camera is not None:
        camera = camera_name(camera)  # the store's spelling; CameraError for a bad name, before any work
    check_output_folders(target for _, target in pairs)
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    report = getattr(args, "report", None)
    if report is not None:
        check_report_path(report, pairs)
        # replaced when the run ends: a run that fails as a whole from here on leaves "not finished", not the
        # previous run's report
        if not save_report(report, pairs, pairs, [], seconds=0.0, finished=False, stderr=err):
            raise ConfigError(f"--report {report} cannot be written (see the error above); choose another place")
    remove_stale_outputs(pairs)
    kept = 0
    planned = pairs
    if getattr(args, "skip_existing", False):
        pairs, kept = skip_existing(pairs)
        if kept:
            say(f"skipping {kept} image{'s' if kept != 1 else ''} whose output exists (--skip-existing)", out)
        if not pairs:
            if report is not None and not save_report(report, planned, pairs, [], seconds=0.0, finished=True,
                                                      stderr=err):
                return 1
            say(f"upscaled 0 ok, 0 failed; {kept} skipped: every output exists (--skip-existing)", out)
            return 0
    if triton is not None:
        from adassr.runtime.server.triton_upscale import open_triton

        with contextlib.closing(open_triton(triton, camera=camera)) as remote:
            mark_output_in_input(args.input, args.output)  # once every check passed: a refused run marks nothing
            # the server computes: the local cores encode meanwhile
            return _run_pairs(remote, pairs, args, camera=camera, stdout=stdout, stderr=stderr, skipped=kept,
                              overlap_writes=True, planned=planned)
    _check_device_options(args, options)
    if options.backend == "onnxruntime":
        check_required_providers(options.providers, require=options.require_providers)
    elif getattr(args, "providers", "cpu") != "cpu" or getattr(args, "require_providers", False):
        raise ConfigError(f"--providers and --require-providers choose onnxruntime's execution providers; --backend "
                          f"{options.backend} does not use them (it runs on --device / --gpu): drop them, or use "
                          "--backend onnxruntime")
    if camera is not None:
        _warn_if_camera_missing(camera, Path(args.store), err)
    entry = registry.get(options.backend)
    if not _any_header_readable(source for source, _ in pairs):
        # each input fails on its own when it is read: no model is opened, nor exported on first use (a minute
        # of work before a folder of HEIF photos or a damaged file was named)
        mark_output_in_input(args.input, args.output)
        return _run_pairs(_NoInputReadable(), pairs, args, camera=camera, stdout=stdout, stderr=stderr,
                          skipped=kept, planned=planned)
    if entry.prepare is not None:
        entry.prepare(options, camera=camera, samples=[source for source, _ in pairs])
    with contextlib.closing(entry.factory(options)) as upscaler:
        ready = getattr(upscaler, "check_ready", None)
        route = None
        if ready is not None:  # open the first model now: a backend that cannot start fails the run once
            route = ready(camera=camera)
        on_cpu = getattr(upscaler, "computes_on_cpu", None)  # where the opened model really runs
        local_cpu = on_cpu(route) if on_cpu is not None else _runs_on_cpu(args, options)
        mark_output_in_input(args.input, args.output)  # once every check passed: a refused run marks nothing
        return _run_pairs(upscaler, pairs, args, camera=camera, stdout=stdout, stderr=stderr, skipped=kept,
                          overlap_writes=not local_cpu, planned=planned)


def _any_header_readable(sources: Iterable[Path]) -> bool:
    """Whether the header of one of ``sources`` can be read (stops at the first that can)."""
    for source in sources:
        try:
            read_image_size(source)
        except AdassrError:
            continue
        return True
    return False


class _NoInputReadable:
    """The upscaler of a run none of whose inputs could be read when it started: every image fails when it
    is read, so none reaches :meth:`upscale`, except a file replaced meanwhile, which is refused."""

    def upscale(self, image: LoadedImage, *, camera: str | None = None, progress: TileProgress | None = None,
                check_output: OutputCheck | None = None) -> UpscaleResult:
        raise StoreError(f"{image.path}: no model was opened for this run, since none of its inputs could be read "
                         "when it started (the file was replaced meanwhile); run again")

    def close(self) -> None:
        pass


def _warn_if_camera_missing(camera: str, store: Path, stderr: TextIO) -> None:
    """One warning when ``--camera`` names a camera the store has no manifest for (a typo, or not
    adapted yet): its images are served by the fallback model, which the output lines also say."""
    if camera == FALLBACK_CAMERA:
        return
    name = validate_group_name(camera)  # the store's spelling of the name (checked before, so no error)
    try:
        if CameraStore.open(store, name).exists():
            return
    except AdassrError:
        return  # a camera folder that cannot be looked into: not the fallback; routing reports it, once
    known = [c for c in list_cameras(store) if c != FALLBACK_CAMERA]
    if name in known:
        return
    listed = ", ".join(known) if known else "none yet"
    hint = closest_camera_hint(name, known)
    advice = ("" if hint else f"; adapt it with `{adapt_command(name, store)}`")  # not a typo's
    print(f"warning: camera {name!r} has no model in the store {store} (cameras: {listed}).{hint} "
          f"Its images get the unadapted fallback model{advice}.", file=stderr)


def _local_options_given(args: argparse.Namespace, upscalers: UpscalerRegistry) -> list[str]:
    """The options of a local run given other values than their defaults (``--tile 256``), as typed."""
    parser = argparse.ArgumentParser(add_help=False)
    add_upscale_arguments(parser, upscalers)
    defaults = vars(parser.parse_args(["-i", ".", "-o", "."]))
    local = ("backend", "providers", "require_providers", "precision", "gpu", "cuda_graph", "device", "tile",
             "tile_batch", "backbone")
    given = []
    for dest in local:
        value = getattr(args, dest, defaults[dest])
        if value != defaults[dest]:
            flag = "--" + dest.replace("_", "-")
            given.append(flag if isinstance(value, bool) else f"{flag} {value}")
    return given


def _triton_options(args: argparse.Namespace) -> TritonRunOptions | None:
    """The ``--triton`` options (None without ``--triton``); ``ConfigError`` for contradictions."""
    url: str | None = getattr(args, "triton", None)
    model: str | None = getattr(args, "triton_model", None)
    prefix: str = getattr(args, "triton_prefix", DEFAULT_TRITON_PREFIX)
    if url is None:
        if model is not None or prefix != DEFAULT_TRITON_PREFIX:
            raise ConfigError("--triton-model and --triton-prefix need --triton URL (the server to send images to)")
        return None
    if model is not None and args.camera is not None:
        raise ConfigError("--triton-model and --camera both choose the model; give one of them")
    from adassr.runtime.server.triton_upscale import TritonRunOptions

    return TritonRunOptions(url=url, model=model, prefix=prefix, overlap=args.tile_overlap,
                            pre_pad=args.pre_pad, outscale=args.outscale)


Serve = Callable[[LoadedImage, "TileProgress | None", "OutputCheck | None"], UpscaleResult]
"""``serve(image, tile_progress, check_output)``: upscale one loaded image (``check_output``: see
:data:`adassr.runtime.pipeline.OutputCheck`)."""


@dataclass
class _Written:
    """An upscaled image whose file is being written (in the background) or was written."""

    source: Path
    target: Path
    served: str  # the model line's "[model ...]" text
    group: str
    model: str
    notes: list[str]
    existed: bool
    done: Future[None] | None = None  # None: written already (in the foreground)

    def line(self) -> str:
        return f"{self.source} -> {self.target}  [model {self.served}]"

    def outcome(self) -> _Outcome:
        return _Outcome(self.source, self.target, self.group, self.model, None, replaced=self.existed,
                        route=self.served, notes=tuple(self.notes))

    def written(self) -> bool:
        """Whether its file is complete: written in the foreground, or its background write ended without error
        (not waited for)."""
        return self.done is None or (self.done.done() and not self.done.cancelled() and self.done.exception() is None)


def run_batch(
    pairs: list[tuple[Path, Path]],
    serve: Serve,
    *,
    quality: int = 95,
    progress: bool = True,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    skipped: int = 0,
    threads: int | None = None,
    overlap_writes: bool = False,
    exif: bool = True,
    report_path: Path | None = None,
    planned: Sequence[tuple[Path, Path]] | None = None,
    sample_bits: int | None = None,
) -> int:
    """Upscale each (source, target) pair with ``serve``; one bad file is reported and skipped.

    Shared by the runtime and the PyTorch path. Returns 0 when every file succeeded, else 1.
    ``skipped`` (outputs ``--skip-existing`` left out) is counted in the summary line. ``threads``:
    the encoders' threads (``--threads``; None: one per usable core). ``overlap_writes``: write each
    image's file on a background thread while the next image is read and upscaled (for models that
    run on a GPU or a server, where the local cores are idle meanwhile), when the output fits
    :func:`overlap_fits`; at most one write is in flight, and results are reported in input order.
    ``exif``: the outputs carry their photos' EXIF (``--no-exif``: they do not). ``report_path``: where to write
    the run's JSON report when it ends, however it ends (:mod:`adassr.runtime.upscale_report`; a report that
    cannot be written is an error line and exit 1); ``planned``: every pair of the run in input order,
    those ``--skip-existing`` left out included (default ``pairs``). ``sample_bits``: ``--sample-bits`` (None: auto).
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    for folder in sorted({target.parent for _, target in pairs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the output folder {folder}: "
                              f"{broken_link(folder) or exc.strerror or exc}") from exc
    start = time.perf_counter()
    outcomes: list[_Outcome] = []
    bar = _Progress(len(pairs), enabled=progress, stream=err)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adassr-write") if (
        overlap_writes and len(pairs) > 1) else None
    pending: _Written | None = None
    finished = False  # every pair was tried (not ended early by an interrupt or a missing package)
    report_saved = True

    def failed(source: Path, exc: BaseException) -> None:
        if isinstance(exc, (AdassrError, MemoryError)):
            reason = str(exc) or type(exc).__name__
            where = "" if str(source) in reason else f"{source}: "
            bar.write(f"error: {where}{reason} (skipped)", file=err)
        else:
            reason = unexpected_error(exc)
            log.debug("processing %s failed", source, exc_info=exc)
            bar.write(f"error: {source}: {reason} (skipped)", file=err)
        outcomes.append(_Outcome(source, None, None, None, reason))
        bar.advance(source.name)

    def report(job: _Written) -> None:
        bar.write(job.line(), file=out)
        for note in job.notes:
            bar.write(f"note: {note}", file=err)
        outcomes.append(job.outcome())
        bar.advance(job.source.name)

    def finish_pending() -> None:
        """Wait for the background write in flight, then report it (once, even when interrupted meanwhile)."""
        nonlocal pending
        job = pending
        if job is None:
            return
        try:
            if job.done is not None:
                job.done.result()  # an interrupt here leaves it pending: the run's cleanup waits again
        except ImportError:  # a missing optional package: the whole run's problem, with its install advice
            pending = None
            raise
        except Exception as exc:  # noqa: BLE001 - one file never ends the batch; reported, not swallowed
            pending = None
            failed(job.source, exc)
            return
        pending = None
        report(job)

    def last_report() -> None:  # when a stop signal ends the process without the finally below
        done = list(outcomes)
        job = pending
        if job is not None and job.written():  # written in the background, not reported yet: the next image's
            say(job.line(), out)                # model call came first
            done.append(job.outcome())
        if report_path is not None:
            save_report(report_path, planned if planned is not None else pairs, pairs, done,
                        seconds=time.perf_counter() - start, finished=False, stderr=err)

    with last_words(last_report) if report_path is not None else contextlib.nullcontext():
        try:
            for source, target in pairs:
                existed = entry_exists(target) and target.is_file()
                try:
                    result, prepared, notes = _upscale_one(serve, source, target, quality=quality, tiles=bar.tiles(),
                                                           threads=threads, exif=exif, sample_bits=sample_bits)
                except ImportError:  # a missing optional package: the whole run's problem, with its install advice
                    raise
                except Exception as exc:  # noqa: BLE001 - one file never ends the batch; reported, not swallowed
                    finish_pending()  # in input order
                    failed(source, exc)
                    continue
                route = result.route
                job = _Written(source, target, served=f"{route.label}, {route.reason}" if route else result.model_label,
                               group=(route.camera_group or "(no camera)") if route else "(all)",
                               model=route.model_name if route else result.model_label, notes=notes, existed=existed)
                del result  # the prepared write holds the pixels it needs
                finish_pending()  # the previous image's file, written while this one was upscaled
                if writer is not None and overlap_fits(prepared.nbytes, mem_available_bytes()):
                    job.done = writer.submit(_write_one, prepared)
                    pending = job
                    del prepared  # the write holds the pixels until it ends, not the next image's upscale
                    continue
                try:
                    _write_one(prepared)
                except ImportError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one file never ends the batch; reported, not swallowed
                    failed(source, exc)
                    continue
                finally:
                    del prepared  # not held through the next image's upscale
                report(job)
            finish_pending()
            finished = True
        finally:
            try:
                finish_pending()  # also when interrupted: the file in flight is completed and reported
            finally:
                if writer is not None:
                    writer.shutdown(wait=True)
                bar.close()
                if report_path is not None:  # also when interrupted: what was done, and what was not
                    report_saved = save_report(report_path, planned if planned is not None else pairs, pairs, outcomes,
                                               seconds=time.perf_counter() - start, finished=finished, stderr=err)
    say(_summary(outcomes, time.perf_counter() - start, skipped), out)
    return 1 if any(o.error for o in outcomes) or not report_saved else 0


def save_report(report: Path, planned: Sequence[tuple[Path, Path]], ran: Sequence[tuple[Path, Path]],
                outcomes: Sequence[_Outcome], *, seconds: float, finished: bool, stderr: TextIO) -> bool:
    """Write the run's report: one record per ``planned`` pair, in order (those not in ``ran`` were left out by
    ``--skip-existing``; those of ``ran`` without an outcome were not reached). False, with an error line, when
    it cannot be written (the images stay as written)."""
    from adassr.runtime.upscale_report import FileRecord, write_report

    done = {o.source: o for o in outcomes}
    attempted = {source for source, _ in ran}
    records = []
    for source, target in planned:
        o = done.get(source)
        if source not in attempted:
            records.append(FileRecord(source, target, "skipped"))
        elif o is None:
            records.append(FileRecord(source, target, "not_done"))
        elif o.error is not None:
            records.append(FileRecord(source, target, "failed", error=o.error))
        else:
            records.append(FileRecord(source, o.target, "ok", group=o.group, model=o.model, route=o.route,
                                      replaced=o.replaced, notes=o.notes))
    try:
        write_report(report, records, seconds=seconds, finished=finished)
    except (AdassrError, OSError) as exc:
        say(f"error: cannot write the report {report}: {exc}; the images were written as the lines above say",
            stderr)
        return False
    return True


def _summary(outcomes: list[_Outcome], seconds: float, skipped: int = 0) -> str:
    ok = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    served: dict[str, list[str]] = {}
    for o in ok:
        if o.group is not None and o.model is not None and o.model not in served.setdefault(o.group, []):
            served[o.group].append(o.model)
    models = "; ".join(f"{g} -> {', '.join(m)}" for g, m in sorted(served.items())) or "none"
    line = f"upscaled {len(ok)} ok, {len(failed)} failed in {seconds:.1f} s; models: {models}"
    if skipped:
        line += f"; {skipped} skipped: output exists (--skip-existing)"
    replaced = sum(o.replaced for o in ok)
    if replaced:
        line += (f"; replaced {replaced} existing output file{'s' if replaced != 1 else ''} "
                 "(--skip-existing keeps them)")
    if failed:
        line += "; failed: " + ", ".join(one_line(str(o.source)) for o in failed)
    return line
