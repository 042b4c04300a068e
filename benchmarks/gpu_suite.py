"""Every GPU measurement of the project in one run, each section isolated in its own process.

    PYTHONPATH=. python benchmarks/gpu_suite.py [--out DIR] [--budget-s 560] [--only a,b] [--full-groups g,h]
                                                [--full-seed N] [--cpu-smoke]

Sections, in order (each gets at most its own time limit and what is left of ``--budget-s``;
one that fails, times out or lacks a library is recorded as such and the next one runs):

``env``          GPU, driver, versions; which optional pieces import here (real TensorRT, not the
                 type stubs; onnxruntime's providers; cuda-python and its device count); LPIPS /
                 backbone weights found.
``gpu_tests``    the GPU / TensorRT tests of the runtime and the PyTorch GPU mode (pytest, when
                 installed): TensorRT build, run, refit and reuse against onnxruntime; CUDA buffers;
                 CUDA-graph replays.
``latency``      one 480x270 LR frame (1920x1080 output) through Real-ESRGAN x4plus: PyTorch eager
                 fp32, channels_last fp16 / bf16, with and without CUDA graphs (adapt/gpu_infer.py);
                 a TensorRT fp16 engine (build, partial refit of a second camera, run with and without a
                 CUDA graph) when TensorRT imports; onnxruntime's CUDA provider when the session
                 really uses it. Each row: p50/p95/p99, output MP/s, effective TFLOP/s and the
                 fraction of the compute bound (export/gpu_bench.py).
``niqe``         CUDA NIQE (adapt/quality/niqe_torch.py) vs numpy NIQE on photo crops: values and times.
``adapt_speed``  benchmarks/adaptation_speed.py on the GPU: s/step, tail vs all, fp32/bf16/fp16 at the
                 paper's 32-px LR patch; then all layers in fp32 and bf16 at a 64-px patch.
``attention``    the GPU tests (in parallel pytest processes) and benchmarks/attention_kernel.py (the
                 H100 target case).
``adapt_full``   benchmarks/adaptation_quality.py on the GPU: one adaptation with the paper's settings
                 (its 1500 steps capped at 600) at the product's default precision, on the canon-bicubic
                 group with seed 0, scored by NIQE / LPIPS / PSNR against the backbone.
                 ``--full-groups`` adapts other groups, one after another in one process (the
                 section's limit grows by ``ADAPT_FULL_EXTRA_GROUP_S`` a group); ``--full-seed``
                 uses another seed.
``trajectory``   (opt-in: ``--only env,trajectory``, a device call of its own, with
                 ``gpu_carry.py travel-light --for trajectory``) benchmarks/weight_selection.py with the
                 GPU defaults on the three realistic-size development groups, 600 steps without the
                 early stop: LPIPS / PSNR against the ground truth and NIQE at every evaluation.

Results: ``<out>/gpu_check.json`` (rewritten after every section) and ``<out>/gpu_check.md``; the
scripts called write their own files into ``<out>`` too. ``--cpu-smoke`` runs the same sections on
the CPU with tiny sizes (a tiny RRDBNet, small crops; scripts that only make sense on a GPU are
run with ``--help``): it checks the plumbing in seconds and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FRAME = (270, 480)  # LR height, width: 1920x1080 output at x4

SECTION_LIMITS_S = {"env": 20, "gpu_tests": 60, "latency": 90, "niqe": 25, "adapt_speed": 130, "attention": 200,
                    "adapt_full": 270, "trajectory": 530}
"""Seconds each section may take; each also gets no more than what is left of ``--budget-s``. On the H200
(4 December 2026, run 3) env, gpu_tests, latency and niqe took 12, 9, 19 and 7 s, adapt_speed (both
patch sizes) 77 s, attention 148 s (the 37 tests in 8 processes 69 s, the benchmark 80 s) and
adapt_full 156 s (a baseline of about a minute, then 300 steps): 432 s in all. Run 4 (``--only
env,niqe,adapt_full`` with three ``--full-groups``): 14, 7 and 453 s."""
ORDER = tuple(SECTION_LIMITS_S)
OPT_IN = ("trajectory",)
"""Sections that run only when ``--only`` names them (each fills a device call on its own)."""
DEFAULT_SECTIONS = tuple(s for s in ORDER if s not in OPT_IN)


# -- helpers ---------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _importable(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "absent" here
        return f"absent ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "present"))


PIDFILE = Path(tempfile.gettempdir()) / "adassr_gpu_check.pgids"
"""The process groups the check runs (sections and the scripts they start, each in its own group),
one ``pgid start-time`` line each while it runs: a run killed with SIGKILL (the device tool at its
limit) cannot stop them, so the next gpu_check.sh on the same machine kills them first
(``--kill-stale``), each only if its leader still has the recorded start time (a reused id is
another program's)."""


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (the start time in clock ticks), or None (no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the fields after the command name, which may hold spaces


def _record_group(pid: int) -> None:
    started = _start_time(pid)
    if started is not None:
        with contextlib.suppress(OSError), PIDFILE.open("a") as fh:
            fh.write(f"{pid} {started}\n")


def _forget_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        lines = PIDFILE.read_text().splitlines()
        PIDFILE.write_text("".join(f"{line}\n" for line in lines if line.split()[:1] != [str(pid)]))


def kill_stale_groups() -> int:
    """Kill the recorded process groups whose leaders still run with their recorded start time; forget
    the list. Returns how many were killed."""
    try:
        lines = PIDFILE.read_text().splitlines()
    except OSError:
        return 0
    killed = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and _start_time(int(parts[0])) == parts[1]:
            with contextlib.suppress(OSError):
                os.killpg(int(parts[0]), signal.SIGKILL)
                killed += 1
    with contextlib.suppress(OSError):
        PIDFILE.unlink()
    return killed


def bundle(out: Path, to: Path) -> None:
    """Pack ``out`` into ``to/gpu_results.tgz`` (atomically) and copy ``gpu_check.{md,json}`` beside it."""
    import tarfile

    to.mkdir(parents=True, exist_ok=True)
    tmp = to / "gpu_results.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname="gpu_results")
    os.replace(tmp, to / "gpu_results.tgz")
    for name in ("gpu_check.md", "gpu_check.json"):
        if (out / name).is_file():
            shutil.copyfile(out / name, to / (name + ".tmp"))
            os.replace(to / (name + ".tmp"), to / name)


def _run_group(cmd: list[str], timeout_s: float, *, capture: bool) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (grandchildren too).

    Returns ``(exit status or None on timeout, captured output)``. The group is listed in
    :data:`PIDFILE` while it runs.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, text=True,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    _record_group(proc.pid)
    try:
        return _wait_group(proc, timeout_s)
    finally:
        _forget_group(proc.pid)


def _wait_group(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout_s))
        return proc.returncode, out or ""
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out or ""
    except BaseException:  # this process is being stopped (SIGTERM -> SystemExit, Ctrl-C): stop the group too
        _stop_group(proc)
        raise


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """TERM the child's process group (so a section stops its own children), then KILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_parallel(arg_lists: list[list[str]], timeout_s: float) -> list[dict[str, Any]]:
    """Run several ``python <args>`` at once, each in its own process group, all within ``timeout_s``.

    Returns one ``_run_script``-style result per command; at the deadline the ones still running are
    killed and reported as ``timeout``. If this process is stopped, every group is stopped too.
    """
    start = time.perf_counter()
    limit = min(timeout_s, _DEADLINE - time.monotonic()) if _DEADLINE else timeout_s
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"{i}.log" for i in range(len(arg_lists))]
        procs: list[subprocess.Popen[str]] = []
        try:
            for args, log in zip(arg_lists, logs, strict=True):
                with log.open("w") as sink:  # the child keeps its own descriptor
                    procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True,
                                                  text=True, stdout=sink, stderr=subprocess.STDOUT))
                _record_group(procs[-1].pid)
            results: list[dict[str, Any]] = []
            for proc, log in zip(procs, logs, strict=True):
                left = max(1.0, limit - (time.perf_counter() - start))
                try:
                    code: int | None = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    code = None
                tail = log.read_text(errors="replace")[-3000:]
                status = "timeout" if code is None else ("ok" if code == 0 else f"exit {code}")
                results.append({"status": status, "seconds": round(time.perf_counter() - start, 1), "tail": tail})
            return results
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    _stop_group(proc)
            raise
        finally:
            for proc in procs:
                _forget_group(proc.pid)


def _pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 1, ...}`` from a pytest summary line (empty when there is none)."""
    import re

    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)}


