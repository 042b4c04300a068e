"""Benchmark of the attention column sum: fused Triton kernel vs the alternatives.

GPU run (one command, writes results and prints the device name)::

    PYTHONPATH=. python benchmarks/attention_kernel.py [--out-dir DIR]

CPU smoke run (tiny sizes; the fused kernel runs under TRITON_INTERPRET=1 in a
subprocess), used by the test suite to keep this script working::

    python benchmarks/attention_kernel.py --cpu-smoke --out-dir /tmp/x

Methods, each computing ``colsum_j = sum_i softmax_j(scale q_i . k_j)`` for
``B = 1``, ``H`` heads, ``N`` tokens, head dim ``d``:

* ``fused``: :func:`adassr.cuda_kernels.attention_colsum` (Triton, two passes, O(N) memory).
* ``fused_excl1``: the same with ``exclude_radius=1`` on a square grid (the
  adaptation's setting), when N is a perfect square.
* ``dense``: ``softmax(float32(q k^T) * scale).sum(-2)``, materialised; skipped when
  its estimated memory does not fit, recorded as ``oom`` when allocation fails.
* ``sdpa_bwd``: the backward-pass trick: ``out = scaled_dot_product_attention(q, k, v)``
  with ``v.requires_grad``, ``out.backward(ones)`` gives ``v.grad = A^T 1``, i.e. the
  column sums in every channel, through the flash / memory-efficient kernels (the
  math fallback is disabled so it cannot materialise). Time = forward + backward.
* ``chunked``: :func:`adassr.cuda_kernels.reference.chunked_colsum` (PyTorch, row chunks).

Reported per row: median time (CUDA events, after warm-up; wall clock on CPU), peak
extra memory (``max_memory_allocated`` above the inputs; CUDA only), effective
TFLOP/s = ``4 N^2 d H / time`` (the fused kernel's nominal work: two passes of
``2 N^2 d H`` multiply-adds, used for every method so the numbers compare), and the
lower bound ``max(4 N^2 d H / dense fp16 peak, 2 N^2 H / exp2 throughput)`` of the
GPU when known. Before timing, ``--check`` (on by default) compares every method
with a float64 dense reference on small cases, including ragged N, exclusion and
large logits, and the SDPA trick with the fused kernel.

Results: ``<out-dir>/attention_kernel_<device>.json`` and ``.md`` (atomic writes).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a plain checkout (GPU box)
    sys.path.insert(0, str(ROOT))

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import output_dir, positive_int, run_script  # noqa: E402

from adassr.cuda_kernels import attention_colsum  # noqa: E402
from adassr.cuda_kernels.reference import chunked_colsum, dense_colsum_float64  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = ("fused", "fused_excl1", "dense", "sdpa_bwd", "chunked")

# Dense fp16/bf16 tensor-core peak (TFLOP/s, no sparsity), SM count, boost clock (GHz).
# exp2 (MUFU.EX2) throughput is 16 per clock per SM on sm_80 / sm_90.
KNOWN_GPUS: tuple[tuple[str, float, int, float], ...] = (
    ("H200", 989.4, 132, 1.98),
    ("H100 NVL", 835.0, 132, 1.785),
    ("H100 PCIe", 756.0, 114, 1.755),
    ("H100", 989.4, 132, 1.98),  # SXM / HBM3
    ("A100", 312.0, 108, 1.41),
)
EXP2_PER_CLOCK_PER_SM = 16


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    heads: int
    dtype: str


@dataclass
class Row:
    method: str
    n: int
    d: int
    heads: int
    dtype: str
    status: str  # ok | skipped | oom | error
    median_ms: float | None = None
    repeats: int = 0
    peak_extra_mib: float | None = None
    tflops: float | None = None
    bound_ms: float | None = None
    note: str = ""


@dataclass
class DeviceInfo:
    name: str
    slug: str
    fp16_tflops: float | None
    exp2_per_s: float | None
    sms: int | None
    versions: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def device_info(device: torch.device, smoke: bool) -> DeviceInfo:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = "missing"
    if device.type != "cuda":
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        return DeviceInfo(name, "cpu-smoke" if smoke else "cpu", None, None, None, versions)
    props = torch.cuda.get_device_properties(device)
    versions["cuda"] = str(torch.version.cuda)
    fp16, exp2 = None, None
    for key, tflops, _sms, ghz in KNOWN_GPUS:
        if key.lower() in props.name.lower():
            fp16 = tflops
            exp2 = props.multi_processor_count * EXP2_PER_CLOCK_PER_SM * ghz * 1e9
            break
    return DeviceInfo(props.name, slugify(props.name), fp16, exp2, props.multi_processor_count, versions)


def bound_ms(case: Case, info: DeviceInfo) -> float | None:
    if info.fp16_tflops is None or info.exp2_per_s is None:
        return None
    flops = 4.0 * case.n**2 * case.d * case.heads
    exps = 2.0 * case.n**2 * case.heads
    return 1e3 * max(flops / (info.fp16_tflops * 1e12), exps / info.exp2_per_s)


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:240]}"


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, case.heads, case.n, case.d)
    q = torch.randn(shape, generator=gen).to(device=device, dtype=DTYPES[case.dtype])
    k = torch.randn(shape, generator=gen).to(device=device, dtype=DTYPES[case.dtype])
    return q, k


def square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


# ----------------------------------------------------------------------------- methods


def sdpa_colsum(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Column sums via ``v.grad`` of SDPA's backward with ``grad_output = 1``."""
    import torch.nn.functional as F

    v = torch.zeros_like(q, requires_grad=True)
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
            out.backward(torch.ones_like(out))
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out.backward(torch.ones_like(out))
    assert v.grad is not None
    return v.grad[..., 0].float()


