"""Fused Triton kernel for the attention column sum, in O(N) extra memory.

Two passes over the implicit ``N x N`` score matrix ``s_ij = scale * q_i . k_j``
(never stored):

1. ``_row_lse_kernel``: one program per (query block, batch*head) streams all key
   blocks with an online max / sum and writes the row log-sum-exp ``lse_i``
   (base 2) to an ``(B*H, N)`` float32 buffer.
2. ``_colsum_kernel``: one program per (key block, batch*head) streams all query
   blocks and accumulates ``sum_i exp2(s_ij - lse_i)`` in float32 registers; the
   scores are formed transposed (keys x queries) so the sum over queries is a
   cheap row reduction of the MMA layout.
   Each program owns its output block: no atomics, deterministic results.

Scores are accumulated in float32 by ``tl.dot`` and scaled by
``scale * log2(e)`` after the dot, so large logits (``|s| ~ 1e3`` and beyond)
cannot overflow: every exponent is ``<= 0`` up to rounding.

Masking: keys past ``N`` (ragged tail) get ``-inf`` in pass 1; query rows past
``N`` load ``lse = +inf`` in pass 2 so they add exactly 0. With exclusion, pairs
within Chebyshev distance ``radius`` on the row-major grid of width ``grid_w`` are
masked in both passes; the mask is only evaluated for block pairs whose grid
rows can be that close. A row with every key excluded gets ``lse = +inf`` and
contributes nothing.

Block sizes: autotuned on a GPU (key: head dim, exclusion flag, precision and a
power-of-two bucket of N, so images of similar size reuse one tuning; Triton's
autotuner adds the tensors' dtypes to the key itself); under
``TRITON_INTERPRET=1`` a fixed configuration is used because ``triton.autotune``
does not run in the interpreter, and bf16 tiles are cast to float32 before
``tl.dot`` because the interpreter's bf16 dot gives wrong results.

Importing this module imports triton; :mod:`adassr.cuda_kernels.colsum` imports it
lazily. Whether the kernels run interpreted is fixed when this module is first
imported (``TRITON_INTERPRET`` is read by ``triton.jit``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class BlockConfig:
    """Fixed launch configuration of one pass (used without autotuning)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 1


# Interpreter defaults. Deliberately different for the two passes and with
# BLOCK_M != BLOCK_N, so a swapped index shows up in the interpreter tests.
INTERPRET_LSE_CONFIG = BlockConfig(block_m=32, block_n=64)
INTERPRET_COLSUM_CONFIG = BlockConfig(block_m=64, block_n=32)


