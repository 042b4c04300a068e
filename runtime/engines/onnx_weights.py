"""The weights of ONNX exports: structure hash, which initializers two exports differ in, reading them.

Two exports of one network (a camera adapted from a backbone, and the backbone itself) have the
same graph and the same initializer names, data types and dimensions; only some initializer
values differ (tail training changes the last blocks and the upsampler). The comparison is made
on the ONNX files themselves, not on PyTorch parameter names, because the export renames and adds
tensors (scalar multiplies written as 1x1 convolutions, the fp16 conversion), and what TensorRT
refits are the ONNX initializers by name.

- :func:`structure_sha256`: sha256 of the graph without initializer values and without the
  model's metadata and doc strings: what a weight-stripped base engine is keyed by.
- :func:`diff_initializers` / :func:`diff_onnx_files`: the names of the initializers whose values
  differ (bit for bit); :class:`~adassr.runtime.errors.WeightsError` when the two are not the same
  structure.
- :func:`read_initializers`: some initializers of a file as numpy arrays (the values a partial
  refit sets).

Needs the ``onnx`` package (imported when first used; it comes with ``adassr[adapt]``), but no torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adassr.runtime.errors import BackendError, WeightsError

if TYPE_CHECKING:
    import onnx


def onnx_available() -> bool:
    """Whether the ``onnx`` package imports here."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        from adassr.runtime.install import pip_command

        raise BackendError(f"reading ONNX weights needs the onnx package ({exc}); {pip_command()} install "
                           "onnx") from exc


def load_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX model in ``path`` with its weights; BackendError if it cannot be read."""
    _onnx()
    import onnx

    try:
        return onnx.load(str(path))
    except OSError as exc:
        raise BackendError(f"cannot read ONNX model {path}: {exc}; re-export it with `adassr export`") from exc
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError; re-raised typed
        raise BackendError(f"cannot parse ONNX model {path}: {exc}; re-export it with `adassr export`") from exc


def _stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.metadata_props[:]
    copy.doc_string = ""
    copy.producer_version = ""
    copy.graph.doc_string = ""
    for init in copy.graph.initializer:
        dims, dtype, name = list(init.dims), init.data_type, init.name
        init.Clear()
        init.dims.extend(dims)
        init.data_type = dtype
        init.name = name
    return copy


def structure_sha256(model: onnx.ModelProto) -> str:
    """Hex sha256 of ``model``'s structure; ``model`` is not modified.

    Covers the graph's nodes (op types, names, inputs, outputs, attributes, Constant values), its
    inputs and outputs with their types and shapes, the opset imports, and each initializer's
    name, data type and dimensions, but not the initializer values, nor the model's
    ``metadata_props`` and doc strings (which name the camera and its weights).
    """
    return hashlib.sha256(_stripped(model).SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class WeightDiff:
    """Which initializers of a camera's export differ from the backbone's export."""

    changed: tuple[str, ...]  # initializer names whose values differ, in the camera graph's order
    total: int  # initializers compared

    @property
    def summary(self) -> str:
        """``partial: N of M weights``."""
        return f"partial: {len(self.changed)} of {self.total} weights"


def _structure_difference(camera: onnx.ModelProto, backbone: onnx.ModelProto) -> str:
    """A phrase naming the first structural difference (for the error message)."""
    import onnx

    mine = {i.name: (i.data_type, tuple(i.dims)) for i in camera.graph.initializer}
    theirs = {i.name: (i.data_type, tuple(i.dims)) for i in backbone.graph.initializer}
    extra, missing = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    if extra or missing:
        return f"initializers only in the camera's export {extra[:3]}, only in the backbone's {missing[:3]}"
    for name, (dtype, dims) in mine.items():
        if theirs[name] != (dtype, dims):
            other_dtype, other_dims = theirs[name]
            return (f"initializer {name!r} is {onnx.helper.tensor_dtype_to_np_dtype(dtype)} {list(dims)} in the "
                    f"camera's export, {onnx.helper.tensor_dtype_to_np_dtype(other_dtype)} {list(other_dims)} "
                    "in the backbone's")
    if len(camera.graph.node) != len(backbone.graph.node):
        counts = len(camera.graph.node), len(backbone.graph.node)
        return f"{counts[0]} graph nodes in the camera's export, {counts[1]} in the backbone's"
    for a, b in zip(camera.graph.node, backbone.graph.node, strict=True):
        if a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True):
            return f"node {a.name or a.op_type!r} differs from the backbone's {b.name or b.op_type!r}"
    return "the graphs' inputs, outputs or opsets differ"


def diff_initializers(camera: onnx.ModelProto, backbone: onnx.ModelProto) -> WeightDiff:
    """The initializers of ``camera`` whose values differ from ``backbone``'s (bit for bit).

    Raises WeightsError if the two are not the same network structure (see
    :func:`structure_sha256`): then no weight-by-weight refit of one from the other is possible.
    """
    from onnx import numpy_helper

    if structure_sha256(camera) != structure_sha256(backbone):
        raise WeightsError(
            "the camera's ONNX export and the backbone's are not the same network structure ("
            f"{_structure_difference(camera, backbone)}); export both with this adassr and the same "
            "--precision to refit only the changed weights"
        )
    theirs = {init.name: init for init in backbone.graph.initializer}
    changed = []
    for init in camera.graph.initializer:
        mine = numpy_helper.to_array(init)
        other = numpy_helper.to_array(theirs[init.name])
        if mine.dtype != other.dtype or mine.tobytes() != other.tobytes():
            changed.append(init.name)
    return WeightDiff(tuple(changed), len(camera.graph.initializer))


def diff_onnx_files(camera: str | Path, backbone: str | Path) -> WeightDiff:
    """:func:`diff_initializers` of two ONNX files."""
    return diff_initializers(load_model(camera), load_model(backbone))


def read_initializers(path: str | Path, names: Collection[str]) -> dict[str, np.ndarray]:
    """The initializers ``names`` of the ONNX model in ``path``, as contiguous numpy arrays.

    BackendError if one of them is not an initializer of that model.
    """
    from onnx import numpy_helper

    model = load_model(path)
    wanted = set(names)
    arrays = {init.name: np.ascontiguousarray(numpy_helper.to_array(init))
              for init in model.graph.initializer if init.name in wanted}
    missing = sorted(wanted - set(arrays))
    if missing:
        raise BackendError(f"{path} has no initializers {missing[:5]}; it is not the model the refit was planned for")
    return arrays
