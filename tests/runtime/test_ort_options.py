"""onnxruntime CUDA / TensorRT provider options built from the runtime's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.backends.ort_options import (
    CUDA_EP,
    TRT_EP,
    GpuProviderSettings,
    ort_trt_cache_dir,
    provider_options,
)
from adassr.runtime.engines import ProfileShape, plan_profiles
from adassr.runtime.errors import ConfigError
from adassr.runtime.tiling import TilingOptions


def test_tensorrt_options_carry_device_fp16_caches_and_the_tile_profile(tmp_path: Path) -> None:
    plan = plan_profiles(TilingOptions(tile=256, batch_size=2))
    settings = GpuProviderSettings(device_id=1, fp16=True, cache_dir=tmp_path / "c", profiles=plan.profiles,
                                   optimization_level=4)
    (trt, trt_opts), (cuda, cuda_opts), (cpu, cpu_opts) = provider_options(
        [TRT_EP, CUDA_EP, "CPUExecutionProvider"], settings)
    assert (trt, cuda, cpu) == (TRT_EP, CUDA_EP, "CPUExecutionProvider")
    assert trt_opts == {
        "device_id": "1", "trt_fp16_enable": "True", "trt_builder_optimization_level": "4",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "c"),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path / "c"),
        "trt_profile_min_shapes": "lr:1x3x256x256", "trt_profile_opt_shapes": "lr:2x3x256x256",
        "trt_profile_max_shapes": "lr:2x3x256x256",
    }
    assert cuda_opts == {"device_id": "1", "cudnn_conv_use_max_workspace": "1", "use_tf32": "0"} and cpu_opts == {}


def test_several_profiles_and_no_cache() -> None:
    profiles = (ProfileShape((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),
                ProfileShape((1, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64)))
    ((_, opts),) = provider_options([TRT_EP], GpuProviderSettings(profiles=profiles, input_name="x"))
    assert opts["trt_profile_max_shapes"] == "x:1x3x8x8,x:2x3x64x64"
    assert opts["trt_fp16_enable"] == "False" and "trt_engine_cache_path" not in opts


def test_cache_folder_is_keyed_by_model_precision_profiles_and_version(tmp_path: Path) -> None:
    profiles = plan_profiles(TilingOptions(tile=128)).profiles
    a = ort_trt_cache_dir(tmp_path, "f" * 64, "fp16", profiles, "1.20.1")
    assert a.parent == tmp_path / "engines" / "ort-trt" and a.name.startswith("ffffffffffffffff-fp16-ort1.20.1-")
    others = {ort_trt_cache_dir(tmp_path, "e" * 64, "fp16", profiles, "1.20.1"),
              ort_trt_cache_dir(tmp_path, "f" * 64, "fp32", profiles, "1.20.1"),
              ort_trt_cache_dir(tmp_path, "f" * 64, "fp16", plan_profiles(TilingOptions(tile=96)).profiles, "1.20.1"),
              ort_trt_cache_dir(tmp_path, "f" * 64, "fp16", profiles, "1.21.0")}
    assert a not in others and len(others) == 4


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="--gpu must be >= 0"):
        GpuProviderSettings(device_id=-1)
    with pytest.raises(ConfigError, match="0-5"):
        GpuProviderSettings(optimization_level=7)


def test_backend_with_gpu_settings_opens_and_reports_the_real_providers(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend

    from ._models import SCALE, write_model

    model = write_model(tmp_path / "m.onnx")
    settings = GpuProviderSettings(device_id=0, fp16=True, cache_dir=tmp_path / "cache")
    with OnnxRuntimeBackend(model, providers="cuda,cpu", gpu=settings) as backend:
        assert backend.providers[-1] == "CPUExecutionProvider"
        out = backend.infer(np.zeros((1, 3, 4, 4), np.float32))
        assert out.shape == (1, 3, 4 * SCALE, 4 * SCALE)


def test_every_tensorrt_optimisation_level_0_to_5_is_taken_and_only_those() -> None:
    for level in (0, 5):
        ((_, opts),) = provider_options([TRT_EP], GpuProviderSettings(optimization_level=level))
        assert opts["trt_builder_optimization_level"] == str(level)
    for level in (-1, 6):
        with pytest.raises(ConfigError, match="0-5"):
            GpuProviderSettings(optimization_level=level)


def test_cache_folder_depends_on_every_profile_not_only_the_first(tmp_path: Path) -> None:
    first = ProfileShape((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))
    second = ProfileShape((1, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64))
    one = ort_trt_cache_dir(tmp_path, "f" * 64, "fp32", (first,), "1.20.1")
    assert one != ort_trt_cache_dir(tmp_path, "f" * 64, "fp32", (first, second), "1.20.1")
