"""``adassr export --engine tensorrt``: a camera's TensorRT engine, built once per machine type.

:func:`export_engine` makes sure the camera has the ONNX file the engine precision needs
(``model_fp16.onnx`` for fp16; ``model.onnx`` for fp32 and bf16: see
:mod:`adassr.runtime.engines.trt` for how each precision is built), plans the optimisation
profiles from the runtime's tile settings, and calls
:func:`adassr.runtime.engines.manage.ensure_camera_engine`: with ``refit`` (the default) one
weight-stripped refittable base engine per backbone structure x GPU x TensorRT x precision x
profiles is built into ``<store>/_engines`` and each camera's engine is a refit of it with the
camera's weights (only the weights that differ from the backbone, from a base engine built from
the backbone's own ONNX, when the store's fallback export is the camera's backbone: see
:mod:`adassr.runtime.engines.refit`); without, the camera's engine is built from its ONNX. Stored engines that fit
are reused (nothing is built twice); stale ones are rebuilt with a log line saying why.

:func:`export_model_as_camera` exports any in-memory model as a camera (used by the GPU check to
time builds and refits of two cameras of one backbone).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adassr.runtime.engines import ENGINE_PRECISIONS, plan_profiles
from adassr.runtime.engines.manage import (
    EngineRequest,
    EngineResult,
    EngineToolkit,
    TensorRTToolkit,
    ensure_camera_engine,
)
from adassr.runtime.errors import ConfigError
from adassr.runtime.store import CameraStore
from adassr.runtime.tiling import TilingOptions

if TYPE_CHECKING:
    import torch

ONNX_PRECISION_FOR_ENGINE: Mapping[str, str] = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp32"}


@dataclass(frozen=True)
class EngineOptions:
    """How to build a camera's engine."""

    precision: str = "fp16"
    device: int = 0
    optimization_level: int = 3
    refit: bool = True
    tiling: TilingOptions = TilingOptions()
    max_side: int = 1024  # largest untiled input side (tile=0 only)
    streams: int = 2  # profile copies: the runtime's TensorRT backend runs one stream per copy

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if self.device < 0:
            raise ConfigError(f"--gpu must be >= 0, got {self.device}")


def _has_export(store_root: str | os.PathLike[str], camera: str, onnx_precision: str) -> bool:
    store = CameraStore.open(store_root, camera)
    if not store.exists():
        return False
    key = "onnx_fp16" if onnx_precision == "fp16" else "onnx"
    return key in (store.read_manifest().get("exports") or {})


def export_engine(store_root: str | os.PathLike[str], camera: str, options: EngineOptions, *,
                  toolkit: EngineToolkit | None = None, export_missing: bool = True) -> EngineResult:
    """The camera's engine for this machine; exports the needed ONNX first when it is missing."""
    from adassr.export.onnx import export_camera, export_fallback
    from adassr.runtime.store import FALLBACK_CAMERA

    onnx_precision = ONNX_PRECISION_FOR_ENGINE[options.precision]
    if export_missing and not _has_export(store_root, camera, onnx_precision):
        if camera == FALLBACK_CAMERA:
            manifest = CameraStore.open(store_root, camera).read_manifest()
            export_fallback(store_root, str((manifest.get("backbone") or {}).get("name")), precision=onnx_precision)
        else:
            export_camera(store_root, camera, precision=onnx_precision)
    plan = plan_profiles(options.tiling, max_side=options.max_side, copies=options.streams)
    request = EngineRequest(Path(store_root), camera, options.precision, plan.profiles, device=options.device,
                            optimization_level=options.optimization_level, refit=options.refit)
    return ensure_camera_engine(request, toolkit or TensorRTToolkit())


def export_model_as_camera(model: torch.nn.Module, store_root: str | os.PathLike[str], camera: str, *,
                           backbone: str = "realesrgan-x4plus", scale: int = 4, precision: str = "both",
                           validation_image: str | os.PathLike[str] | None = None,
                           backbone_sha256: str | None = None) -> Path:
    """Export ``model`` (CPU, fp32) as camera ``camera`` of a store; returns the camera's folder.

    ``backbone_sha256`` is the digest of the backbone weights ``model`` was adapted from (the
    manifest's ``backbone.weights_sha256``); by default the model's own digest (it is its own
    backbone, as for the fallback camera).
    """
    from adassr.adapt.weights import state_dict_sha256
    from adassr.export.crops import find_validation_photo, validation_inputs
    from adassr.export.onnx import (
        ModelIdentity,
        _fp16_extra,
        build_models,
        publish_models,
        resolve_precisions,
        store_graph_cache,
    )

    precisions = resolve_precisions(precision)
    model = model.float().cpu().eval()
    digest = state_dict_sha256(model.state_dict())
    identity = ModelIdentity(camera, backbone, scale, digest)
    store = CameraStore.open(store_root, camera, create=True)
    photo = find_validation_photo((), validation_image)
    models = build_models(model, identity, precisions, validation_inputs(photo),
                          fp16_extra_inputs=_fp16_extra(precisions), graphs=store_graph_cache(store_root))
    fields: dict[str, Any] = {"backbone": {"name": backbone, "weights_sha256": backbone_sha256 or digest},
                              "scale": scale,
                              "weights_sha256": digest}
    with store.transaction() as tx:
        publish_models(tx, models, identity, fields)
    return store.directory