@triton.jit
def _excluded(offs_m, offs_n, grid_w, radius):
    """(BLOCK_M, BLOCK_N) mask of pairs within Chebyshev distance ``radius``."""
    dy = (offs_m // grid_w)[:, None] - (offs_n // grid_w)[None, :]
    dx = (offs_m % grid_w)[:, None] - (offs_n % grid_w)[None, :]
    return (tl.abs(dy) <= radius) & (tl.abs(dx) <= radius)


@triton.jit
def _blocks_near(start_m, start_n, grid_w, radius, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Scalar: can any pair of the two blocks be within ``radius`` grid rows?"""
    q_lo = start_m // grid_w
    q_hi = (start_m + BLOCK_M - 1) // grid_w
    k_lo = start_n // grid_w
    k_hi = (start_n + BLOCK_N - 1) // grid_w
    return (k_lo <= q_hi + radius) & (k_hi >= q_lo - radius)


@triton.jit
def _scores(q, k_base, stride_kn, start_n, N, qk_scale,
            BLOCK_N: tl.constexpr, D: tl.constexpr, DOT_FP32: tl.constexpr,
            PRECISION: tl.constexpr, TAIL: tl.constexpr):
    """Base-2 scaled scores of a resident query tile against one key block."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    if TAIL:
        k = tl.load(k_ptrs, mask=offs_n[:, None] < N, other=0.0)
    else:
        k = tl.load(k_ptrs)
    if DOT_FP32:
        k = k.to(tl.float32)
    return tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale


@triton.jit
def _lse_step(q, k_base, stride_kn, start_m, start_n, N, qk_scale, grid_w, radius, m_i, l_i,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
              EXCLUDE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
              TAIL: tl.constexpr):
    """One online-softmax update of the row max ``m_i`` and row sum ``l_i``."""
    s = _scores(q, k_base, stride_kn, start_n, N, qk_scale, BLOCK_N, D, DOT_FP32, PRECISION, TAIL)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if TAIL:
        s = tl.where((offs_n < N)[None, :], s, float("-inf"))
    if EXCLUDE:
        if _blocks_near(start_m, start_n, grid_w, radius, BLOCK_M, BLOCK_N):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            s = tl.where(_excluded(offs_m, offs_n, grid_w, radius), float("-inf"), s)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row with no admissible key so far keeps m = -inf; shift by 0 to avoid inf - inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(p, 1)
    return m_new, l_i


@triton.jit
def _row_lse_kernel(Q, K, LSE,
                    stride_qb, stride_qh, stride_qn,
                    stride_kb, stride_kh, stride_kn,
                    H, N, N_BUCKET, qk_scale, grid_w, radius,
                    D: tl.constexpr, EXCLUDE: tl.constexpr, DOT_FP32: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 1: LSE[bh, i] = log2 sum_j exp2(s_ij) (+inf for a fully excluded row)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :],
                mask=offs_m[:, None] < N, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        m_i, l_i = _lse_step(q, k_base, stride_kn, start_m, start_n, N, qk_scale, grid_w, radius,
                             m_i, l_i, BLOCK_M, BLOCK_N, D, EXCLUDE, DOT_FP32, PRECISION, False)
    if n_full < N:
        m_i, l_i = _lse_step(q, k_base, stride_kn, start_m, n_full, N, qk_scale, grid_w, radius,
                             m_i, l_i, BLOCK_M, BLOCK_N, D, EXCLUDE, DOT_FP32, PRECISION, True)

    lse = tl.where(l_i > 0.0, m_i + tl.log2(l_i), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=offs_m < N)


@triton.jit
def _colsum_kernel(Q, K, LSE, OUT,
                   stride_qb, stride_qh, stride_qn,
                   stride_kb, stride_kh, stride_kn,
                   H, N, N_BUCKET, qk_scale, grid_w, radius,
                   D: tl.constexpr, EXCLUDE: tl.constexpr, DOT_FP32: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pass 2: OUT[bh, j] = sum_i exp2(s_ij - LSE[bh, i])."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    lse_base = LSE + pid_bh.to(tl.int64) * N

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=offs_n[:, None] < N, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)

    # Scores are computed transposed, (keys, queries): the key block is the MMA's M
    # side, so the sum over queries runs along rows of the accumulator layout (within
    # a thread plus a few warp shuffles, no shared memory), as FlashAttention's row sums.
    acc = tl.zeros([BLOCK_N], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        # Rows past N: q = 0 and lse = +inf, so their terms are exactly 0.
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :],
                    mask=offs_m[:, None] < N, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        lse = tl.load(lse_base + offs_m, mask=offs_m < N, other=float("inf"))
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        p_t = tl.exp2(s_t - lse[None, :])
        if EXCLUDE:
            if _blocks_near(start_m, start_n, grid_w, radius, BLOCK_M, BLOCK_N):
                p_t = tl.where(_excluded(offs_n, offs_m, grid_w, radius), 0.0, p_t)
        acc += tl.sum(p_t, 1)
    # Columns past N may hold garbage (q . 0 - lse): never stored.
    tl.store(OUT + pid_bh.to(tl.int64) * N + offs_n, acc, mask=offs_n < N)


# --------------------------------------------------------------------------- host side


def interpreter_active() -> bool:
    """True when the kernels of this module were built by the Triton interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_row_lse_kernel, InterpretedFunction)


def n_bucket(n: int) -> int:
    """Autotuning bucket of N: next power of two, at least 256 (one tuning per bucket,
    so images of a similar size do not retune)."""
    return max(256, 1 << max(0, math.ceil(math.log2(n))))


def _gpu_configs() -> list[Any]:
    """Candidate launch configurations on a GPU (kept small: each one is compiled)."""
    shapes = ((64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 64, 8), (64, 128, 8), (128, 128, 8))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=3)
            for bm, bn, w in shapes]


def _prune_for_n(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Drop block sizes far larger than the problem (small images)."""
    n = int({**named_args, **kwargs}["N"])
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, n) and c.kwargs["BLOCK_N"] <= max(64, n)]
    return kept or configs[:1]


