"""Image -> model -> output: colour handling, alpha, bit depth, tiling and ``outscale``.

- Colour: the model sees RGB float32 in [0, 1] (uint8 / 255, uint16 / 65535, or a 16-bit image whose
  values stop at 1023, 4095 or 16383, the 10-, 12- or 14-bit samples of scientific cameras, divided by
  that: :func:`adassr.runtime.images.convert.used_peak`; the output keeps that range). A grey image is
  replicated to RGB for the model and brought back to grey with BT.601 luma
  (0.299 R + 0.587 G + 0.114 B, what OpenCV's RGB2GRAY, Pillow's "L" and Real-ESRGAN's inference
  script use), so a model that tints slightly cannot shift the grey level the way a plain channel
  pick could.
- Alpha: never goes through the model. It is resized on its own straight to the output size with
  bicubic interpolation on its integer values (``cv2.INTER_CUBIC``, saturated; ``INTER_AREA`` if the
  output is smaller than the input), as Real-ESRGAN does with its non-model alpha option; a 16-bit
  alpha is clipped to its own sample range, as the pixels are (a 12-bit file's stays under 4095).
- Bit depth: the output has the input's bit depth (16-bit in, 16-bit out; the writer rounds to
  8 bits for JPEG / WebP, the input's sample range standing for 255: ``write_image(..., peak=)``).
- ``outscale``: the model's x``scale`` output, already in the output dtype, is resized to
  ``outscale * size`` rounded to the nearest pixel, halves up (47 px at x2.5 -> 118, 45 px -> 113;
  Real-ESRGAN truncates, which makes x2.5 of 47 px 117).
  Real-ESRGAN uses ``cv2.INTER_LANCZOS4`` both ways; we use ``cv2.INTER_AREA`` when shrinking
  (e.g. x2 from a x4 model: an exact 2x2 box average, which is anti-aliased, whereas OpenCV's
  Lanczos keeps its fixed 8-tap support when shrinking and aliases fine GAN textures) and
  ``cv2.INTER_CUBIC`` when enlarging (saturated: cubic can overshoot). EXIF orientation has been
  applied by :func:`adassr.runtime.images.read_image` before any of this.
- Non-finite model output (e.g. an fp16 overflow) is a BackendError naming the model.
- Limits: ``outscale`` at most :data:`MAX_OUTSCALE`; an image's output (and the model's x``scale``
  output) at most :data:`MAX_OUTPUT_PIXELS` pixels, checked before any large allocation. The output
  is written tile by tile straight into its final dtype (uint8 / uint16), so peak memory is about
  the output array (plus the resized one with ``outscale``), the input and one batch of tiles.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import cv2
import numpy as np

from adassr.runtime.backends import Backend, ModelCache, ModelKey, open_backend
from adassr.runtime.backends.onnxruntime import resolve_providers
from adassr.runtime.backends.ort_options import CUDA_EP, TRT_EP, GpuProviderSettings
from adassr.runtime.errors import AdassrError, BackendError, ConfigError, ImageError, ImageTooLargeError
from adassr.runtime.images import LoadedImage
from adassr.runtime.images.convert import checked_peak, used_peak
from adassr.runtime.routing import (
    RouteDecision,
    check_serving_precision,
    engine_precision,
    model_precision,
    resolve_model,
)
from adassr.runtime.store import FALLBACK_BACKBONE
from adassr.runtime.tiling import InferFn, TilingOptions, check_positive_int, plan_tiles, run_tiles

LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class UpscaleResult:
    """An upscaled image: pixels H' x W' x C with the input's channels and bit depth."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    scale: int  # the model's scale
    outscale: float  # the final factor applied to the input size
    route: RouteDecision | None = None  # which model served it (None when called with a bare model)
    model_name: str | None = None  # label of a model given directly (e.g. the PyTorch path)

    @property
    def model_label(self) -> str:
        if self.route is not None:
            return self.route.label
        return self.model_name or "(model given directly)"


MAX_OUTSCALE = 16.0
"""Largest ``outscale`` accepted (the CLI checks it before the first image, exit 2)."""

OutputCheck = Callable[[int, int], None]
"""``check(height, width)`` of the final output, called before any tile runs: raises
:class:`~adassr.runtime.errors.ImageError` when that output cannot be delivered (e.g. the output
file format cannot hold its size), so a refusal costs no model time."""

