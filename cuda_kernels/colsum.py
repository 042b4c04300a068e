"""Public attention column sum: validation and backend dispatch.

``attention_colsum(q, k, scale)[b, h, j] = sum_i softmax_j(scale * q_i . k_j)``,
i.e. the column sums of the row-softmax attention matrix ``A = softmax(scale Q K^T)``
(how much attention key ``j`` receives from all queries). Neither backend stores
the ``N x N`` matrix.

Backends:

* ``"triton"``: the fused two-pass kernel of :mod:`adassr.cuda_kernels.triton_colsum`
  (CUDA tensors; CPU tensors only when the process runs with ``TRITON_INTERPRET=1``
  set before triton was imported). Head dim must be 16, 32, 64 or 128.
* ``"reference"``: the chunked PyTorch path of :mod:`adassr.cuda_kernels.reference`
  (any device, any head dim), ``O(B * H * rows * N)`` memory.
* ``"auto"``: Triton for CUDA tensors whose head dim the kernel supports when
  triton is installed, the reference otherwise (CPU tensors, an unusual head dim
  on CUDA, no triton).

Exclusion (``exclude_radius = r > 0``): tokens lie on a row-major grid of width
``grid_w`` (token ``t`` at row ``t // grid_w``, column ``t % grid_w``); the pairs
within Chebyshev distance ``r`` (including ``i == j``) are removed from both the
softmax normaliser and the sums. A query row with every key removed (a token within
distance ``r`` of every grid position: only on tiny grids) contributes nothing, so
``sum_j colsum_j = N - (number of such rows)``; without fully excluded
rows the sum is exactly ``N`` up to rounding.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from types import ModuleType

import torch

from adassr.runtime.errors import BackendError, ConfigError, ShapeError

from . import reference

BACKENDS = ("auto", "triton", "reference")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_HEAD_DIMS = (16, 32, 64, 128)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    grid_w: int | None,
    exclude_radius: int,
    backend: str,
) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise ConfigError("q and k must be torch tensors of shape (B, H, N, d)")
    if q.dim() != 4:
        raise ShapeError("q", tuple(q.shape), "(B, H, N, d)")
    if k.shape != q.shape:
        raise ShapeError("k", tuple(k.shape), f"the shape of q, {tuple(q.shape)}")
    b, h, n, d = q.shape
    if min(b, h, n, d) < 1:
        raise ShapeError("q", tuple(q.shape), "(B, H, N, d) with every size >= 1")
    if q.dtype not in DTYPES or k.dtype != q.dtype:
        raise ConfigError(
            f"q and k have dtypes {q.dtype} and {k.dtype}; both must be the same one of "
            "float32, float16, bfloat16 (convert with .to())"
        )
    if q.device != k.device:
        raise ConfigError(f"q is on {q.device} and k on {k.device}; move both to one device")
    if isinstance(scale, torch.Tensor):
        raise ConfigError(f"scale must be a real number, not a tensor (got {scale!r}); pass scale.item()")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ConfigError(f"scale must be a real number (e.g. 1/sqrt(d)), got {scale!r}")
    if not math.isfinite(scale):
        raise ConfigError(f"scale must be a finite number (e.g. 1/sqrt(d)), got {scale!r}")
    if isinstance(exclude_radius, bool) or not isinstance(exclude_radius, numbers.Integral) or exclude_radius < 0:
        raise ConfigError(f"exclude_radius must be an int >= 0, got {exclude_radius!r}")
    if grid_w is None:
        if exclude_radius > 0:
            raise ConfigError(
                f"exclude_radius={exclude_radius} needs grid_w, the width of the row-major "
                "token grid (N = grid_w * grid_h)"
            )
        return
    if isinstance(grid_w, bool) or not isinstance(grid_w, numbers.Integral) or grid_w < 1:
        raise ConfigError(f"grid_w must be an int >= 1, got {grid_w!r}")
    if n % grid_w != 0:
        raise ShapeError(
            "token count", (n,), f"a multiple of grid_w={grid_w} (N = grid_w * grid_h)"
        )


def _triton_module() -> ModuleType:
    """Import the Triton kernels lazily (imports triton)."""
    try:
        from . import triton_colsum
    except ImportError as exc:
        raise BackendError(
            f"the Triton backend needs the triton package ({exc}); install triton or use "
            "backend='reference'"
        ) from exc
    return triton_colsum


def select_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """Resolve ``backend`` to ``"triton"`` or ``"reference"`` for this input.

    Raises ConfigError for a name not in ``BACKENDS``, BackendError when ``"triton"`` is forced on a
    tensor it cannot run on.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    d = q.shape[-1]
    if backend == "reference":
        return "reference"
    if backend == "auto":
        usable = q.is_cuda and d in TRITON_HEAD_DIMS and importlib.util.find_spec("triton") is not None
        return "triton" if usable else "reference"
    if d not in TRITON_HEAD_DIMS:
        raise ConfigError(
            f"the Triton kernel supports head dims {TRITON_HEAD_DIMS}, got d={d}; "
            "use backend='reference' or change the number of heads"
        )
    triton_colsum = _triton_module()
    if not q.is_cuda and not triton_colsum.interpreter_active():
        raise BackendError(
            f"backend='triton' got tensors on {q.device}: it runs on CUDA tensors, or on "
            "CPU only when TRITON_INTERPRET=1 is set before triton is first imported; "
            "move the tensors to CUDA or use backend='reference'"
        )
    return "triton"


def attention_colsum(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    grid_w: int | None = None,
    exclude_radius: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Column sums of ``softmax(scale * q k^T)`` over the last axis, per (batch, head).

    Args:
        q, k: ``(B, H, N, d)``, float32 / float16 / bfloat16, same dtype and device.
        scale: logit multiplier, typically ``1 / sqrt(d)``.
        grid_w: width of the row-major token grid; required when ``exclude_radius > 0``.
            When given, ``N`` must be a multiple of it.
        exclude_radius: pairs within this Chebyshev distance on the grid are left out
            of the softmax and of the sums (0: nothing excluded).
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see the module docstring).

    Returns:
        ``(B, H, N)`` float32 on the input device. ``sum_j`` of it is ``N`` per
        (batch, head), minus the number of fully excluded query rows.

    Raises:
        ShapeError, ConfigError: invalid shapes, dtypes or options.
        BackendError: ``backend="triton"`` on CPU without the Triton interpreter.
    """
    _validate(q, k, scale, grid_w, exclude_radius, backend)
    chosen = select_backend(q, backend)
    # NumPy scalars pass validation: the kernels take Python numbers
    width = None if grid_w is None else int(grid_w)
    if chosen == "triton":
        return _triton_module().colsum_triton(
            q, k, float(scale), grid_w=width, exclude_radius=int(exclude_radius)
        )
    return reference.chunked_colsum(
        q, k, float(scale), grid_w=width, exclude_radius=int(exclude_radius)
    )
