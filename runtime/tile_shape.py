"""Automatic tile shape: the least network work whose tiles fit a memory budget (pure arithmetic).

A fully convolutional SR model costs the same per input pixel whatever the tile shape, so the
work of a tiled run is proportional to the pixels of all tiles together. Fixed square tiles waste
much of it on ordinary photos: a 640 x 480 photo (660 x 500 with the 10-pixel pre-padding) in
512-pixel tiles runs two 500 x 512 tiles, 512,000 pixels for 330,000 pixels of canvas.

:func:`choose_tile_shape` tries every grid of ``rows x cols`` tiles and, for each, the smallest
tile (any aspect ratio, rounded up to ``multiple_of``) whose neighbours overlap by at least
``overlap``; among the grids whose tiles hold at most ``max_pixels`` input pixels it keeps the one
with the least work: the total pixels of its tiles plus ``TILE_COST`` pixels per tile (ties: fewer
tiles). The whole canvas is one tile when it fits. The per-tile cost stands for what every tile
adds besides its pixels (a model call's overhead, one more seam); without it, at overlap 0, any exact
divisor of the canvas won, down to tiles one pixel high (a 659-pixel, prime, canvas height in 659
strips, for 739 pixels saved against two tiles). And no tile side is shorter than a quarter of the
budget's square side (``min_tile_side``; the canvas side where that is shorter): with small budgets
(``--tile-batch 16``, little free memory) the per-tile cost alone still let a phone photo go into
strips 4 pixels high.

``max_pixels`` bounds the memory of one tile (:func:`tiling_options` divides the budget of one
model call by the tiles a call takes, ``--tile-batch``, but not below the 128 x 128 floor: a batch
of more than about 16 floor-sized tiles exceeds the budget). :func:`auto_max_tile_pixels` derives it from
the memory available now: half of ``MemAvailable`` divided by the activation memory per input
pixel (RRDBNet x4 in onnxruntime fp32 peaks at about 16 kB per input pixel, docs/performance.md:
64 channels at 16 output pixels, a few tensors alive at once), clamped to [128 x 128, 512 x 512]
pixels. The upper
bound is the memory of the fixed 512-pixel tiles used before, so no run needs more memory than
it did.
"""

from __future__ import annotations

import math
from pathlib import Path

from adassr.runtime.errors import ConfigError
from adassr.runtime.tiling import TilingOptions

BYTES_PER_INPUT_PIXEL = 16 * 1024
"""Peak activation memory of RRDBNet x4 per input pixel in onnxruntime fp32 (measured, rounded up)."""

TILE_COST = 32 * 32
"""Pixels of work each tile costs besides its own (see the module docstring)."""

MIN_AUTO_TILE_PIXELS = 128 * 128
MAX_AUTO_TILE_PIXELS = 512 * 512


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def min_tile_side(max_pixels: int) -> int:
    """The shortest tile side :func:`choose_tile_shape` uses: a quarter of the budget's square side."""
    return max(1, math.isqrt(max_pixels) // 4)


def _axis_tiles(canvas: int, overlap: int, multiple_of: int, min_side: int = 1) -> list[tuple[int, int]]:
    """``(count, tile)`` along one axis, fewest tiles first: for each count, the smallest tile that
    covers ``canvas`` with neighbours sharing ``overlap`` pixels (``count`` as the planner will use it),
    none shorter than ``min_side``."""
    out = [(1, canvas)]
    seen = set(out)  # a set: a long axis tries up to ``canvas`` counts (a list scan made that quadratic)
    # a tile must be more than twice the overlap, and not a thin strip
    smallest = _round_up(max(2 * overlap + 1, min_side), multiple_of)
    for wanted in range(2, canvas + 1):
        tile = max(smallest, _round_up(-(-(canvas + (wanted - 1) * overlap) // wanted), multiple_of))
        if tile >= canvas:
            if tile == smallest:
                break
            continue
        count = -(-(canvas - overlap) // (tile - overlap))
        if (count, tile) not in seen:
            seen.add((count, tile))
            out.append((count, tile))
        if tile == smallest:  # more tiles cannot be smaller
            break
    return out


def choose_tile_shape(
    canvas_height: int,
    canvas_width: int,
    *,
    max_pixels: int,
    overlap: int,
    multiple_of: int = 1,
) -> tuple[int, int]:
    """``(tile_height, tile_width)`` for a canvas (already rounded to ``multiple_of``); see the module docstring.

    Raises :class:`ConfigError` when no tile of at most ``max_pixels`` pixels can keep the overlap.
    """
    if canvas_height < 1 or canvas_width < 1:
        raise ConfigError(f"canvas must be at least 1 x 1, got {canvas_height} x {canvas_width}")
    if max_pixels < 1:
        raise ConfigError(f"the tile pixel budget must be >= 1, got {max_pixels}")
    min_side = min_tile_side(max_pixels)
    rows = _axis_tiles(canvas_height, overlap, multiple_of, min_side)
    cols = _axis_tiles(canvas_width, overlap, multiple_of, min_side)
    best: tuple[int, int, int, int] | None = None  # (total pixels, tiles, th, tw)
    for n_r, th in rows:
        for n_c, tw in ((n_c, tw) for n_c, tw in cols if th * tw <= max_pixels):
            key = (n_r * th * n_c * tw + n_r * n_c * TILE_COST, n_r * n_c, th, tw)
            if best is None or key < best:
                best = key
    if best is None:
        smallest = min(th for _, th in rows) * min(tw for _, tw in cols)
        raise ConfigError(
            f"no tile of at most {max_pixels} pixels covers a {canvas_height} x {canvas_width} canvas with "
            f"overlap {overlap} (the smallest needs {smallest}); lower --tile-overlap or give a fixed --tile"
        )
    return best[2], best[3]


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes, None where unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_max_tile_pixels(available: int | None = None) -> int:
    """The per-call pixel budget for ``--tile auto`` (see the module docstring)."""
    if available is None:
        available = mem_available_bytes()
    if available is None:
        return MAX_AUTO_TILE_PIXELS
    fit = int(available * 0.5 // BYTES_PER_INPUT_PIXEL)
    return max(MIN_AUTO_TILE_PIXELS, min(MAX_AUTO_TILE_PIXELS, fit))


AUTO_TILE = "auto"


def tile_argument(text: str) -> str | int:
    """argparse type of ``--tile``: ``auto`` or a non-negative integer (0 = untiled)."""
    import argparse

    if text.strip().lower() == AUTO_TILE:
        return AUTO_TILE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a whole number of pixels (0 = untiled), got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or >= 0 (0 = untiled), got {value}")
    return value


def tiling_options(tile: str | int, *, overlap: int, pre_pad: int, batch_size: int, pad_to_tile: bool) -> TilingOptions:
    """TilingOptions for a ``--tile`` value: ``auto`` gets the memory-derived pixel budget."""
    if tile == AUTO_TILE:  # the budget is per model call, which takes batch_size tiles
        budget = max(MIN_AUTO_TILE_PIXELS, auto_max_tile_pixels() // max(1, batch_size))
        return TilingOptions(overlap=overlap, pre_pad=pre_pad, batch_size=batch_size, pad_to_tile=pad_to_tile,
                             max_tile_pixels=budget)
    if not isinstance(tile, int):
        raise ConfigError(f"--tile must be 'auto' or a whole number of pixels, got {tile!r}")
    return TilingOptions(tile=tile, overlap=overlap, pre_pad=pre_pad, batch_size=batch_size, pad_to_tile=pad_to_tile)
