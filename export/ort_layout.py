"""Keep onnxruntime's CPU graph in its blocked (NCHWc) layout: scalar multiplies as 1x1 convolutions.

onnxruntime's CPU provider runs convolutions in a blocked channel layout (NCHWc) and converts
back to plain NCHW around any node it cannot run blocked. In RRDBNet the residual scaling of each
RRDB block, ``0.2 * x``, is a Mul by a scalar constant on a tensor that no convolution produces
directly, so it cannot be folded into a convolution; it is run in NCHW, and with it every Concat
that reads its result, with layout conversions (ReorderInput / ReorderOutput nodes) around each
block: memory traffic without arithmetic.

:func:`scalar_muls_as_convs` rewrites such a Mul ``x * c`` (c a scalar constant, x a 4-D tensor
with C channels not produced by a Conv) as a 1x1 Conv with weight ``c * I_C``: the same numbers
(each output is one product plus exact zeros), C * C extra multiply-accumulates per pixel, and
the graph stays blocked. A Mul whose input comes from a Conv is left alone: onnxruntime already
folds it into that Conv's weights. Measured effect: docs/performance.md.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from adassr.runtime.engines.trt import SCALE_AS_CONV_SUFFIX  # bf16 TensorRT builds keep these convolutions fp32

__all__ = ["SCALE_AS_CONV_SUFFIX", "scalar_muls_as_convs"]


def _scalar_constants(model: onnx.ModelProto) -> dict[str, float]:
    values: dict[str, float] = {}
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) == 1:
            values[init.name] = float(numpy_helper.to_array(init).reshape(()))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and int(np.prod(attr.t.dims)) == 1:
                    values[node.output[0]] = float(numpy_helper.to_array(attr.t).reshape(()))
    return values


def _channels(model: onnx.ModelProto, probe: int = 16) -> dict[str, int]:
    """Channel count of every 4-D float tensor, from shape inference at a fixed ``probe`` size."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for dim, value in zip(copy.graph.input[0].type.tensor_type.shape.dim, (1, 3, probe, probe), strict=False):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = shape_inference.infer_shapes(copy, data_prop=True)
    out: dict[str, int] = {}
    for vi in inferred.graph.value_info:
        tt = vi.type.tensor_type
        dims = [d.dim_value for d in tt.shape.dim]
        if tt.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4 and dims[1] > 0:
            out[vi.name] = dims[1]
    return out


def scalar_muls_as_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of the fp32 ``model`` with the scalar Muls rewritten (see the module docstring), and their count."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    scalars = _scalar_constants(out)
    channels = _channels(out)
    producer = {name: node.op_type for node in out.graph.node for name in node.output}
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in out.graph.node:
        if node.op_type == "Mul" and len(node.input) == 2:
            a, b = node.input
            scalar, tensor = (b, a) if b in scalars else (a, b) if a in scalars else (None, None)
            if scalar is not None and tensor is not None and tensor in channels and producer.get(tensor) != "Conv":
                c = channels[tensor]
                weight = (np.eye(c, dtype=np.float32) * np.float32(scalars[scalar])).reshape(c, c, 1, 1)
                weight_name = f"{node.name or node.output[0]}/scale_as_conv_weight"
                out.graph.initializer.append(numpy_helper.from_array(weight, weight_name))
                name = f"{node.name or node.output[0]}{SCALE_AS_CONV_SUFFIX}"
                nodes.append(helper.make_node("Conv", [tensor, weight_name], list(node.output), name=name,
                                              kernel_shape=[1, 1]))
                count += 1
                continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, count