MAX_OUTPUT_PIXELS = 400_000_000
"""Largest output (height x width) one image may produce: 1.2 GB as 8-bit RGB. Checked from the
input's size before any large allocation; a larger request fails that image (ImageError)."""


def check_outscale(outscale: float | None) -> None:
    """ConfigError unless ``outscale`` is None or a finite number in (0, :data:`MAX_OUTSCALE`]."""
    if outscale is None:
        return
    if isinstance(outscale, (bool, np.bool_)) or not isinstance(outscale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(outscale) or not 0 < outscale <= MAX_OUTSCALE:
        raise ConfigError(f"outscale must be a number in (0, {MAX_OUTSCALE:g}], got {outscale!r}")


def output_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """``(outscale * height, outscale * width)`` rounded to the nearest pixel, halves up, at least 1 x 1.

    Halves go up whatever the parity (Python's ``round`` would send 112.5 to 112 but 117.5 to 118).
    The product is taken in decimal, of the shortest decimal that reads back as ``outscale`` (what the
    user typed): in binary floating point 85 x 0.7 is 59.49999999999999, and the half went down.
    """
    factor = Decimal(repr(float(outscale)))

    def scaled(side: int) -> int:
        return max(1, int((side * factor).to_integral_value(rounding=ROUND_HALF_UP)))

    return scaled(height), scaled(width)


def check_output_budget(height: int, width: int, scale: int, outscale: float,
                        max_output_pixels: int = MAX_OUTPUT_PIXELS) -> tuple[int, int]:
    """Output size of an ``height x width`` input; ImageTooLargeError if it (or the x``scale`` model
    output) is too large."""
    target = output_size(height, width, outscale)
    model_out = height * scale * width * scale
    largest = max(target[0] * target[1], model_out)
    if largest > max_output_pixels:
        fix = "downscale the input or use a smaller outscale"
        if model_out > max_output_pixels:
            fix = (f"downscale the input (the model's x{scale} output is made before outscale resizes it, so a "
                   "smaller outscale cannot help)")
        raise ImageTooLargeError(
            f"a {width}x{height} input at x{outscale:g} (model x{scale}) needs {largest:,} output pixels, above "
            f"the limit of {max_output_pixels:,}; {fix}"
        )
    return target


_RESIZABLE = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.float32, np.float64))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``H x W [x C]`` to ``size = (height, width)``: INTER_AREA shrinking, INTER_CUBIC otherwise.

    Float input is clipped to [0, 1]; uint8 / uint16 input is saturated by OpenCV. The dtype is kept.
    Other arrays and sizes are refused (ConfigError), as OpenCV refused some with its own error and resized
    others (int16) as they were.
    """
    if not isinstance(image, np.ndarray) or image.dtype not in _RESIZABLE or image.ndim not in (2, 3) \
            or min(image.shape, default=0) < 1:
        what = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else f"{type(image).__module__}.{type(image).__qualname__}")
        raise ConfigError(f"resize takes a non-empty H x W or H x W x C array of uint8, uint16, float32 or float64, "
                          f"got {what}")
    if (not isinstance(size, tuple) or len(size) != 2
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in size)):
        raise ConfigError(f"resize size must be (height, width) of positive integers, got {size!r}")
    h, w = image.shape[:2]
    if (h, w) == size:
        return image
    shrinking = size[0] <= h and size[1] <= w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image, (size[1], size[0]), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of size 1
        out = out[..., None]
    if np.issubdtype(out.dtype, np.floating) and not shrinking:
        np.clip(out, 0.0, 1.0, out=out)
    return out


class NonFiniteOutputError(BackendError):
    """The model's output has NaN or Inf values (the message names the model when the route is known)."""


