"""Pooled global self-attention map: pooling, head split and column sum in one call.

``pooled_attention_map(features, pool, heads)`` average-pools a feature map by
``pool`` (``ceil_mode``: the ragged last window averages only the pixels it
covers, so every pixel counts and the grid is ``ceil(H / pool) x ceil(W / pool)``),
flattens it row-major into ``N = h * w`` tokens, optionally applies a token
transform, splits the channels into ``heads`` heads of dimension ``d = C / heads``
and returns ``mean over heads of attention_colsum(Q=tokens, K=tokens)`` reshaped
to the pooled grid.

Building good tokens (removing local means, normalising by one global scale, a
temperature) belongs to the adaptation stage: pass features that already carry
local structure, or a ``token_transform`` acting on the pooled ``(B, N, C)`` tokens.
This function neither normalises the tokens nor the map: without exclusion the map
sums to ``N`` (mean 1) per image by construction; with ``exclude_radius`` it sums to
``N`` minus the fully excluded rows (see :mod:`adassr.cuda_kernels.colsum`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from adassr.runtime.errors import ConfigError, ShapeError

from .colsum import DTYPES, attention_colsum

TokenTransform = Callable[[torch.Tensor], torch.Tensor]


def _checked_features(features: torch.Tensor, pool: int, heads: int) -> torch.Tensor:
    """``features`` checked to be a ``(B, C, H, W)`` float tensor (in a supported dtype) and the options ints >= 1."""
    if not isinstance(features, torch.Tensor):
        raise ConfigError(f"features must be a torch tensor (B, C, H, W), got {type(features).__module__}."
                          f"{type(features).__qualname__} (a numpy array: torch.from_numpy it)")
    if features.dim() != 4:
        raise ShapeError("features", tuple(features.shape), "(B, C, H, W)")
    if min(features.shape) < 1:
        raise ShapeError("features", tuple(features.shape), "(B, C, H, W) with every size >= 1")
    if not features.is_floating_point():
        raise ConfigError(f"features must be a float tensor, got {features.dtype}")
    for name, value in (("pool", pool), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return features if features.dtype in DTYPES else features.to(torch.float32)


def _transformed(tokens: torch.Tensor, token_transform: TokenTransform) -> torch.Tensor:
    """``token_transform(tokens)``, checked to keep the ``(B, N)`` leading shape, in a supported dtype."""
    b, n = tokens.shape[:2]
    out = token_transform(tokens)
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[:2] != (b, n):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        raise ShapeError("token_transform output", shape, f"({b}, {n}, C')")
    return out if out.dtype in DTYPES else out.to(torch.float32)


def pooled_attention_map(
    features: torch.Tensor,
    pool: int,
    heads: int,
    *,
    scale: float | None = None,
    exclude_radius: int = 0,
    token_transform: TokenTransform | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention received by each pooled position, averaged over heads.

    Args:
        features: ``(B, C, H, W)`` float feature map (float64 is computed in float32).
        pool: average-pooling factor ``n`` (>= 1, ceil mode).
        heads: number of heads; the token channel count must divide by it.
        scale: logit multiplier; default ``1 / sqrt(d)`` with ``d = channels / heads``.
        exclude_radius: pairs within this Chebyshev distance on the pooled grid are
            left out (see :func:`adassr.cuda_kernels.attention_colsum`).
        token_transform: optional map ``(B, N, C) -> (B, N, C')`` applied to the pooled
            tokens before the head split (e.g. a global normalisation).
        backend: passed to :func:`adassr.cuda_kernels.attention_colsum`.

    Returns:
        ``(B, h, w)`` float32 with ``h = ceil(H / pool)``, ``w = ceil(W / pool)``.

    Raises:
        ShapeError: features not 4-D, or channels not divisible by ``heads``.
        ConfigError: invalid ``pool``, ``heads`` or other options.
    """
    features = _checked_features(features, pool, heads)
    pool, heads = int(pool), int(heads)  # NumPy integers pass, as in attention_colsum
    b = features.shape[0]
    pooled = F.avg_pool2d(features, pool, ceil_mode=True) if pool > 1 else features
    h, w = pooled.shape[-2:]
    n = h * w
    tokens = pooled.flatten(2).transpose(1, 2)  # (B, N, C), row-major over the grid
    if token_transform is not None:
        tokens = _transformed(tokens, token_transform)
    channels = tokens.shape[-1]
    if channels % heads != 0:
        raise ShapeError(
            "tokens", tuple(tokens.shape),
            f"(B, N, C) with C divisible by heads={heads}; choose heads dividing {channels}",
        )
    d = channels // heads
    qk = tokens.reshape(b, n, heads, d).transpose(1, 2).contiguous()  # (B, heads, N, d)
    logit_scale = 1.0 / math.sqrt(d) if scale is None else scale
    colsum = attention_colsum(
        qk, qk, logit_scale, grid_w=w, exclude_radius=exclude_radius, backend=backend
    )
    return colsum.mean(dim=1).reshape(b, h, w)
