"""pooled_attention_map: pooling, head split and column sum, on a real photo."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adassr.cuda_kernels import pooled_attention_map
from adassr.cuda_kernels.reference import dense_colsum_float64
from adassr.runtime.errors import ConfigError, ShapeError

PHOTO = Path(__file__).resolve().parents[1] / "data" / "hr" / "chelsea.png"


def photo_features(height: int = 70, width: int = 90) -> torch.Tensor:
    """(1, 9, H, W): RGB in [0, 1] and its x / y gradients, from a crop of a real photo."""
    img = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    assert img is not None, PHOTO
    rgb = torch.from_numpy(np.ascontiguousarray(img[:height, 40:40 + width, ::-1])).float() / 255
    rgb = rgb.permute(2, 0, 1)[None]
    gx = F.pad(rgb[..., :, 1:] - rgb[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(rgb[..., 1:, :] - rgb[..., :-1, :], (0, 0, 0, 1))
    return torch.cat([rgb, 4 * gx, 4 * gy], dim=1)


def manual_map(features: torch.Tensor, pool: int, heads: int, radius: int) -> torch.Tensor:
    """The documented construction, spelled out independently in float64."""
    b, c = features.shape[:2]
    h, w = math.ceil(features.shape[2] / pool), math.ceil(features.shape[3] / pool)
    pooled = torch.zeros(b, c, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            win = features[:, :, y * pool:(y + 1) * pool, x * pool:(x + 1) * pool].double()
            pooled[:, :, y, x] = win.mean(dim=(2, 3))
    tokens = pooled.reshape(b, c, h * w).transpose(1, 2)
    d = c // heads
    qk = torch.stack([tokens[..., i * d:(i + 1) * d] for i in range(heads)], dim=1)
    colsum = dense_colsum_float64(qk, qk, 1 / math.sqrt(d), grid_w=w, exclude_radius=radius)
    return colsum.mean(dim=1).reshape(b, h, w)


@pytest.mark.parametrize("pool, heads, radius", [(4, 3, 0), (4, 9, 1), (3, 3, 2), (1, 1, 0)])
def test_matches_manual_construction_on_photo(pool: int, heads: int, radius: int) -> None:
    feats = photo_features(30, 38) if pool == 1 else photo_features()
    out = pooled_attention_map(feats, pool, heads, exclude_radius=radius)
    expected = manual_map(feats, pool, heads, radius)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_ceil_mode_grid_and_mean_one() -> None:
    feats = photo_features(70, 90)  # 70 / 4 and 90 / 4 are ragged
    out = pooled_attention_map(feats, 4, 3)
    assert out.shape == (1, 18, 23)
    # Without exclusion each head's column sums add up to N: the map has mean 1.
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert out.std().item() > 0.01  # a real photo gives a non-uniform map


def test_scale_and_token_transform_are_applied() -> None:
    feats = photo_features()
    base = pooled_attention_map(feats, 4, 3)
    # Zero tokens: all logits equal, every column gets exactly one unit of attention.
    flat = pooled_attention_map(feats, 4, 3, token_transform=lambda t: t * 0)
    torch.testing.assert_close(flat, torch.ones_like(flat))
    # A larger scale sharpens the softmax: the map's spread grows.
    sharp = pooled_attention_map(feats, 4, 3, scale=20.0)
    assert sharp.std() > base.std()
    # A transform may change the channel count before the head split.
    dup = pooled_attention_map(feats, 4, 6, token_transform=lambda t: torch.cat([t, t], -1))
    assert dup.shape == base.shape


def test_float64_features_and_transforms_are_computed_in_float32() -> None:
    """As documented: float64 was refused by the kernel's dtype check when the conversion was dropped."""
    feats = photo_features()
    base = pooled_attention_map(feats, 4, 3, exclude_radius=1)
    torch.testing.assert_close(pooled_attention_map(feats.double(), 4, 3, exclude_radius=1), base)
    doubled = pooled_attention_map(feats, 4, 3, exclude_radius=1, token_transform=lambda t: t.double())
    torch.testing.assert_close(doubled, base)


def test_batch_items_are_independent() -> None:
    feats = photo_features()
    other = torch.flip(feats, dims=[3])
    both = pooled_attention_map(torch.cat([feats, other]), 4, 3, exclude_radius=1)
    torch.testing.assert_close(both[0], pooled_attention_map(feats, 4, 3, exclude_radius=1)[0])
    torch.testing.assert_close(both[1], pooled_attention_map(other, 4, 3, exclude_radius=1)[0])


def test_errors() -> None:
    feats = photo_features()
    with pytest.raises(ShapeError, match="divisible by heads=2"):
        pooled_attention_map(feats, 4, 2)  # 9 channels
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        pooled_attention_map(feats[0], 4, 3)
    with pytest.raises(ConfigError, match="features must be a torch tensor .*got numpy.ndarray"):  # was "shape ()"
        pooled_attention_map(feats.numpy(), 4, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pool must be"):
        pooled_attention_map(feats, 0, 3)
    with pytest.raises(ConfigError, match="heads must be"):
        pooled_attention_map(feats, 2, 0)
    with pytest.raises(ConfigError, match="pool must be"):
        pooled_attention_map(feats, 2.0, 3)  # type: ignore[arg-type]
    # NumPy integers pass, as they do in attention_colsum (they were refused here; a helper's hunt)
    torch.testing.assert_close(pooled_attention_map(feats, np.int64(4), np.int32(3)), pooled_attention_map(feats, 4, 3))
    with pytest.raises(ShapeError, match="token_transform output"):
        pooled_attention_map(feats, 4, 3, token_transform=lambda t: t[:, :5])
    for empty in ((1, 8, 0, 4), (1, 8, 4, 0), (0, 8, 4, 4)):  # a raw torch error with pool > 1
        with pytest.raises(ShapeError, match="every size >= 1"):
            pooled_attention_map(torch.zeros(empty), 2, 2)
