"""What computes the trunk features of the weight maps: PyTorch, or onnxruntime on an fp32 CPU.

A weight map needs one forward pass of the backbone's trunk over its LR image (resized to
``max_side``), the largest part of a CPU adaptation's set-up. Where the adaptation runs in fp32,
onnxruntime's CPU convolutions (MLAS, NCHWc layout) are faster than PyTorch's eager ones on the same
threads (``benchmarks/weight_map_trunk.py``, docs/cpu.md). :func:`feature_trunk` therefore returns
an onnxruntime trunk when

- the device is the CPU and the compute precision fp32 (with bf16, PyTorch's bf16 kernels are the
  faster ones and the maps must come from the precision the cache key records), and
- onnxruntime is installed (``adassr[cpu]``; without it PyTorch is used, with a debug line).

The graph is written from the model's structure and weights (:mod:`adassr.adapt.archs.rrdbnet_onnx`,
no tracing) and the session opened at the first map that is not cached, with as many intra-op
threads as PyTorch's pool (one per usable physical core after ``configure_cpu_threads``).
Both trunks give the same features up to float rounding (a test checks 1e-4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.precision import Precision
from adassr.runtime.cpu_info import intra_op_threads
from adassr.runtime.errors import BackendError

log = logging.getLogger(__name__)

FeatureTrunk = Callable[[np.ndarray], torch.Tensor]
"""``H x W x 3`` float32 image in [0, 1] -> ``(1, C, H, W)`` float32 features on the adaptation's device."""


def torch_trunk(model: RRDBNet, *, device: torch.device, precision: Precision) -> FeatureTrunk:
    """The trunk as PyTorch runs it (:func:`adassr.adapt.attention.trunk_features`)."""
    from adassr.adapt.attention import trunk_features

    def run(image: np.ndarray) -> torch.Tensor:
        return trunk_features(model, image, device=device, precision=precision)

    return run


class OnnxRuntimeTrunk:
    """``model.trunk_features`` in an onnxruntime CPU session.

    The graph is written and the session opened at the first call, with the model's weights as they
    are then; later changes to ``model`` do not reach the session.
    """

    def __init__(self, model: RRDBNet, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise BackendError(f"threads must be >= 1 (or None for one per usable physical core), got {threads}")
        self._model = model
        self._threads = threads
        self._session: Any = None

    def _open(self) -> Any:
        import onnxruntime as ort

        from adassr.adapt.archs.rrdbnet_onnx import trunk_graph

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads if self._threads is not None else intra_op_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        graph = trunk_graph(self._model).SerializeToString()
        try:
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated pybind exception types
            raise BackendError(f"onnxruntime cannot load the trunk graph of the weight maps: {exc}") from exc

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        channels = self._model.conv_first.in_channels
        if image.ndim != 3 or image.shape[2] != channels:
            raise BackendError(f"the trunk takes an H x W x {channels} image, got shape {image.shape}")
        if self._session is None:
            self._session = self._open()
        x = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)[None])
        try:
            (features,) = self._session.run(None, {"lr": x})
        except Exception as exc:  # onnxruntime's pybind exception types (a failed allocation, a shape it refuses)
            raise BackendError(f"onnxruntime failed on the trunk of the weight maps for a {image.shape[1]}x"
                               f"{image.shape[0]} image: {exc}") from exc
        return torch.from_numpy(features)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def feature_trunk(model: RRDBNet, *, device: torch.device, precision: Precision) -> FeatureTrunk:
    """The faster trunk for this device and precision (see the module docstring)."""
    if device.type == "cpu" and precision.name == "fp32":
        if _onnxruntime_available():
            return OnnxRuntimeTrunk(model, threads=torch.get_num_threads())
        log.debug("onnxruntime is not installed: the weight maps' trunk runs in PyTorch")
    return torch_trunk(model, device=device, precision=precision)
