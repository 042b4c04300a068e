"""Shared cases for the column-sum tests.

Any test taking a ``colsum_case`` argument is parametrised over :data:`CASES`
(reference, Triton interpreter and GPU tests run the same shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ColsumCase:
    name: str
    b: int
    h: int
    n: int
    d: int
    dtype: str = "fp32"
    grid_w: int | None = None
    radius: int = 0
    logit: float = 1.0  # scale = logit / sqrt(d); 300 gives |scale q.k| ~ 1e3
    layout: str = "bhnd"  # "bnhd": q, k are transposed views (non-standard strides); "bhdn": last dim strided
    seed: int = 0

    @property
    def scale(self) -> float:
        return self.logit / math.sqrt(self.d)

    @property
    def large_logits(self) -> bool:
        return self.logit > 10

    def tolerances(self) -> dict[str, float]:
        """float32 accumulation: tight; large logits amplify the rounding of the scores."""
        return {"rtol": 1e-4, "atol": 2e-3 if self.large_logits else 2e-5}

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        dtype = DTYPES[self.dtype]
        if self.layout == "bnhd":
            q = torch.randn(self.b, self.n, self.h, self.d, generator=gen).to(dtype).transpose(1, 2)
            k = torch.randn(self.b, self.n, self.h, self.d, generator=gen).to(dtype).transpose(1, 2)
        elif self.layout == "bhdn":  # stride(-1) == n: the kernel reads unit-stride rows, so a copy is due
            q = torch.randn(self.b, self.h, self.d, self.n, generator=gen).to(dtype).transpose(-1, -2)
            k = torch.randn(self.b, self.h, self.d, self.n, generator=gen).to(dtype).transpose(-1, -2)
        else:
            q = torch.randn(self.b, self.h, self.n, self.d, generator=gen).to(dtype)
            k = torch.randn(self.b, self.h, self.n, self.d, generator=gen).to(dtype)
        return q, k

    def fully_excluded_rows(self) -> int:
        """Rows whose every key is within the radius (brute force over the grid)."""
        if self.radius == 0:
            return 0
        w = self.grid_w
        assert w is not None
        gh = self.n // w
        count = 0
        for i in range(self.n):
            y, x = divmod(i, w)
            if max(y, gh - 1 - y) <= self.radius and max(x, w - 1 - x) <= self.radius:
                count += 1
        return count


CASES = (
    ColsumCase("n1", 1, 1, 1, 16),
    ColsumCase("n1_bf16", 1, 1, 1, 32, "bf16"),
    ColsumCase("ragged77_b2h3", 2, 3, 77, 16),
    ColsumCase("ragged200_fp16", 1, 2, 200, 32, "fp16", seed=1),
    ColsumCase("bf16_100", 1, 2, 100, 16, "bf16", seed=2),
    ColsumCase("b3h4_65", 3, 4, 65, 16, seed=3),
    ColsumCase("strided_fp16", 2, 2, 90, 16, "fp16", layout="bnhd", seed=4),
    ColsumCase("last_dim_strided", 1, 2, 70, 16, layout="bhdn", seed=17),
    ColsumCase("large_fp32", 1, 2, 150, 16, logit=300.0, seed=5),
    ColsumCase("large_fp16", 1, 2, 130, 32, "fp16", logit=300.0, seed=6),
    ColsumCase("large_bf16", 1, 1, 97, 16, "bf16", logit=300.0, seed=7),
    ColsumCase("excl1_13x7", 1, 2, 91, 16, grid_w=13, radius=1, seed=8),
    ColsumCase("excl2_9x12_fp16", 2, 2, 108, 16, "fp16", grid_w=9, radius=2, seed=9),
    ColsumCase("excl1_20x15_d32", 1, 1, 300, 32, grid_w=20, radius=1, seed=10),
    ColsumCase("excl2_bf16_11x6", 1, 2, 66, 16, "bf16", grid_w=11, radius=2, seed=11),
    ColsumCase("excl1_column", 1, 1, 40, 16, grid_w=1, radius=1, seed=12),
    ColsumCase("excl1_large", 1, 1, 96, 16, grid_w=12, radius=1, logit=300.0, seed=13),
    # Rows whose first key block is wholly excluded but later ones are not (their running maximum is
    # still -inf after that block: a missing guard made them NaN, and they dropped out of the sums).
    ColsumCase("first_block_excluded_8x16", 1, 1, 128, 16, grid_w=8, radius=7, seed=18),
    ColsumCase("first_block_excluded_4x16", 1, 2, 64, 16, grid_w=4, radius=3, seed=19),
    # Fully excluded rows: the centre of a 3x3 grid at r=1; every row of a 3x2 grid at r=2.
    ColsumCase("full_centre_3x3", 1, 2, 9, 16, grid_w=3, radius=1, seed=14),
    ColsumCase("full_all_3x2", 1, 1, 6, 16, grid_w=3, radius=2, seed=15),
    # A radius past int32 in the kernel's block arithmetic: every pair excluded (it wrapped and excluded none).
    ColsumCase("full_huge_radius_8x8", 1, 1, 64, 16, grid_w=8, radius=2**31 - 1, seed=16),
)


@pytest.fixture(scope="session")
def all_colsum_cases() -> tuple[ColsumCase, ...]:
    """Every shared case, for module-level fixtures that batch them."""
    return CASES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "colsum_case" in metafunc.fixturenames:
        metafunc.parametrize("colsum_case", CASES, ids=[c.name for c in CASES])
