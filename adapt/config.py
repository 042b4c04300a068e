"""Configuration of one adaptation run (frozen dataclasses, validated on construction).

Defaults follow the paper (§IV-A3) on a GPU: Adam lr 1e-4, batch 4, EMA alpha 0.999,
mu = 1e-4, T_step = 1500, NIQE every 100 steps, stop when the decrease is < 0.05 three times in
a row. :func:`cpu_demo_defaults` shrinks the budget so a run fits minutes on a 2-core CPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

from adassr.runtime.errors import ConfigError
from adassr.runtime.fields import check_field_types

COMPUTE_PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtypes of training (not exported-model precisions)
TRAINING_PRECISIONS = ("auto", *COMPUTE_PRECISIONS)  # what --precision of `adapt` accepts
TRAINABLE = ("auto", "all", "tail")
KERNEL_MODES = ("estimate", "bicubic")
WEIGHT_MODES = ("attention", "uniform", "gradient", "similarity")
DEVICES = ("auto", "cpu", "cuda")


def cli(help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Field metadata: the field is set by the command-line option ``flag`` (default: ``--field-name``)."""
    return {"help": help, "flag": flag, "choices": choices}


MAX_SEED = 2**31 - 1
"""The largest ``seed``: the run derives further seeds from it (``seed + 1000 * k``) for numpy and torch."""

MAX_LOSS_WEIGHT = 1e6
"""The largest loss weight (--lambda-*, --prox-mu): far above any useful value, far below float32's overflow."""

MAX_BATCH = 512
"""The most training pairs a step (a huge batch drew all its pairs before the first step, past any time
budget); on the CPU the memory left bounds it further (:mod:`adassr.adapt.training_memory`)."""


@dataclass(frozen=True)
class CliField:
    """A config field that a command-line option sets."""

    name: str  # the dataclass field
    flag: str  # what users type, e.g. --patch
    dest: str  # the argparse destination
    help: str
    type: type
    choices: tuple[str, ...] | None