def _finisher(channels: int, dtype: np.dtype, top: float) -> Callable[[np.ndarray, np.ndarray], None]:
    """``finish(block, dest)``: a float32 RGB block (H x W x 3, any strides) clipped, made grey by luma
    for ``channels`` 1, rounded and written into ``dest`` (H x W x ``channels`` of ``dtype``).

    RGB is worked on channel by channel (``block`` is mostly a view of the model's channels-first
    tile, whose planes have contiguous rows) and interleaved once, as integers, straight into
    ``dest``: a transposing float copy and four more full passes took a quarter of the time spent
    outside the model (a helper's profile of 4000x3000 inputs at x4). The model's 1.0 becomes ``top``."""
    peak = np.float32(top)

    def check_finite(work: np.ndarray) -> None:
        if not (np.isfinite(work.min()) and np.isfinite(work.max())):  # a NaN or an Inf reaches min or max
            raise NonFiniteOutputError(
                "the model produced NaN or Inf values (an fp16 overflow?); use its fp32 export (--precision fp32) "
                "or re-export it"
            )

    def finish(block: np.ndarray, dest: np.ndarray) -> None:
        if channels == 1:
            check_finite(block)
            grey = np.clip((np.clip(block, 0.0, 1.0) @ LUMA_BT601)[..., None], 0.0, 1.0)
            grey *= peak
            np.rint(grey, out=grey)
            dest[...] = grey.astype(dtype)
            return
        work = np.multiply(block.transpose(2, 0, 1), peak)  # C x H x W, contiguous
        check_finite(work)
        np.clip(work, 0.0, peak, out=work)  # = clip to [0, 1], then scale
        np.rint(work, out=work)
        planes = work.astype(dtype)
        merged = cv2.merge([planes[0], planes[1], planes[2]], dst=dest)
        if merged is not dest:  # OpenCV wrote a new array instead of into the output (never seen)
            dest[...] = merged

    return finish


