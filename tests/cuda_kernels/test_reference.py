"""Chunked reference path, public validation and dispatch (CPU, in process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adassr.cuda_kernels import attention_colsum, select_backend
from adassr.cuda_kernels.reference import chunked_colsum, dense_colsum_float64
from adassr.runtime.errors import BackendError, ConfigError, ShapeError

ROOT = str(Path(__file__).resolve().parents[2])


def test_reference_matches_float64_dense(colsum_case) -> None:
    q, k = colsum_case.inputs()
    ref = dense_colsum_float64(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                               exclude_radius=colsum_case.radius)
    out = attention_colsum(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                           exclude_radius=colsum_case.radius, backend="reference")
    assert out.dtype == torch.float32 and out.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref, **colsum_case.tolerances())


def test_reference_row_sum_property(colsum_case) -> None:
    """sum_j colsum_j = N minus the fully excluded rows, for every (batch, head)."""
    q, k = colsum_case.inputs()
    out = attention_colsum(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                           exclude_radius=colsum_case.radius, backend="reference")
    expected = colsum_case.n - colsum_case.fully_excluded_rows()
    torch.testing.assert_close(out.sum(-1).double(),
                               torch.full(out.shape[:2], float(expected), dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunk_size_does_not_change_result(rows: int) -> None:
    gen = torch.Generator().manual_seed(20)
    q = torch.randn(2, 3, 150, 16, generator=gen)
    k = torch.randn(2, 3, 150, 16, generator=gen)
    ref = dense_colsum_float64(q, k, 0.4, grid_w=15, exclude_radius=1)
    out = chunked_colsum(q, k, 0.4, grid_w=15, exclude_radius=1, rows=rows)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)


def test_exclusion_changes_the_map() -> None:
    """Excluding the neighbourhood must matter (else the mask would be a no-op)."""
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(1, 1, 64, 16, generator=gen)
    plain = attention_colsum(q, q, 1.0, backend="reference")
    excl = attention_colsum(q, q, 1.0, grid_w=8, exclude_radius=1, backend="reference")
    # With Q = K every token mostly attends to itself: plain sums are dominated by it.
    assert (plain - excl).abs().max() > 0.1


def test_fully_excluded_grid_gives_zeros() -> None:
    q = torch.randn(1, 2, 6, 16)
    out = attention_colsum(q, q, 1.0, grid_w=2, exclude_radius=2, backend="reference")
    assert torch.equal(out, torch.zeros_like(out))


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    import torch
    torch.set_num_threads(1)
    from adassr.cuda_kernels.reference import chunked_colsum
    n, d = 20000, 16
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, n, d, generator=gen)
    k = torch.randn(1, 1, n, d, generator=gen)
    vm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
    limit = vm_kib * 1024 + (768 << 20)   # 768 MiB more than now; N x N float32 is 1.6 GB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t0 = time.perf_counter()
    out = chunked_colsum(q, k, d ** -0.5)
    print("SECONDS", time.perf_counter() - t0)
    print("SUM", float(out.sum()))
    try:
        chunked_colsum(q, k, d ** -0.5, rows=n)   # deliberately N x N: must hit the limit
    except RuntimeError:
        print("FULL_MATRIX_REFUSED")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_chunked_never_materialises_n_by_n(tmp_path) -> None:
    """N = 20000 under an address-space limit far below N x N floats."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in proc.stdout.splitlines())
    assert abs(float(lines["SUM"]) - 20000) < 1.0
    assert float(lines["SECONDS"]) < 60
    # The same limit does stop a full N x N allocation, so the check has teeth.
    assert "FULL_MATRIX_REFUSED" in lines


# ----------------------------------------------------------------------------- validation


