"""Compiles the column-sum kernels ahead of time for NVIDIA targets (no GPU needed).

Usage: ``python aot_worker.py`` with TRITON_INTERPRET unset. Prints one JSON line
per compiled variant: target, kernel, dtype, head dim, exclusion, block config,
counts read from the PTX (wgmma / mma.sync instructions, ex2.approx) and the
per-thread stack size (register spills) from cuobjdump.
Triton's bundled ptxas turns the PTX into a cubin, so a kernel that cannot run on
the GPU (bad types, too many resources for ptxas, unsupported dot precision)
fails here, which the interpreter tests cannot catch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from adassr.cuda_kernels import triton_colsum as tc

POINTER = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}
RUNTIME_INTS = ("stride_qb", "stride_qh", "stride_qn", "stride_kb", "stride_kh", "stride_kn",
                "H", "N", "N_BUCKET", "grid_w", "radius")


def signature(kernel, dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in ("Q", "K"):
            sig[name] = POINTER[dtype]
        elif name in ("LSE", "OUT"):
            sig[name] = "*fp32"
        elif name in RUNTIME_INTS:
            sig[name] = "i32"
        elif name == "qk_scale":
            sig[name] = "fp32"
        else:
            sig[name] = "constexpr"
    return sig


def stack_bytes(cubin: bytes) -> int | None:
    """Per-thread stack (register spills) from Triton's bundled cuobjdump; None without it."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(tool, os.X_OK):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True,
                             text=True, check=True).stdout
    match = re.search(r"STACK:(\d+)", out)
    return int(match.group(1)) if match else None


def compile_one(kernel, cc: int, dtype: str, d: int, exclude: bool, cfg) -> dict[str, object]:
    precision = "tf32x3" if dtype == "fp32" else "tf32"
    constexprs = dict(D=d, EXCLUDE=exclude, DOT_FP32=False, PRECISION=precision,
                      BLOCK_M=cfg.kwargs["BLOCK_M"], BLOCK_N=cfg.kwargs["BLOCK_N"])
    src = ASTSource(kernel, signature(kernel, dtype), constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                              options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    ptx = compiled.asm["ptx"]
    return dict(cc=cc, kernel=kernel.__name__, dtype=dtype, d=d, exclude=exclude,
                block_m=cfg.kwargs["BLOCK_M"], block_n=cfg.kwargs["BLOCK_N"],
                num_warps=cfg.num_warps, cubin_bytes=len(compiled.asm["cubin"]),
                stack=stack_bytes(compiled.asm["cubin"]), wgmma=ptx.count("wgmma.mma_async"),
                mma_sync=ptx.count("mma.sync"),
                ex2=ptx.count("ex2.approx"))


def main() -> None:
    assert not tc.interpreter_active(), "unset TRITON_INTERPRET for ahead-of-time compilation"
    configs = tc._gpu_configs()
    kernels = (tc._row_lse_kernel, tc._colsum_kernel)
    variants = [(90, "bf16", 64, True, cfg) for cfg in configs]  # every autotune candidate
    variants += [(90, dt, d, ex, configs[3]) for dt, d, ex in
                 (("fp16", 32, False), ("bf16", 32, False), ("fp32", 16, True), ("bf16", 128, False))]
    variants += [(80, "fp16", 64, False, configs[3])]
    for cc, dtype, d, exclude, cfg in variants:
        for kernel in kernels:
            print(json.dumps(compile_one(kernel, cc, dtype, d, exclude, cfg)), flush=True)


if __name__ == "__main__":
    main()