def cli_fields(cls: type) -> list[CliField]:
    """The fields of config dataclass ``cls`` that have a command-line option, in field order."""
    hints = get_type_hints(cls)
    found = []
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        value_type = next((t for t in get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        found.append(CliField(f.name, flag, flag.lstrip("-").replace("-", "_"), f.metadata["help"], value_type,
                              f.metadata["choices"]))
    return found


def _label(cls: type, name: str) -> str:
    """How messages name field ``name``: the flag users type, else ``ClassName.field``."""
    for f in fields(cls):
        if f.name == name and "help" in f.metadata:
            return str(f.metadata["flag"] or "--" + name.replace("_", "-"))
    return f"{cls.__name__}.{name}"


def _check_choice(label: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{label} {value!r} is not valid; choose one of: {', '.join(choices)}")


def _check_positive(label: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{label} must be {bound}, got {value}")


@dataclass(frozen=True)
class AttentionConfig:
    """Self-similarity weight map (§III-C1); see :mod:`adassr.adapt.attention` for the construction."""

    mode: str = field(default="attention", metadata=cli(
        "loss weighting: attention (default) | uniform | gradient | similarity", flag="--weights",
        choices=WEIGHT_MODES))
    pool: int = 4
    heads: int = 4
    exclude_radius: int = 1
    max_side: int | None = None  # resize the LR image so its longer side is at most this (CPU budget)
    temperature: float = 24.0  # logit multiplier on the soft-normalised tokens (|token| < 1 per head)
    highpass: int = 9  # odd box size of the local mean removed from the trunk features
    texture_floor: float = 0.6  # soft-normalisation floor, relative to the image's RMS token norm

    def __post_init__(self) -> None:
        label = functools.partial(_label, AttentionConfig)
        check_field_types(self, label=label)
        _check_choice(label("mode"), self.mode, WEIGHT_MODES)
        for name in ("pool", "heads", "temperature", "texture_floor"):
            _check_positive(label(name), getattr(self, name))
        _check_positive(label("exclude_radius"), self.exclude_radius, allow_zero=True)
        if self.highpass < 3 or self.highpass % 2 == 0:
            raise ConfigError(f"{label('highpass')} must be an odd int >= 3, got {self.highpass}")
        if self.max_side is not None and self.max_side < 8:
            raise ConfigError(f"{label('max_side')} must be >= 8 pixels (or unset), got {self.max_side}")

    def with_overrides(self, **changes: Any) -> AttentionConfig:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation run's settings. Fields with ``cli(...)`` metadata are ``adapt`` options."""

    steps: int = field(default=1500, metadata=cli(
        "T_step: maximum steps (GPU 1500; CPU 100)"))
    lr_patch: int = field(default=32, metadata=cli("LR patch size y_rd (GPU 32, CPU 24)", flag="--patch"))
    batch: int = field(default=4, metadata=cli("batch size (4)"))
    lr: float = field(default=1e-4, metadata=cli("Adam learning rate (1e-4)"))
    ema_decay: float = field(default=0.999, metadata=cli("EMA alpha (GPU 0.999, CPU 0.99)"))
    prox_mu: float = field(default=1e-4, metadata=cli("proximal weight mu (1e-4)"))
    lambda_l1: float = field(default=1.0, metadata=cli("weighted L1 weight (1.0)"))
    lambda_perceptual: float = field(default=1.0, metadata=cli("LPIPS-VGG perceptual weight (1.0)"))
    lambda_gan: float = field(default=0.0, metadata=cli("internal patch-GAN weight (0 = off)"))
    eval_every: int = field(default=100, metadata=cli("NIQE evaluation period in steps (GPU 100, CPU 50)"))
    stop_min_delta: float = 0.05
    stop_patience: int = 3
    backbone_margin: float = field(default=0.0, metadata=cli(
        "NIQE margin: the unadapted backbone is kept only when every evaluation's NIQE is worse than "
        "its by more than this (GPU 0, the paper; CPU 0.1)"))
    early_stop: bool = True  # False (an ablation): no NIQE stop, the last evaluated EMA weights are kept
    eval_crop: int = field(default=128, metadata=cli("LR crop side for NIQE evaluation (GPU 128, CPU 128)"))
    eval_max_images: int = field(default=8, metadata=cli(
        "score NIQE on the most structured crop of at most this many of the images read, the first in name "
        "order (GPU 8, CPU 4): each evaluation costs a forward pass per crop"))
    max_images: int = field(default=64, metadata=cli(
        "read at most this many images of the group, evenly spaced in name order (GPU 64, CPU 8)"))
    max_megapixels: float = field(default=200.0, metadata=cli(
        "read at most this many LR megapixels of the group in all (GPU 200, CPU 100; a CPU run's "
        "peak memory grew by about 40 MB per megapixel read)"))
    trainable: str = field(default="auto", metadata=cli(
        "all | tail (auto: tail on CPU, all on GPU)", choices=TRAINABLE))
    tail_blocks: int = field(default=3, metadata=cli("RRDB blocks trained in tail mode (3)"))
    feature_bank: int = field(default=128, metadata=cli(
        "tail mode: augmented pairs whose front features are cached per period (GPU 128, CPU 200)"))
    precision: str = field(default="auto", metadata=cli("mixed precision (auto)", choices=TRAINING_PRECISIONS))
    device: str = field(default="auto", metadata=cli("auto | cpu | cuda", choices=DEVICES))
    seed: int = field(default=0, metadata=cli("random seed (0)"))
    kernel: str = field(default="estimate", metadata=cli("estimate the blur kernel, or bicubic", choices=KERNEL_MODES))
    admm_iters: int = field(default=1, metadata=cli("ADMM outer iterations K (1)"))
    augment: bool = True  # False: plain crops of the LR images (no flips, affine, noise, photometric, USM)
    external_hr: Path | None = field(default=None, metadata=cli(
        "clean HR images for the external step (K > 1); checked before training, and images smaller "
        "than the HR patch or unreadable are skipped with a warning"))
    external_steps: int | None = None  # default: same as steps
    lambda_external: float = field(default=1e-3, metadata=cli(
        "lambda of Eq. 8: the external data term's weight against the proximal term (1e-3, the paper; K > 1)"))
    time_budget: float | None = field(default=None, metadata=cli(
        "seconds for the whole run (set-up included): training stops early enough for its last "
        "evaluation to end within it; saving follows; at least one step and its evaluation run, and the "
        "set-up before training (reading, kernel estimate, loss-weight maps) is not cut short: a warning says "
        "when it leaves training under half the budget (CPU default 270, GPU none)"))
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        label = functools.partial(_label, AdaptConfig)
        check_field_types(self, label=label, classes={"AttentionConfig": AttentionConfig})
        if self.external_steps is not None:
            _check_positive(label("external_steps"), self.external_steps)
        for name in ("steps", "lr_patch", "batch", "eval_every", "stop_patience", "eval_crop",
                     "eval_max_images", "tail_blocks", "admm_iters", "feature_bank", "max_images",
                     "max_megapixels"):
            _check_positive(label(name), getattr(self, name))
        _check_positive(label("lambda_external"), self.lambda_external)
        for name in ("lr", "prox_mu", "lambda_l1", "lambda_perceptual", "lambda_gan", "stop_min_delta",
                     "backbone_margin"):
            _check_positive(label(name), getattr(self, name), allow_zero=name != "lr")
        if self.time_budget is not None:
            _check_positive(label("time_budget"), self.time_budget)
        # finite but absurd: the loss overflows float32 at the first step (lambda 1e308), and the run "trained"
        # nothing. (A huge --lr is left alone: its outputs go flat, and the early stop keeps the backbone; the
        # tests use one to make a run that must not be published.)
        for name, most in (("lambda_l1", MAX_LOSS_WEIGHT), ("lambda_perceptual", MAX_LOSS_WEIGHT),
                           ("lambda_gan", MAX_LOSS_WEIGHT), ("lambda_external", MAX_LOSS_WEIGHT),
                           ("prox_mu", MAX_LOSS_WEIGHT)):
            if getattr(self, name) > most:
                raise ConfigError(f"{label(name)} must be at most {most:g}, got {getattr(self, name)!r}")
        if self.batch > MAX_BATCH:
            raise ConfigError(f"{label('batch')} must be at most {MAX_BATCH}, got {self.batch!r}")
        if self.lambda_l1 == self.lambda_perceptual == self.lambda_gan == 0:
            raise ConfigError(f"{label('lambda_l1')}, {label('lambda_perceptual')} and {label('lambda_gan')} are all "
                              "0: nothing would be learnt from the camera's images (only the proximal term pulls "
                              "the weights, towards the backbone); give at least one of them a positive weight")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"{label('seed')} must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{label('ema_decay')} must be in [0, 1), got {self.ema_decay}")
        _check_choice(label("precision"), self.precision, TRAINING_PRECISIONS)
        _check_choice(label("trainable"), self.trainable, TRAINABLE)
        _check_choice(label("kernel"), self.kernel, KERNEL_MODES)
        _check_choice(label("device"), self.device, DEVICES)
        if self.admm_iters > 1 and self.lambda_l1 == self.lambda_perceptual == 0:
            raise ConfigError(f"{label('admm_iters')} > 1: the external step learns through {label('lambda_l1')} "
                              f"and {label('lambda_perceptual')} (not the patch-GAN), and both are 0; give one of "
                              "them a positive weight, or run one iteration")
        if self.admm_iters > 1 and self.external_hr is None:
            raise ConfigError(
                f"{label('admm_iters')} > 1 needs {label('external_hr')} DIR (clean HR images for the external step)"
            )
        if self.admm_iters == 1 and self.external_hr is not None:  # it would be ignored without a word
            raise ConfigError(f"{label('external_hr')} is used by the external step only, which runs with "
                              f"{label('admm_iters')} 2 or more; add that, or drop {label('external_hr')}")

    def with_overrides(self, **changes: Any) -> AdaptConfig:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["external_hr"] = None if self.external_hr is None else str(self.external_hr)
        return data


GPU_ATTENTION_MAX_SIDE = 1024
"""Longer side (LR pixels) above which a GPU run computes an image's weight map on a resized copy."""


def gpu_defaults() -> AdaptConfig:
    """The paper's settings, with one guard: an image's loss-weight map is computed on a copy resized
    to a :data:`GPU_ATTENTION_MAX_SIDE`-pixel longer side when the image is larger. The paper's
    whole-image attention is kept for images up to that size; without the guard a 12 MP photo
    would run the full trunk on 12 MP at once (tens of GB of activations) and attend over 750,000
    tokens, and a 100 MP one would not fit any GPU.
    """
    return AdaptConfig(attention=AttentionConfig(max_side=GPU_ATTENTION_MAX_SIDE))


CPU_TIME_BUDGET_S = 270.0
"""Seconds of one CPU adaptation run, set-up included (docs/cpu.md: the README's main job in 10 minutes)."""


def cpu_demo_defaults() -> AdaptConfig:
    """A budget that adapts a small camera group in a few minutes on 2 CPU cores.

    Tail training with cached front features on 24x24 LR patches (a bank of 200 augmented pairs
    per evaluation period, so a pair is seldom drawn twice: benchmarks/README.md, "Bank of 200"),
    NIQE every 50 steps on 128x128 LR crops, attention computed on the image resized to a
    256-pixel longer side, EMA alpha 0.99 (the low end of the paper's best range, Table V: with a
    few hundred steps alpha 0.999 would move the EMA weights only part of the way). At most 100
    steps: scored against ground truth at every evaluation (benchmarks/weight_selection.py), LPIPS
    to the true photos was lowest after 50-100 steps on the development groups and rose with longer
    training while NIQE often still fell, so the NIQE early stop let the longer runs drift from the
    photos (benchmarks/README.md, "Which weights to keep"). The backbone is kept only when every
    evaluation's NIQE is worse than its by more than 0.1: on realistic-size development photos
    (LR 256) NIQE rose by up to 0.09 in 100 steps on a strongly blurred group while LPIPS fell, and
    the paper's strict rule kept the backbone there (benchmarks/README.md, "A NIQE margin for the
    backbone"). Training also stops early enough for
    its last evaluation to end once the run has taken :data:`CPU_TIME_BUDGET_S` seconds, so a slow
    CPU gets fewer steps, not a longer run. At most 8
    images of a group are read: each new image costs a weight map in the set-up (the trunk pass
    alone takes about 3 s in bf16 on a Sapphire Rapids-class Xeon; the first run of a group of four
    256 px photos spent 87-103 s before training on an AVX2 Zen 3, mostly on these maps; cached
    for later runs), and 8 images already give each 200-pair bank about 25 pairs of every image. At
    most 100 LR megapixels are read: peak memory grew by about 40 MB per megapixel (10-step runs on
    one image: 2.0 GB peak RSS for 10 MP, 3.1 GB for 40 MP, on a Sapphire Rapids-class Xeon).
    """
    return AdaptConfig(
        steps=100,
        lr_patch=24,
        eval_every=50,
        eval_crop=128,
        eval_max_images=4,
        max_images=8,
        max_megapixels=100.0,
        feature_bank=200,
        ema_decay=0.99,
        backbone_margin=0.1,
        time_budget=CPU_TIME_BUDGET_S,
        attention=AttentionConfig(max_side=256),
    )
