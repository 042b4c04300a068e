"""The structure hash of an ONNX model: what a refittable TensorRT base engine is keyed by.

Two exports of one backbone that differ only in their weight values (two cameras adapted from
it) have the same structure hash, so one refittable engine serves both after a refit. The hash
covers the graph's nodes (op types, names, inputs, outputs, attributes, Constant values), its
inputs and outputs with their types and shapes, the opset imports, and each initializer's name,
data type and dimensions, but not the initializer values, nor the model's ``metadata_props`` and
doc strings (which name the camera and its weights).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def structure_sha256(model: onnx.ModelProto) -> str:
    """Hex sha256 of ``model``'s structure (see the module docstring); ``model`` is not modified."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.metadata_props[:]
    copy.doc_string = ""
    copy.producer_version = ""
    graph = copy.graph
    graph.doc_string = ""
    for init in graph.initializer:
        dims, dtype, name = list(init.dims), init.data_type, init.name
        init.Clear()
        init.dims.extend(dims)
        init.data_type = dtype
        init.name = name
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
