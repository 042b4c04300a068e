"""Device and mixed-precision choice. Master weights and EMA stay fp32 whatever is chosen."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from adassr.adapt.config import COMPUTE_PRECISIONS, TRAINING_PRECISIONS
from adassr.runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda

    @property
    def dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was requested but torch sees no CUDA GPU (this torch build: "
            f"{torch.__version__}); use --device cpu, or install a CUDA build of torch"
        )
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"--device {requested!r} is not valid; choose auto, cpu or cuda")
    return torch.device(requested)


def select_gpu(index: int | None) -> None:
    """Make CUDA device ``index`` the current one (``--gpu N``), so ``torch.device("cuda")`` means it.

    ``None`` leaves the default. ConfigError names the valid range when the device does not exist.
    """
    if index is None:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= index < count:
        have = f"CUDA devices 0-{count - 1}" if count else "no CUDA device visible to torch"
        raise ConfigError(f"--gpu {index} is not available: this machine has {have}")
    torch.cuda.set_device(index)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on CUDA GPUs that support it (else fp16 with a GradScaler); on CPU bf16 only where
    it is native and measured faster (:func:`adassr.adapt.cpu_setup.choose_cpu_precision`), else fp32."""
    kind = device.type
    if requested == "auto":
        if kind == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            from adassr.adapt.cpu_setup import choose_cpu_precision

            name = choose_cpu_precision()
    else:
        name = requested
    if name == "fp16" and kind == "cpu":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if name not in COMPUTE_PRECISIONS:
        raise ConfigError(f"--precision {requested!r} is not valid; choose one of: {', '.join(TRAINING_PRECISIONS)}")
    log.info("precision %s on %s", name, kind)
    return Precision(name, kind)
