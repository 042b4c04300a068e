"""The compiled Triton kernel on a CUDA GPU (skipped without one).

Run on a GPU box with ``benchmarks/gpu_check.sh`` or ``pytest -m gpu tests/cuda_kernels``.
"""

from __future__ import annotations

import math

import pytest
import torch

from adassr.cuda_kernels import attention_colsum, pooled_attention_map, select_backend
from adassr.cuda_kernels.reference import chunked_colsum, dense_colsum_float64

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def _compiled_not_interpreted() -> None:
    pytest.importorskip("triton")
    from adassr.cuda_kernels import triton_colsum

    if triton_colsum.interpreter_active():
        pytest.skip("TRITON_INTERPRET=1 is set: unset it to test the compiled kernel")


def test_autotuned_kernel_matches_float64(colsum_case) -> None:
    q, k = (t.to(CUDA) for t in colsum_case.inputs())
    ref = dense_colsum_float64(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                               exclude_radius=colsum_case.radius)
    out = attention_colsum(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                           exclude_radius=colsum_case.radius, backend="triton")
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref, **colsum_case.tolerances())
    expected = colsum_case.n - colsum_case.fully_excluded_rows()
    torch.testing.assert_close(out.sum(-1).double().cpu(),
                               torch.full(out.shape[:2], float(expected), dtype=torch.float64),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("blocks", [(16, 16, 16, 16), (128, 64, 64, 128), (64, 128, 128, 64)])
def test_fixed_block_configs(blocks: tuple[int, int, int, int]) -> None:
    from adassr.cuda_kernels.triton_colsum import BlockConfig, colsum_triton

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 1000, 64, generator=gen).to(CUDA, torch.bfloat16)
    k = torch.randn(2, 3, 1000, 64, generator=gen).to(CUDA, torch.bfloat16)
    ref = dense_colsum_float64(q, k, 0.125, grid_w=40, exclude_radius=2)
    out = colsum_triton(q, k, 0.125, grid_w=40, exclude_radius=2,
                        lse_config=BlockConfig(blocks[0], blocks[1], num_warps=4, num_stages=2),
                        colsum_config=BlockConfig(blocks[2], blocks[3], num_warps=4, num_stages=2))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_head_dims_and_dtypes(d: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(d)
    q = torch.randn(1, 2, 3001, d, generator=gen).to(CUDA, dtype)
    k = torch.randn(1, 2, 3001, d, generator=gen).to(CUDA, dtype)
    ref = dense_colsum_float64(q, k, 1 / math.sqrt(d))
    out = attention_colsum(q, k, 1 / math.sqrt(d))  # auto -> triton on CUDA
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


def test_fp32_large_logits_keep_full_precision() -> None:
    """|scale q.k| ~ 1e3 in fp32: a tf32 dot would be off by whole units of logit."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 2000, 32, generator=gen).to(CUDA)
    k = torch.randn(1, 2, 2000, 32, generator=gen).to(CUDA)
    scale = 300 / math.sqrt(32)
    out = attention_colsum(q, k, scale)
    torch.testing.assert_close(out.double(), dense_colsum_float64(q, k, scale), rtol=1e-4, atol=2e-3)


def test_non_contiguous_inputs() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 500, 3, 64, generator=gen).to(CUDA, torch.float16)
    q = base.transpose(1, 2)[..., :32]          # strided heads and tokens
    k = base.transpose(1, 2)[..., ::2]          # last-dim stride 2: copied
    out = attention_colsum(q, k, 0.2)
    torch.testing.assert_close(out.double(), dense_colsum_float64(q, k, 0.2), rtol=1e-4, atol=2e-5)


def test_auto_dispatch_and_pooled_map_agree_with_cpu() -> None:
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 64, 90, 70, generator=gen)
    assert select_backend(torch.empty(1, 1, 1, 16, device=CUDA)) == "triton"
    gpu = pooled_attention_map(feats.to(CUDA), 2, 4, exclude_radius=1)
    cpu = pooled_attention_map(feats, 2, 4, exclude_radius=1)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=2e-5)


def test_large_n_runs_in_linear_memory() -> None:
    """N = 65536, H = 4: the N x N scores would take 64 GiB in fp32 per head group."""
    n, h, d = 65536, 4, 32
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, h, n, d, generator=gen).to(CUDA, torch.bfloat16)
    k = torch.randn(1, h, n, d, generator=gen).to(CUDA, torch.bfloat16)
    attention_colsum(q, k, d**-0.5)  # autotune outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = attention_colsum(q, k, d**-0.5)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 16 * n * h + (1 << 20), f"extra memory {extra} bytes is not O(N)"
    torch.testing.assert_close(out.sum(-1).double().cpu(), torch.full((1, h), float(n), dtype=torch.float64),
                               rtol=1e-5, atol=0.5)
    ref = chunked_colsum(q, k, d**-0.5)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
