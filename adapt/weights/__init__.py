"""Backbone weights: bundled ncnn models (converted and cached), ``.pth`` and safetensors files.

Public entry points: :func:`load_backbone` (registered backbone, default Real-ESRGAN x4plus),
:func:`load_checkpoint` (official ``.pth``), :func:`load_safetensors_weights` /
:func:`save_safetensors_weights` (full weights), :func:`save_delta_weights` (a camera's adapted
weights as the tensors that differ from its backbone, rebuilt on load). Each loader returns a :class:`LoadedBackbone`.
"""

from __future__ import annotations

from adassr.adapt.weights.cache import CACHE_ENV, backbone_cache_path, default_cache_dir
from adassr.adapt.weights.checkpoints import (
    load_checkpoint,
    load_safetensors_weights,
    read_pth_state,
    save_delta_weights,
    save_safetensors_weights,
)
from adassr.adapt.weights.loader import load_backbone
from adassr.adapt.weights.ncnn_format import convert_ncnn
from adassr.adapt.weights.state import LoadedBackbone, state_dict_sha256

__all__ = [
    "CACHE_ENV",
    "LoadedBackbone",
    "backbone_cache_path",
    "convert_ncnn",
    "default_cache_dir",
    "load_backbone",
    "load_checkpoint",
    "load_safetensors_weights",
    "read_pth_state",
    "save_delta_weights",
    "save_safetensors_weights",
    "state_dict_sha256",
]
