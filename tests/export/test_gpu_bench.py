"""The GPU latency report of `adassr bench latency`, run on the CPU (no GPU here: no bound, no memory)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from adassr.export.bench import LatencyOptions, run_latency
from adassr.export.bench_cli import add_bench_arguments, latency_options
from adassr.export.gpu_bench import Roofline, gpu_markdown, gpu_peak, run_gpu_latency
from adassr.runtime.errors import ConfigError

from ..runtime._models import publish_camera


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    publish_camera(tmp_path / "store", "_fallback", fp16=True)
    return tmp_path / "store"


def _args(store: Path, **kw: Any) -> LatencyOptions:
    base = {"store": store, "camera": "_fallback", "backend": "onnxruntime", "providers": "cpu", "threads": 1,
            "precision": "fp32", "batch": 2, "gpu": None, "frame": "40x24", "repeats": 3,
            "cuda_graph": False}
    return LatencyOptions(**{**base, **kw})


def test_onnxruntime_rows_with_batch_and_precision(store: Path) -> None:
    for precision in ("fp32", "fp16"):
        result = run_gpu_latency(_args(store, precision=precision))
        (row,) = result["rows"]
        assert row["lr_size"] == "40x24" and row["batch"] == 2 and row["repeats"] == 3
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["out_mpix_per_s"] == pytest.approx(2 * 40 * 24 * 16 / 1e6 / (row["p50_ms"] / 1e3))
        assert row["fraction_of_bound"] is None and result["peak"] is None
        assert row["mode"].startswith(f"onnxruntime {precision}")
    assert "| onnxruntime fp16" in gpu_markdown(result)


def test_bf16_onnxruntime_is_refused_with_the_alternatives(store: Path) -> None:
    with pytest.raises(ConfigError, match="--backend tensorrt / torch"):
        run_gpu_latency(_args(store, precision="bf16"))


def test_cli_writes_the_gpu_report_for_the_torch_backend(store: Path, tmp_path: Path) -> None:
    from adassr.cli import main

    out = tmp_path / "results"
    code = main(["bench", "latency", "--store", str(store), "--backend", "torch", "--precision", "bf16",
                 "--frame", "24x16", "--batch", "1", "--repeats", "2", "--out", str(out)])
    assert code == 0
    (report,) = out.glob("latency_*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["torch bf16 (device)", "torch bf16 (end-to-end)"]


def test_roofline_fraction_against_the_h200_peak() -> None:
    roofline = Roofline(17.93e6, 480 * 270, *reversed(gpu_peak("NVIDIA H200") or ("", 0.0)))
    assert roofline.flop == pytest.approx(4.65e12, rel=1e-3)
    assert roofline.bound_ms == pytest.approx(4.70, abs=0.01)
    row = roofline.row("x", [9.4, 9.4, 9.4], 1920 * 1080)
    assert row["fraction_of_bound"] == pytest.approx(0.5, abs=0.01)
    assert row["effective_tflops"] == pytest.approx(4.65e12 / 9.4e-3 / 1e12, rel=1e-3)


def test_latency_options_mirror_the_command_line(tmp_path: Path) -> None:
    """Every ``bench latency`` option becomes a LatencyOptions field (no Namespace reaches the library)."""
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(["latency", "--sizes", "16", "--no-torch", "--out", str(tmp_path)])
    options = latency_options(args)
    assert set(vars(args)) - {"bench", "verbose_latency"} == set(LatencyOptions.__dataclass_fields__)
    assert (options.sizes, options.no_torch, options.out, options.repeats) == ("16", True, tmp_path, 5)


def test_cpu_latency_report_rows_and_tiling(store: Path) -> None:
    result = run_latency(LatencyOptions(store=store, sizes="16,24", tiled_size=32, repeats=1, threads=1,
                                        no_torch=True))
    assert [r["size"] for r in result["rows"]] == [16, 24]
    assert result["onnxruntime_speedup_vs_torch"] == {}
    assert result["tiled_vs_untiled"]["tiles"] == 4
    assert result["tiled_vs_untiled"]["size"] == 32
    # each row's peak RSS is its own: the GEMM ceiling's three 2048 x 2048 fp32 matrices (48 MB), measured
    # after the first row, were in every later row's lifetime peak (a helper's hunt)
    if Path("/proc/self/clear_refs").exists():
        first, second = result["rows"]
        assert second["peak_rss_mb"] < first["peak_rss_mb"] + 30, result["rows"]
        assert first["peak_rss_of_row"] and second["peak_rss_of_row"]


def test_bench_command_writes_the_report(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    out = tmp_path / "results"
    code = main(["bench", "latency", "--store", str(store), "--sizes", "16", "--tiled-size", "32", "--repeats", "1",
                 "--threads", "1", "--no-torch", "--out", str(out)])
    assert code == 0
    reports = sorted(p.suffix for p in out.iterdir())
    assert reports == [".json", ".md"]
    result = json.loads(next(out.glob("*.json")).read_text())
    assert [r["size"] for r in result["rows"]] == [16]
    assert "results:" in capsys.readouterr().out


def test_the_report_is_saved_when_stdout_goes_away(store: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`adassr bench latency ... | true` lost the report: it was printed before it was saved, and the
    broken pipe ended the command before the files were written."""
    import contextlib
    import os
    import sys

    from adassr.cli import main

    read, write = os.pipe()
    os.close(read)  # the reader went away
    gone = open(write, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    out = tmp_path / "results"
    try:
        monkeypatch.setattr(sys, "stdout", gone)
        assert main(["bench", "latency", "--store", str(store), "--sizes", "16", "--tiled-size", "32", "--repeats",
                     "1", "--threads", "1", "--no-torch", "--out", str(out)]) == 1
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            gone.close()
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md"]


def test_an_installed_package_times_the_photo_given_with_image(store: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """After `pip install .` the bench read site-packages/adassr/samples/.../iptc.jpg, which no wheel
    has, and failed with "no such file" and no way to pass another photo."""
    import numpy as np

    import adassr.export.crops as crops
    from adassr.cli import main
    from adassr.runtime.images import write_image

    monkeypatch.setattr(crops, "_checkout_roots", lambda: [tmp_path / "site-packages"])  # no checkout
    base = ["bench", "latency", "--store", str(store), "--sizes", "16", "--tiled-size", "32", "--repeats", "1",
            "--threads", "1", "--no-torch", "--out", str(tmp_path / "results")]
    assert main(base) == 2
    assert "comes with a checkout of adassr, not with an installed package; pass one with --image PHOTO" in (
        capsys.readouterr().err)
    assert main([*base, "--image", str(tmp_path / "missing.png")]) == 2
    assert f"--image {tmp_path / 'missing.png'}: no such file; pass a photo" in capsys.readouterr().err
    assert main([*base, "--image", str(tmp_path)]) == 2  # a folder was "no such file" (a helper's hunt)
    assert f"--image {tmp_path}: is a folder; pass a photo" in capsys.readouterr().err
    grey = tmp_path / "grey.png"  # one channel: the crops are RGB all the same
    write_image(grey, (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8))
    assert main([*base, "--image", str(grey)]) == 0
    (report,) = (tmp_path / "results").glob("*.json")
    assert [r["size"] for r in json.loads(report.read_text())["rows"]] == [16]


def test_bad_options_fail_before_any_timing(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Each of these once ran the whole benchmark and then crashed, or was silently ignored."""
    import adassr.export.bench as bench
    from adassr.cli import main

    def no_timing(*_a: object, **_k: object) -> None:
        raise AssertionError("timed although the options were bad")

    monkeypatch.setattr(bench, "time_calls", no_timing)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["bench", "latency", "--store", str(store), "--sizes", "16", "--no-torch", "--repeats", "1"]
    cases = [
        (["--out", str(a_file)], "choose another --out"),
        (["--out", str(a_file / "below")], "choose another --out"),
        (["--frame", "40x30"], "the CPU report times fp32 square crops one at a time"),
        (["--precision", "fp16", "--batch", "2"], "--precision fp16, --batch 2 belong to the GPU report"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--repeats", str(2**70)], f"--repeats must be from 1 to 10000, got {2**70}"),  # ran until killed
        (["--gpu", "0"], "--gpu 0 times onnxruntime on the GPU, but --providers cpu runs on the CPU"),
        (["--threads", "0"], "--threads must be an integer from 1 to 1024"),
        (["--camera", "nope"], "camera 'nope' has no exported model"),
        (["--sizes", "4"], "--sizes needs sizes from 8 to 4096"),
        (["--sizes", "1000000"], "--sizes needs sizes from 8 to 4096"),  # a traceback from OpenCV, exit 1
        (["--tiled-size", "0"], "--tiled-size must be from 8 to 4096, got 0"),  # was "image: got shape (0, 0)"
        (["--tiled-size", "100000"], "--tiled-size must be from 8 to 4096"),  # crashed after every size was timed
        (["--tiled-size", "32", "--tile", "60"], "--tile 60 covers the whole --tiled-size 32 crop"),
        (["--tiled-size", "8"], "the tile 22 that --tiled-size 8 gives must be larger than twice --tile-overlap 16"),
        (["--tile", "20"], "--tile 20 must be larger than twice --tile-overlap 16"),
        (["--tile-overlap", "-1"], "--tile-overlap must be >= 0"),
        (["--out", str(tmp_path / "bench.json")], "--out names the results folder"),  # made a folder bench.json
    ]
    for extra, message in cases:
        assert main([*base, "--out", str(tmp_path / "out"), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "out").exists()
    gpu = ["bench", "latency", "--store", str(store), "--backend", "torch", "--frame", "24x16", "--repeats", "1",
           "--out", str(tmp_path / "out")]
    for extra, message in [
        (["--tile", "64", "--no-torch"], "--tile 64, --no-torch belong to the CPU report"),  # silently ignored
        (["--tiled-size", "64", "--tile-overlap", "8"], "--tiled-size 64, --tile-overlap 8 belong to the CPU report"),
        (["--providers", "cuda"], "--providers cuda belongs to the CPU report"),
        (["--sizes", "32"], "--frame and --sizes both give the sizes"),
        (["--batch", "1000000"], "--batch 1000000 of the largest size (384 LR pixels) makes more than"),  # OOM-kill
    ]:
        assert main([*gpu, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "out").exists()
    for frame in ("0x0", "abc", "40x4", "5000x16"):
        with pytest.raises(ConfigError, match="--frame"):
            run_gpu_latency(_args(store, frame=frame))
    with pytest.raises(ConfigError, match="camera 'nope' has no exported model"):
        run_gpu_latency(_args(store, camera="nope"))


def test_bench_of_a_camera_without_a_model_says_what_to_run_first(store: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`bench latency --camera nope` said "export it with `adassr export --camera nope`", which fails in turn when
    nothing was adapted under that name (a docs audit): adapt first then, export when adapted."""
    from adassr.cli import main
    from adassr.runtime.store import CameraStore

    publish_camera(store, "canon", seed=2)
    adapted = CameraStore.open(store, "sony", create=True)  # adapted, never exported
    with adapted.transaction(timeout_s=30) as tx:
        tx.commit(lambda manifest: manifest.update(scale=4))
    base = ["bench", "latency", "--store", str(store), "--sizes", "16", "--no-torch", "--repeats", "1"]
    assert main([*base, "--camera", "sony"]) == 2
    err = capsys.readouterr().err
    assert f"export it with `adassr export --camera sony --store {store}`" in err and "Adapt it" not in err
    assert main([*base, "--camera", "nope"]) == 2
    err = capsys.readouterr().err
    assert "the store has no such camera (canon, sony)" in err and "Did you mean" not in err
    assert f"Adapt it with `adassr adapt --camera nope --images PHOTO_FOLDER --store {store}`" in err
    assert f"then `adassr export --camera nope --store {store}`" in err
    assert main([*base, "--camera", "cannon"]) == 2
    assert "Did you mean 'canon'?" in capsys.readouterr().err


def test_reports_of_other_backends_and_cameras_do_not_replace_each_other(store: Path, tmp_path: Path) -> None:
    """Every report of a machine was named after the machine only: a torch run replaced the onnxruntime one."""
    from adassr.cli import main

    publish_camera(store, "canon", seed=2)
    out = tmp_path / "results"
    cpu = ["bench", "latency", "--store", str(store), "--sizes", "16,16", "--tiled-size", "32", "--repeats", "1",
           "--threads", "1", "--no-torch", "--out", str(out)]
    assert main(cpu) == 0
    assert main([*cpu, "--camera", "canon"]) == 0
    assert main(["bench", "latency", "--store", str(store), "--backend", "torch", "--frame", "24x16", "--repeats", "1",
                 "--threads", "1", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert len(names) == 3, names
    assert sum(n.endswith("-camera-canon.json") for n in names) == 1 and sum("-torch" in n for n in names) == 1
    plain = json.loads((out / min(names, key=len)).read_text())
    assert [r["size"] for r in plain["rows"]] == [16]  # a size given twice is timed once


def test_peak_and_machine_count_the_usable_cores_only(store: Path) -> None:
    """``--threads 8`` on 2 cores gave an 8-core nominal peak (the row's fraction 4x too low)."""
    from adassr.export.bench import machine_name
    from adassr.export.roofline import cpu_roofline
    from adassr.runtime.cpu_info import detect_cpu

    cpu = detect_cpu()
    assert machine_name().endswith(f", {cpu.physical_cores} cores")
    rows = [{"backend": "onnxruntime (CPUExecutionProvider)", "size": 16, "p50_ms": 10.0}]
    many = cpu_roofline(rows, 17.9e6, cpu.physical_cores + 6, cpu)
    exact = cpu_roofline(rows, 17.9e6, cpu.physical_cores, cpu)
    assert many["rows"][0]["of_nominal_peak"] == exact["rows"][0]["of_nominal_peak"]


def test_gpu_names_match_whole_words_and_markdown_keeps_small_latencies() -> None:
    from adassr.export.bench import _ms

    assert gpu_peak("NVIDIA RTX A1000 6GB Laptop GPU") is None  # was the A100's peak
    assert gpu_peak("NVIDIA A100-SXM4-80GB") == ("A100", 312e12)
    assert gpu_peak("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"  # type: ignore[index]
    assert [_ms(v) for v in (0.5123, 12.34, 734.4)] == ["0.512", "12.3", "734"]


def test_torch_rows_of_the_gpu_report_use_the_threads_asked_for(store: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_gpu_latency(_args(store, backend="torch", threads=1, batch=1, repeats=1, frame="16x16"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)



def test_the_fallback_camera_is_named_in_any_case(store: Path, tmp_path: Path) -> None:
    """`bench latency --camera _FALLBACK` said the fallback had no exported model."""
    from adassr.cli import main

    assert main(["bench", "latency", "--store", str(store), "--camera", "_FALLBACK", "--sizes", "16",
                 "--tiled-size", "32", "--repeats", "1", "--threads", "1", "--no-torch",
                 "--out", str(tmp_path / "out")]) == 0
    names = [p.name for p in (tmp_path / "out").glob("*.json")]
    assert len(names) == 1 and "camera" not in names[0]  # the fallback's report, named as the default run's


def test_macs_count_groups_and_non_square_kernels() -> None:
    import torch

    from adassr.export.gpu_bench import macs_per_lr_pixel

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, (1, 3), padding=(0, 1)),
                                torch.nn.Conv2d(4, 8, 3, padding=1, groups=2))
    assert macs_per_lr_pixel(model) == pytest.approx(4 * 3 * 3 + 8 * 2 * 9)  # 180.0
    assert not model[0]._forward_hooks  # the counting hooks are removed


def test_roofline_row_percentiles() -> None:
    row = Roofline(1e6, 100, None, None).row("x", [float(v) for v in range(1, 101)], 400)
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"]) == pytest.approx((50.5, 95.05, 99.01))
    assert row["repeats"] == 100 and row["fraction_of_bound"] is None
    assert row["out_mpix_per_s"] == pytest.approx(400 / 1e6 / 0.0505)


def test_time_ms_warms_up_then_times_each_call_up_to_its_synchronisation() -> None:
    import time

    from adassr.export.gpu_bench import time_ms

    calls: list[str] = []

    def sync() -> None:
        calls.append("sync")
        time.sleep(0.005)  # the device work a synchronisation waits for belongs to the call

    times = time_ms(lambda: calls.append("fn"), sync, warmup=2, repeats=3)
    assert calls == ["fn", "fn", "sync"] + ["fn", "sync"] * 3
    assert len(times) == 3 and min(times) >= 5.0


def test_the_batch_counts_in_the_work_and_the_output_pixels(store: Path) -> None:
    result = run_gpu_latency(_args(store, batch=2, frame="24x16", repeats=1))
    (row,) = result["rows"]
    flop = 2 * result["macs_per_lr_pixel"] * 2 * 16 * 24
    assert row["effective_tflops"] == pytest.approx(flop / (row["p50_ms"] / 1e3) / 1e12)
    torch_rows = run_gpu_latency(_args(store, backend="torch", batch=2, frame="24x16", repeats=1))["rows"]
    assert [r["mode"] for r in torch_rows] == ["torch fp32 (device)", "torch fp32 (end-to-end)"]
    for r in torch_rows:
        assert r["out_mpix_per_s"] == pytest.approx(2 * 16 * 24 * 16 / 1e6 / (r["p50_ms"] / 1e3))
        assert r["effective_tflops"] == pytest.approx(flop / (r["p50_ms"] / 1e3) / 1e12)


def test_the_frame_is_height_by_width(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--frame 40x24`` is 40 wide and 24 high: the timed batch is N x 3 x 24 x 40."""
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend

    shapes: list[tuple[int, ...]] = []
    infer = OnnxRuntimeBackend.infer

    def recording(self: OnnxRuntimeBackend, frame: Any, *a: Any, **k: Any) -> Any:
        shapes.append(frame.shape)
        return infer(self, frame, *a, **k)

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", recording)
    (row,) = run_gpu_latency(_args(store, frame="40x24", repeats=1))["rows"]
    assert row["lr_size"] == "40x24" and set(shapes) == {(2, 3, 24, 40)}


def test_gpu_markdown_columns() -> None:
    result = {"backend": "torch", "machine": "NVIDIA H200", "peak": ("H200", 989.4e12), "macs_per_lr_pixel": 17.93e6,
              "model": {"camera": "nokia", "file": "model.onnx"},
              "rows": [{"mode": "torch fp16 (device)", "lr_size": "480x270", "batch": 2, "p50_ms": 9.4,
                        "p95_ms": 9.71, "p99_ms": 9.99, "out_mpix_per_s": 441.19, "effective_tflops": 494.68,
                        "fraction_of_bound": 0.5, "gpu_memory_mib": 1234.4},
                       {"mode": "torch fp16 CUDA graph", "lr_size": "480x270", "batch": 2, "error": "OOM"}]}
    lines = gpu_markdown(result).splitlines()
    assert "17.93 M MAC per LR pixel; compute bound at H200 dense fp16 peak 989 TFLOP/s." in lines[2]
    header = lines[4]
    assert header == "| mode | LR | batch | p50 ms | p95 ms | p99 ms | output MP/s | TFLOP/s | of bound | GPU MiB |"
    assert lines[6] == "| torch fp16 (device) | 480x270 | 2 | 9.40 | 9.71 | 9.99 | 441.19 | 494.68 | 50.0% | 1234 |"
    assert lines[7].count("|") == header.count("|")
