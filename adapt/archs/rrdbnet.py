"""RRDBNet, the ESRGAN / Real-ESRGAN x4 generator.

Architecture (Wang et al., ESRGAN 2018; Real-ESRGAN 2021)::

    feat  = conv_first(x)
    trunk = feat + conv_body(body(feat))          body = num_block RRDB blocks
    y     = conv_last(lrelu(conv_hr(up2(up1(trunk)))))
    up_i  = lrelu(conv_up_i(nearest_x2(.)))

An RRDB block is three residual dense blocks (conv1..conv5, growth ``num_grow_ch``, LeakyReLU 0.2
after conv1..conv4), each scaled by 0.2 and added to its input, and the whole block is again scaled
by 0.2 and added to the block input.

Parameter names equal those of BasicSR's ``RRDBNet`` (``conv_first``, ``body.<i>.rdb<j>.conv<k>``,
``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), so official Real-ESRGAN
``.pth`` state dicts load by key.

Deviation from BasicSR: only ``scale=4`` is implemented (BasicSR's x2 / x1 variants prepend a
pixel-unshuffle, which none of the bundled backbones use); other scales raise ``ConfigError``.

Besides ``forward`` the module exposes the split used by the adaptation stage: ``run_front`` /
``run_tail`` (train only the last blocks with cached front features), ``tail_parameters`` and
``trunk_features`` (the features the attention map is computed from).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adassr.runtime.errors import ConfigError

LRELU_SLOPE = 0.2
RESIDUAL_SCALE = 0.2
SUPPORTED_SCALE = 4

# Module names trained in "tail" mode besides the unfrozen RRDB blocks.
TAIL_MODULES = ("conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last")


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=True)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, negative_slope=LRELU_SLOPE)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output = input + 0.2 * conv5(...)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(_lrelu(conv(torch.cat(features, dim=1))))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled skip connection."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator, x4 (see the module docstring for the layout and names)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale != SUPPORTED_SCALE:
            raise ConfigError(f"RRDBNet scale {scale} is not supported; only x{SUPPORTED_SCALE} is implemented")
        if min(num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch) < 1:
            raise ConfigError("RRDBNet channel and block counts must all be >= 1")
        self.scale = scale
        self.num_block = num_block
        self.conv_first = _conv3x3(num_in_ch, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """Super-resolve ``x`` (B, C_in, H, W) to (B, C_out, 4H, 4W)."""
        return self.run_tail(*self.run_front(x, 0), 0)

    def trunk_features(self, x: Tensor) -> Tensor:
        """Trunk output before upsampling: ``feat + conv_body(body(feat))``, shape (B, num_feat, H, W)."""
        feat = self.conv_first(x)
        return feat + self.conv_body(self.body(feat))

    def run_front(self, x: Tensor, n_frozen: int) -> tuple[Tensor, Tensor]:
        """Return ``(feat, h)``: ``feat = conv_first(x)`` and ``h`` = output of ``body[:n_frozen]``."""
        self._check_split(n_frozen)
        feat = self.conv_first(x)
        return feat, self.body[:n_frozen](feat)

    def run_tail(self, feat: Tensor, h: Tensor, n_frozen: int) -> Tensor:
        """Finish the forward pass from ``run_front``'s output: ``run_tail(*run_front(x, k), k) == forward(x)``."""
        self._check_split(n_frozen)
        trunk = feat + self.conv_body(self.body[n_frozen:](h))
        return self._upsample(trunk)

    def tail_parameters(self, n_frozen: int) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs trained in "tail" mode, in ``named_parameters`` order.

        The tail is ``body[n_frozen:]``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr`` and
        ``conv_last``; names are full state-dict keys (``body.20.rdb1.conv1.weight``). The pairs can
        go straight into ``dict(...)`` or a torch optimizer.
        """
        self._check_split(n_frozen)
        prefixes = tuple(f"body.{i}." for i in range(n_frozen, self.num_block))
        prefixes += tuple(f"{name}." for name in TAIL_MODULES)
        return [(name, p) for name, p in self.named_parameters() if name.startswith(prefixes)]

    def _upsample(self, trunk: Tensor) -> Tensor:
        x = _lrelu(self.conv_up1(F.interpolate(trunk, scale_factor=2, mode="nearest")))
        x = _lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(x)))

    def _check_split(self, n_frozen: int) -> None:
        if not 0 <= n_frozen <= self.num_block:
            raise ConfigError(
                f"n_frozen={n_frozen} is out of range; use 0..{self.num_block} (the number of RRDB blocks)")
