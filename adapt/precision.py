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


TF32_CAPABILITY = (8, 0)
"""CUDA compute capability from which convolutions run on TF32 tensor cores (Ampere and later)."""
TENSOR_CORE_CAPABILITY = (7, 0)
"""From here (Volta, Turing) fp16 runs on tensor cores; before it there are none, and some of those
GPUs (compute capability 6.1) execute fp16 at a small fraction of their fp32 rate."""


def choose_cuda_precision(capability: tuple[int, int], *, tf32_convolutions: bool) -> tuple[str, str]:
    """``(precision, reason)`` for ``--precision auto`` on a CUDA GPU of compute ``capability``.

    fp32 where convolutions run on TF32 tensor cores (compute capability >= 8.0 and cuDNN allowed
    TF32, PyTorch's default): at the paper's batch (4 x 32 px) a training step is bound by kernel
    launches, and autocast adds a cast kernel in front of most operations. On an NVIDIA H200
    (4 December 2026, ``benchmarks/results/adaptation_speed_gpu.md`` and ``..._p64.md``) a step of
    all layers took 0.158 s in fp32 against 0.212 s in bf16 and 0.218 s in fp16 (4,411 ATen
    operations a step against 2,936), and still 0.170 s against 0.241 s with 64-px LR patches.
    bf16 on such a GPU when TF32 is switched off. On Volta and Turing (7.x: no TF32, no native
    bf16) fp16 with a GradScaler, whose tensor cores are the fast path there; before them (no tensor
    cores) fp32. Only the H200 was measured; the other rows follow from the hardware.
    """
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if tuple(capability) >= TF32_CAPABILITY:
        if tf32_convolutions:
            return "fp32", f"{cc}: TF32 convolutions, measured faster than bf16 autocast at the adaptation's batch"
        return "bf16", "TF32 is switched off (torch.backends.cudnn.allow_tf32 = False): bf16 autocast"
    if tuple(capability) >= TENSOR_CORE_CAPABILITY:
        return "fp16", f"{cc} has fp16 tensor cores but no TF32 or native bf16: fp16 autocast with a GradScaler"
    return "fp32", f"{cc} has no tensor cores: fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: on CUDA :func:`choose_cuda_precision` (fp32 with TF32 on Ampere and later, fp16 on 7.x);
    on CPU bf16 only where it is native and measured faster
    (:func:`adassr.adapt.cpu_setup.choose_cpu_precision`), else fp32."""
    kind = device.type
    reason = "requested"
    if requested == "auto":
        if kind == "cuda":
            name, reason = choose_cuda_precision(torch.cuda.get_device_capability(device),
                                                 tf32_convolutions=bool(torch.backends.cudnn.allow_tf32))
        else:
            from adassr.adapt.cpu_setup import choose_cpu_precision

            name = choose_cpu_precision()
            reason = "CPU probe" if name == "bf16" else "CPU"
    else:
        name = requested
    if name == "fp16" and kind == "cpu":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if name not in COMPUTE_PRECISIONS:
        raise ConfigError(f"--precision {requested!r} is not valid; choose one of: {', '.join(TRAINING_PRECISIONS)}")
    if name == "bf16" and kind == "cpu" and requested == "bf16":
        from adassr.runtime.cpu_info import detect_cpu

        if not detect_cpu().native_bf16:  # emulated: a --steps 1 run did not finish in 400 s (fp32: 80 s)
            log.warning("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16), so bf16 is "
                        "emulated and many times slower than fp32; leave --precision out (auto picks fp32 here)")
    log.info("precision %s on %s (%s)", name, kind, reason)
    return Precision(name, kind)
