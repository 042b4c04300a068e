"""Loss terms of the internal step (Eq. 10, 15): attention-weighted L1, perceptual, optional
internal patch-GAN, and the proximal penalty to Theta_tilde."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from adassr.runtime.errors import ShapeError


def weighted_l1(sr: torch.Tensor, hr: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean(w * |sr - hr|); ``weight`` is (B, 1, H, W) and broadcasts over channels."""
    if sr.shape != hr.shape:
        raise ShapeError("SR output vs target", tuple(sr.shape), f"{tuple(hr.shape)}")
    diff = (sr.float() - hr.float()).abs()
    if weight is None:
        return diff.mean()
    if weight.shape[0] != sr.shape[0] or weight.shape[-2:] != sr.shape[-2:] or weight.shape[1] != 1:
        raise ShapeError("loss weight", tuple(weight.shape), f"({sr.shape[0]}, 1, {sr.shape[2]}, {sr.shape[3]})")
    return (diff * weight.float()).mean()


def proximal_penalty(
    named_parameters: Iterable[tuple[str, torch.Tensor]], anchors: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """mu * sum ||Theta - Theta_tilde||^2 over the given parameters (Eq. 10)."""
    total: torch.Tensor | None = None
    for name, param in named_parameters:
        term = (param.float() - anchors[name].to(param.device, torch.float32)).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("proximal_penalty needs at least one parameter")
    return mu * total


class PatchDiscriminator(nn.Module):
    """A small patch discriminator trained from scratch on the image's own patches (internal GAN)."""

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(channels, width, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, width * 2, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 2, width * 4, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width * 4, width * 4, 3, 1, 1)), nn.LeakyReLU(0.2),
            nn.Conv2d(width * 4, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_generator_loss(disc: nn.Module, sr: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (softplus form of BCE)."""
    return F.softplus(-disc(sr.float())).mean()


def gan_discriminator_loss(disc: nn.Module, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.softplus(-disc(hr.float())).mean() + F.softplus(disc(sr.detach().float())).mean()
