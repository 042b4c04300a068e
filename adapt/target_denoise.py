"""Cleaned training targets: the internal pairs' target y_r without the camera's noise and JPEG ripple.

The internal pairs (:mod:`adassr.adapt.pairs`) train the network to map y_rd (a crop of the
group's LR image, blurred and downsampled) to the crop itself. Blur and downsampling average the
camera's noise and compression artifacts away in y_rd, while the target keeps all of them: on a
noisy or heavily compressed camera the pairs teach the network to *add* that texture, which the
backbone had learnt to remove. With ``target_denoise`` = h > 0 the images the pairs are cut from
are first cleaned by non-local means (OpenCV's ``fastNlMeansDenoisingColored``, 7 px template,
21 px search window) of filter strength h in 8-bit levels: low-amplitude noise and ripple average
out over similar patches while edges and textures of larger contrast stay. Weight maps and the NIQE
evaluation still read the original images: the network is judged on what the camera delivers.

A per-image noise estimate to scale h was tried and dropped: after JPEG compression the remaining
noise hides in textured areas, and Immerkaer's estimator (``adassr.adapt.kernel.features``) read
clean textured images as noisier than noisy compressed ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from adassr.runtime.errors import ConfigError, ImageError

__all__ = ["MAX_STRENGTH", "clean_targets"]

MAX_STRENGTH = 30.0  # 8-bit levels; far beyond any useful value (h = 10 already flattens fine texture)


def clean_targets(images: Sequence[np.ndarray], strength: float) -> list[np.ndarray]:
    """Each image cleaned by non-local means of filter strength ``strength`` (8-bit levels).

    ``images``: float32 HxWx3 RGB in [0, 1]. ``strength`` 0 returns the same arrays. Raises
    ConfigError for a strength outside [0, MAX_STRENGTH] and ImageError for an image that is not
    HxWx3.
    """
    if not np.isfinite(strength) or not 0.0 <= strength <= MAX_STRENGTH:
        raise ConfigError(f"target_denoise must be in [0, {MAX_STRENGTH:g}] (8-bit levels), got {strength}")
    out: list[np.ndarray] = []
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"training image {index} has shape {getattr(image, 'shape', None)}, expected HxWx3 RGB")
        if strength == 0:
            out.append(image)
            continue
        u8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        clean = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(u8[..., ::-1]), None, strength, strength, 7, 21)
        out.append(np.ascontiguousarray(clean[..., ::-1], dtype=np.float32) / np.float32(255.0))
    return out
