"""Unit checks of the adaptation config's ranges and defaults, and of the precision rules (a mutation hunt's
survivors: each assertion below failed with one mutant of the code applied)."""

from __future__ import annotations

import math

import pytest
import torch

from adassr.adapt.config import (
    CPU_TIME_BUDGET_S,
    GPU_ATTENTION_MAX_SIDE,
    MAX_BATCH,
    MAX_LOSS_WEIGHT,
    MAX_SEED,
    AdaptConfig,
    AttentionConfig,
    cpu_demo_defaults,
    gpu_defaults,
)
from adassr.adapt.precision import Precision, resolve_device, resolve_precision, select_gpu
from adassr.runtime.errors import ConfigError


@pytest.mark.parametrize("field_, value", [("lr", math.nan), ("lr", math.inf), ("max_megapixels", math.nan),
                                           ("backbone_margin", math.inf), ("time_budget", math.nan)])
def test_non_finite_numbers_are_refused(field_: str, value: float) -> None:
    with pytest.raises(ConfigError, match="must be a finite number"):
        AdaptConfig(**{field_: value})


@pytest.mark.parametrize("kwargs, words", [
    ({"highpass": 1}, "--highpass|highpass must be an odd int >= 3"),
    ({"highpass": 8}, "highpass must be an odd int >= 3"),
    ({"max_side": 7}, "max_side must be >= 8"),
    ({"texture_floor": 0.0}, "texture_floor must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"exclude_radius": -1}, "exclude_radius must be >= 0"),
])
def test_attention_settings_out_of_range_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        AttentionConfig(**kwargs)


def test_attention_boundaries_are_accepted() -> None:
    config = AttentionConfig(highpass=3, max_side=8, exclude_radius=0)
    assert (config.highpass, config.max_side, config.exclude_radius) == (3, 8, 0)


@pytest.mark.parametrize("kwargs, words", [
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"external_steps": 0}, "external_steps must be > 0"),
    ({"time_budget": 0.0}, "--time-budget must be > 0"),
    ({"time_budget": -1.0}, "--time-budget must be > 0"),
    ({"lambda_external": MAX_LOSS_WEIGHT * 10}, "--lambda-external must be at most"),
    ({"lambda_gan": MAX_LOSS_WEIGHT * 10}, "--lambda-gan must be at most"),
    ({"batch": MAX_BATCH + 1}, f"--batch must be at most {MAX_BATCH}"),
    ({"lambda_l1": 0.0, "lambda_perceptual": 0.0, "lambda_gan": 0.0}, "nothing would be learnt"),
    ({"seed": MAX_SEED + 1}, "--seed must be an integer"),
    ({"ema_decay": 1.0}, r"--ema-decay must be in \[0, 1\)"),
    ({"ema_decay": -0.1}, r"--ema-decay must be in \[0, 1\)"),
    ({"precision": "int8"}, "--precision 'int8' is not valid"),
    ({"device": "tpu"}, "--device 'tpu' is not valid"),
    ({"trainable": "head"}, "--trainable 'head' is not valid"),
    ({"kernel": "gauss"}, "--kernel 'gauss' is not valid"),
    ({"admm_iters": 2}, "--admm-iters > 1 needs --external-hr"),
    ({"stop_min_delta": -0.1}, "stop_min_delta must be >= 0"),
])
def test_adapt_settings_out_of_range_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        AdaptConfig(**kwargs)


def test_adapt_boundaries_are_accepted() -> None:
    """The largest allowed values and the zeros that mean "off" are settings, not errors."""
    config = AdaptConfig(batch=MAX_BATCH, seed=MAX_SEED, ema_decay=0.0, lambda_gan=MAX_LOSS_WEIGHT,
                         prox_mu=MAX_LOSS_WEIGHT, lambda_l1=MAX_LOSS_WEIGHT, lambda_external=MAX_LOSS_WEIGHT,
                         backbone_margin=0.0, stop_min_delta=0.0)
    assert config.batch == MAX_BATCH and config.seed == MAX_SEED
    assert AdaptConfig(lambda_l1=0.0, lambda_perceptual=0.0, lambda_gan=0.5).lambda_gan == 0.5
    assert AdaptConfig(external_hr="hr", admm_iters=2).to_dict()["external_hr"] == "hr"  # type: ignore[arg-type]


def test_gpu_defaults_are_the_paper_s() -> None:
    config = gpu_defaults()
    assert (config.steps, config.lr_patch, config.batch, config.lr, config.ema_decay, config.prox_mu) == \
        (1500, 32, 4, 1e-4, 0.999, 1e-4)
    assert (config.eval_every, config.stop_min_delta, config.stop_patience, config.backbone_margin) == \
        (100, 0.05, 3, 0.0)
    assert (config.eval_max_images, config.max_images, config.max_megapixels, config.feature_bank) == \
        (8, 64, 200.0, 128)
    assert config.time_budget is None and config.precision == "auto" and config.trainable == "auto"
    assert config.attention.max_side == GPU_ATTENTION_MAX_SIDE == 1024


