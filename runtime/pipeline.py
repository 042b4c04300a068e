"""Image -> model -> output: colour handling, alpha, bit depth, tiling and ``outscale``.

- Colour: the model sees RGB float32 in [0, 1] (uint8 / 255, uint16 / 65535). A grey image is
  replicated to RGB for the model and brought back to grey with BT.601 luma
  (0.299 R + 0.587 G + 0.114 B, what OpenCV's RGB2GRAY, Pillow's "L" and Real-ESRGAN's inference
  script use), so a model that tints slightly cannot shift the grey level the way a plain channel
  pick could.
- Alpha: never goes through the model. It is resized on its own straight to the output size with
  bicubic interpolation (``cv2.INTER_CUBIC``, clipped to [0, 1]; ``INTER_AREA`` if the output is
  smaller than the input), as Real-ESRGAN does with its non-model alpha option.
- Bit depth: the output has the input's bit depth (16-bit in, 16-bit out; the writer rounds to
  8 bits for JPEG / WebP).
- ``outscale``: the model's x``scale`` output is resized to ``round(outscale * size)``.
  Real-ESRGAN uses ``cv2.INTER_LANCZOS4`` both ways; we use ``cv2.INTER_AREA`` when shrinking
  (e.g. x2 from a x4 model: an exact 2x2 box average, which is anti-aliased, whereas OpenCV's
  Lanczos keeps its fixed 8-tap support when shrinking and aliases fine GAN textures) and
  ``cv2.INTER_CUBIC`` when enlarging (then clipped: cubic can overshoot). EXIF orientation has been
  applied by :func:`adassr.runtime.images.read_image` before any of this.
- Non-finite model output (e.g. an fp16 overflow) is a BackendError naming the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from adassr.runtime.backends import Backend, ModelCache, ModelKey, open_backend
from adassr.runtime.backends.onnxruntime import resolve_providers
from adassr.runtime.errors import BackendError, ConfigError
from adassr.runtime.images import LoadedImage, from_float32, to_float32
from adassr.runtime.routing import PRECISIONS, RouteDecision, resolve_model
from adassr.runtime.tiling import InferFn, TilingOptions, upscale_tiled

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


def output_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """``(round(outscale * height), round(outscale * width))``, at least 1 x 1."""
    return max(1, int(round(height * outscale))), max(1, int(round(width * outscale)))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float32 ``H x W [x C]`` to ``size = (height, width)``.

    INTER_AREA when shrinking, INTER_CUBIC otherwise; the result is clipped to [0, 1].
    """
    h, w = image.shape[:2]
    if (h, w) == size:
        return image
    shrinking = size[0] <= h and size[1] <= w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image, (size[1], size[0]), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of size 1
        out = out[..., None]
    return np.clip(out, 0.0, 1.0, out=out) if not shrinking else out


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
) -> tuple[np.ndarray, np.ndarray | None]:
    """Upscale uint8/uint16 ``H x W x C`` pixels (C 1 or 3) and optional ``H x W`` alpha.

    Returns ``(pixels, alpha)`` with the input's dtype and channel count.
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ConfigError(f"pixels must be H x W x 1 or H x W x 3, got shape {pixels.shape}")
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    factor = float(scale if outscale is None else outscale)
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"outscale must be a positive number, got {outscale!r}")
    h, w, channels = pixels.shape
    rgb = to_float32(pixels)
    if channels == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    sr = upscale_tiled(rgb, infer, scale=scale, options=tiling, multiple_of=multiple_of, progress=progress)
    if not np.isfinite(sr).all():
        raise BackendError(
            "the model produced NaN or Inf values (an fp16 overflow?); use --precision fp32 or re-export"
        )
    np.clip(sr, 0.0, 1.0, out=sr)
    target = output_size(h, w, factor)
    sr = resize(sr, target)
    if channels == 1:
        sr = (sr @ LUMA_BT601)[..., None]
    out = from_float32(sr, bit_depth)
    out_alpha = None
    if alpha is not None:
        if alpha.shape != (h, w):
            raise ConfigError(f"alpha must be {h} x {w}, got shape {alpha.shape}")
        out_alpha = from_float32(resize(to_float32(alpha), target), bit_depth)
    return out, out_alpha


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
) -> UpscaleResult:
    """Upscale a loaded image with an open backend (see the module docstring for the rules)."""
    pixels, alpha = upscale_pixels(
        image.pixels,
        backend.infer,
        scale=scale,
        tiling=tiling,
        alpha=image.alpha,
        outscale=outscale,
        multiple_of=multiple_of,
        progress=progress,
    )
    factor = float(scale if outscale is None else outscale)
    return UpscaleResult(pixels, alpha, image.bit_depth, scale, factor, route)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime serves images: where models live, which backend, tiling and output size."""

    store: Path
    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("cpu",)
    precision: str = "fp32"
    threads: int | None = None
    require_providers: bool = False
    tiling: TilingOptions = field(default_factory=TilingOptions)
    outscale: float | None = None
    cache_size: int = 4

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.outscale is not None and (not math.isfinite(self.outscale) or self.outscale <= 0):
            raise ConfigError(f"outscale must be a positive number, got {self.outscale}")
        object.__setattr__(self, "providers", resolve_providers(self.providers))


class Upscaler:
    """Routes each image to its camera's model and upscales it, keeping open models in an LRU.

    Holds only its options and the model cache (no per-call state); safe to share between threads
    as far as the backends are (onnxruntime sessions are).
    """

    def __init__(self, options: RuntimeOptions, cache: ModelCache | None = None) -> None:
        self.options = options
        self.cache = cache if cache is not None else ModelCache(options.cache_size)

    def route(self, image: LoadedImage | str | os.PathLike[str], *, camera: str | None = None) -> RouteDecision:
        """Which model serves ``image`` (checksum verified when the model is opened)."""
        return resolve_model(
            self.options.store, camera=camera, image=image, precision=self.options.precision, verify=False
        )

    def backend_for(self, route: RouteDecision) -> Backend:
        """The open backend for a route, from the cache or opened after verifying the sha256."""
        opts = self.options
        key = ModelKey(route.model_camera, route.sha256, route.precision, opts.providers, opts.backend)

        def _open() -> Backend:
            path = route.verify()
            return open_backend(
                opts.backend,
                path,
                providers=opts.providers,
                threads=opts.threads,
                require=opts.require_providers,
                input_name=route.input_name,
                output_name=route.output_name,
            )

        return self.cache.get(key, _open)

    def upscale(
        self,
        image: LoadedImage,
        *,
        camera: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> UpscaleResult:
        route = self.route(image, camera=camera)
        backend = self.backend_for(route)
        return upscale_image(
            image,
            backend,
            scale=route.scale,
            tiling=self.options.tiling,
            outscale=self.options.outscale,
            multiple_of=route.multiple_of,
            route=route,
            progress=progress,
        )

    def close(self) -> None:
        self.cache.clear()

    def __enter__(self) -> Upscaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

