"""Configuration of one adaptation run (frozen dataclasses, validated on construction).

Defaults follow the paper (§IV-A3) on a GPU: Adam lr 1e-4, batch 4, EMA alpha 0.999,
mu = 1e-4, T_step = 1500, NIQE every 100 steps, stop when the decrease is < 0.05 three times in
a row. :func:`cpu_demo_defaults` shrinks the budget so a run fits minutes on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from adassr.runtime.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRAINABLE = ("auto", "all", "tail")
KERNEL_MODES = ("estimate", "bicubic")
WEIGHT_MODES = ("attention", "uniform", "gradient", "similarity")
DEVICES = ("auto", "cpu", "cuda")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not valid; choose one of: {', '.join(choices)}")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"--{name.replace('_', '-')} must be {bound}, got {value}")


@dataclass(frozen=True)
class AttentionConfig:
    """Self-similarity weight map (§III-C1); see adapt/attention.py for the construction."""

    mode: str = "attention"
    pool: int = 4
    heads: int = 4
    exclude_radius: int = 1
    max_side: int | None = None  # resize the LR image so its longer side is at most this (CPU budget)
    temperature: float = 24.0  # logit multiplier on the soft-normalised tokens (|token| < 1 per head)
    highpass: int = 9  # odd box size of the local mean removed from the trunk features
    texture_floor: float = 0.6  # soft-normalisation floor, relative to the image's RMS token norm

    def __post_init__(self) -> None:
        _check_choice("weights", self.mode, WEIGHT_MODES)
        _check_positive("attention_pool", self.pool)
        _check_positive("attention_heads", self.heads)
        _check_positive("exclude_radius", self.exclude_radius, allow_zero=True)
        _check_positive("attention_temperature", self.temperature)
        _check_positive("attention_texture_floor", self.texture_floor)
        if self.highpass < 3 or self.highpass % 2 == 0:
            raise ConfigError(f"--attention-highpass must be an odd int >= 3, got {self.highpass}")
        if self.max_side is not None and self.max_side < 8:
            raise ConfigError(f"--attention-max-side must be >= 8 pixels (or unset), got {self.max_side}")


@dataclass(frozen=True)
class AdaptConfig:
    steps: int = 1500
    lr_patch: int = 32
    batch: int = 4
    lr: float = 1e-4
    ema_decay: float = 0.999
    prox_mu: float = 1e-4
    lambda_l1: float = 1.0
    lambda_perceptual: float = 1.0
    lambda_gan: float = 0.0
    eval_every: int = 100
    stop_min_delta: float = 0.05
    stop_patience: int = 3
    eval_crop: int = 128  # LR crop side used for NIQE evaluation (per image)
    eval_max_images: int = 8
    trainable: str = "auto"
    tail_blocks: int = 3
    feature_bank: int = 128  # tail mode: cached front-feature pairs (refreshed each evaluation)
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    kernel: str = "estimate"
    admm_iters: int = 1
    augment: bool = True  # False: plain crops of the LR images (no flips, affine, noise, photometric, USM)
    external_hr: Path | None = None
    external_steps: int | None = None  # default: same as steps
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "lr_patch", "batch", "eval_every", "stop_patience", "eval_crop",
                     "eval_max_images", "tail_blocks", "admm_iters", "feature_bank"):
            _check_positive(name, getattr(self, name))
        for name in ("lr", "prox_mu", "lambda_l1", "lambda_perceptual", "lambda_gan", "stop_min_delta"):
            _check_positive(name, getattr(self, name), allow_zero=name != "lr")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("trainable", self.trainable, TRAINABLE)
        _check_choice("kernel", self.kernel, KERNEL_MODES)
        _check_choice("device", self.device, DEVICES)
        if self.admm_iters > 1 and self.external_hr is None:
            raise ConfigError(
                "--admm-iters > 1 needs --external-hr DIR (clean HR images for the external step)"
            )

    def with_overrides(self, **changes: Any) -> AdaptConfig:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["external_hr"] = None if self.external_hr is None else str(self.external_hr)
        return data


def gpu_defaults() -> AdaptConfig:
    """The paper's settings."""
    return AdaptConfig()


def cpu_demo_defaults() -> AdaptConfig:
    """A budget that adapts a small camera group in a few minutes on 2 CPU cores.

    Tail training with cached front features, at most 500 steps on 24x24 LR patches, NIQE every
    50 steps on 128x128 LR crops, attention computed on the image resized to a 256-pixel longer
    side, EMA alpha 0.99 (the low end of the paper's best range, Table V: with a few hundred
    steps alpha 0.999 would move the EMA weights only part of the way).
    """
    return AdaptConfig(
        steps=500,
        lr_patch=24,
        eval_every=50,
        eval_crop=128,
        eval_max_images=4,
        feature_bank=64,
        ema_decay=0.99,
        attention=AttentionConfig(max_side=256),
    )