_AUTOTUNED: dict[str, Callable[..., Any]] = {}


def _autotuned(name: str) -> Any:
    """Autotuned wrapper of a kernel, built on first GPU use (never at import)."""
    if name not in _AUTOTUNED:
        kernel = {"lse": _row_lse_kernel, "colsum": _colsum_kernel}[name]
        _AUTOTUNED[name] = triton.autotune(
            configs=_gpu_configs(),
            key=["N_BUCKET", "D", "EXCLUDE", "PRECISION"],
            prune_configs_by={"early_config_prune": _prune_for_n},
        )(kernel)
    return _AUTOTUNED[name]


def _dot_settings(dtype: torch.dtype, interpret: bool) -> tuple[bool, str]:
    """(cast tiles to float32 before the dot, dot input precision)."""
    if dtype == torch.float32:
        # tf32 would cost ~1e-3 relative error in the logits: far too much for |s| ~ 1e3.
        return False, "ieee" if interpret else "tf32x3"
    if dtype == torch.bfloat16 and interpret:
        return True, "ieee"
    return False, "tf32"


def colsum_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    grid_w: int | None = None,
    exclude_radius: int = 0,
    lse_config: BlockConfig | None = None,
    colsum_config: BlockConfig | None = None,
) -> torch.Tensor:
    """Launch both passes; arguments validated by :func:`adassr.cuda_kernels.attention_colsum`.

    ``lse_config`` / ``colsum_config`` force fixed block sizes (tests); by default
    the interpreter uses :data:`INTERPRET_LSE_CONFIG` / :data:`INTERPRET_COLSUM_CONFIG`
    and a GPU autotunes.

    Returns ``(B, H, N)`` float32.
    """
    b, h, n, d = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    interpret = interpreter_active()
    dot_fp32, precision = _dot_settings(q.dtype, interpret)
    lse = torch.empty(b * h, n, dtype=torch.float32, device=q.device)
    out = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    # Runtime arguments positionally (autotune prune hooks only see positional ones
    # in some Triton versions), compile-time ones by keyword.
    runtime_args = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        # any radius >= N excludes the same pairs as N; clamped, so that the kernel's int32 block
        # arithmetic (q_hi + radius) cannot wrap around and exclude nothing
        h, n, n_bucket(n), float(scale) * LOG2E, int(grid_w) if grid_w else 1, min(int(exclude_radius), n),
    )
    constexprs = dict(D=d, EXCLUDE=exclude_radius > 0, DOT_FP32=dot_fp32, PRECISION=precision)

    if lse_config is None and colsum_config is None and not interpret:
        lse_kernel, colsum_kernel = _autotuned("lse"), _autotuned("colsum")
        lse_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)](
            q, k, lse, *runtime_args, **constexprs)
        colsum_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b * h)](
            q, k, lse, out, *runtime_args, **constexprs)
        return out

    c1 = lse_config or INTERPRET_LSE_CONFIG
    c2 = colsum_config or INTERPRET_COLSUM_CONFIG
    _row_lse_kernel[(triton.cdiv(n, c1.block_m), b * h)](
        q, k, lse, *runtime_args, **constexprs, BLOCK_M=c1.block_m, BLOCK_N=c1.block_n,
        num_warps=c1.num_warps, num_stages=c1.num_stages)
    _colsum_kernel[(triton.cdiv(n, c2.block_n), b * h)](
        q, k, lse, out, *runtime_args, **constexprs, BLOCK_M=c2.block_m, BLOCK_N=c2.block_n,
        num_warps=c2.num_warps, num_stages=c2.num_stages)
    return out