def dense_colsum(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    s = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    return torch.softmax(s, dim=-1).sum(dim=-2)


def method_fn(method: str, case: Case) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None:
    if method == "fused":
        return lambda q, k, s: attention_colsum(q, k, s, backend="triton")
    if method == "fused_excl1":
        side = square_side(case.n)
        if side is None:
            return None
        return lambda q, k, s: attention_colsum(q, k, s, grid_w=side, exclude_radius=1, backend="triton")
    if method == "dense":
        return dense_colsum
    if method == "sdpa_bwd":
        return sdpa_colsum
    if method == "chunked":
        return lambda q, k, s: chunked_colsum(q, k, s)
    raise ValueError(method)


def dense_bytes(case: Case) -> int:
    """Peak bytes of :func:`dense_colsum`: the scores in the input dtype plus two float32 copies."""
    elems = case.n**2 * case.heads
    return elems * (DTYPES[case.dtype].itemsize + 8)


# ----------------------------------------------------------------------------- timing


def time_method(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_extra_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - base) / 2**20


def run_row(method: str, case: Case, device: torch.device, info: DeviceInfo,
            repeats: int, warmup: int) -> Row:
    row = Row(method, case.n, case.d, case.heads, case.dtype, "ok", bound_ms=bound_ms(case, info))
    fn = method_fn(method, case)
    if fn is None:
        row.status, row.note = "skipped", "N is not a perfect square"
        return row
    if method == "dense" and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        need = dense_bytes(case)
        if need > 0.9 * free:
            row.status = "skipped"
            row.note = f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            return row
    q, k = make_inputs(case, device)
    scale = 1.0 / math.sqrt(case.d)
    call = lambda: fn(q, k, scale)  # noqa: E731
    try:
        for _ in range(warmup):  # compiles and autotunes (its benchmark buffers) before measuring
            call()
        row.peak_extra_mib = peak_extra_mib(call, device)
        times = time_method(call, device, repeats)
    except torch.cuda.OutOfMemoryError as exc:
        row.status, row.note = "oom", str(exc).splitlines()[0][:160]
        return row
    except Exception as exc:  # recorded in the results, printed, and fails the exit status
        row.status, row.note = "error", _describe(exc)
        return row
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.median_ms = statistics.median(times)
    row.repeats = len(times)
    row.tflops = 4.0 * case.n**2 * case.d * case.heads / (row.median_ms * 1e-3) / 1e12
    return row


# ----------------------------------------------------------------------------- checks


def check_cases(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    """Small correctness cases: (N, d, heads, dtype, grid_w, radius, logit scale)."""
    cases = [
        (1, 16, 1, "fp32", None, 0, 1.0),
        (77, 16, 3, "fp32", None, 0, 1.0),
        (130, 32, 2, "fp16", 13, 1, 1.0),
        (96, 16, 2, "bf16", 8, 2, 1.0),
        (100, 16, 2, "fp32", None, 0, 300.0),  # large logits: |scale q.k| ~ 1e3
    ]
    if not smoke:
        cases += [
            (1000, 64, 4, "bf16", 40, 1, 1.0),
            (4099, 128, 2, "fp16", None, 0, 1.0),
            (3000, 32, 4, "fp32", 60, 2, 50.0),
            (2048, 64, 2, "bf16", None, 0, 30.0),
        ]
    return [dict(n=n, d=d, heads=h, dtype=dt, grid_w=gw, radius=r, logit=lg)
            for n, d, h, dt, gw, r, lg in cases]


def run_checks(methods: list[str], device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    results = []
    for spec in check_cases(device, smoke):
        case = Case(spec["n"], spec["d"], spec["heads"], spec["dtype"])
        q, k = make_inputs(case, device, seed=spec["n"])
        scale = spec["logit"] / math.sqrt(case.d)
        ref = dense_colsum_float64(q, k, scale, grid_w=spec["grid_w"], exclude_radius=spec["radius"])
        fns: dict[str, Callable[[], torch.Tensor]] = {}
        if "fused" in methods:
            fns["fused"] = functools.partial(
                attention_colsum, q, k, scale, grid_w=spec["grid_w"], exclude_radius=spec["radius"], backend="triton")
        if "chunked" in methods:
            fns["chunked"] = functools.partial(
                chunked_colsum, q, k, scale, grid_w=spec["grid_w"], exclude_radius=spec["radius"],
                rows=max(1, case.n // 3))
        if "sdpa_bwd" in methods and spec["radius"] == 0 and spec["logit"] == 1.0:
            fns["sdpa_bwd"] = functools.partial(sdpa_colsum, q, k, scale)
        for name, fn in fns.items():
            # Tolerance: float32 accumulation; low-precision SDPA outputs on the GPU.
            tol = 2e-2 if name == "sdpa_bwd" else 2e-3 * max(1.0, ref.abs().max().item()) ** 0.5
            try:
                out = fn().double()
            except Exception as exc:  # recorded as a failed check (exit status 1)
                results.append(dict(spec, method=name, max_abs_err=float("nan"), tol=tol, ok=False,
                                    sum_err=float("nan"), error=_describe(exc)))
                continue
            err = (out - ref).abs().max().item()
            results.append(dict(spec, method=name, max_abs_err=err, tol=tol, ok=bool(err <= tol),
                                sum_err=(out.sum(-1) - ref.sum(-1)).abs().max().item()))
    return results


# ----------------------------------------------------------------------------- smoke worker


def interp_worker(spec_json: str) -> None:
    """Run the fused rows and checks under TRITON_INTERPRET=1; print one JSON line."""
    spec = json.loads(spec_json)
    from adassr.cuda_kernels import triton_colsum

    if not triton_colsum.interpreter_active():
        raise SystemExit("interp worker: TRITON_INTERPRET=1 was not active when triton loaded")
    device = torch.device("cpu")
    info = DeviceInfo(**spec["info"])
    rows = [asdict(run_row(m, Case(**c), device, info, spec["repeats"], spec["warmup"]))
            for c in spec["cases"] for m in spec["methods"]]
    checks = run_checks(["fused"], device, smoke=True)
    print("RESULT " + json.dumps({"rows": rows, "checks": checks}))


def run_interp_subprocess(cases: list[Case], methods: list[str], info: DeviceInfo,
                          repeats: int, warmup: int) -> tuple[list[Row], list[dict[str, Any]]]:
    spec = dict(cases=[asdict(c) for c in cases], methods=methods, info=asdict(info),
                repeats=repeats, warmup=warmup)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interp-worker",
                           json.dumps(spec)], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"interpreter worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    return [Row(**r) for r in data["rows"]], data["checks"]


# ----------------------------------------------------------------------------- report


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The H100 performance targets at N=16384, d=32, H=4, bf16 and at N=65536."""
    def get(method: str, n: int, d: int = 32, dtype: str = "bf16") -> Row | None:
        return next((r for r in rows if (r.method, r.n, r.d, r.dtype) == (method, n, d, dtype)), None)

    out = []
    fused, chunked, dense = get("fused", 16384), get("chunked", 16384), get("dense", 16384)
    if fused and fused.median_ms:
        if chunked and chunked.median_ms:
            sp = chunked.median_ms / fused.median_ms
            out.append(dict(target="N=16384 d=32 bf16: fused >= 2x faster than chunked",
                            value=f"{sp:.1f}x", met=sp >= 2))
        if dense and dense.median_ms:
            sp = dense.median_ms / fused.median_ms
            out.append(dict(target="N=16384 d=32 bf16: fused >= 10x faster than dense",
                            value=f"{sp:.1f}x", met=sp >= 10))
        if fused.peak_extra_mib is not None:
            budget = (16 * 16384 * 4 + (1 << 20)) / 2**20  # 16 bytes per token and head + 1 MiB
            out.append(dict(target="N=16384: fused extra memory O(N)",
                            value=f"{fused.peak_extra_mib:.2f} MiB (<= {budget:.1f})",
                            met=fused.peak_extra_mib <= budget))
    big_fused, big_dense = get("fused", 65536), get("dense", 65536)
    if big_fused:
        out.append(dict(target="N=65536: fused runs where dense cannot",
                        value=f"fused {big_fused.status}, dense {big_dense.status if big_dense else 'n/a'}",
                        met=big_fused.status == "ok" and (big_dense is None or big_dense.status != "ok")))
    return out


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_row(row: Row) -> None:
    print(f"{row.method:>11} N={row.n:<6} d={row.d:<3} H={row.heads} {row.dtype}: {row.status:<7} "
          f"median {fmt(row.median_ms, '.4g')} ms  bound {fmt(row.bound_ms, '.4g')} ms  "
          f"{fmt(row.tflops, '.4g')} TFLOP/s  extra {fmt(row.peak_extra_mib, '.4g')} MiB {row.note}",
          flush=True)


def markdown(result: dict[str, Any]) -> str:
    info = result["device"]
    lines = [f"# Attention column-sum benchmark: {info['name']}", "",
             f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "",
             "Effective TFLOP/s = 4 N^2 d H / time (the fused kernel's nominal work, for every "
             "method). Bound = max(FLOPs / dense fp16 peak, 2 N^2 H exp2 / MUFU throughput).", "",
             "| method | N | d | H | dtype | status | median ms | bound ms | TFLOP/s | extra MiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['n']} | {r['d']} | {r['heads']} | {r['dtype']} | {r['status']} | "
                     f"{fmt(r['median_ms'], '.4g')} | {fmt(r['bound_ms'], '.4g')} | {fmt(r['tflops'], '.4g')} | "
                     f"{fmt(r['peak_extra_mib'], '.4g')} | {r['note']} |")
    lines += ["", "## Correctness checks (vs float64 dense)", "",
              "| method | N | d | H | dtype | grid_w | radius | logit x | max abs err | tol | ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["checks"]:
        lines.append(f"| {c['method']} | {c['n']} | {c['d']} | {c['heads']} | {c['dtype']} | {c['grid_w']} | "
                     f"{c['radius']} | {c['logit']} | {c['max_abs_err']:.2e} | {c['tol']:.1e} | {c['ok']} |")
    if result["targets"]:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {t['met']} |" for t in result["targets"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (interpreter Triton)")
    p.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    p.add_argument("--sizes", default=None, help="comma-separated N (default 4096,16384,65536)")
    p.add_argument("--dims", default=None, help="comma-separated d (default 32,64)")
    p.add_argument("--heads", type=positive_int, default=None, help="heads H (default 4)")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes (default fp16,bf16)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=positive_int, default=None, help="timed repeats (default 10, smoke 2)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    p.add_argument("--interp-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interp_worker is not None:
        interp_worker(args.interp_worker)
        return 0
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("No CUDA device: run on a GPU box, or use --cpu-smoke for a tiny CPU run.", file=sys.stderr)
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(1)
    info = device_info(device, smoke)
    print(f"device: {info.name}  ({', '.join(f'{k} {v}' for k, v in info.versions.items())})", flush=True)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    sizes = ints(args.sizes) if args.sizes else ([64, 144] if smoke else [4096, 16384, 65536])
    dims = ints(args.dims) if args.dims else ([16] if smoke else [32, 64])
    heads = args.heads or (2 if smoke else 4)
    dtypes = args.dtypes.split(",") if args.dtypes else (["fp32", "bf16"] if smoke else ["fp16", "bf16"])
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS) | set(dtypes) - set(DTYPES)
    if unknown:
        print(f"unknown method/dtype {sorted(unknown)}; methods {METHODS}, dtypes {tuple(DTYPES)}",
              file=sys.stderr)
        return 2
    repeats = args.repeats or (2 if smoke else 10)
    warmup = 1 if smoke else 3
    cases = [Case(n, d, heads, dt) for dt in dtypes for d in dims for n in sizes]

    t_start = time.time()
    checks: list[dict[str, Any]] = []
    rows: list[Row] = []
    fused_methods = [m for m in methods if m.startswith("fused")]
    host_methods = [m for m in methods if not m.startswith("fused")] if smoke else methods
    if smoke and fused_methods:
        interp_rows, interp_checks = run_interp_subprocess(cases, fused_methods, info, repeats, warmup)
        rows += interp_rows
        checks += interp_checks if not args.no_check else []
    if not args.no_check:
        checks += run_checks(host_methods, device, smoke)
        for c in checks:
            print(f"check {c['method']:>8} N={c['n']:<5} d={c['d']:<3} {c['dtype']} r={c['radius']} "
                  f"logit x{c['logit']}: max err {c['max_abs_err']:.2e} (tol {c['tol']:.1e}) "
                  f"{'ok' if c['ok'] else 'FAIL'} {c.get('error', '')}", flush=True)
    command = "python " + " ".join(
        [Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    stem = f"attention_kernel_{info.slug}"
    order = {m: i for i, m in enumerate(METHODS)}

    def save() -> dict[str, Any]:
        """Write the results so far (atomically): a cut-off run keeps what it measured."""
        ordered = sorted(rows, key=lambda r: (r.dtype, r.d, r.n, order[r.method]))
        result = dict(
            command=command, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            device=asdict(info), wall_s=round(time.time() - t_start, 1),
            rows=[asdict(r) for r in ordered], checks=checks, targets=targets(ordered),
        )
        atomic_write(args.out_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n")
        atomic_write(args.out_dir / f"{stem}.md", markdown(result))
        return result

    for row in rows:  # interpreter rows (smoke mode)
        print_row(row)
    for case in cases:
        for method in host_methods:
            row = run_row(method, case, device, info, repeats, warmup)
            rows.append(row)
            print_row(row)
        save()
    result = save()
    for t in result["targets"]:
        print(f"target: {t['target']}: {t['value']} -> {'met' if t['met'] else 'NOT met'}")
    print(f"wrote {args.out_dir / stem}.json and .md ({result['wall_s']} s)")
    failed = [c for c in checks if not c["ok"]]
    errors = [r for r in rows if r.status == "error"]
    if failed or errors:
        print(f"{len(failed)} correctness check(s) failed, {len(errors)} benchmark row(s) errored",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_script(main)
