"""PyTorch references for the attention column sum.

``colsum_j = sum_i softmax_j(scale * q_i . k_j)`` for every (batch, head), with
optional exclusion of the pairs (i, j) within Chebyshev distance ``exclude_radius``
(``i == j`` included) on a row-major token grid of width ``grid_w``.

* :func:`chunked_colsum` is the production fallback (CPU, or CUDA when the
  Triton path does not apply). It processes ``rows`` query rows at a time, so
  working memory is a few ``B * H * rows * N`` float32 blocks (the scores and
  the temporaries of ``logsumexp``): it never holds the ``N x N`` matrix unless
  ``rows`` is set to ``N`` on purpose. By default ``rows`` keeps one block under
  64 MiB on CPU and 256 MiB on CUDA.
* :func:`dense_colsum_float64` materialises the full matrix in float64. It is
  the ground truth for tests and small benchmarks only.

Both share the documented edge case: a query row whose keys are all excluded
(possible on tiny grids with a large radius) has no softmax and contributes
nothing, so ``sum_j colsum_j = N - (number of fully excluded rows)``.

Inputs are validated by :func:`adassr.cuda_kernels.colsum.attention_colsum`; these
functions assume already-validated arguments.
"""

from __future__ import annotations

import torch

# Working-set budget of the chunked path, in float32 elements of the score block
# (B * H * rows * N). 2**24 elements = 64 MiB; 2**26 = 256 MiB on CUDA.
CPU_BUDGET_ELEMENTS = 1 << 24
CUDA_BUDGET_ELEMENTS = 1 << 26


def exclusion_mask(
    rows: torch.Tensor, cols: torch.Tensor, grid_w: int, radius: int
) -> torch.Tensor:
    """Boolean ``(len(rows), len(cols))``: True where the pair is excluded.

    Token ``t`` sits at grid position ``(t // grid_w, t % grid_w)``; a pair is
    excluded when both coordinate differences are ``<= radius``.
    """
    ry, rx = rows // grid_w, rows % grid_w
    cy, cx = cols // grid_w, cols % grid_w
    return ((ry[:, None] - cy[None, :]).abs() <= radius) & (
        (rx[:, None] - cx[None, :]).abs() <= radius
    )


def default_rows(n: int, batch_heads: int, device: torch.device) -> int:
    """Query rows per chunk so that the score block fits the memory budget."""
    budget = CUDA_BUDGET_ELEMENTS if device.type == "cuda" else CPU_BUDGET_ELEMENTS
    return max(1, min(n, budget // max(1, batch_heads * n)))


def chunked_colsum(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    grid_w: int | None = None,
    exclude_radius: int = 0,
    rows: int | None = None,
) -> torch.Tensor:
    """Column sums of ``softmax(scale * q k^T)`` computed ``rows`` query rows at a time.

    Args:
        q, k: ``(B, H, N, d)``, any float dtype (computed in float32).
        scale: logit multiplier (typically ``1 / sqrt(d)``).
        grid_w: token-grid width, needed when ``exclude_radius > 0``.
        exclude_radius: Chebyshev radius of excluded pairs (0: none).
        rows: query rows per chunk; default from the memory budget.

    Returns:
        ``(B, H, N)`` float32.
    """
    b, h, n, d = q.shape
    bh = b * h
    qf = q.reshape(bh, n, d)
    kf = k.reshape(bh, n, d).to(torch.float32)
    step = rows if rows is not None else default_rows(n, bh, q.device)
    out = torch.zeros(bh, n, dtype=torch.float32, device=q.device)
    keys = torch.arange(n, device=q.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        s = torch.matmul(qf[:, start:stop].to(torch.float32), kf.transpose(1, 2))
        s.mul_(scale)
        if exclude_radius > 0:
            assert grid_w is not None
            excluded = exclusion_mask(keys[start:stop], keys, grid_w, exclude_radius)
            s.masked_fill_(excluded, float("-inf"))
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        # Fully excluded rows: lse = -inf; +inf makes their exp() exactly 0.
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
        s.sub_(lse).exp_()
        out += s.sum(dim=1)
        del s
    return out.reshape(b, h, n)


def dense_colsum_float64(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    grid_w: int | None = None,
    exclude_radius: int = 0,
) -> torch.Tensor:
    """Ground truth in float64 with the full ``N x N`` matrix (tests only).

    Returns ``(B, H, N)`` float64 on the input device.
    """
    n = q.shape[-2]
    s = torch.matmul(q.to(torch.float64), k.to(torch.float64).transpose(-1, -2)) * scale
    if exclude_radius > 0:
        assert grid_w is not None
        idx = torch.arange(n, device=q.device)
        s = s.masked_fill(exclusion_mask(idx, idx, grid_w, exclude_radius), float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    return torch.exp(s - lse).sum(dim=-2)
