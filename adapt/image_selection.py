"""Which images of a large camera group an adaptation reads.

At most ``max_images`` images and at most ``max_megapixels`` of LR pixels in all, chosen evenly
over the group's order (file names, so over time for cameras that number their photos).

Why a cap: every image read is kept as float32 RGB (12 bytes a pixel) for the whole run, and each
costs a loss-weight map (one pass of the backbone's trunk: seconds on a CPU, docs/cpu.md) and its
share of kernel estimation. A group of hundreds of 12 MP photos would otherwise exhaust memory (a
crash, not an error) or spend a CPU run's whole time budget on set-up. Training draws a few
thousand small patches, so a spread-out subset of a large group loses little.

Pure functions on sizes already read (the sizes come from file headers, nothing decoded); the
same files give the same selection on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adassr.runtime.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """The indices chosen (ascending, into the sizes given) and why fewer than all were chosen."""

    indices: tuple[int, ...]
    limited_by: str | None  # None when every image was chosen


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n)`` spread evenly: the middle of each of k equal bins."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return [((2 * i + 1) * n) // (2 * k) for i in range(k)]


def select_images(pixel_counts: Sequence[int], *, max_images: int, max_megapixels: float) -> Selection:
    """Choose at most ``max_images`` of the images whose sizes are ``pixel_counts`` (width x height),
    evenly spread, whose pixels add up to at most ``max_megapixels`` million: the count starts at
    ``max_images`` (or about the budget over the mean size, if smaller) and drops until the evenly
    spaced choice fits.

    When even one evenly placed image is over the pixel budget, the smallest image is chosen if it
    fits; when no image fits, ConfigError says which limit to raise.
    """
    n = len(pixel_counts)
    if n == 0:
        return Selection((), None)
    if max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {max_images}")
    budget = max_megapixels * 1e6
    k = min(n, max_images)
    limited_by = f"--max-images {max_images}" if k < n else None
    mean = sum(pixel_counts) / n
    k_fit = max(1, int(budget // mean) + 1) if mean > 0 and math.isfinite(budget) else k  # a start near the answer
    if k_fit < k:
        k = k_fit
    while k >= 1:
        chosen = evenly_spaced(n, k)
        if sum(pixel_counts[i] for i in chosen) <= budget:
            if k < min(n, max_images):
                limited_by = f"--max-megapixels {max_megapixels:g}"
            return Selection(tuple(chosen), limited_by)
        k -= 1
    smallest = min(range(n), key=lambda i: pixel_counts[i])
    if pixel_counts[smallest] <= budget:
        return Selection((smallest,), f"--max-megapixels {max_megapixels:g}")
    raise ConfigError(
        f"every image of the group is larger than --max-megapixels {max_megapixels:g} "
        f"(the smallest has {pixel_counts[smallest]:,} pixels, {pixel_counts[smallest] / 1e6:.4g} MP, where the limit "
        f"allows {int(budget):,}); raise --max-megapixels"
    )
