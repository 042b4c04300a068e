"""Tiled inference for fully convolutional super-resolution models (pure numpy).

All sizes are in LR (input) pixels unless a name says ``hr``.

How an image is cut (:func:`plan_tiles` computes it, one pure function):

1. ``pre_pad``: the whole image is reflect-padded by ``pre_pad`` pixels on all four sides, and the
   matching ``scale * pre_pad`` border is cropped from the output. Border pixels then get
   real-looking context instead of the convolutions' zero padding (Real-ESRGAN's inference script
   pads only the bottom and right edges by 10; we pad all four). Untiled inference uses the same
   pre-padding, so tiled and untiled outputs differ only by the overlap error.
2. The padded image (the *canvas*) is rounded up to ``multiple_of`` (a model size requirement,
   spandrel's ``SizeRequirements``) and, with ``pad_to_tile``, up to the tile size: an image
   smaller than one tile is reflect-padded to the tile, so that every inference call has the same
   shape (static engine profiles). Without ``pad_to_tile`` such an axis is processed at its own
   (rounded) length. ``tile=0`` runs the whole canvas in one call (untiled).
3. Tiles: every tile has the same ``tile x tile`` shape. Along each axis the smallest number of
   tiles is used whose neighbours share at least ``overlap`` pixels, and the tile origins are spread
   evenly between 0 and ``canvas - tile`` (edge tiles are shifted inward, never cut short). Tiles
   are fed to the model ``batch_size`` at a time.
4. Blending: inside the band shared by two neighbours, a linear cross-fade of width
   ``overlap / 4`` is centred on the band; the outer ``3/8 * overlap`` (at least) on each side is pure
   context for the tile that has faded out there. The weights of the tiles covering a pixel sum to
   1 (normalised explicitly); they are separable, so no 2-D weight image is stored.

Exactness rule: a model whose receptive-field radius is at most ``3/8 * overlap`` gives tiled output
equal to untiled output (to float rounding); the tests check this (within 1/255) with a tiny
convolutional model of radius 10 at overlap 32, and that the same model shows seams at overlap 0.

Defaults (``TilingOptions``): ``tile=512``, ``overlap=32``, ``pre_pad=10``, ``batch_size=1``.

- overlap 32: 12 px of pure context per side (Real-ESRGAN's inference script uses 10, with a hard
  cut) plus an 8 px (32 output px at x4) cross-fade. Measured on Real-ESRGAN x4plus (ncnn, fp32),
  tiled vs untiled, on 160-200 px crops of a clean photo (astronaut) and of the 10 MP camera photo
  (fujifilm), in 1/255 units: overlap 8 is clearly worse (max 46-47, mean 0.7-2.4); from 16 to
  40 the overlap hardly matters (tile 128: astronaut max 23, p99 3.0, mean 0.26 at both 16 and
  32; fujifilm max 32 / 28, p99 6.8 / 6.6, mean 0.99 / 0.98; tile 96 has a higher p99 and mean). The GAN's
  effective receptive field is far wider than any practical overlap (its output still moves by
  more than 1/255 at 38 px from a crop edge), so tiled output of that model is never within 1/255
  of untiled; the cross-fade spreads what differs across a seam over 32 output pixels, not a step.
- tile 512: the compute overhead of tiling is about ``(tile / (tile - overlap))^2``: 1.14x at
  512/32 (1.31x at 256/32, 1.78x at 128/32), and fewer tiles mean fewer seams and more context.
  A 512 px tile of RRDBNet x4 needs about 2-3 GB of fp32 activations (its last layers run 64
  channels at 2048 x 2048): lower ``tile`` when memory is short; raise ``batch_size`` for small
  tiles on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from adassr.runtime.errors import ConfigError, ShapeError

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
DEFAULT_PRE_PAD = 10
DEFAULT_BATCH_SIZE = 1

InferFn = Callable[[np.ndarray], np.ndarray]
"""Model call: NCHW float32 batch in [0, 1] -> NCHW float32 batch ``scale`` times larger."""


@dataclass(frozen=True)
class TilingOptions:
    """How to cut an image into tiles. ``tile=0`` means untiled (one call for the whole image)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    pre_pad: int = DEFAULT_PRE_PAD
    batch_size: int = DEFAULT_BATCH_SIZE
    pad_to_tile: bool = True

    def __post_init__(self) -> None:
        if self.tile < 0:
            raise ConfigError(f"tile must be >= 0 (0 = untiled), got {self.tile}")
        if self.overlap < 0:
            raise ConfigError(f"tile overlap must be >= 0, got {self.overlap}")
        if self.tile and self.tile <= 2 * self.overlap:
            raise ConfigError(
                f"tile overlap {self.overlap} is too large for tile {self.tile}: it must be less than "
                f"half the tile; use --tile-overlap <= {max(0, (self.tile - 1) // 2)} or a larger --tile"
            )
        if self.pre_pad < 0:
            raise ConfigError(f"pre_pad must be >= 0, got {self.pre_pad}")
        if self.batch_size < 1:
            raise ConfigError(f"tile batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis of the canvas."""

    canvas: int  # canvas length (padded image)
    tile: int  # tile length along this axis
    starts: tuple[int, ...]  # tile origins on the canvas, increasing
    seams: tuple[float, ...]  # centre of the cross-fade between tile i and i + 1 (canvas coords)
    ramp: float  # cross-fade width

    def weights(self, index: int, scale: int) -> np.ndarray:
        """HR blending weights of tile ``index`` along this axis (length ``scale * tile``)."""
        u = self.starts[index] * scale + np.arange(self.tile * scale, dtype=np.float64) + 0.5
        w = np.ones_like(u)
        if index > 0:
            w *= _rising(u, self.seams[index - 1] * scale, self.ramp * scale)
        if index < len(self.starts) - 1:
            w *= 1.0 - _rising(u, self.seams[index] * scale, self.ramp * scale)
        return w


def _rising(u: np.ndarray, centre: float, width: float) -> np.ndarray:
    """0 before ``centre - width/2``, 1 after ``centre + width/2``, linear between (step if width 0)."""
    if width <= 0:
        return (u >= centre).astype(np.float64)
    return np.clip((u - (centre - width / 2.0)) / width, 0.0, 1.0)


@dataclass(frozen=True)
class TilePlan:
    """Where every tile goes. Canvas = image reflect-padded by ``pre_pad`` (+ rounding padding)."""

    height: int
    width: int
    pre_pad: int
    rows: AxisPlan
    cols: AxisPlan

    @property
    def canvas_shape(self) -> tuple[int, int]:
        return self.rows.canvas, self.cols.canvas

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.tile, self.cols.tile

    @property
    def n_tiles(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        """``(row_index, col_index, y, x)`` of every tile, row-major."""
        for i, y in enumerate(self.rows.starts):
            for j, x in enumerate(self.cols.starts):
                yield i, j, y, x


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _plan_axis(length: int, *, tile: int, overlap: int, pad_to_tile: bool, multiple_of: int) -> AxisPlan:
    canvas = _round_up(length, multiple_of)
    if tile == 0 or (canvas < tile and not pad_to_tile):
        return AxisPlan(canvas=canvas, tile=canvas, starts=(0,), seams=(), ramp=0.0)
    canvas = max(canvas, tile)
    if canvas == tile:
        return AxisPlan(canvas=canvas, tile=tile, starts=(0,), seams=(), ramp=0.0)
    stride_max = tile - overlap
    n = math.ceil((canvas - overlap) / stride_max)
    span = canvas - tile
    starts = tuple(round(k * span / (n - 1)) for k in range(n))
    seams = tuple((starts[k + 1] + starts[k] + tile) / 2.0 for k in range(n - 1))
    return AxisPlan(canvas=canvas, tile=tile, starts=starts, seams=seams, ramp=overlap / 4.0)


def plan_tiles(
    height: int,
    width: int,
    options: TilingOptions,
    *,
    multiple_of: int = 1,
) -> TilePlan:
    """Compute the tile plan for an ``height x width`` image (pure arithmetic, no pixels)."""
    if height < 1 or width < 1:
        raise ShapeError("image", (height, width), "at least 1 x 1 pixels")
    if multiple_of < 1:
        raise ConfigError(f"multiple_of must be >= 1, got {multiple_of}")
    if options.tile and options.tile % multiple_of:
        raise ConfigError(
            f"tile {options.tile} is not a multiple of {multiple_of}, which this model requires; "
            f"use --tile {_round_up(options.tile, multiple_of)}"
        )
    rows, cols = (
        _plan_axis(length + 2 * options.pre_pad, tile=options.tile, overlap=options.overlap,
                   pad_to_tile=options.pad_to_tile, multiple_of=multiple_of)
        for length in (height, width)
    )
    return TilePlan(height=height, width=width, pre_pad=options.pre_pad, rows=rows, cols=cols)


def make_canvas(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Reflect-pad an ``H x W x C`` image to the plan's canvas (pre-pad all round, rest bottom/right)."""
    p = plan.pre_pad
    extra_h = plan.rows.canvas - plan.height - 2 * p
    extra_w = plan.cols.canvas - plan.width - 2 * p
    if extra_h < 0 or extra_w < 0 or image.shape[:2] != (plan.height, plan.width):
        raise ShapeError("image", image.shape, f"({plan.height}, {plan.width}, C) as planned")
    pads = ((p, p + extra_h), (p, p + extra_w)) + ((0, 0),) * (image.ndim - 2)
    if not any(a or b for a, b in pads):
        return image
    return np.pad(image, pads, mode="reflect")


def upscale_tiled(
    image: np.ndarray,
    infer: InferFn,
    *,
    scale: int,
    options: TilingOptions,
    multiple_of: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run ``infer`` over an ``H x W x 3`` float32 image tile by tile; return ``sH x sW x 3`` float32.

    ``progress(done_tiles, total_tiles)`` is called after each batch. Values are not clipped.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError("image", image.shape, "(H, W, 3)")
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    h, w = image.shape[:2]
    plan = plan_tiles(h, w, options, multiple_of=multiple_of)
    canvas = make_canvas(np.asarray(image, dtype=np.float32), plan)
    th, tw = plan.tile_shape
    s = scale
    off = plan.pre_pad * s
    out = np.zeros((h * s, w * s, 3), dtype=np.float32)
    norm_y = np.zeros(h * s, dtype=np.float64)
    norm_x = np.zeros(w * s, dtype=np.float64)
    wy = [plan.rows.weights(i, s) for i in range(len(plan.rows.starts))]
    wx = [plan.cols.weights(j, s) for j in range(len(plan.cols.starts))]

    def _clip(start_hr: int, length_hr: int, limit: int) -> tuple[int, int, int, int]:
        """Intersect a tile's HR span (canvas coords) with the output; return dst and src ranges."""
        lo = max(start_hr - off, 0)
        hi = min(start_hr - off + length_hr, limit)
        return lo, hi, lo - (start_hr - off), hi - (start_hr - off)

    for i, y in enumerate(plan.rows.starts):
        lo, hi, a, b = _clip(y * s, th * s, h * s)
        if hi > lo:
            norm_y[lo:hi] += wy[i][a:b]
    for j, x in enumerate(plan.cols.starts):
        lo, hi, a, b = _clip(x * s, tw * s, w * s)
        if hi > lo:
            norm_x[lo:hi] += wx[j][a:b]

    tiles = list(plan.tiles())
    total = len(tiles)
    for first in range(0, total, options.batch_size):
        chunk = tiles[first : first + options.batch_size]
        batch = np.stack([canvas[y : y + th, x : x + tw].transpose(2, 0, 1) for _, _, y, x in chunk])
        result = infer(np.ascontiguousarray(batch, dtype=np.float32))
        expected = (len(chunk), 3, th * s, tw * s)
        if result.shape != expected:
            raise ShapeError("model output", result.shape, f"{expected} (a x{s} model)")
        for k, (i, j, y, x) in enumerate(chunk):
            ylo, yhi, ya, yb = _clip(y * s, th * s, h * s)
            xlo, xhi, xa, xb = _clip(x * s, tw * s, w * s)
            if yhi <= ylo or xhi <= xlo:
                continue
            weight = (wy[i][ya:yb, None] * wx[j][None, xa:xb]).astype(np.float32)
            out[ylo:yhi, xlo:xhi] += result[k, :, ya:yb, xa:xb].transpose(1, 2, 0) * weight[..., None]
        if progress is not None:
            progress(min(first + len(chunk), total), total)
    if np.any(norm_y <= 0) or np.any(norm_x <= 0):  # a plan bug, never a user error
        raise AssertionError("tile plan left output pixels uncovered")
    out /= norm_y.astype(np.float32)[:, None, None]
    out /= norm_x.astype(np.float32)[None, :, None]
    return out