def upscale_pixels(
    pixels: np.ndarray,
    infer: InferFn,
    *,
    scale: int,
    tiling: TilingOptions,
    alpha: np.ndarray | None = None,
    outscale: float | None = None,
    multiple_of: int = 1,
    progress: Callable[[int, int], None] | None = None,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
    check_output: OutputCheck | None = None,
    peak: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Upscale uint8/uint16 ``H x W x C`` pixels (C 1 or 3) and optional ``H x W`` alpha.

    ``peak``: the level that stands for white (the model's 1.0) in 16-bit pixels, where the caller knows the
    camera's sample range (:attr:`LoadedImage.sample_peak`); None: :func:`used_peak` of the pixels. Pixels
    above it are an ImageError (they would be clipped).

    Returns ``(pixels, alpha)`` with the input's dtype and channel count. Memory: the model's
    ``scale`` x output is allocated once in the final dtype and filled tile by tile (see
    :func:`adassr.runtime.tiling.run_tiles`); with an ``outscale`` other than ``scale`` it is then
    resized into a second array of the target size. Sizes are checked against
    ``max_output_pixels`` before anything large is allocated (ImageTooLargeError), and by
    ``check_output`` (e.g. the output format's size limit) before any tile runs.
    """
    scale = check_positive_int("scale", scale)  # before the output is allocated
    if not isinstance(tiling, TilingOptions):
        raise ConfigError(f"tiling must be a TilingOptions, got {type(tiling).__name__}")
    for name, array in (("pixels", pixels), ("alpha", alpha)):
        if not isinstance(array, np.ndarray) and not (name == "alpha" and array is None):
            raise ConfigError(f"{name} must be a numpy array (uint8 or uint16), got {type(array).__module__}."
                              f"{type(array).__qualname__}")
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ConfigError(f"pixels must be H x W x 1 or H x W x 3, got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"pixels must be uint8 or uint16 in the machine's byte order, got {pixels.dtype}")
    check_outscale(outscale)
    factor = float(scale if outscale is None else outscale)
    h, w, channels = pixels.shape
    if alpha is not None and alpha.shape != (h, w):
        raise ConfigError(f"alpha must be {h} x {w}, got shape {alpha.shape}")
    if alpha is not None and alpha.dtype != pixels.dtype:
        raise ConfigError(f"alpha must have the pixels' dtype {pixels.dtype}, got {alpha.dtype}; scale it to the "
                          "same integer levels")
    target = check_output_budget(h, w, scale, factor, max_output_pixels)
    if check_output is not None:
        check_output(*target)
    white = used_peak(pixels) if peak is None else _given_peak(pixels, peak)  # a 12-bit camera's file: 4095
    peak32 = np.float32(white)

    def to_float(tile: np.ndarray) -> np.ndarray:
        rgb = tile.astype(np.float32) / peak32
        return np.repeat(rgb, 3, axis=2) if channels == 1 else rgb

    out = np.empty((h * scale, w * scale, channels), dtype=pixels.dtype)
    finish = _finisher(channels, pixels.dtype, float(white))

    def sink(y: int, x: int, block: np.ndarray) -> None:
        finish(block, out[y : y + block.shape[0], x : x + block.shape[1]])

    run_tiles(pixels, infer, scale=scale, options=tiling, sink=sink, multiple_of=multiple_of,
              to_float=to_float, progress=progress)
    result = resize(out, target)
    if white < np.iinfo(pixels.dtype).max:  # cubic enlarging overshoots: keep a 12-bit image's output 12-bit
        np.minimum(result, pixels.dtype.type(white), out=result)
    if alpha is None:
        return result, None
    out_alpha = resize(alpha, target)
    if (alpha_peak := used_peak(alpha)) < np.iinfo(alpha.dtype).max:  # a 12-bit alpha's overshoot too
        np.minimum(out_alpha, alpha.dtype.type(alpha_peak), out=out_alpha)
    return result, out_alpha


def _given_peak(pixels: np.ndarray, peak: object) -> int:
    """``peak`` checked for ``pixels``: a level of their dtype that none of them exceeds."""
    white = checked_peak(pixels.dtype, peak)
    top = int(pixels.max()) if pixels.size else 0
    if top > white:
        raise ImageError(f"the pixels reach {top}, above the top level {white} of the sample range given "
                         f"({white.bit_length()} bits); give a wider one, or none (the values decide)")
    return white


def upscale_image(
    image: LoadedImage,
    backend: Backend,
    *,
    scale: int,
    tiling: TilingOptions,
    outscale: float | None = None,
    multiple_of: int = 1,
    route: RouteDecision | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_output: OutputCheck | None = None,
) -> UpscaleResult:
    """Upscale a loaded image with an open backend (see the module docstring for the rules)."""
    try:
        pixels, alpha = upscale_pixels(
            image.pixels,
            backend.infer,
            scale=scale,
            tiling=tiling,
            alpha=image.alpha,
            outscale=outscale,
            multiple_of=multiple_of,
            progress=progress,
            check_output=check_output,
            peak=image.sample_peak,
        )
    except NonFiniteOutputError as exc:
        if route is None:
            raise
        raise NonFiniteOutputError(f"{route.label}: {exc}") from None
    factor = float(scale if outscale is None else outscale)
    return UpscaleResult(pixels, alpha, image.bit_depth, scale, factor, route)


DEVICES = ("auto", "cpu", "cuda")
"""``RuntimeOptions.device`` values (upscalers that run the model themselves)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime serves images: where models live, which upscaler, tiling and output size.

    ``backend`` names the upscaler (see :mod:`adassr.runtime.upscalers`); ``providers``, ``threads`` and
    ``require_providers`` configure onnxruntime; ``device`` (auto, cpu, cuda) and ``backbone`` (the
    registry backbone that serves cameras without adapted weights) configure upscalers that run a
    model themselves (PyTorch) and the first-use export of the fallback model.
    """

    store: Path
    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("cpu",)
    precision: str = "fp32"
    threads: int | None = None
    require_providers: bool = False
    tiling: TilingOptions = field(default_factory=TilingOptions)
    outscale: float | None = None
    cache_size: int = 4  # open models kept; one evicted while an image uses it closes when that image is done
    gpu: int = 0  # CUDA device for the tensorrt backend and onnxruntime's CUDA / TensorRT providers
    cuda_graph: bool = False  # tensorrt backend: replay each tile shape as a CUDA graph
    device: str = "auto"
    backbone: str = FALLBACK_BACKBONE

    def __post_init__(self) -> None:
        if not isinstance(self.store, (str, os.PathLike)):
            raise ConfigError(f"store must be a folder path (str or pathlib.Path), got {type(self.store).__name__}")
        check_serving_precision(self.precision, self.backend)
        check_outscale(self.outscale)
        if self.outscale is not None:
            object.__setattr__(self, "outscale", float(self.outscale))
        if not isinstance(self.tiling, TilingOptions):
            raise ConfigError(f"tiling must be a TilingOptions, got {type(self.tiling).__name__}")
        for name, low in (("threads", 1), ("cache_size", 1), ("gpu", 0)):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                what = "None (automatic) or " if name == "threads" else ""
                raise ConfigError(f"{name} must be {what}an integer >= {low}, got {value!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        object.__setattr__(self, "providers", resolve_providers(self.providers))


def gpu_settings(route: RouteDecision, opts: RuntimeOptions) -> GpuProviderSettings:
    """GPU settings for a route: device, fp16 for an fp16 model, TensorRT caches inside the camera's
    folder keyed by the model, and profiles equal to the shapes the tiling sends."""
    from adassr.runtime.backends.ort_options import ort_trt_cache_dir
    from adassr.runtime.engines import plan_profiles

    # Tiles sized per image (--tile auto) have no fixed shape: onnxruntime's TensorRT provider then
    # builds per shape (cached), without explicit profiles.
    fixed = opts.tiling.max_tile_pixels is None and opts.tiling.tile > 0  # untiled: every image has its shape
    profiles = plan_profiles(opts.tiling, multiple_of=route.multiple_of).profiles if fixed else ()
    version = "unknown"
    with contextlib.suppress(ImportError):
        import onnxruntime

        version = onnxruntime.__version__
    cache = ort_trt_cache_dir(route.store.directory, route.sha256, route.precision, profiles, version)
    return GpuProviderSettings(device_id=opts.gpu, fp16=route.precision == "fp16", cache_dir=cache,
                               profiles=profiles, input_name=route.input_name or "lr")


TENSORRT_STREAMS = 2
_REROUTES = 3
"""Times an image is routed again when newer exports replaced its model file as it was opened."""
"""Concurrent streams of the runtime's TensorRT backend (its engines hold one profile per stream)."""


def engine_for_route(route: RouteDecision, opts: RuntimeOptions) -> Path:
    """The route's TensorRT engine for this machine: stored, else refitted or built now (logged)."""
    from adassr.runtime.engines import plan_profiles
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine

    if not opts.tiling.tile:
        raise ConfigError("the tensorrt backend needs tiles (an engine's profiles bound the input size, and a whole "
                          "photo can be any size): pass --tile N, for example --tile 512")
    profiles = plan_profiles(opts.tiling, multiple_of=route.multiple_of, copies=TENSORRT_STREAMS).profiles
    precision = engine_precision(opts.precision, route.precision)
    request = EngineRequest(route.store.root, route.model_camera, precision, profiles, device=opts.gpu,
                            any_stored_settings=True)  # an engine export built with --opt-level 5 / --no-refit
    return ensure_camera_engine(request, TensorRTToolkit()).path


def checked_against_route(backend: Backend, route: RouteDecision) -> Backend:
    """``backend`` (open), once its model file's metadata agrees with ``route``'s manifest
    (:meth:`RouteDecision.check_model_metadata`: the scale); closed, and the StoreError raised, when not."""
    try:
        route.check_model_metadata(backend.model_metadata())
    except BaseException:
        backend.close()
        raise
    return backend


class Upscaler:
    """Routes each image to its camera's model and upscales it, keeping open models in an LRU.

    Holds only its options and the model cache (no per-call state); safe to share between threads
    as far as the backends are (onnxruntime sessions are): each image leases its model, so threads
    using more cameras than ``cache_size`` never close one under another's running image (such a
    model stays open, beyond ``cache_size``, until that image is done).
    """

    def __init__(self, options: RuntimeOptions, cache: ModelCache | None = None) -> None:
        self.options = options
        self.cache = cache if cache is not None else ModelCache(options.cache_size)

    def route(self, image: LoadedImage | str | os.PathLike[str], *, camera: str | None = None) -> RouteDecision:
        """Which model serves ``image`` (checksum verified when the model is opened)."""
        return resolve_model(
            self.options.store, camera=camera, image=image, precision=model_precision(self.options.precision),
            verify=False
        )

    def backend_for(self, route: RouteDecision) -> Backend:
        """The open backend for a route, from the cache or opened after verifying the sha256.

        Another thread's lookups may close it (cache eviction); :meth:`upscale` leases it instead."""
        return self.cache.get(*self._cache_entry(route))

    def _cache_entry(self, route: RouteDecision) -> tuple[ModelKey, Callable[[], Backend]]:
        """The cache key of ``route``'s backend and the function that opens it."""
        opts = self.options
        providers = (f"cuda:{opts.gpu}",) if opts.backend == "tensorrt" else opts.providers
        key = ModelKey(route.model_camera, route.sha256, engine_precision(opts.precision, route.precision),
                       providers, opts.backend)

        def _open() -> Backend:
            path = route.verify()
            gpu = gpu_settings(route, opts)
            if opts.backend == "tensorrt":
                path = engine_for_route(route, opts)
            return checked_against_route(open_backend(
                opts.backend,
                path,
                providers=opts.providers,
                threads=opts.threads,
                require=opts.require_providers,
                input_name=route.input_name,
                output_name=route.output_name,
                gpu=gpu,
                cuda_graph=opts.cuda_graph,
            ), route)

        return key, _open

    def check_ready(self, *, camera: str | None = None) -> RouteDecision:
        """Open (and verify) the model that serves ``camera`` (or, routing by EXIF, the fallback or
        the first exported camera) before any image: a store that cannot serve or a backend that
        cannot start is then one whole-run error (StoreError / BackendError), not one per image."""
        from adassr.runtime.preflight import check_store_serves

        first = check_store_serves(self.options.store, camera=camera)

        def resolve() -> RouteDecision:
            return resolve_model(self.options.store, camera=camera if camera is not None else first,
                                 precision=model_precision(self.options.precision), verify=False)

        route = resolve()
        if camera is not None:  # every image goes to this model: a tile it cannot take is one error, now
            plan_tiles(1, 1, self.options.tiling, multiple_of=route.multiple_of)
        route, _ = self._rerouted(resolve, self.backend_for, route)
        return route

    def _rerouted(self, resolve: Callable[[], RouteDecision], open_model: Callable[[RouteDecision], Backend],
                  route: RouteDecision) -> tuple[RouteDecision, Backend]:
        """``route`` and ``open_model(route)``; when the model file is gone because newer exports of the
        camera replaced it between the routing and the opening (the previous version's file is kept for
        one more commit only: two commits in a moment), routed again with ``resolve``, up to
        :data:`_REROUTES` times. Any other failure is raised as it is."""
        for attempt in range(_REROUTES + 1):
            try:
                return route, open_model(route)
            except AdassrError:
                if attempt == _REROUTES or route.onnx_path.exists():
                    raise
                newer = resolve()
                if newer.onnx_path == route.onnx_path:  # the manifest still names it: truly missing
                    raise
                route = newer
        raise AssertionError("unreachable")  # the loop returns or raises

    def computes_on_cpu(self, route: RouteDecision) -> bool:
        """Whether ``route``'s model (opened by :meth:`check_ready`) computes on this machine's CPU: an
        onnxruntime session that uses no GPU provider (requested CUDA falls back to the CPU with a warning
        where its libraries are missing); a TensorRT engine never does."""
        if self.options.backend == "tensorrt":
            return False
        providers = getattr(self.backend_for(route), "providers", ())
        return not any(p in (CUDA_EP, TRT_EP) for p in providers)

    def upscale(
        self,
        image: LoadedImage,
        *,
        camera: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        check_output: OutputCheck | None = None,
    ) -> UpscaleResult:
        if not isinstance(image, LoadedImage):
            raise ConfigError(f"Upscaler.upscale takes a LoadedImage, got {type(image).__name__}: read a file with "
                              "adassr.runtime.images.read_image(path), or wrap pixels in LoadedImage(pixels, None, "
                              "8, None, None, None); upscale_pixels takes bare arrays")
        with contextlib.ExitStack() as leases:  # the model stays open until every tile is done
            route, backend = self._rerouted(
                lambda: self.route(image, camera=camera),
                lambda chosen: leases.enter_context(self.cache.lease(*self._cache_entry(chosen))),
                self.route(image, camera=camera))
            return upscale_image(
                image,
                backend,
                scale=route.scale,
                tiling=self.options.tiling,
                outscale=self.options.outscale,
                multiple_of=route.multiple_of,
                route=route,
                progress=progress,
                check_output=check_output,
            )

    def close(self) -> None:
        """Close the open models; an image being upscaled in another thread finishes first (its model
        closes after it). A later call opens the models again."""
        self.cache.clear()

    def __enter__(self) -> Upscaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