def _qk(shape=(1, 2, 10, 16), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(grid_w=None, exclude_radius=1), ConfigError, "needs grid_w"),
        (dict(grid_w=3, exclude_radius=1), ShapeError, "multiple of grid_w=3"),
        (dict(grid_w=0), ConfigError, "grid_w must be"),
        (dict(exclude_radius=-1), ConfigError, "exclude_radius must be"),
        (dict(grid_w=5, exclude_radius=True), ConfigError, "exclude_radius must be"),  # not taken as 1
        (dict(backend="cuda"), ConfigError, "backend 'cuda' is unknown"),
    ],
)
def test_invalid_options(kwargs, error, match) -> None:
    q, k = _qk()
    with pytest.raises(error, match=match):
        attention_colsum(q, k, 0.25, **kwargs)


def test_invalid_shapes_and_dtypes() -> None:
    q, k = _qk()
    with pytest.raises(ShapeError, match=r"\(B, H, N, d\)"):
        attention_colsum(q[0], k[0], 0.25)
    with pytest.raises(ShapeError, match="the shape of q"):
        attention_colsum(q, k[:, :, :5], 0.25)
    with pytest.raises(ShapeError, match="every size >= 1"):
        attention_colsum(q[:, :, :0], k[:, :, :0], 0.25)
    with pytest.raises(ConfigError, match="float32, float16, bfloat16"):
        attention_colsum(q.double(), k.double(), 0.25)
    with pytest.raises(ConfigError, match="same one of"):
        attention_colsum(q, k.half(), 0.25)
    with pytest.raises(ConfigError, match="finite number"):
        attention_colsum(q, k, float("nan"))


def test_triton_head_dim_checked() -> None:
    q, k = _qk((1, 1, 10, 24))
    with pytest.raises(ConfigError, match="head dims"):
        attention_colsum(q, k, 0.2, backend="triton")
    # The reference accepts any head dim.
    assert attention_colsum(q, k, 0.2, backend="reference").shape == (1, 1, 10)


def test_auto_uses_reference_on_cpu() -> None:
    q, _ = _qk()
    assert select_backend(q, "auto") == "reference"
    assert select_backend(q, "reference") == "reference"


@pytest.mark.parametrize("name", ["bogus", "Reference", "AUTO"])
def test_select_backend_refuses_unknown_names(name: str) -> None:
    """An unknown name fell through to the Triton branch: "backend='triton' got tensors on cpu" (or,
    under the interpreter, "triton") for a backend nobody asked for."""
    q, _ = _qk()
    with pytest.raises(ConfigError, match=f"backend '{name}' is unknown; use one of auto, triton, reference"):
        select_backend(q, name)


def test_numpy_scalars_are_accepted_and_tensors_get_a_clear_error() -> None:
    """np.float32 scale and np.int64 grid sizes were refused as "not finite" / "not an int"."""
    import numpy as np

    q, k = _qk((1, 2, 12, 16))
    expected = attention_colsum(q, k, 0.25, grid_w=4, exclude_radius=1, backend="reference")
    got = attention_colsum(q, k, np.float32(0.25), grid_w=np.int64(4), exclude_radius=np.int32(1),
                           backend="reference")
    torch.testing.assert_close(got, expected)
    with pytest.raises(ConfigError, match=r"not a tensor .*pass scale.item\(\)"):
        attention_colsum(q, k, torch.tensor(0.25))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scale must be a real number"):
        attention_colsum(q, k, "0.25")  # type: ignore[arg-type]


def test_triton_on_cpu_without_interpreter_is_a_clear_error() -> None:
    pytest.importorskip("triton")
    from adassr.cuda_kernels import triton_colsum

    if triton_colsum.interpreter_active():
        pytest.skip("this process runs the Triton interpreter (TRITON_INTERPRET=1)")
    q, k = _qk()
    with pytest.raises(BackendError, match="TRITON_INTERPRET=1"):
        attention_colsum(q, k, 0.25, backend="triton")


def test_import_does_not_load_triton() -> None:
    code = "import sys, cuda_kernels; assert 'triton' not in sys.modules, 'triton imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
