"""Runs the Triton kernel under TRITON_INTERPRET=1 for test_triton_interpreter.py.

Usage: ``TRITON_INTERPRET=1 python interp_worker.py IN.pt OUT.pt``. ``IN.pt`` maps a
key to ``(q, k, scale, grid_w, radius, lse_config, colsum_config)`` (configs as
``(block_m, block_n)`` or None for the interpreter defaults); ``OUT.pt`` maps the
same keys to the output tensor or to the error text, plus ``"__interpreter__"``.
The interpreter must be enabled before triton is imported, hence a separate
process: the rest of the test session imports triton normally.
"""

from __future__ import annotations

import sys
import traceback

import torch


def main(in_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    from adassr.cuda_kernels import attention_colsum
    from adassr.cuda_kernels.triton_colsum import BlockConfig, colsum_triton, interpreter_active

    jobs = torch.load(in_path)
    results: dict[str, object] = {"__interpreter__": interpreter_active()}
    for key, (q, k, scale, grid_w, radius, lse_cfg, colsum_cfg) in jobs.items():
        try:
            if lse_cfg is None and colsum_cfg is None:
                # The public entry point, as production code calls it.
                out = attention_colsum(q, k, scale, grid_w=grid_w, exclude_radius=radius,
                                       backend="triton")
            else:
                out = colsum_triton(q, k, scale, grid_w=grid_w, exclude_radius=radius,
                                    lse_config=BlockConfig(*lse_cfg),
                                    colsum_config=BlockConfig(*colsum_cfg))
            results[key] = out
        except Exception:  # reported per case by the test that reads OUT.pt
            results[key] = traceback.format_exc()
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
