"""Whether a CPU training run fits the memory left, checked before its minutes of set-up.

A batch too large for the machine (``--batch 512``) was killed by the kernel's OOM killer minutes into
the run, without a word; on a GPU, torch raises an error that ``adapt`` reports instead, so only CPU
runs are checked here. The estimate is the training's own memory on top of what the process holds
when it is made (torch, the backbone, the images read):

- each training pair of a batch: the activations its backward pass keeps, per HR pixel of its patch
  (:data:`TRAIN_BYTES_PER_HR_PIXEL`, by what trains);
- tail mode: each pair of the feature bank (its frozen-front features, its target and loss weights,
  and its target's LPIPS-VGG reference features, :data:`BANK_BYTES_PER_LR_PIXEL` per LR pixel of its
  patch; without the perceptual term no VGG features), which holds as many pairs as a period draws, at
  most ``--feature-bank`` and at least a batch (an upper bound: a pair's features are computed at its
  first draw, and about a third are never drawn);
- :data:`SETUP_BYTES` for the rest (Adam's moments, the EMA copy, the evaluation's outputs).

Measured (peak resident memory of ``adapt`` on two photos of the canon sample group, 2 steps, patch
24, AMD EPYC Zen 3, 6 December 2026): tail mode 1.56 GB at batch 4, 3.57 GB at 32, 8.03 GB at 96;
all parameters 2.34 GB at 4, 8.03 GB at 32. The constants are those slopes, rounded up a little: the
estimates for those runs (tail 0.84, 2.98 and 7.85 GB, all 1.41 and 7.48 GB) stay 0.2-0.9 GB below
the measured peaks, which include what the process holds anyway (torch and the backbone 0.3 GB, the
images, the evaluations' forward passes). The check refuses only a run whose estimate exceeds the
memory left, so an estimate a little high costs nothing.
"""

from __future__ import annotations

from adassr.adapt.config import AdaptConfig
from adassr.runtime.cpu_info import cgroup_memory_left
from adassr.runtime.errors import ConfigError
from adassr.runtime.tile_shape import mem_available_bytes

TRAIN_BYTES_PER_HR_PIXEL = {"tail": 7 * 1024, "all": 23 * 1024}
"""Memory one training pair's forward and backward pass keeps, per pixel of its HR patch (measured:
tail 6.7 kB, all 22 kB, in fp32 on the CPU with the perceptual term)."""

BANK_BYTES_PER_LR_PIXEL = 8800
"""Memory one feature-bank pair holds, per pixel of its LR patch: the front's two 64-channel feature
maps (512 B), the HR target and its weight map (256 B) and the LPIPS-VGG features of the target
(7.8 kB: five layers, 64 channels at the HR size down to 512 at 1/16 of it), all float32."""

BANK_BYTES_PER_LR_PIXEL_WITHOUT_PERCEPTUAL = 800
"""The same without the perceptual term (``--lambda-perceptual 0``): no LPIPS-VGG features are kept."""

SETUP_BYTES = 512 * 1024**2
"""The rest of a run's memory beyond the batch and the bank (optimiser moments, the EMA copy of the
trained weights, the evaluation's outputs), rounded up."""


def bank_pairs(config: AdaptConfig) -> int:
    """The feature bank's pairs in tail mode (as ``adapt.loop``'s batch source sizes it)."""
    return max(config.batch, min(config.feature_bank, config.eval_every * config.batch, config.steps * config.batch))


def training_bytes(config: AdaptConfig, *, scale: int, trainable: str) -> int:
    """The estimated memory a CPU training run needs beyond what the process holds before it."""
    lr_pixels = config.lr_patch**2
    per_pair = TRAIN_BYTES_PER_HR_PIXEL[trainable] * lr_pixels * scale**2
    per_bank_pixel = (BANK_BYTES_PER_LR_PIXEL if config.lambda_perceptual > 0
                      else BANK_BYTES_PER_LR_PIXEL_WITHOUT_PERCEPTUAL)
    bank = per_bank_pixel * lr_pixels * bank_pairs(config) if trainable == "tail" else 0
    return SETUP_BYTES + config.batch * per_pair + bank


def memory_left_bytes() -> int | None:
    """Memory this process may still take: the least of the host's ``MemAvailable`` and what its
    cgroups allow (a container's limit); None when neither is known."""
    known = [n for n in (mem_available_bytes(), cgroup_memory_left()) if n is not None]
    return min(known) if known else None


def check_training_memory(config: AdaptConfig, *, scale: int, trainable: str, available: int | None = None) -> None:
    """ConfigError when a CPU training run of ``config`` needs more memory than is left (``available``,
    default :func:`memory_left_bytes`), naming the largest ``--batch`` that fits; nothing when the
    memory left is unknown."""
    if available is None:
        available = memory_left_bytes()
    if available is None:
        return
    need = training_bytes(config, scale=scale, trainable=trainable)
    if need <= available:
        return
    fits = [b for b in range(config.batch - 1, 0, -1)
            if training_bytes(config.with_overrides(batch=b), scale=scale, trainable=trainable) <= available]
    advice = (f"use --batch {fits[0]} or less" if fits
              else "even --batch 1 does not fit: lower --patch, or free memory")
    raise ConfigError(
        f"training on the CPU with --batch {config.batch} at --patch {config.lr_patch} ({trainable} parameters) "
        f"needs about {need / 1024**3:.1f} GB of memory, and {available / 1024**3:.1f} GB is left: {advice} "
        "(the run would have been killed by the system's out-of-memory killer)"
    )
