"""``adassr export`` / ``adassr bench`` option handling: what each option turns into (no export, no timing)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from adassr.export.bench import LatencyOptions
from adassr.export.bench_cli import _variant_tag, add_bench_arguments, latency_options
from adassr.export.cli import _engine_options, _interrupted_note, add_export_arguments, run_export
from adassr.export.errors import ExportError
from adassr.runtime.errors import AdassrError, ConfigError
from adassr.runtime.store import CameraStore

from ..runtime._models import fallback_and_canon


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fallback_and_canon(tmp_path / "store", canon_fp16=True)


def test_every_triton_option_reaches_the_config(store: Path, tmp_path: Path) -> None:
    """--instances, --triton-prefix, --precision, --trt-cache-dir, --no-trt-profile and --max-batch 1 each
    change config.pbtxt; dropping any of them on the way to TritonRepoOptions went unnoticed."""
    repo = tmp_path / "repo"
    code = run_export(_cli(["--triton-repo", str(repo), "--store", str(store), "--camera", "canon", "--tile", "64",
                            "--max-batch", "1", "--instances", "2", "--triton-prefix", "fleet_", "--precision",
                            "fp16", "--trt-accelerator", "--trt-cache-dir", "/var/cache/trt", "--no-trt-profile"]))
    assert code == 0
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["fleet_canon"]
    config = text_format.Parse((repo / "fleet_canon" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 1 and list(config.dynamic_batching.preferred_batch_size) == [1]
    assert config.instance_group[0].count == 2
    assert list(config.input[0].dims) == [3, 64, 64] and config.input[0].data_type == model_config_pb2.TYPE_FP16
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["precision_mode"] == "FP16"
    assert sorted(accel.parameters) == ["precision_mode", "trt_engine_cache_enable", "trt_engine_cache_path"]
    assert accel.parameters["trt_engine_cache_path"].startswith("/var/cache/trt/fleet_canon-")
    fp16 = CameraStore.open(store, "canon").verified_path("model_fp16.onnx")
    assert (repo / "fleet_canon" / "1" / "model.onnx").read_bytes() == fp16.read_bytes()


@pytest.mark.parametrize("argv, words", [
    (["--backbone", "realesrgan-x4plus"], "export the backbone first"),
    (["--validation-image", "photo.jpg"], "builds nothing"),
    (["--precision", "both"], "one precision per model"),
    (["--precision", "bf16"], "one precision per model"),
])
def test_triton_repo_refuses_what_it_would_ignore(argv: list[str], words: str, store: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=words):
        run_export(_cli(["--triton-repo", str(tmp_path / "repo"), "--store", str(store), *argv]))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("argv, words", [
    (["--camera", "c", "--camera", "d"], "export one --camera at a time"),
    (["--camera", "c", "--opt-level", "5"], "--opt-level is for TensorRT engines"),
    (["--camera", "c", "--no-refit"], "--no-refit is for TensorRT engines"),
    (["--camera", "c", "--triton-prefix", "x_"], "--triton-prefix is for the Triton repository"),
    (["--camera", "c", "--no-trt-profile"], "--no-trt-profile is for the Triton repository"),
])
def test_export_options_of_another_run_are_refused(argv: list[str], words: str, tmp_path: Path) -> None:
    with pytest.raises(AdassrError, match=words):
        run_export(_cli([*argv, "--store", str(tmp_path)]))


def test_engine_options_follow_the_command_line() -> None:
    options = _engine_options(_cli(["--camera", "c", "--engine", "tensorrt", "--precision", "both", "--tile", "32",
                                    "--tile-batch", "2", "--gpu", "1", "--opt-level", "5", "--no-refit"]))
    assert (options.precision, options.device, options.optimization_level, options.refit) == ("fp16", 1, 5, False)
    assert (options.tiling.tile, options.tiling.overlap, options.tiling.batch_size) == (32, 15, 2)
    default = _engine_options(_cli(["--camera", "c", "--engine", "tensorrt"]))
    assert (default.precision, default.device, default.optimization_level, default.refit) == ("fp32", 0, 3, True)
    assert (default.tiling.tile, default.tiling.overlap, default.tiling.batch_size) == (512, 32, 1)
    with pytest.raises(ConfigError, match="--tile 0"):
        _engine_options(_cli(["--camera", "c", "--engine", "tensorrt", "--tile", "0"]))


def test_an_interrupted_engine_export_says_the_engine_is_unfinished() -> None:
    engine = _cli(["--camera", "canon", "--engine", "tensorrt"])
    assert _interrupted_note(engine, True).startswith("the ONNX export was published; the TensorRT engine was not")
    assert "nothing was published" in _interrupted_note(engine, False)
    assert "of the fallback are unchanged" in _interrupted_note(_cli(["--backbone", "b"]), False)
    assert "completed: the ONNX export is published" in _interrupted_note(_cli(["--camera", "canon"]), True)


def test_bench_defaults_are_the_library_defaults(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    options = latency_options(parser.parse_args(["latency"]))
    assert options == LatencyOptions(), [f.name for f in fields(LatencyOptions)
                                         if getattr(options, f.name) != getattr(LatencyOptions(), f.name)]


def test_each_report_variant_has_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 or batch-4 torch run replaced the fp32 batch-1 torch report of the machine."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert _variant_tag(LatencyOptions()) == ""
    assert _variant_tag(LatencyOptions(backend="torch")) == "-torch"
    assert _variant_tag(LatencyOptions(backend="torch", precision="bf16", batch=4)) == "-torch-bf16-batch4"
    assert _variant_tag(LatencyOptions(camera="Canon_EOS")) == "-camera-canon-eos"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert _variant_tag(LatencyOptions()) == "-torch-avx2"
