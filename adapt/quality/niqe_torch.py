"""Batched NIQE in torch (CPU and CUDA), the same algorithm as :mod:`adassr.adapt.quality.niqe`.

For the adaptation's early stopping: scores a batch of SR outputs on their device
without copying image data to the host (no ``.item()``, no ``.cpu()``). Constant
tables (AGGD gamma grid, imresize taps, pristine model) are built by the numpy
reference and copied host -> device, so both implementations pick the same grid
points. All arithmetic is float64 with the same operation order as the numpy
reference (separate multiply and add per filter tap, no fused or library
convolutions), so scores agree to about 1e-10 relative; only block reductions and
the pseudo-inverse differ in rounding. ``torch.linalg.pinv`` uses an SVD, which on
CUDA synchronises once with the host (PyTorch documents this for its SVD).

Input: ``(B, 3, H, W)`` RGB or ``(B, 1, H, W)`` gray, floating point in **[0, 1]**
(values outside are clamped), quantised to 8-bit levels first (round(255 x)), i.e.
scored as the image that would be saved as 8-bit PNG. Images with fewer than two
blocks of finite features (flat images) give NaN, as the numpy reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adassr.adapt.quality.niqe import (
    BLOCK_SIZE,
    BT601_Y_COEFFS,
    GAUSSIAN_SIZE,
    RGB2GRAY_COEFFS,
    Convert,
    aggd_tables,
    gaussian_window_1d,
    imresize_weights,
    pristine_params,
)
from adassr.runtime.errors import ConfigError, ShapeError

_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_EPS64 = float(torch.finfo(torch.float64).eps)


def _const(array: object, device: torch.device, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.tensor(array, dtype=dtype, device=device)


def _to_luma(images: Tensor, convert: Convert) -> Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, 1, H, W) float64 integer levels."""
    x = torch.floor(images.to(torch.float64).clamp(0.0, 1.0) * 255.0 + 0.5)
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    if convert == "gray":
        c0, c1, c2 = RGB2GRAY_COEFFS
        return torch.clamp_max(torch.floor(c0 * r + c1 * g + c2 * b + 0.5), 255.0)
    c0, c1, c2 = BT601_Y_COEFFS
    return torch.floor(16.0 + (c0 * r + c1 * g + c2 * b) / 255.0 + 0.5)


def _blur(x: Tensor, taps: list[float]) -> Tensor:
    """Replicate-padded separable 7-tap filter of (B, 1, H, W); columns first, taps in order."""
    r = GAUSSIAN_SIZE // 2
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, 0, r, r), mode="replicate")
    acc = torch.zeros_like(x)
    for k, t in enumerate(taps):
        acc = acc + t * padded[..., k : k + h, :]
    padded = F.pad(acc, (r, r, 0, 0), mode="replicate")
    acc = torch.zeros_like(x)
    for k, t in enumerate(taps):
        acc = acc + t * padded[..., :, k : k + w]
    return acc


def _mscn(x: Tensor, taps: list[float]) -> Tensor:
    mu = _blur(x, taps)
    sigma = torch.sqrt(torch.abs(_blur(x * x, taps) - mu * mu))
    return (x - mu) / (sigma + 1.0)


def _resize_axis(x: Tensor, dim: int, scale: float) -> Tensor:
    weights_np, indices_np = imresize_weights(x.shape[dim], scale)
    weights = _const(weights_np, x.device)
    indices = _const(indices_np, x.device, torch.int64)
    shape = [1] * x.ndim
    shape[dim] = weights.shape[0]
    out_shape = list(x.shape)
    out_shape[dim] = weights.shape[0]
    acc = x.new_zeros(out_shape)
    for k in range(weights.shape[1]):
        acc = acc + weights[:, k].reshape(shape) * x.index_select(dim, indices[:, k])
    return acc


def _grid_argmin(values: Tensor, r_gam: Tensor) -> Tensor:
    """First grid index minimising (r_gam - v)^2; 0 where v is NaN (as MATLAB's min)."""
    nan = torch.isnan(values)
    safe = torch.where(nan, r_gam[0], values)
    pos = torch.searchsorted(r_gam, safe.contiguous())
    offsets = torch.arange(-2, 2, device=values.device)
    cand = (pos.unsqueeze(-1) + offsets).clamp(0, r_gam.numel() - 1)
    err = (r_gam[cand] - safe.unsqueeze(-1)) ** 2
    best = torch.gather(cand, -1, torch.argmin(err, dim=-1, keepdim=True)).squeeze(-1)
    return torch.where(nan, torch.zeros_like(best), best)


