"""The external step of ADMM (Eq. 8), used when ``--admm-iters`` K > 1.

Theta_e <- argmin  lambda sum_i L_p(N(y_i | Theta_e), x_i) + mu ||Theta_e - Theta_tilde_e||^2

over clean HR images x_i (``--external-hr DIR``), with the paper's lambda = 1e-3 (``lambda_external``)
and mu = 1e-4 (``prox_mu``, §IV-A3), and L_p the internal step's loss composition (L1 with uniform
weights + LPIPS-VGG; no patch-GAN). The x_i are degraded with a Real-ESRGAN-style synthetic
pipeline (blur, random resize, Gaussian/Poisson noise, JPEG, twice, then the final resize to
1/scale), trained with Adam and an fp32 EMA (§IV-A2: "T_step is also 1,500 with EMA").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.degradation import jpeg_roundtrip
from adassr.adapt.ema import WeightEma
from adassr.adapt.loop import Perceptual, external_batch, external_trainer
from adassr.adapt.precision import Precision
from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.images import (
    INCOMPLETE_SCANS,
    is_image_file,
    read_image,
    read_image_size,
    to_float32,
    used_peak,
)

log = logging.getLogger(__name__)

_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


def _gaussian_kernel(rng: np.random.Generator, size: int = 21) -> np.ndarray:
    sx, sy = rng.uniform(0.2, 3.0, size=2)
    if rng.random() < 0.5:
        sy = sx
    theta = rng.uniform(0, np.pi)
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return (k / k.sum()).astype(np.float32)


def _noise(img: np.ndarray, rng: np.random.Generator, gauss_max: float, poisson_max: float) -> np.ndarray:
    if rng.random() < 0.5:
        sigma = rng.uniform(1.0, gauss_max) / 255.0
        if rng.random() < 0.4:  # grey noise
            noise = rng.normal(0.0, sigma, img.shape[:2])[..., None]
        else:
            noise = rng.normal(0.0, sigma, img.shape)
        return img + noise.astype(np.float32)
    scale = rng.uniform(0.05, poisson_max)
    vals = 10 ** 2.5 / scale  # photons per unit intensity
    noisy = rng.poisson(np.clip(img, 0, 1) * vals) / vals
    return noisy.astype(np.float32)


def _jpeg(img: np.ndarray, rng: np.random.Generator, quality: tuple[int, int]) -> np.ndarray:
    return jpeg_roundtrip(img, int(rng.integers(quality[0], quality[1] + 1)))


def degrade_realesrgan(hr: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN-style two-stage degradation of an HR patch (H, W, 3) in [0, 1] to (H/s, W/s, 3)."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ConfigError(f"HR patch {w}x{h} is not a multiple of the scale {scale}")
    img: np.ndarray = hr.astype(np.float32)
    for stage, (resize_range, gauss_max, poisson_max, quality) in enumerate(
        (((0.15, 1.5), 30.0, 3.0, (30, 95)), ((0.3, 1.2), 25.0, 2.5, (30, 95)))
    ):
        if stage == 1 and rng.random() < 0.2:
            break  # the second stage is skipped now and then
        img = cv2.filter2D(img, -1, _gaussian_kernel(rng), borderType=cv2.BORDER_REFLECT)
        factor = rng.uniform(*resize_range) if stage == 0 else rng.uniform(*resize_range) / scale * 2
        size = (max(4, int(round(w * factor))), max(4, int(round(h * factor))))
        img = cv2.resize(img, size, interpolation=_INTERPOLATIONS[rng.integers(3)])
        img = np.clip(_noise(img, rng, gauss_max, poisson_max), 0.0, 1.0)
        img = _jpeg(img, rng, quality)
    img = cv2.resize(img, (w // scale, h // scale), interpolation=_INTERPOLATIONS[rng.integers(3)])
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ExternalBatch:
    lr: np.ndarray
    hr: np.ndarray
    weight: np.ndarray


class ExternalPairSampler:
    """Random HR crops of the external images, each degraded on the fly."""

    def __init__(self, images: Sequence[np.ndarray], *, scale: int, lr_patch: int, seed: int) -> None:
        self.hr_patch = lr_patch * scale
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < self.hr_patch]
        if small:
            raise ConfigError(
                f"external HR image #{small[0]} is smaller than the HR patch {self.hr_patch}x{self.hr_patch}; "
                "use larger images or a smaller --patch"
            )
        self.images = list(images)
        self.scale = scale
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> ExternalBatch:
        lrs, hrs = [], []
        p = self.hr_patch
        for _ in range(n):
            img = self.images[int(self.rng.integers(len(self.images)))]
            top = int(self.rng.integers(img.shape[0] - p + 1))
            left = int(self.rng.integers(img.shape[1] - p + 1))
            hr = img[top : top + p, left : left + p]
            if self.rng.random() < 0.5:
                hr = hr[:, ::-1]
            hr = np.ascontiguousarray(hr)
            lrs.append(degrade_realesrgan(hr, self.scale, self.rng).transpose(2, 0, 1))
            hrs.append(hr.transpose(2, 0, 1))
        lr, hr_arr = np.stack(lrs), np.stack(hrs)
        return ExternalBatch(lr, hr_arr, np.ones((n, 1, p, p), np.float32))


def _listed(directory: Path) -> list[Path]:
    root = Path(directory)
    found = root.rglob("*") if root.is_dir() else iter(())
    return sorted(p for p in found if is_image_file(p))


def _none_usable(root: Path, total: int, reasons: Sequence[str], min_side: int) -> ConfigError:
    listed = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
    return ConfigError(f"--external-hr {root}: none of its {total} images can be used ({listed}); the external "
                       f"step needs clean HR images of at least {min_side}x{min_side} pixels (or a smaller --patch)")


def check_external_images(directory: Path, *, min_side: int, warn: bool = True) -> list[Path]:
    """The images of ``directory`` that the external step can use, from their headers (no pixel is
    decoded): before any training, so a bad folder fails the run at once. Unreadable images and
    images with a side under ``min_side`` (the HR patch) are skipped with one warning naming them;
    ConfigError when none is left."""
    root = Path(directory)
    paths = _listed(root)
    if not paths:
        raise ConfigError(f"--external-hr {root}: no images found (need clean HR images for the external step)")
    usable, reasons = [], []
    for path in paths:
        try:
            width, height = read_image_size(path)
        except ImageError as exc:
            reasons.append(str(exc))
            continue
        if min(width, height) < min_side:
            reasons.append(f"{path} is {width}x{height}, smaller than the HR patch {min_side}x{min_side}")
            continue
        usable.append(path)
    if not usable:
        raise _none_usable(root, len(paths), reasons, min_side)
    if reasons and warn:
        log.warning("--external-hr: skipped %d of %d images: %s", len(reasons), len(paths), "; ".join(reasons))
    return usable


def load_external_images(paths: Sequence[Path], *, min_side: int, root: Path) -> list[np.ndarray]:
    """Decode ``paths`` (from :func:`check_external_images`) as float32 RGB; one that fails to decode
    now (damage past its header), or a progressive JPEG cut between two scans (blurred: no sharp target),
    is skipped with a warning; ConfigError when none decodes."""
    images, reasons = [], []
    for path in paths:
        notes: list[str] = []
        try:
            raw = read_image(path, notes=notes).pixels
            pixels = to_float32(raw, peak=used_peak(raw))  # as upscale serves it
        except ImageError as exc:
            reasons.append(str(exc))
            continue
        incomplete = [text for text in notes if INCOMPLETE_SCANS in text]
        for text in notes:
            if text not in incomplete:
                log.warning("%s", text)
        if incomplete:
            reasons.append(f"{incomplete[0]}; left out: an HR image must be sharp")
            continue
        images.append(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)
    if not images:
        raise _none_usable(root, len(paths), reasons, min_side)
    if reasons:
        log.warning("--external-hr: skipped %d of %d images: %s", len(reasons), len(paths), "; ".join(reasons))
    return images


def run_external_step(
    model: RRDBNet,
    anchors: dict[str, torch.Tensor],
    config: AdaptConfig,
    *,
    device: torch.device,
    precision: Precision,
    scale: int,
    seed: int,
    perceptual: Perceptual | None = None,
    deadline: float | None = None,
) -> dict[str, torch.Tensor] | None:
    """Train ``model`` on the external set with the proximal term to ``anchors`` (Eq. 8: the data
    term weighted by ``lambda_external``, the internal step's L1 + perceptual composition, the
    GradScaler in fp16); return the EMA weights (fp32, CPU) of every parameter, or None when
    ``time.monotonic()`` reached ``deadline`` (the run's time budget) before the last step."""
    assert config.external_hr is not None
    hr_patch = config.lr_patch * scale
    paths = check_external_images(config.external_hr, min_side=hr_patch, warn=False)  # warned before the set-up
    sampler = ExternalPairSampler(load_external_images(paths, min_side=hr_patch, root=config.external_hr), scale=scale,
                                  lr_patch=config.lr_patch, seed=seed)
    model.to(device).train()
    trainer = external_trainer(model, config, anchors, device=device, precision=precision, perceptual=perceptual)
    ema = WeightEma(trainer.params.items(), config.ema_decay)
    steps = config.external_steps or config.steps
    for step in range(1, steps + 1):
        if deadline is not None and time.monotonic() >= deadline:
            log.warning("the time budget ended at external step %d of %d", step, steps)
            return None
        pairs = sampler.sample(config.batch)
        batch = external_batch(torch.from_numpy(pairs.lr).to(device), torch.from_numpy(pairs.hr).to(device))
        loss, sr = trainer.loss(batch)
        trainer.update(loss, sr, batch.hr)
        ema.update()
        if step % max(1, steps // 10) == 0:
            log.info("external step %d/%d loss %.3g", step, steps, float(loss.detach()))
    state = {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()}
    state.update({k: v.cpu() for k, v in ema.state_dict().items()})
    return state