def test_cpu_defaults_fit_a_few_minutes_on_two_cores() -> None:
    config = cpu_demo_defaults()
    assert (config.steps, config.lr_patch, config.eval_every, config.eval_crop, config.eval_max_images) == \
        (100, 24, 50, 128, 4)
    assert (config.max_images, config.max_megapixels, config.feature_bank, config.ema_decay) == (8, 100.0, 200, 0.99)
    assert config.backbone_margin == 0.1 and config.time_budget == CPU_TIME_BUDGET_S == 270.0
    assert config.attention.max_side == 256


def test_each_precision_autocasts_to_its_dtype_and_only_fp16_scales() -> None:
    assert [Precision(name, "cpu").dtype for name in ("fp32", "bf16", "fp16")] == \
        [None, torch.bfloat16, torch.float16]
    assert [Precision(name, "cuda").needs_grad_scaler for name in ("fp32", "bf16", "fp16")] == [False, False, True]
    x = torch.ones(4, 4)
    with Precision("bf16", "cpu").autocast():
        assert (x @ x).dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert (x @ x).dtype == torch.float32


def test_explicit_precisions_on_cpu() -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == Precision("fp32", "cpu")
    assert resolve_precision("bf16", torch.device("cpu")) == Precision("bf16", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_devices_and_gpus_that_do_not_exist_are_refused() -> None:
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda was requested but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="--device 'tpu' is not valid"):
        resolve_device("tpu")
    select_gpu(None)
    for index in (0, -1):
        with pytest.raises(ConfigError, match=f"--gpu {index} is not available: this machine has no CUDA device"):
            select_gpu(index)


def _cpu_with(*flags: str):
    from adassr.runtime.cpu_info import CpuInfo

    return CpuInfo(model_name="Test CPU", vendor="GenuineIntel", family=6, model=143,
                   flags=frozenset({"avx", "avx2", "fma", *flags}), logical_cpus=2, physical_cores=2,
                   threads_per_core=1, clock_mhz=2600.0, clock_source="cpu MHz")


def test_a_cap_at_avx512_keeps_native_bf16(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adassr.adapt.cpu_setup import Bf16Probe, choose_cpu_precision

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert choose_cpu_precision(tmp_path, cpu=_cpu_with("avx512f", "avx512_bf16"),
                                measure=lambda k: Bf16Probe(k, 1.0, 0.5), machine_is_quiet=lambda: False) == "bf16"


def test_bf16_needs_the_minimum_speedup_exactly() -> None:
    from adassr.adapt.cpu_setup import BF16_MIN_SPEEDUP, Bf16Probe

    assert BF16_MIN_SPEEDUP == 1.1
    assert Bf16Probe("k", 1.1, 1.0).choice == "bf16"
    assert Bf16Probe("k", 1.0, 1.0).choice == "fp32"
    assert Bf16Probe("k", 1.0, 2.0).choice == "fp32"


def test_a_cached_probe_with_a_zero_time_is_measured_again(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from adassr.adapt.cpu_setup import CACHE_FILE, Bf16Probe, choose_cpu_precision, probe_key

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = _cpu_with("amx_bf16")
    key = probe_key(cpu)
    assert key.endswith(f"|threads={torch.get_num_threads()}")  # another thread count is measured again
    (tmp_path / CACHE_FILE).write_text(json.dumps({key: {"fp32_s": 1.0, "bf16_s": 0.0}}))
    calls: list[str] = []

    def fake(k: str) -> Bf16Probe:
        calls.append(k)
        return Bf16Probe(k, 1.0, 2.0)

    assert choose_cpu_precision(tmp_path, cpu=cpu, measure=fake, machine_is_quiet=lambda: True) == "fp32"
    assert calls == [key]


def test_an_external_image_exactly_the_hr_patch_is_used(tmp_path) -> None:
    import numpy as np

    from adassr.adapt.external import check_external_images
    from adassr.runtime.images import write_image

    write_image(tmp_path / "edge.png", np.full((96, 130, 3), 100, np.uint8))
    assert check_external_images(tmp_path, min_side=96) == [tmp_path / "edge.png"]


@pytest.mark.parametrize("argv, words", [
    (["--camera", "  "], "error: --camera NAME is required"),
    (["--image", "x.png", "--images", "photos"], "error: use either --images DIR (a camera group) or --image PATH"),
])
def test_adapt_refuses_a_blank_camera_and_both_image_options(tmp_path, capsys, argv: list[str], words: str) -> None:
    from adassr.cli import adapt_main

    assert adapt_main([*argv, "--store", str(tmp_path / "store"), "--device", "cpu"]) == 2
    assert words in capsys.readouterr().err
