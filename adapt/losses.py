"""Loss terms of the internal step (Eq. 10, 15): attention-weighted L1, perceptual, optional
internal patch-GAN, and the proximal term to Theta_tilde."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from adassr.runtime.errors import ShapeError

log = logging.getLogger(__name__)


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


class ProximalTerm:
    """mu * sum ||Theta - Theta_tilde||^2 over the trained parameters (Eq. 10), applied as its gradient.

    Autograd through the sum costs several kernels per parameter tensor in the forward and the
    backward pass (about 5,600 per step for the 702 tensors of RRDBNet x4plus, about twice what the
    rest of the step dispatches): on a GPU the step is bound by kernel launches at the paper's batch. The exact
    gradient 2 mu (Theta - Theta_tilde) is instead added to ``.grad`` after the backward pass with a
    few multi-tensor (``torch._foreach_*``) kernels, and the value is computed without a graph.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], anchors: Mapping[str, torch.Tensor],
                 mu: float) -> None:
        if mu < 0:
            raise ValueError(f"the proximal weight mu must be >= 0, got {mu}")
        named = list(named_parameters)
        if not named:
            raise ValueError("the proximal term needs at least one parameter")
        missing = [name for name, _ in named if name not in anchors]
        if missing:
            raise KeyError(f"no anchor (Theta_tilde) for the parameters {missing[:3]}")
        self.mu = mu
        self._params = [param for _, param in named]
        # a copy where the anchor would share the parameter's memory (anchors=model.state_dict()):
        # it would move with the parameter and the penalty would stay 0
        self._anchors = [anchors[name].detach().to(param.device, param.dtype) for name, param in named]
        self._anchors = [a.clone() if a.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() else a
                         for a, p in zip(self._anchors, self._params, strict=True)]
        for (name, param), anchor in zip(named, self._anchors, strict=True):
            if anchor.shape != param.shape:
                raise ShapeError(f"anchor of {name}", tuple(anchor.shape), f"{tuple(param.shape)}")

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        """The penalty (a 0-dim float32 tensor without a graph), for the reported loss."""
        diffs = torch._foreach_sub(self._params, self._anchors)  # no_grad: no graph, no detach needed
        norms = torch._foreach_norm(diffs)
        return self.mu * torch.stack(norms).float().pow(2).sum()

    @torch.no_grad()
    def add_gradient(self) -> None:
        """``grad += 2 mu (Theta - Theta_tilde)`` (unscaled gradients: after ``GradScaler.unscale_``)."""
        if self.mu == 0:
            return
        for param in self._params:
            if param.grad is None:  # a parameter the loss did not reach still feels the pull to its anchor
                param.grad = torch.zeros_like(param)
        diffs = torch._foreach_sub(self._params, self._anchors)
        grads = [p.grad for p in self._params]
        torch._foreach_add_(grads, diffs, alpha=2.0 * self.mu)  # type: ignore[arg-type]


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, device: torch.device,
              betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel for all tensors) on CPU and CUDA.

    The per-tensor default costs about ten kernels per parameter tensor: 58 ms of a CPU step for
    RRDBNet x4plus's 702 tensors on 2 cores, against 15 ms fused (AMD EPYC, torch 2.13).
    """
    params = list(params)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except RuntimeError as exc:  # a torch build without the fused kernel for this device (CPU before 2.4)
            log.info("fused Adam is not available on %s (%s); using the per-tensor Adam", device, exc)
    return torch.optim.Adam(params, lr=lr, betas=betas)


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
