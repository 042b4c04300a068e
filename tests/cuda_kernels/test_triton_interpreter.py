"""The Triton kernel itself on CPU, under TRITON_INTERPRET=1, vs a float64 dense reference.

TRITON_INTERPRET must be set before triton is imported, and the rest of the suite
imports triton normally, so all cases run in one subprocess (interp_worker.py),
started once per module; each case is then checked by its own test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adassr.cuda_kernels.reference import dense_colsum_float64

pytest.importorskip("triton")

ROOT = str(Path(__file__).resolve().parents[2])
WORKER = Path(__file__).with_name("interp_worker.py")
# Block configurations besides the interpreter defaults (32x64 / 64x32): small and
# square blocks, so block edges fall at other places of the ragged N and the grid.
EXTRA_CONFIGS = {"b16": ((16, 16), (16, 16)), "b64x16": ((64, 16), (16, 64))}
EXTRA_CONFIG_CASES = ("ragged77_b2h3", "excl1_20x15_d32", "large_fp16", "full_centre_3x3")


@pytest.fixture(scope="module")
def interp_results(tmp_path_factory, all_colsum_cases) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("interp")
    jobs = {}
    for case in all_colsum_cases:
        q, k = case.inputs()
        jobs[case.name] = (q, k, case.scale, case.grid_w, case.radius, None, None)
        if case.name in EXTRA_CONFIG_CASES:
            for tag, (c1, c2) in EXTRA_CONFIGS.items():
                jobs[f"{case.name}@{tag}"] = (q, k, case.scale, case.grid_w, case.radius, c1, c2)
    torch.save(jobs, tmp / "in.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp / "in.pt"), str(tmp / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "out.pt")


def _output(results: dict[str, object], key: str) -> torch.Tensor:
    out = results[key]
    assert isinstance(out, torch.Tensor), f"{key} failed in the interpreter:\n{out}"
    return out


def test_worker_really_interprets(interp_results) -> None:
    assert interp_results["__interpreter__"] is True


def test_kernel_matches_float64_dense(interp_results, colsum_case) -> None:
    q, k = colsum_case.inputs()
    ref = dense_colsum_float64(q, k, colsum_case.scale, grid_w=colsum_case.grid_w,
                               exclude_radius=colsum_case.radius)
    out = _output(interp_results, colsum_case.name)
    assert out.dtype == torch.float32 and out.shape == q.shape[:3]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, **colsum_case.tolerances())


def test_kernel_row_sum_property(interp_results, colsum_case) -> None:
    out = _output(interp_results, colsum_case.name)
    expected = colsum_case.n - colsum_case.fully_excluded_rows()
    torch.testing.assert_close(out.sum(-1).double(),
                               torch.full(out.shape[:2], float(expected), dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tag", sorted(EXTRA_CONFIGS))
@pytest.mark.parametrize("name", EXTRA_CONFIG_CASES)
def test_block_sizes_do_not_change_result(interp_results, all_colsum_cases, name: str,
                                          tag: str) -> None:
    case = next(c for c in all_colsum_cases if c.name == name)
    q, k = case.inputs()
    ref = dense_colsum_float64(q, k, case.scale, grid_w=case.grid_w, exclude_radius=case.radius)
    out = _output(interp_results, f"{name}@{tag}")
    torch.testing.assert_close(out.double(), ref, **case.tolerances())
