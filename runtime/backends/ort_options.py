"""onnxruntime CUDA / TensorRT execution-provider options built from the runtime's settings.

- CUDA EP: ``device_id`` (``--gpu N``); cuDNN may use its largest workspace for convolutions; TF32
  off (``use_tf32=0``), so an fp32 model computes in fp32 as the native TensorRT engines do.
- TensorRT EP: ``device_id``, ``trt_fp16_enable`` (fp16 precision), engine and timing caches in a
  folder inside the store (:func:`ort_trt_cache_dir`, keyed by the ONNX file's sha256, the
  precision, the profiles and the onnxruntime version; onnxruntime adds the GPU's compute
  capability and its TensorRT version to the cached file names and never loads another GPU's
  engine), explicit profiles ``trt_profile_min/opt/max_shapes`` equal to the tile shapes (from
  :func:`adassr.runtime.engines.plan_profiles`), the builder optimisation level.

Pure functions of frozen settings: the result is the ``providers=[(name, options), ...]`` list
that ``onnxruntime.InferenceSession`` takes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adassr.runtime.engines.key import ProfileShape
from adassr.runtime.errors import ConfigError
from adassr.runtime.store import ENGINES_FOLDER, ORT_TRT_CACHE_DIR

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class GpuProviderSettings:
    """What the GPU execution providers need to know."""

    device_id: int = 0
    fp16: bool = False
    cache_dir: Path | None = None
    profiles: tuple[ProfileShape, ...] = ()
    input_name: str = "lr"
    optimization_level: int = 3

    def __post_init__(self) -> None:
        if self.device_id < 0:
            raise ConfigError(f"--gpu must be >= 0, got {self.device_id}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"the TensorRT optimisation level must be 0-5, got {self.optimization_level}")


def _shapes(name: str, profiles: Sequence[ProfileShape], which: str) -> str:
    return ",".join(f"{name}:" + "x".join(str(d) for d in getattr(p, which)) for p in profiles)


def ort_trt_cache_dir(camera_dir: Path, onnx_sha256: str, precision: str, profiles: Sequence[ProfileShape],
                      ort_version: str) -> Path:
    """``<camera>/engines/ort-trt/<onnx sha[:16]>-<precision>-ort<version>-<profiles digest[:8]>``."""
    text = json.dumps([p.to_json() for p in profiles], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return camera_dir / ENGINES_FOLDER / ORT_TRT_CACHE_DIR / f"{onnx_sha256[:16]}-{precision}-ort{ort_version}-{digest}"


def provider_options(providers: Sequence[str], settings: GpuProviderSettings) -> list[tuple[str, dict[str, str]]]:
    """``(provider, options)`` pairs for onnxruntime, in the order of ``providers`` (full EP names)."""
    out: list[tuple[str, dict[str, str]]] = []
    for name in providers:
        options: dict[str, str] = {}
        if name == CUDA_EP:
            # use_tf32 0 (onnxruntime >= 1.18): fp32 convolutions in full fp32, as the TensorRT engines;
            # the CUDA EP's default rounds their inputs to TF32's 10-bit mantissa on Ampere and later
            options = {"device_id": str(settings.device_id), "cudnn_conv_use_max_workspace": "1", "use_tf32": "0"}
        elif name == TRT_EP:
            options = {
                "device_id": str(settings.device_id),
                "trt_fp16_enable": "True" if settings.fp16 else "False",
                "trt_builder_optimization_level": str(settings.optimization_level),
            }
            if settings.cache_dir is not None:
                cache = str(settings.cache_dir)
                options.update({
                    "trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache,
                })
            if settings.profiles:
                for which in ("min", "opt", "max"):
                    options[f"trt_profile_{which}_shapes"] = _shapes(settings.input_name, settings.profiles, which)
        out.append((name, options))
    return out