def _aggd_fit(samples: Tensor, tables: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gam, r_gam, beta_tab, mean_tab = tables
    sq = samples * samples
    zero = torch.zeros((), dtype=samples.dtype, device=samples.device)
    neg = samples < 0
    pos = samples > 0
    left_std = torch.sqrt(torch.where(neg, sq, zero).sum(-1) / neg.sum(-1))
    right_std = torch.sqrt(torch.where(pos, sq, zero).sum(-1) / pos.sum(-1))
    gammahat = left_std / right_std
    rhat = samples.abs().mean(-1) ** 2 / sq.mean(-1)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    idx = _grid_argmin(rhatnorm, r_gam)
    return gam[idx], left_std * beta_tab[idx], right_std * beta_tab[idx], mean_tab[idx]


def _block_features(structdis: Tensor, size: int, tables: tuple[Tensor, ...]) -> Tensor:
    """(B, 1, H, W) MSCN -> (B, N, 18) features per size x size block."""
    b, _, h, w = structdis.shape
    nr, nc = h // size, w // size
    blocks = (
        structdis[:, 0, : nr * size, : nc * size]
        .reshape(b, nr, size, nc, size)
        .permute(0, 1, 3, 2, 4)
        .reshape(b, nr * nc, size, size)
    )
    flat = blocks.reshape(b, nr * nc, size * size)
    alpha, bl, br, _ = _aggd_fit(flat, tables)
    feats = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        pair = flat * torch.roll(blocks, shifts=shift, dims=(2, 3)).reshape(flat.shape)
        alpha, bl, br, mean_factor = _aggd_fit(pair, tables)
        feats.extend([alpha, (br - bl) * mean_factor, bl, br])
    return torch.stack(feats, dim=-1)


def _distance(features: Tensor) -> Tensor:
    """(B, N, 36) -> (B,) NIQE with nanmean / complete-row nancov / MATLAB pinv."""
    mu_np, cov_np = pristine_params()
    mu_p = _const(mu_np, features.device)
    cov_p = _const(cov_np, features.device)
    nan = torch.isnan(features)
    mu_d = torch.nanmean(features, dim=1)
    complete = ~nan.any(dim=-1, keepdim=True)  # (B, N, 1)
    n = complete.sum(dim=1).to(features.dtype)  # (B, 1)
    x = torch.where(complete, features, torch.zeros_like(features))
    mean_c = x.sum(dim=1) / n
    centred = torch.where(complete, features - mean_c.unsqueeze(1), torch.zeros_like(features))
    cov_d = centred.transpose(1, 2) @ centred / (n - 1).unsqueeze(-1)
    cov_d = torch.where(torch.isfinite(cov_d), cov_d, torch.zeros_like(cov_d))
    pooled = (cov_p + cov_d) / 2.0
    inv = torch.linalg.pinv(pooled, rtol=max(pooled.shape[-2:]) * _EPS64)
    diff = mu_p - mu_d
    value = torch.sqrt(torch.einsum("bi,bij,bj->b", diff, inv, diff).clamp_min(0.0))
    enough = n.squeeze(-1) >= 2
    return torch.where(enough, value, torch.full_like(value, float("nan")))


def niqe_torch(images: Tensor, *, crop_border: int = 0, convert: Convert = "gray") -> Tensor:
    """NIQE of each image of a batch: ``(B, C, H, W)`` float in [0, 1] -> float64 ``(B,)``.

    Same options as :func:`adassr.adapt.quality.niqe.niqe`: ``crop_border`` pixels removed on
    each side, ``convert`` ``'gray'`` (MATLAB rgb2gray, default) or ``'y'`` (BT.601).
    Not differentiable (quantises to 8 bits); run it under ``torch.no_grad()``.
    """
    if convert not in ("gray", "y"):
        raise ConfigError(f"convert must be 'gray' or 'y', got {convert!r}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ConfigError(f"crop_border must be an int >= 0, got {crop_border!r}")
    if not isinstance(images, Tensor):
        raise ConfigError(f"niqe_torch expects a torch tensor (B, C, H, W), got {type(images).__module__}."
                          f"{type(images).__qualname__} (for a numpy image: adassr.adapt.quality.niqe.niqe)")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ShapeError("niqe_torch images", tuple(images.shape), "(B, 3, H, W) or (B, 1, H, W)")
    if not images.is_floating_point():
        raise ConfigError(f"niqe_torch expects floating images in [0, 1], got dtype {images.dtype}")
    with torch.no_grad():
        luma = _to_luma(images, convert)
        if crop_border:
            luma = luma[..., crop_border:-crop_border, crop_border:-crop_border]
        h, w = luma.shape[-2:]
        nr, nc = h // BLOCK_SIZE, w // BLOCK_SIZE
        if nr * nc < 2:
            raise ShapeError(
                "niqe_torch images (after crop_border)", (h, w),
                f"at least two {BLOCK_SIZE}x{BLOCK_SIZE} blocks (e.g. {BLOCK_SIZE}x{2 * BLOCK_SIZE})",
            )
        x = luma[..., : nr * BLOCK_SIZE, : nc * BLOCK_SIZE]
        tables = tuple(_const(t, images.device) for t in aggd_tables())
        taps = [float(t) for t in gaussian_window_1d()]
        feats = []
        for scale in (1, 2):
            feats.append(_block_features(_mscn(x, taps), BLOCK_SIZE // scale, tables))
            if scale == 1:
                x = _resize_axis(_resize_axis(x, 2, 0.5), 3, 0.5)
        return _distance(torch.cat(feats, dim=-1))
