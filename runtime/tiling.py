"""Tiled inference for fully convolutional super-resolution models (pure numpy).

All sizes are in LR (input) pixels unless a name says ``hr``.

How an image is cut (:func:`plan_tiles` computes it, one pure function):

1. ``pre_pad``: the whole image is reflect-padded by ``pre_pad`` pixels on all four sides, and the
   matching ``scale * pre_pad`` border is cropped from the output. Border pixels then get
   real-looking context instead of the convolutions' zero padding (Real-ESRGAN's inference script
   pads only the bottom and right edges by 10; we pad all four). Untiled inference uses the same
   pre-padding, so tiled and untiled outputs differ only by the overlap error (and, with a
   ``pre_pad`` below the model's receptive field, at borders padded further; see the exactness rule).
2. The padded image (the *canvas*) is rounded up to ``multiple_of`` (a model size requirement,
   spandrel's ``SizeRequirements``) and, with ``pad_to_tile``, up to the tile size: an image
   smaller than one tile is reflect-padded to the tile, so that every inference call has the same
   shape (static engine profiles). Without ``pad_to_tile`` such an axis is processed at its own
   (rounded) length. ``tile=0`` runs the whole canvas in one call (untiled).
3. Tiles: every tile has the same ``tile x tile`` shape. Along each axis the smallest number of
   tiles is used whose neighbours share at least ``overlap`` pixels, and the tile origins are spread
   evenly between 0 and ``canvas - tile`` (edge tiles are shifted inward, never cut short). Tiles
   are fed to the model ``batch_size`` at a time; a tile whose blending weights (step 4) fall
   wholly in the pre-padding (``pre_pad`` larger than a tile) adds nothing and is not run.
4. Blending: inside the band shared by two neighbours, a linear cross-fade of width
   ``overlap / 4`` is centred on the band; the outer ``3/8 * overlap`` (at least) on each side is pure
   context for the tile that has faded out there. The weights of the tiles covering a pixel sum to
   1 (normalised explicitly); they are separable, so no 2-D weight image is stored.
5. Memory (:func:`run_tiles`): the output is streamed to a sink region by region. Pixels covered
   by one tile leave straight from the tile; only the cross-fade seams (``overlap / 4`` LR pixels
   wide) are accumulated in float32, so no full-size float image exists at any time.

Exactness rule: a model whose receptive-field radius is at most ``3/8 * overlap`` gives tiled output
equal to untiled output (to float rounding); the tests check this (within 1/255) with a tiny
convolutional model of radius 10 at overlap 32, and that the same model shows seams at overlap 0.
Where the canvas is padded beyond ``pre_pad`` (``pad_to_tile`` on an axis shorter than a tile, or
rounding to ``multiple_of``), the bottom and right borders see reflected content there instead of
the model's own zero padding, so the rule also needs a radius of at most ``pre_pad`` (with a smaller
``pre_pad`` the untiled and the padded tiled run differ at those borders, up to 145/255 with the
tiny model at ``pre_pad`` 0).

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

from adassr.runtime.errors import ConfigError, ModelOutputError, ShapeError
from adassr.runtime.fields import check_field_types

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
DEFAULT_PRE_PAD = 10
DEFAULT_BATCH_SIZE = 1

InferFn = Callable[[np.ndarray], np.ndarray]
"""Model call: NCHW float32 batch in [0, 1] -> NCHW float32 batch ``scale`` times larger."""


MAX_PRE_PAD = 128
MAX_TILE = 8192
"""The largest fixed tile a server or a Triton repository takes (input pixels a side): a model's activations
for one such tile already fill tens of GB."""
"""The largest ``pre_pad``: several times the receptive-field radius of the supported models;
larger values add only work (the padded canvas grows with its square)."""


@dataclass(frozen=True)
class TilingOptions:
    """How to cut an image into tiles. ``tile=0`` means untiled (one call for the whole image)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    pre_pad: int = DEFAULT_PRE_PAD
    batch_size: int = DEFAULT_BATCH_SIZE
    pad_to_tile: bool = True
    # When set, each image gets its own tile shape (``tile`` is ignored): the least total work with
    # tiles of at most this many input pixels (adassr.runtime.tile_shape).
    max_tile_pixels: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)  # integers (numpy's become plain ones: engine shapes want them)
        if self.max_tile_pixels is not None and self.max_tile_pixels < 1:
            raise ConfigError(f"max_tile_pixels must be >= 1 (or None for fixed tiles), got {self.max_tile_pixels}")
        if self.tile < 0:
            raise ConfigError(f"tile must be >= 0 (0 = untiled), got {self.tile}")
        if self.overlap < 0:
            raise ConfigError(f"tile overlap must be >= 0, got {self.overlap}")
        if self.tile and self.max_tile_pixels is None and self.tile <= 2 * self.overlap:  # tile unused otherwise
            raise ConfigError(
                f"tile overlap {self.overlap} is too large for tile {self.tile}: it must be less than "
                f"half the tile; use --tile-overlap <= {max(0, (self.tile - 1) // 2)} or a larger --tile"
            )
        if self.max_tile_pixels is not None and (2 * self.overlap + 1) ** 2 > self.max_tile_pixels:
            side = math.isqrt(self.max_tile_pixels)
            raise ConfigError(
                f"tile overlap {self.overlap} is too large for --tile auto, whose tiles hold at most "
                f"{self.max_tile_pixels} pixels now (about {side} x {side}, from the free memory and --tile-batch): "
                f"a tiled image needs tiles of more than twice the overlap a side; use --tile-overlap <= "
                f"{max(0, (side - 1) // 2)} or a fixed --tile"
            )
        if not 0 <= self.pre_pad <= MAX_PRE_PAD:
            raise ConfigError(f"pre_pad must be from 0 to {MAX_PRE_PAD} LR pixels (context for the borders; more "
                              f"only costs time), got {self.pre_pad}")
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


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` when it is a whole number >= 1 (numpy's too); ConfigError otherwise (a
    float or a bool is refused: ``True`` would be taken as 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


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
    if not isinstance(options, TilingOptions):
        raise ConfigError(f"options must be a TilingOptions, got {type(options).__name__}")
    if height < 1 or width < 1:
        raise ShapeError("image", (height, width), "at least 1 x 1 pixels")
    multiple_of = check_positive_int("multiple_of", multiple_of)
    if options.max_tile_pixels is None and options.tile and options.tile % multiple_of:
        raise ConfigError(
            f"tile {options.tile} is not a multiple of {multiple_of}, which this model requires; "
            f"use --tile {_round_up(options.tile, multiple_of)}"
        )
    padded_h, padded_w = height + 2 * options.pre_pad, width + 2 * options.pre_pad
    if options.max_tile_pixels is not None:
        from adassr.runtime.tile_shape import choose_tile_shape

        th, tw = choose_tile_shape(_round_up(padded_h, multiple_of), _round_up(padded_w, multiple_of),
                                   max_pixels=options.max_tile_pixels, overlap=options.overlap,
                                   multiple_of=multiple_of)
        rows = _plan_axis(padded_h, tile=th, overlap=options.overlap, pad_to_tile=False, multiple_of=multiple_of)
        cols = _plan_axis(padded_w, tile=tw, overlap=options.overlap, pad_to_tile=False, multiple_of=multiple_of)
        return TilePlan(height=height, width=width, pre_pad=options.pre_pad, rows=rows, cols=cols)
    rows, cols = (
        _plan_axis(length, tile=options.tile, overlap=options.overlap,
                   pad_to_tile=options.pad_to_tile, multiple_of=multiple_of)
        for length in (padded_h, padded_w)
    )
    return TilePlan(height=height, width=width, pre_pad=options.pre_pad, rows=rows, cols=cols)


RegionSink = Callable[[int, int, np.ndarray], None]
"""Receives finished output: ``sink(y, x, block)`` with ``block`` an ``h x w x 3`` float32 array of final
(blended, unclipped) values for output rows ``y:y+h`` and columns ``x:x+w``, valid during the call only
(mostly a view of the model's channels-first tile, not contiguous). Every output pixel is delivered
exactly once."""


@dataclass(frozen=True)
class _AxisSpans:
    """Per tile along one axis: its weighted HR range in output coordinates and normalised weights."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    weights: tuple[np.ndarray, ...]  # normalised weight over [lo, hi)

    def seam(self, k: int) -> tuple[int, int]:
        """Output range shared by tiles ``k`` and ``k + 1`` (empty ``(a, a)`` when they do not overlap)."""
        a, b = self.lo[k + 1], self.hi[k]
        return (a, b) if b > a else (a, a)

    def segments(self, k: int) -> list[tuple[str, int, int]]:
        """``[(kind, start, end)]`` covering tile ``k``'s range: ``before`` (seam with k - 1), ``own``, ``after``."""
        n = len(self.lo)
        start, end = self.lo[k], self.hi[k]
        before = self.seam(k - 1)[1] if k > 0 else start
        after = self.seam(k)[0] if k < n - 1 else end
        before, after = max(before, start), min(max(after, before), end)
        parts = [("before", start, before), ("own", before, after), ("after", after, end)]
        return [p for p in parts if p[2] > p[1]]


def _axis_spans(axis: AxisPlan, scale: int, off: int, limit: int) -> _AxisSpans:
    raw = [axis.weights(k, scale) for k in range(len(axis.starts))]
    norm = np.zeros(limit, dtype=np.float64)
    lo: list[int] = []
    hi: list[int] = []
    for k, start in enumerate(axis.starts):
        first = start * scale - off
        nz = np.nonzero(raw[k])[0]
        a = max(first + int(nz[0]), 0) if nz.size else 0
        b = min(first + int(nz[-1]) + 1, limit) if nz.size else 0
        lo.append(a)
        hi.append(max(a, b))
        if b > a:
            norm[a:b] += raw[k][a - first : b - first]
    if np.any(norm <= 0):  # a plan bug, never a user error
        raise AssertionError("tile plan left output pixels uncovered")
    weights = tuple(
        (raw[k][lo[k] - (axis.starts[k] * scale - off) : hi[k] - (axis.starts[k] * scale - off)] / norm[lo[k] : hi[k]])
        .astype(np.float32)
        for k in range(len(axis.starts))
    )
    for k in range(len(lo) - 1):  # at most two tiles share a pixel: seams never touch
        if lo[k + 1] < lo[k] or hi[k + 1] < hi[k] or (k > 0 and lo[k + 1] < hi[k - 1]):
            raise AssertionError("tile plan has overlapping seams")
    return _AxisSpans(tuple(lo), tuple(hi), weights)


def _reflect_index(start: int, length: int, n: int, pre_pad: int) -> np.ndarray:
    """Image indices of canvas positions ``start .. start + length`` (reflect padding, no edge repeat)."""
    k = np.arange(start - pre_pad, start - pre_pad + length)
    if n == 1:
        return np.zeros_like(k)
    period = 2 * (n - 1)
    m = np.mod(k, period)
    return np.where(m < n, m, period - m)


class _SeamBlender:
    """Places model output tiles (in plan order) into the output, cross-fading the seams.

    A pixel covered by one tile goes to ``sink`` straight away; seam pixels are accumulated in
    float32 buffers one seam wide and delivered once both neighbours have contributed.
    """

    def __init__(self, plan: TilePlan, rows: _AxisSpans, cols: _AxisSpans, *, scale: int, sink: RegionSink) -> None:
        self._plan, self._rows, self._cols, self._sink = plan, rows, cols, sink
        self._scale = scale
        self._off = plan.pre_pad * scale
        self._out_width = plan.width * scale
        self._n_rows, self._n_cols = len(plan.rows.starts), len(plan.cols.starts)
        self._row_before: np.ndarray | None = None  # seam (i - 1, i): full output width
        self._row_after: np.ndarray | None = None  # seam (i, i + 1)
        self._col_before: np.ndarray | None = None  # seam (j - 1, j) over tile row i's own rows
        self._col_after: np.ndarray | None = None

    def place(self, i: int, j: int, tile: np.ndarray) -> None:
        """Blend output tile ``(i, j)`` (``3 x th*s x tw*s``); tiles must arrive row by row."""
        if j == 0:
            self._start_row(i)
        oy = self._plan.rows.starts[i] * self._scale - self._off
        ox = self._plan.cols.starts[j] * self._scale - self._off
        rows, cols = self._rows, self._cols
        for rkind, ya, yb in rows.segments(i):
            wy = rows.weights[i][ya - rows.lo[i] : yb - rows.lo[i]]
            for ckind, xa, xb in cols.segments(j):
                wx = cols.weights[j][xa - cols.lo[j] : xb - cols.lo[j]]
                block = tile[:, ya - oy : yb - oy, xa - ox : xb - ox].transpose(1, 2, 0)
                if rkind == "own" and ckind == "own":
                    self._sink(ya, xa, np.asarray(block, dtype=np.float32))  # a view of the tile, not a copy
                else:
                    weighted = block * (wy[:, None, None] * wx[None, :, None])
                    self._accumulate(i, rkind, ckind, (ya, yb, xa, xb), weighted)
        self._finish_tile(i, j)

    def skip(self, i: int, j: int) -> None:
        """Pass over tile ``(i, j)``, whose weighted output range is empty (it lies in the pre-padding:
        a large ``pre_pad`` with small tiles); nothing of it reaches the output, so it is not run."""
        if self._rows.segments(i) and self._cols.segments(j):
            raise AssertionError(f"tile ({i}, {j}) has output pixels; it cannot be skipped")
        if j == 0:
            self._start_row(i)
        self._finish_tile(i, j)

    def _start_row(self, i: int) -> None:
        a, b = self._rows.seam(i) if i < self._n_rows - 1 else (0, 0)
        self._row_after = np.zeros((b - a, self._out_width, 3), np.float32) if b > a else None

    def _accumulate(
        self, i: int, rkind: str, ckind: str, box: tuple[int, int, int, int], weighted: np.ndarray
    ) -> None:
        ya, yb, xa, xb = box
        if rkind == "before":
            assert self._row_before is not None
            sa = self._rows.seam(i - 1)[0]
            self._row_before[ya - sa : yb - sa, xa:xb] += weighted
        elif rkind == "after":
            assert self._row_after is not None
            sa = self._rows.seam(i)[0]
            self._row_after[ya - sa : yb - sa, xa:xb] += weighted
        elif ckind == "before":
            assert self._col_before is not None
            self._col_before[:, : xb - xa] += weighted
        else:  # own rows, seam with the next column
            if self._col_after is None:
                self._col_after = np.zeros((yb - ya, xb - xa, 3), np.float32)
            self._col_after += weighted

    def _finish_tile(self, i: int, j: int) -> None:
        own = [(ya, yb) for kind, ya, yb in self._rows.segments(i) if kind == "own"]
        if self._col_before is not None and own:
            self._sink(own[0][0], self._cols.seam(j - 1)[0], self._col_before)
        self._col_before, self._col_after = self._col_after, None
        if j == self._n_cols - 1:
            self._col_before = None
            if self._row_before is not None:
                self._sink(self._rows.seam(i - 1)[0], 0, self._row_before)
            self._row_before, self._row_after = self._row_after, None


def _float_converter(
    image: np.ndarray, to_float: Callable[[np.ndarray], np.ndarray] | None
) -> Callable[[np.ndarray], np.ndarray]:
    """Check ``image`` is ``H x W x C`` and return the tile converter (default: float32 cast, 3 channels)."""
    if image.ndim != 3:
        raise ShapeError("image", image.shape, "(H, W, C)")
    if to_float is not None:
        return to_float
    if image.shape[2] != 3:
        raise ShapeError("image", image.shape, "(H, W, 3)")

    def cast(tile: np.ndarray) -> np.ndarray:
        return tile.astype(np.float32, copy=False)

    return cast


def _cut_batch(
    image: np.ndarray,
    plan: TilePlan,
    chunk: list[tuple[int, int, int, int]],
    to_float: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The ``N x 3 x th x tw`` float32 input batch for ``chunk``'s tiles, cut with reflect padding."""
    th, tw = plan.tile_shape
    crops = []
    for _, _, y, x in chunk:
        iy = _reflect_index(y, th, plan.height, plan.pre_pad)
        ix = _reflect_index(x, tw, plan.width, plan.pre_pad)
        crops.append(to_float(image[iy[:, None], ix[None, :]]).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops), dtype=np.float32)


def run_tiles(
    image: np.ndarray,
    infer: InferFn,
    *,
    scale: int,
    options: TilingOptions,
    sink: RegionSink,
    multiple_of: int = 1,
    to_float: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run ``infer`` tile by tile over an ``H x W x C`` image and deliver the blended output to ``sink``.

    Memory is bounded by the tiles, not the image: tiles are cut from ``image`` (any dtype) on the
    fly with reflect padding and converted by ``to_float`` (tile ``h x w x C`` -> float32
    ``h x w x 3`` in [0, 1]; default: a float32 cast of a 3-channel image). A pixel covered by
    one tile goes to ``sink`` straight from that tile; the seams where two neighbours cross-fade
    are accumulated in float32 buffers one seam wide (a full-width strip for row seams, a
    tile-high strip for column seams) and delivered once complete.
    ``progress(done_tiles, total_tiles)`` is called once with 0 before the first batch (so that a
    progress bar's clock includes the first tile) and after each batch.
    """
    scale = check_positive_int("scale", scale)
    convert = _float_converter(image, to_float)
    h, w = image.shape[:2]
    plan = plan_tiles(h, w, options, multiple_of=multiple_of)
    th, tw = plan.tile_shape
    off = plan.pre_pad * scale
    rows = _axis_spans(plan.rows, scale, off, h * scale)
    cols = _axis_spans(plan.cols, scale, off, w * scale)
    blender = _SeamBlender(plan, rows, cols, scale=scale, sink=sink)
    every = list(plan.tiles())
    # A tile whose blending weights lie wholly in the pre-padding adds nothing to the output (the
    # first and last tiles with a pre_pad larger than a tile): it is passed over, not inferred.
    useful = [bool(rows.segments(i) and cols.segments(j)) for i, j, _, _ in every]
    tiles = [t for t, keep in zip(every, useful, strict=True) if keep]
    skipped = iter([t for t, keep in zip(every, useful, strict=True) if not keep])
    pending = next(skipped, None)
    total = len(tiles)
    if progress is not None:
        progress(0, total)
    for first in range(0, total, options.batch_size):
        chunk = tiles[first : first + options.batch_size]
        result = infer(_cut_batch(image, plan, chunk, convert))
        expected = (len(chunk), 3, th * scale, tw * scale)
        if result.shape != expected:
            raise ModelOutputError("model output", result.shape, f"{expected} (a x{scale} model)")
        for k, (i, j, _, _) in enumerate(chunk):
            while pending is not None and pending[:2] < (i, j):  # plan order: row by row
                blender.skip(*pending[:2])
                pending = next(skipped, None)
            blender.place(i, j, result[k])
        del result
        if progress is not None:
            progress(min(first + len(chunk), total), total)
    while pending is not None:
        blender.skip(*pending[:2])
        pending = next(skipped, None)


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

    A convenience over :func:`run_tiles` that collects the output in one float32 array (the
    upscale pipeline writes straight into its final integer dtype instead). Values are not clipped.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError("image", image.shape, "(H, W, 3)")
    if not np.issubdtype(image.dtype, np.floating):
        raise ConfigError(f"the image must be float in [0, 1] (the model's input), got {image.dtype}; divide 8-bit "
                          "levels by 255 and 16-bit ones by 65535 (or use adassr.runtime.pipeline.upscale_pixels, "
                          "which takes them as they are)")
    scale = check_positive_int("scale", scale)
    h, w = image.shape[:2]
    out = np.empty((h * scale, w * scale, 3), dtype=np.float32)

    def sink(y: int, x: int, block: np.ndarray) -> None:
        out[y : y + block.shape[0], x : x + block.shape[1]] = block

    run_tiles(np.asarray(image, dtype=np.float32), infer, scale=scale, options=options, sink=sink,
              multiple_of=multiple_of, progress=progress)
    return out
