"""Optimisation profiles planned from the runtime's tile settings.

The runtime feeds a model only whole tiles when ``pad_to_tile`` is on (its default): every call
is ``(b, 3, tile, tile)`` with ``1 <= b <= batch_size`` (the last batch of an image may be short).
A profile with exactly that range lets TensorRT pick kernels for the one shape that matters.
Untiled inference (``tile=0``), or tiling without ``pad_to_tile``, sends other shapes; then the
plan is one dynamic profile from ``min_side`` (default 1: an image a few pixels wide, with a small
``pre_pad``, sends tiles that small) to ``max_side`` with ``opt`` at ``opt_side``.

:func:`select_profile` maps an input shape to the index of the first profile that accepts it, or
raises :class:`~adassr.runtime.errors.ShapeError` naming the engine's shapes and how to rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass

from adassr.runtime.engines.key import ProfileShape
from adassr.runtime.errors import ConfigError, ShapeError
from adassr.runtime.tiling import TilingOptions

CHANNELS = 3


@dataclass(frozen=True)
class ProfilePlan:
    """Profiles for one engine, and the tile settings they serve."""

    profiles: tuple[ProfileShape, ...]
    fixed_tile: int  # the tile side when every call has the tile shape, else 0

    def select(self, shape: tuple[int, ...]) -> int:
        return select_profile(self.profiles, shape)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_profiles(
    tiling: TilingOptions,
    *,
    multiple_of: int = 1,
    min_side: int = 1,
    opt_side: int = 256,
    max_side: int = 1024,
    copies: int = 1,
) -> ProfilePlan:
    """Profiles covering every input the runtime sends with ``tiling`` (see the module docstring).

    ``min_side`` / ``opt_side`` / ``max_side`` bound the dynamic profile used for untiled inference
    or unpadded tiles; they are rounded up to ``multiple_of``. ``copies`` repeats the profile: an
    execution context runs with one profile at a time, so each of the TensorRT backend's concurrent
    streams gets its own copy.
    """
    if copies < 1:
        raise ConfigError(f"profile copies must be >= 1, got {copies}")
    plan = _plan_one(tiling, multiple_of=multiple_of, min_side=min_side, opt_side=opt_side, max_side=max_side)
    return ProfilePlan(plan.profiles * copies, plan.fixed_tile)


def _plan_one(tiling: TilingOptions, *, multiple_of: int, min_side: int, opt_side: int, max_side: int) -> ProfilePlan:
    if multiple_of < 1:
        raise ConfigError(f"multiple_of must be >= 1, got {multiple_of}")
    if tiling.max_tile_pixels is not None:
        raise ConfigError(
            "TensorRT engines need a fixed tile shape, but the tiles are sized per image (--tile auto); "
            "pass --tile N (for example --tile 512)"
        )
    batch = tiling.batch_size
    if tiling.tile and tiling.pad_to_tile:
        side = _round_up(tiling.tile, multiple_of)
        profile = ProfileShape((1, CHANNELS, side, side), (batch, CHANNELS, side, side), (batch, CHANNELS, side, side))
        return ProfilePlan((profile,), side)
    lo = _round_up(max(1, min_side), multiple_of)
    hi = _round_up(tiling.tile if tiling.tile else max_side, multiple_of)
    if hi < lo:
        raise ConfigError(f"the largest input side {hi} is below the smallest {lo}; use a larger --tile "
                          "(or tile 0 with a larger profile max_side)")
    mid = min(max(_round_up(opt_side, multiple_of), lo), hi)
    profile = ProfileShape((1, CHANNELS, lo, lo), (batch, CHANNELS, mid, mid), (batch, CHANNELS, hi, hi))
    return ProfilePlan((profile,), 0)


def exact_profile(batch: int, height: int, width: int) -> ProfileShape:
    """A profile accepting exactly ``(batch, 3, height, width)`` (benchmarks, fixed video frames)."""
    shape = (batch, CHANNELS, height, width)
    return ProfileShape(shape, shape, shape)


def select_profile(profiles: tuple[ProfileShape, ...], shape: tuple[int, ...]) -> int:
    """Index of the first profile that accepts ``shape``; ShapeError if none does."""
    for index, profile in enumerate(profiles):
        if profile.accepts(shape):
            return index
    have = "; ".join(f"min {p.min} max {p.max}" for p in profiles) or "none"
    raise ShapeError(
        "TensorRT engine input",
        tuple(shape),
        f"a shape inside one of the engine's profiles ({have}); rebuild the engine for these tile "
        "settings with `adassr export --engine tensorrt --tile N --tile-batch B` or use the same --tile",
    )
