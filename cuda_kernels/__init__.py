"""Attention column sums for the pooled self-similarity map (torch; triton lazily).

Public API:

* :func:`attention_colsum` -- ``sum_i softmax_j(scale * q_i . k_j)`` per (batch, head),
  fused Triton kernel on CUDA, chunked PyTorch reference elsewhere; never ``N x N``.
* :func:`pooled_attention_map` -- pooling, head split and column sum behind one call.

Importing this package does not import triton.
"""

from __future__ import annotations

from .colsum import BACKENDS, TRITON_HEAD_DIMS, attention_colsum, select_backend
from .pooled import pooled_attention_map

__all__ = [
    "BACKENDS",
    "TRITON_HEAD_DIMS",
    "attention_colsum",
    "pooled_attention_map",
    "select_backend",
]
