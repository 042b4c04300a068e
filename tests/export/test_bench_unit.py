"""``adassr bench latency`` (export/bench.py) below the end-to-end runs: option bounds, the timing and its
percentiles, peak memory, the speed ratios, the Markdown, and the torch rows of the CPU report. Each test was
written against changes that mutation testing made unnoticed (it fails under them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import adassr.export.bench as bench
from adassr.export.bench import LatencyOptions, check_latency_options, parse_frame, time_calls, to_markdown
from adassr.runtime.errors import ConfigError

from ..runtime._models import publish_camera


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    publish_camera(tmp_path / "store", "_fallback", fp16=True)
    return tmp_path / "store"


def test_sizes_and_frame_bounds_are_inclusive_and_forgiving() -> None:
    assert bench._sizes("8") == [8] and bench._sizes("4096") == [4096]
    assert bench._sizes("16,32,") == [16, 32]
    with pytest.raises(ConfigError, match="--sizes needs"):
        bench._sizes(",")
    assert parse_frame("8x8") == (8, 8) and parse_frame("4096X8") == (8, 4096)


def _opts(tmp_path: Path, **kw: object) -> LatencyOptions:
    return LatencyOptions(**{"out": tmp_path / "out", "threads": 1, **kw})  # type: ignore[arg-type]


def test_option_boundaries(tmp_path: Path) -> None:
    gpu = {"backend": "torch", "frame": "2048x2048"}
    check_latency_options(_opts(tmp_path, **gpu, batch=4), gpu_report=True)  # exactly the limit
    with pytest.raises(ConfigError, match="--batch 5 of the largest size"):
        check_latency_options(_opts(tmp_path, **gpu, batch=5), gpu_report=True)
    check_latency_options(_opts(tmp_path, backend="torch"), gpu_report=True)  # no --frame: the --sizes
    check_latency_options(_opts(tmp_path, gpu=0, providers="cuda,cpu", frame="24x16"), gpu_report=True)
    for bad, message in [({"repeats": 0}, "--repeats must be from 1"),
                         ({"tile": 32}, "--tile 32 must be larger than twice --tile-overlap 16"),
                         ({"tiled_size": 32, "tile": 52}, "--tile 52 covers the whole"),
                         ({"cuda_graph": True}, "--cuda-graph belongs to the GPU report")]:
        with pytest.raises(ConfigError, match=message):
            check_latency_options(_opts(tmp_path, **bad), gpu_report=False)


def test_the_tiled_case_tile_rounds_up() -> None:
    assert bench._tiled_case_tile(LatencyOptions(tiled_size=33)) == 35


def test_time_calls_warms_up_and_takes_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    durations = iter(k * k for k in range(1, 101))  # call k takes k**2 ms

    t = [0.0]

    def perf_counter() -> float:
        return t[0]

    def fn() -> None:
        calls.append(1)
        if len(calls) > 1:
            t[0] += next(durations) / 1000.0

    monkeypatch.setattr(bench.time, "perf_counter", perf_counter)
    stats = time_calls(fn, 100)
    assert len(calls) == 101  # one warm-up
    arr = np.arange(1, 101, dtype=float) ** 2
    for key, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        assert stats[key] == pytest.approx(np.percentile(arr, q))
    assert stats["mean_ms"] == pytest.approx(arr.mean()) and stats["repeats"] == 100


def test_peak_rss_is_in_mebibytes() -> None:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc/self/status on this system: the peak is read from its VmHWM")

    def hwm_kb() -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))

    low = hwm_kb()
    mb = bench._peak_rss_mb()
    assert low / 1024.0 <= mb <= hwm_kb() / 1024.0


def test_a_system_that_cannot_reset_the_peak_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    def no_clear_refs(path: Any, *a: Any, **k: Any) -> Any:
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_clear_refs)
    assert bench._reset_peak_rss() is False
    row = {"backend": "b", "size": 16, "p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0, "out_mpix_per_s": 1.0,
           "peak_rss_mb": 1.0}
    result = {"machine": "m", "model": {"camera": "c", "file": "f.onnx", "scale": 4}, "threads": 1,
              "rows": [{**row, "peak_rss_of_row": True}, {**row, "peak_rss_of_row": False}],
              "onnxruntime_speedup_vs_torch": {"16": 0.5},
              "tiled_vs_untiled": {"tiles": 4, "tile": 34, "overlap": 16, "size": 32, "ratio": 1.2}}
    md = to_markdown(result)
    assert "could not reset it per row" in md
    assert "at LR 16x16: 2.00x slower (p50)" in md


def test_speedups_are_torch_over_backend() -> None:
    rows = [{"backend": "onnxruntime (CPUExecutionProvider)", "size": 16, "p50_ms": 10.0},
            {"backend": "torch eager fp32", "size": 16, "p50_ms": 30.0}]
    assert bench._speedups(rows, [16]) == {"16": pytest.approx(3.0)}


def test_cpu_report_numbers(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.runtime.backends as backends

    real, asked = backends.open_backend, []

    def spy(*a: Any, providers: Any, **k: Any) -> Any:
        asked.append(providers)
        return real(*a, providers=("cpu",), **k)

    monkeypatch.setattr(backends, "open_backend", spy)
    result = bench.run_latency(LatencyOptions(store=store, sizes="16", tiled_size=32, repeats=3, threads=1,
                                              no_torch=True, providers="cpu,cpu"))
    assert asked == [("cpu", "cpu")]
    assert result["threads"] == 1
    (row,) = result["rows"]
    assert row["out_mpix_per_s"] == pytest.approx((16 * 4) ** 2 / 1e6 / (row["p50_ms"] / 1e3))
    t = result["tiled_vs_untiled"]
    assert t["ratio"] == pytest.approx(t["tiled"]["p50_ms"] / t["untiled"]["p50_ms"])
    assert result["cpu_roofline"] is not None and "gemm_gflops" in row
    assert "## CPU roofline" in to_markdown(result)


def test_a_small_photo_is_resized_to_at_least_the_crop(tmp_path: Path) -> None:
    from adassr.runtime.images import write_image

    photo = tmp_path / "small.png"
    write_image(photo, np.full((11, 20, 3), 128, np.uint8))
    assert bench._crop(15, photo).shape == (15, 15, 3)


def test_torch_rows_of_the_cpu_report(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import torch

    import adassr.adapt.infer as infer

    seen: dict[str, Any] = {}

    def fake_choose(root: Any, camera: Any, backbone: Any, device: Any) -> Any:
        seen["camera"] = camera

        class Model(torch.nn.Upsample):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                seen.setdefault("threads", torch.get_num_threads())  # the first (warm-up) call
                return super().forward(x)

        return types.SimpleNamespace(model=Model(scale_factor=4))

    monkeypatch.setattr(infer, "choose_weights", fake_choose)
    resets: list[int] = []
    real_reset = bench._reset_peak_rss
    monkeypatch.setattr(bench, "_reset_peak_rss", lambda: resets.append(1) or real_reset())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = bench.run_latency(LatencyOptions(store=store, sizes="16", tiled_size=32, repeats=1, threads=1))
    finally:
        torch.set_num_threads(before)
    assert seen["threads"] == 1  # the threads asked for, as the onnxruntime row
    assert seen["camera"] is None  # the fallback route: the fallback weights
    assert [r["backend"] for r in result["rows"]][1] == "torch eager fp32" and len(resets) == 2
    assert set(result["onnxruntime_speedup_vs_torch"]) == {"16"}
