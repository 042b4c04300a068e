"""CPU roofline: Conv work counted from the ONNX graph, achieved vs nominal / measured ceilings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adassr.export.roofline import conv_macs_per_input_pixel, cpu_roofline, ort_gemm_gflops, roofline_markdown
from adassr.runtime.cpu_info import CpuInfo

from ..runtime._models import write_model


def _upsampling_model(path: Path) -> Path:
    """conv 3->4 at LR, nearest x2, conv 4->3 at 2x: 9*3*4 + 4 * 9*4*3 = 540 MAC per LR pixel."""
    inits = [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w0"),
             numpy_helper.from_array(np.zeros((3, 4, 3, 3), np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["lr", "w0"], ["a"], pads=[1] * 4),
             helper.make_node("Resize", ["a", "", "scales"], ["b"], mode="nearest"),
             helper.make_node("Conv", ["b", "w1"], ["sr"], pads=[1] * 4)]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", 3, "SH", "SW"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_conv_macs_follow_the_resolution(tmp_path: Path) -> None:
    assert conv_macs_per_input_pixel(_upsampling_model(tmp_path / "up.onnx")) == pytest.approx(540)
    # tiny SR: 3->8->8->8->8->48 3x3 convs at LR resolution
    tiny = write_model(tmp_path / "tiny.onnx", channels=8)
    assert conv_macs_per_input_pixel(tiny) == pytest.approx(9 * (3 * 8 + 3 * 8 * 8 + 8 * 48))


def _cpu() -> CpuInfo:
    return CpuInfo(model_name="Test CPU", vendor="GenuineIntel", family=6, model=85,
                   flags=frozenset({"avx", "avx2", "fma"}), logical_cpus=2, physical_cores=2,
                   threads_per_core=1, clock_mhz=2500.0, clock_source="cpu MHz")


def test_roofline_ratios() -> None:
    rows = [{"backend": "onnxruntime (CPUExecutionProvider)", "size": 100, "p50_ms": 1000.0, "gemm_gflops": 100.0},
            {"backend": "torch eager fp32", "size": 100, "p50_ms": 2000.0}]
    roof = cpu_roofline(rows, 1e6, 2, cpu=_cpu())
    peak = 2 * 2.5 * 2 * 8 * 2  # 160 GFLOP/s
    ort, torch_row = roof["rows"]
    assert ort["achieved_gflops"] == pytest.approx(20.0)  # 2 * 1e6 * 1e4 FLOP in 1 s
    assert ort["of_nominal_peak"] == pytest.approx(20.0 / peak)
    assert ort["of_measured_gemm"] == pytest.approx(0.2)
    assert torch_row["achieved_gflops"] == pytest.approx(10.0) and torch_row["of_measured_gemm"] is None
    text = "\n".join(roofline_markdown(roof))
    assert "2 cores x 2.500 GHz x 2 FMA units x 8 fp32 lanes (avx2) x 2 FLOP/FMA = 160.0 GFLOP/s" in text
    assert "| onnxruntime (CPUExecutionProvider) | 100 | 20.0 | 20.0 | 100.0 | 12% | 20% |" in text
    assert set(roof["nominal_peak"]) == {"onnxruntime", "torch"}


def test_ort_gemm_runs() -> None:
    assert ort_gemm_gflops(1, n=128, repeats=2) > 0


def test_scalings_written_as_convs_are_not_counted_as_work(tmp_path: Path) -> None:
    from adassr.export.ort_layout import scalar_muls_as_convs

    from .test_ort_layout import _block_model

    model = _block_model()
    rewritten, count = scalar_muls_as_convs(model)
    assert count == 1
    onnx.save(model, str(tmp_path / "a.onnx"))
    onnx.save(rewritten, str(tmp_path / "b.onnx"))
    expected = 9 * (3 * 8 + 8 * 8 + 8 * 8)
    assert conv_macs_per_input_pixel(tmp_path / "a.onnx") == conv_macs_per_input_pixel(tmp_path / "b.onnx") == expected


def test_cpu_report_files_name_the_vector_isa() -> None:
    from dataclasses import replace

    from adassr.runtime.cpu_info import report_tag

    avx2 = _cpu()
    avx512_bf16 = replace(avx2, flags=avx2.flags | {"avx512f", "avx512_bf16"})
    assert report_tag("AMD EPYC, 2 cores", avx2) == "amd-epyc-2-cores-avx2"
    assert report_tag("AMD EPYC, 2 cores", avx512_bf16) == "amd-epyc-2-cores-avx512-bf16"
    assert report_tag("NVIDIA H200") == "nvidia-h200"  # a GPU report: the GPU alone


def test_the_aten_isa_cap_lowers_the_torch_peak_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ATEN_CPU_CAPABILITY=default`` holds PyTorch to SSE2; onnxruntime's MLAS still runs AVX2."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    rows = [{"backend": "onnxruntime (CPUExecutionProvider)", "size": 100, "p50_ms": 1000.0},
            {"backend": "torch eager fp32", "size": 100, "p50_ms": 2000.0}]
    roof = cpu_roofline(rows, 1e6, 2, cpu=_cpu())
    assert roof["isa_cap_for_torch"] == "sse2"
    assert roof["nominal_peak"]["onnxruntime"]["gflops"] == pytest.approx(160.0)
    assert roof["nominal_peak"]["torch"]["gflops"] == pytest.approx(40.0)  # 2 x 2.5 GHz x 1 unit x 4 lanes x 2
    ort, torch_row = roof["rows"]
    assert ort["of_nominal_peak"] == pytest.approx(20.0 / 160.0)
    assert torch_row["of_nominal_peak"] == pytest.approx(10.0 / 40.0)


def test_the_work_line_is_in_millions_of_mac() -> None:
    rows = [{"backend": "onnxruntime (CPUExecutionProvider)", "size": 16, "p50_ms": 10.0}]
    text = "\n".join(roofline_markdown(cpu_roofline(rows, 17_926_848, 2, cpu=_cpu())))
    assert "Work: 2 x 17.93 M MAC per input pixel (Conv only)." in text