def _sharded_pytest(target: str, marker: str, shards: int, timeout_s: float) -> dict[str, Any]:
    """Collect ``target``'s tests and run them in ``shards`` pytest processes at once (Triton compiles
    and autotunes on the CPU, one case after another within a process: shards use the other cores).

    Returns ``status`` (ok only when every shard passed), the summed pytest counts and each shard's result.
    """
    start = time.perf_counter()
    code, listing = _run_group([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, "-p",
                                "no:cacheprovider", target], min(60.0, timeout_s), capture=True)
    ids = [line.strip() for line in listing.splitlines() if "::" in line]
    if code != 0 or not ids:
        return {"status": "error", "reason": f"collecting {target} gave exit status {code} and {len(ids)} tests",
                "tail": listing[-3000:]}
    groups = [ids[i::shards] for i in range(min(shards, len(ids)))]
    remaining = timeout_s - (time.perf_counter() - start)
    runs = _run_parallel([["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *group] for group in groups],
                         remaining)
    totals: dict[str, int] = {}
    for run in runs:
        for word, n in _pytest_counts(run["tail"]).items():
            totals[word] = totals.get(word, 0) + n
    bad = [run["status"] for run in runs if run["status"] != "ok"]
    return {"status": "ok" if not bad else ", ".join(sorted(set(bad))), "collected": len(ids), "shards": len(groups),
            "counts": totals, "seconds": round(time.perf_counter() - start, 1), "runs": runs}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_script(args: list[str], timeout_s: float) -> dict[str, Any]:
    start = time.perf_counter()
    limit = min(timeout_s, _DEADLINE - time.monotonic()) if _DEADLINE else timeout_s
    code, out = _run_group([sys.executable, *args], limit, capture=True)
    if code is None:
        return {"status": "timeout", "seconds": round(limit, 1), "tail": out[-3000:]}
    return {"status": "ok" if code == 0 else f"exit {code}",
            "seconds": round(time.perf_counter() - start, 1), "tail": out[-3000:]}


_DEADLINE = 0.0  # time.monotonic() by which a section child must be done (0 = none); set by --limit-s


def _device(smoke: bool) -> str:
    import torch

    if smoke:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch; run with --cpu-smoke on a CPU machine")
    return "cuda"


# -- sections --------------------------------------------------------------------------------------


def section_env(out: Path, smoke: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
    info["nvidia_smi"] = _nvidia_smi("name,driver_version,memory.total,clocks.max.sm")
    for name in ("triton", "onnxruntime", "onnx", "onnxscript", "safetensors", "scipy", "cv2", "pytest"):
        info[name] = _importable(name)
    from adassr.runtime.engines.trt import tensorrt_available

    absent = "absent (not importable, type stubs only, or not TensorRT 10)"
    info["tensorrt"] = _importable("tensorrt") if tensorrt_available() else absent
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        from adassr.runtime.gpu import device_count

        info["cuda_python_devices"] = device_count()
    except Exception as exc:  # noqa: BLE001
        info["cuda_python_devices"] = f"unavailable ({exc})"
    from adassr.adapt.quality.lpips_weights import lpips_weights_present

    info["lpips_weights"] = {net: lpips_weights_present(net) for net in ("alex", "vgg")}
    try:  # the sections after env need it: without it they would each fail later, costing device time
        from adassr.adapt.weights import load_backbone

        info["backbone_sha256"] = load_backbone().weights_sha256
    except Exception as exc:  # noqa: BLE001 - recorded; the driver stops the run
        info["backbone_missing"] = f"{type(exc).__name__}: {exc}"[:500]
    report = Path(os.environ.get("ADASSR_CARRY_REPORT", "")) if os.environ.get("ADASSR_CARRY_REPORT") else None
    if report is not None and report.is_file():
        info["carry_notes"] = json.loads(report.read_text()).get("notes", [])
    return info


GPU_TESTS = ("tests/runtime/test_tensorrt_gpu.py", "tests/runtime/test_gpu_api.py", "tests/adapt/test_gpu_infer.py")


def section_gpu_tests(out: Path, smoke: bool) -> dict[str, Any]:
    if _importable("pytest").startswith("absent"):
        return {"status": "skipped", "reason": "pytest is not installed"}
    collect = ["--collect-only"] if smoke else []  # the smoke run checks the tests import, in seconds
    result = _run_script(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *collect, *GPU_TESTS],
                         SECTION_LIMITS_S["gpu_tests"] - 5)
    (out / "gpu_tests.txt").write_text(result.get("tail", ""))
    return {"pytest": result, **({"status": "error", "reason": "GPU tests failed"}
                                 if result["status"] not in ("ok",) else {})}


def _model_factory(smoke: bool) -> tuple[Callable[[], Any], str]:
    import torch

    from adassr.adapt.archs.rrdbnet import RRDBNet

    if smoke:
        def tiny() -> Any:
            torch.manual_seed(0)
            return RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)

        return tiny, "tiny RRDBNet (1 block, 8 features; smoke)"
    from adassr.adapt.weights import load_backbone

    state = load_backbone().model.state_dict()

    def real() -> Any:
        model = RRDBNet()
        model.load_state_dict(state)
        return model

    return real, "Real-ESRGAN x4plus (RRDBNet, 23 blocks)"


def section_latency(out: Path, smoke: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from adassr.export.gpu_bench import Roofline, gpu_peak, macs_per_lr_pixel, torch_rows

    device = _device(smoke)
    factory, model_label = _model_factory(smoke)
    h, w = (24, 32) if smoke else FRAME
    rng = np.random.default_rng(0)
    frame = rng.random((1, 3, h, w), dtype=np.float32)
    macs = macs_per_lr_pixel(factory())
    peak = gpu_peak(torch.cuda.get_device_name(0)) if device == "cuda" else None
    roofline = Roofline(macs, h * w, peak[1] if peak else None, peak[0] if peak else None)
    if device == "cuda":
        modes = [("fp32", False, False), ("fp16", True, False), ("bf16", True, False),
                 ("fp16", True, True), ("bf16", True, True)]
    else:
        modes = [("fp32", False, False), ("bf16", True, False)]
    warmup, repeats = (1, 3) if smoke else (3, 20)
    rows = torch_rows(factory, frame, roofline, device=device, modes=modes, warmup=warmup, repeats=repeats, scale=4)
    skipped = [] if device == "cuda" else ["torch fp16 and CUDA graphs: need CUDA"]
    for label, extra in (("TensorRT", _tensorrt_rows), ("onnxruntime CUDA", _ort_gpu_rows)):
        try:  # one library failing must not cost the PyTorch rows measured above
            rows += extra(factory, frame, roofline, out, smoke, skipped)
        except Exception as exc:  # noqa: BLE001 - recorded as a row, the section goes on
            rows.append({"mode": label, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return {"model": model_label, "lr_frame": [h, w], "roofline": roofline.to_json(), "rows": rows,
            "skipped": skipped}


def _export_onnx(factory: Callable[[], Any], root: Path, camera: str, seed: int,
                 backbone_sha256: str | None = None) -> Path:
    """Export the model as camera ``camera`` of a scratch store (fp32 + fp16 ONNX); ``seed`` > 0 nudges
    the last convolution's bias so that two cameras share the structure but not the weights;
    ``backbone_sha256`` names the weights the camera was "adapted" from (its own by default)."""
    import torch

    from adassr.export.tensorrt import export_model_as_camera

    model = factory()
    if seed:
        with torch.no_grad():
            bias = model.conv_last.bias
            bias.add_(1e-3 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)))
    return export_model_as_camera(model, root, camera, precision="both", backbone_sha256=backbone_sha256)


def _tensorrt_rows(factory: Callable[[], Any], frame: Any, roofline: Any, out: Path, smoke: bool,
                   skipped: list[str]) -> list[dict[str, Any]]:
    from adassr.runtime.engines.trt import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        skipped.append(f"TensorRT: {reason}")
        return []
    from adassr.export.gpu_bench import backend_row
    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines import exact_profile
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine

    rows: list[dict[str, Any]] = []
    _, _, h, w = frame.shape
    from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the backbone as the store's fallback, and a camera "adapted" from it: a partial refit
        _export_onnx(factory, root, FALLBACK_CAMERA, 0)
        backbone = str(CameraStore.open(root, FALLBACK_CAMERA).read_manifest()["weights_sha256"])
        _export_onnx(factory, root, "cam_b", 1, backbone_sha256=backbone)
        request = EngineRequest(root, FALLBACK_CAMERA, "fp16", (exact_profile(1, h, w),))
        start = time.perf_counter()
        first = ensure_camera_engine(request, TensorRTToolkit())
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = ensure_camera_engine(EngineRequest(root, "cam_b", "fp16", request.profiles), TensorRTToolkit())
        second_s = time.perf_counter() - start
        again = ensure_camera_engine(request, TensorRTToolkit())
        build = {"base_build_s": first.base.build_s if first.base else None, "first_camera_total_s": first_s,
                 "refit_s": second.record.refit_s, "second_camera_total_s": second_s,
                 "refit": second.record.refit.summary if second.record.refit else None,
                 "second_camera_built_base": second.base_built, "reuse_built_anything": again.built or again.base_built}
        for graph in (False, True):
            with TensorRTBackend(first.path, cuda_graph=graph, streams=1) as backend:
                rows.append(backend_row(f"TensorRT fp16{' CUDA graph' if graph else ''} (end-to-end)", backend.infer,
                                        frame, roofline, warmup=3, repeats=20, scale=4, **build))
    return rows


def _ort_gpu_rows(factory: Callable[[], Any], frame: Any, roofline: Any, out: Path, smoke: bool,
                  skipped: list[str]) -> list[dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        skipped.append("onnxruntime: not installed")
        return []
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skipped.append(f"onnxruntime CUDA provider: this onnxruntime offers {ort.get_available_providers()}")
        return []
    from adassr.export.gpu_bench import backend_row
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from adassr.runtime.backends.ort_options import GpuProviderSettings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from adassr.runtime.store import CameraStore

        _export_onnx(factory, Path(tmp), "cam_a", 0)
        store = CameraStore.open(Path(tmp), "cam_a")
        for name, precision in (("model.onnx", "fp32"), ("model_fp16.onnx", "fp16")):
            with OnnxRuntimeBackend(store.verified_path(name), providers="cuda", require=True,
                                    gpu=GpuProviderSettings(device_id=0)) as backend:
                rows.append(backend_row(f"onnxruntime CUDA {precision} (end-to-end)", backend.infer, frame,
                                        roofline, warmup=3, repeats=20, scale=4, providers=list(backend.providers)))
    return rows


def section_niqe(out: Path, smoke: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from adassr.adapt.quality.niqe import niqe
    from adassr.adapt.quality.niqe_torch import niqe_torch
    from adassr.runtime.images import read_image, to_float32

    device = _device(smoke)
    sides = (192,) if smoke else (512, 1024)
    photos = sorted((ROOT / "tests" / "data" / "hr").glob("*.png"))[: 2 if smoke else 5]
    rows = []
    for side in sides:
        for path in photos:
            image = to_float32(read_image(path).pixels)
            hh, ww = image.shape[:2]
            s = min(side, hh, ww)
            crop = np.ascontiguousarray(image[(hh - s) // 2:(hh - s) // 2 + s, (ww - s) // 2:(ww - s) // 2 + s])
            start = time.perf_counter()
            ref = niqe(crop)
            numpy_s = time.perf_counter() - start
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].to(device)
            niqe_torch(x)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            got = float(niqe_torch(x).reshape(-1)[0])
            if device == "cuda":
                torch.cuda.synchronize()
            rows.append({"image": path.name, "side": s, "numpy": ref, "torch": got, "abs_diff": abs(got - ref),
                         "numpy_s": numpy_s, "torch_s": time.perf_counter() - start, "device": device})
    return {"rows": rows, "max_abs_diff": max(r["abs_diff"] for r in rows)}


def section_adapt_speed(out: Path, smoke: bool) -> dict[str, Any]:
    if smoke:
        return _run_script(["benchmarks/adaptation_speed.py", "--help"], SECTION_LIMITS_S["adapt_speed"] - 5)
    paper = _run_script(["benchmarks/adaptation_speed.py", "--device", "cuda", "--steps", "10", "--out", str(out)], 75)
    # at the paper's 32-px LR patch the step is bound by kernel launches and bf16 lost to fp32 (4 December
    # 2026); a 64-px patch (4x the pixels) asks whether bf16 wins once the convolutions dominate
    large = _run_script(["benchmarks/adaptation_speed.py", "--device", "cuda", "--steps", "8", "--lr-patch", "64",
                         "--trainable", "all", "--precisions", "fp32,bf16", "--tag", "p64", "--out", str(out)],
                        SECTION_LIMITS_S["adapt_speed"] - 5 - paper["seconds"])
    result: dict[str, Any] = {"paper_patch": paper, "patch_64": large}
    failed = [name for name, run in result.items() if run["status"] != "ok"]
    if failed:
        result.update(status="error", reason=", ".join(f"{n}: {result[n]['status']}" for n in failed))
    return result


ATTENTION_SHARDS = 8
"""pytest processes for the attention GPU tests: in one process they took more than 115 s on the H200
(4 December 2026; Triton compiling and autotuning 37 cases one after another on one CPU core)."""


def section_attention(out: Path, smoke: bool) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if _importable("pytest").startswith("absent"):
        result["gpu_tests"] = "pytest absent: skipped (the benchmark's float64 checks still run)"
    else:
        # on a CPU (the smoke run) the same plumbing runs and every test skips ("needs a CUDA GPU")
        result["gpu_tests"] = _sharded_pytest("tests/cuda_kernels/test_gpu.py", "gpu", 2 if smoke else ATTENTION_SHARDS,
                                              115)
        runs = result["gpu_tests"].get("runs", [])
        (out / "attention_gpu_tests.txt").write_text("\n\n".join(run["tail"] for run in runs))
    if smoke:
        result["benchmark"] = _run_script(["benchmarks/attention_kernel.py", "--help"], 60)
    else:
        # what is left of the section (the tests took 69 s and the benchmark 80 s on the H200): a fixed 80 s
        # left it no margin on a slower GPU
        left = SECTION_LIMITS_S["attention"] - 5 - (time.perf_counter() - started)
        result["benchmark"] = _run_script(["benchmarks/attention_kernel.py", "--out-dir", str(out), "--sizes",
                                           "16384,65536", "--dims", "32", "--dtypes", "bf16"], max(left, 80.0))
    failed = [name for name, run in result.items() if isinstance(run, dict) and run.get("status") != "ok"]
    if failed:  # a cut-off or failing sub-run fails the section instead of hiding under "ok"
        result.update(status="error", reason=f"{', '.join(failed)}: " + ", ".join(result[n]["status"] for n in failed))
    return result


ADAPT_FULL_STEPS = 600
"""A cap under the paper's T_step = 1500: on the H200 a step of all parameters takes 0.23-0.27 s, so
1500 steps (about 6 min) do not fit the device time of one check; the NIQE early stop, which ended
the fuji-aniso run at step 300, still applies within the cap."""


ADAPT_FULL_EXTRA_GROUP_S = 200
"""Seconds added to ``adapt_full``'s limit for each group after the first. On the H200 (run 4, the fp32
default) three groups took 453 s: 57-137 s of adaptation each (137 s: 600 steps, the cap) and about
58 s each for its images, baseline scores and pictures."""

DEFAULT_FULL_GROUPS = ("canon-bicubic",)
_FULL_GROUPS: tuple[str, ...] = DEFAULT_FULL_GROUPS  # set by --full-groups
_FULL_SEED = 0  # set by --full-seed


def adapt_full_limit_s(groups: int) -> float:
    """``adapt_full``'s own time limit for ``groups`` synthetic groups (at least one)."""
    if groups < 1:
        raise ValueError(f"adapt_full needs at least one group, got {groups}")
    return float(SECTION_LIMITS_S["adapt_full"] + ADAPT_FULL_EXTRA_GROUP_S * (groups - 1))


def section_adapt_full(out: Path, smoke: bool) -> dict[str, Any]:
    args = ["benchmarks/adaptation_quality.py", "--help"] if smoke else [
        "benchmarks/adaptation_quality.py", "--device", "cuda", "--groups", ",".join(_FULL_GROUPS), "--seeds", "1",
        "--first-seed", str(_FULL_SEED),
        "--steps", str(ADAPT_FULL_STEPS), "--out", str(out)]
    result = _run_script(args, adapt_full_limit_s(len(_FULL_GROUPS)) - 5)
    result["groups"], result["seed"] = list(_FULL_GROUPS), _FULL_SEED
    return result


TRAJECTORY_GROUPS = ("dev-big-aniso", "dev-big-noisy", "dev-big-mild")
"""The realistic-size development groups (benchmarks/data/dev_photos), which nothing scores: the
GPU defaults' trajectory is judged on photos the scored groups do not use."""
TRAJECTORY_STEPS = 600


def section_trajectory(out: Path, smoke: bool) -> dict[str, Any]:
    """benchmarks/weight_selection.py with the GPU defaults (all layers, the paper's settings, no early
    stop): every evaluation's EMA weights scored against the ground truth, so the step at which
    LPIPS is best, and what the NIQE early stop would keep, can be read off (the CPU schedule's
    100 steps came from the same measurement on the CPU). It rewrites its results after every
    run, so a cut-off keeps the groups done."""
    args = ["benchmarks/weight_selection.py", "--help"] if smoke else [
        "benchmarks/weight_selection.py", "--device", "cuda", "--groups", ",".join(TRAJECTORY_GROUPS),
        "--seeds", "1", "--first-seed", str(_FULL_SEED), "--steps", str(TRAJECTORY_STEPS),
        "--tag", f"gpu-dev-big-s{_FULL_SEED}", "--out", str(out)]
    result = _run_script(args, SECTION_LIMITS_S["trajectory"] - 5)
    result["groups"], result["seed"] = list(TRAJECTORY_GROUPS), _FULL_SEED
    return result


SECTIONS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "env": section_env, "gpu_tests": section_gpu_tests, "latency": section_latency, "niqe": section_niqe,
    "adapt_speed": section_adapt_speed, "attention": section_attention, "adapt_full": section_adapt_full,
    "trajectory": section_trajectory,
}


# -- driver ----------------------------------------------------------------------------------------


def run_section(name: str, out: Path, smoke: bool) -> int:
    """Child process: run one section and write ``<out>/gpu_check_<name>.json``."""
    start = time.perf_counter()
    try:
        result = {"status": "ok", **SECTIONS[name](out, smoke)}
    except ImportError as exc:
        result = {"status": "skipped", "reason": f"missing module: {exc}"}
    except Exception as exc:  # noqa: BLE001 - recorded, and the driver goes on with the next section
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(out / f"gpu_check_{name}.json", result)
    return 0


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU check ({summary.get('machine', '?')})", "", f"Mode: {summary['mode']}; total "
             f"{summary['total_s']:.0f} s of a {summary['budget_s']} s budget.", ""]
    for name, result in summary["sections"].items():
        status = result.get("status", "?")
        lines.append(f"## {name}: {status} ({result.get('seconds', 0)} s)")
        if result.get("reason"):
            lines.append(f"- {result['reason']}")
        for row in result.get("rows", []) if name == "latency" else []:
            if "error" in row:
                lines.append(f"- {row['mode']}: error {row['error']}")
                continue
            frac = row.get("fraction_of_bound")
            lines.append(f"- {row['mode']}: p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f}, p99 "
                         f"{row['p99_ms']:.2f}; {row['out_mpix_per_s']:.1f} MP/s; {row['effective_tflops']:.1f} "
                         f"TFLOP/s" + (f"; {frac:.1%} of the compute bound" if frac is not None else ""))
        for note in result.get("skipped", []):
            lines.append(f"- skipped: {note}")
        if name == "niqe" and result.get("rows"):
            lines.append(f"- max |torch - numpy| NIQE: {result['max_abs_diff']:.4f} over {len(result['rows'])} crops")
        if result.get("tail") and status != "ok":
            lines.append("```\n" + result["tail"][-1200:] + "\n```")
        lines.append("")
    return "\n".join(lines) + "\n"


def _nvidia_smi(fields: str) -> str:
    """``nvidia-smi --query-gpu=<fields>`` as CSV lines (no torch), or ``unavailable (why)``."""
    try:
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return smi.stdout.strip() if smi.returncode == 0 else f"unavailable ({smi.stderr.strip()})"


def _gpu_name() -> str:
    """The first GPU's name, else the CPU: the report's title when ``env`` is not run."""
    names = _nvidia_smi("name")
    if names and not names.startswith("unavailable"):
        return names.splitlines()[0].strip()
    return f"CPU ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results"))
    parser.add_argument("--budget-s", type=float, default=560.0, help="total wall-time budget (default 560 s)")
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"sections to run (default: {','.join(DEFAULT_SECTIONS)}; opt-in: {','.join(OPT_IN)})")
    parser.add_argument("--full-groups", default=",".join(DEFAULT_FULL_GROUPS),
                        help="synthetic groups adapt_full adapts, one seed each (default canon-bicubic)")
    parser.add_argument("--full-seed", type=int, default=0,
                        help="the seed of adapt_full's and trajectory's adaptations (default 0)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (plumbing check)")
    parser.add_argument("--bundle-to", type=Path, default=None,
                        help="after every section, pack --out into DIR/gpu_results.tgz (with gpu_check.md and "
                             ".json beside it), so a run killed later keeps the sections done")
    parser.add_argument("--kill-stale", action="store_true",
                        help="kill the process groups a killed earlier run left running, and exit")
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kill_stale:
        killed = kill_stale_groups()
        if killed:
            print(f"[gpu_check] killed {killed} process group(s) an earlier, killed run left running", flush=True)
        return 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwind through _run_group, which stops the children
    args.out.mkdir(parents=True, exist_ok=True)
    global _FULL_GROUPS, _FULL_SEED
    _FULL_GROUPS = tuple(g.strip() for g in args.full_groups.split(",") if g.strip())
    if not _FULL_GROUPS:
        parser.error("--full-groups needs at least one group name")
    if args.full_seed < 0:
        parser.error(f"--full-seed must be >= 0, got {args.full_seed}")
    _FULL_SEED = args.full_seed
    if args.section:
        global _DEADLINE
        _DEADLINE = time.monotonic() + args.limit_s if args.limit_s > 0 else 0.0
        return run_section(args.section, args.out, args.cpu_smoke)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(ORDER)}")
    if not wanted:
        parser.error(f"--only {args.only!r} names no section; valid: {', '.join(ORDER)}")
    start = time.perf_counter()
    summary: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "budget_s": args.budget_s,
                               "machine": _gpu_name(), "sections": {}, "total_s": 0.0}
    status = 0
    for name in [s for s in ORDER if s in wanted]:
        left = args.budget_s - (time.perf_counter() - start)
        own = adapt_full_limit_s(len(_FULL_GROUPS)) if name == "adapt_full" else SECTION_LIMITS_S[name]
        limit = min(own, left)
        if limit < 10:  # recorded (and bundled) like a section that ran, so the report says why it is missing
            summary["sections"][name] = {"status": "skipped", "reason": f"time budget spent ({left:.0f} s left)"}
            _record(summary, args, start)
            print(f"[gpu_check] {name}: skipped (time budget spent)", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--out", str(args.out),
               "--limit-s", str(limit - 3), "--full-groups", ",".join(_FULL_GROUPS),
               "--full-seed", str(_FULL_SEED)]
        if args.cpu_smoke:
            cmd.append("--cpu-smoke")
        section_start = time.perf_counter()
        path = args.out / f"gpu_check_{name}.json"
        path.unlink(missing_ok=True)
        code, _ = _run_group(cmd, limit, capture=False)
        result: dict[str, Any]
        if code is None:
            result = {"status": "timeout", "reason": f"stopped after {limit:.0f} s (its processes were killed)"}
        else:
            result = json.loads(path.read_text()) if path.is_file() else {"status": "error", "reason": "no result"}
        result.setdefault("seconds", round(time.perf_counter() - section_start, 1))
        summary["sections"][name] = result
        if result.get("status") not in ("ok", "skipped"):
            status = 1
        if name == "env" and result.get("gpu"):  # a timed-out env keeps the name nvidia-smi gave at start
            summary["machine"] = result["gpu"]
        _record(summary, args, start)
        print(f"[gpu_check] {name}: {result.get('status')} in {result['seconds']} s", flush=True)
        if name == "env" and result.get("backbone_missing"):
            print(f"[gpu_check] the backbone weights are missing ({result['backbone_missing']}): the other "
                  "sections would all fail; stopping (carry them with benchmarks/gpu_carry.py pack)", flush=True)
            status = 1
            break
    print((args.out / "gpu_check.md").read_text())
    return status


def _record(summary: dict[str, Any], args: argparse.Namespace, start: float) -> None:
    """Rewrite gpu_check.json / .md with what is known so far, and bundle them (after every section)."""
    summary["total_s"] = round(time.perf_counter() - start, 1)
    _write_json(args.out / "gpu_check.json", summary)
    (args.out / "gpu_check.md").write_text(to_markdown(summary))
    if args.bundle_to is not None:
        bundle(args.out, args.bundle_to)


if __name__ == "__main__":
    from script_cli import run_script  # this folder is sys.path[0] for a script

    run_script(main)
