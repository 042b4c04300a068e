"""RRDBNet's trunk (``RRDBNet.trunk_features``) written out as an ONNX graph, node by node.

The weight maps of an adaptation need one trunk forward pass per LR image, the largest part of the
set-up on a CPU. PyTorch's eager convolutions reach about 55% of a 2-core AVX2 CPU's fp32 peak on
that pass; onnxruntime's (MLAS, NCHWc) about 87% (docs/cpu.md). Tracing the model with
``torch.onnx.export`` costs 13-34 s on such a CPU, more than it would save, so the graph is built
here directly from the module's structure and weights (well under a second): the same operations in
the same order as :mod:`adassr.adapt.archs.rrdbnet`::

    feat  = Conv(x; conv_first)
    RDB:    c_k = LeakyRelu(Conv(Concat(x, c_1..c_{k-1}); conv_k), 0.2) for k = 1..4
            out = x + 0.2 * Conv(Concat(x, c_1..c_4); conv5)
    RRDB:   out = x + 0.2 * rdb3(rdb2(rdb1(x)))
    trunk = feat + Conv(body(feat); conv_body)

Input ``lr`` (1, C_in, H, W) float32, output ``features`` (1, num_feat, H, W), H and W dynamic.
A test checks the graph against ``RRDBNet.trunk_features`` on random weights and on a real photo.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adassr.adapt.archs.rrdbnet import LRELU_SLOPE, RESIDUAL_SCALE, RRDBNet

INPUT_NAME = "lr"
OUTPUT_NAME = "features"
OPSET = 17
_SCALE = "residual_scale"


class _GraphWriter:
    """Collects nodes and initializers; every helper returns the name of the value it produced."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.asarray(RESIDUAL_SCALE, np.float32), _SCALE)
        ]

    def conv(self, x: str, module: str) -> str:
        weight, bias = f"{module}.weight", f"{module}.bias"
        for name in (weight, bias):
            self.initializers.append(numpy_helper.from_array(self.state[name], name))
        kernel = self.state[weight].shape[-1]
        out = f"{module}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, weight, bias], [out], name=module, kernel_shape=[kernel, kernel],
            pads=[kernel // 2] * 4, strides=[1, 1],
        ))
        return out

    def lrelu(self, x: str) -> str:
        out = f"{x}.lrelu"
        self.nodes.append(helper.make_node("LeakyRelu", [x], [out], name=out, alpha=LRELU_SLOPE))
        return out

    def concat(self, inputs: list[str], name: str) -> str:
        self.nodes.append(helper.make_node("Concat", inputs, [name], name=name, axis=1))
        return name

    def scaled_residual(self, x: str, y: str, name: str) -> str:
        """``x + 0.2 * y``."""
        scaled = f"{name}.scaled"
        self.nodes.append(helper.make_node("Mul", [y, _SCALE], [scaled], name=scaled))
        self.nodes.append(helper.make_node("Add", [x, scaled], [name], name=name))
        return name

    def add(self, x: str, y: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [x, y], [name], name=name))
        return name


def _dense_block(writer: _GraphWriter, x: str, prefix: str) -> str:
    features = [x]
    for k in range(1, 5):
        joined = features[0] if len(features) == 1 else writer.concat(features, f"{prefix}.cat{k}")
        features.append(writer.lrelu(writer.conv(joined, f"{prefix}.conv{k}")))
    last = writer.conv(writer.concat(features, f"{prefix}.cat5"), f"{prefix}.conv5")
    return writer.scaled_residual(x, last, f"{prefix}.out")


def trunk_graph(model: RRDBNet) -> onnx.ModelProto:
    """The ONNX model of ``model.trunk_features`` with the model's current weights (float32, CPU copies)."""
    state = {name: tensor.detach().to("cpu").float().numpy() for name, tensor in model.state_dict().items()}
    writer = _GraphWriter(state)
    feat = writer.conv(INPUT_NAME, "conv_first")
    h = feat
    for i in range(model.num_block):
        block_in = h
        for j in (1, 2, 3):
            h = _dense_block(writer, h, f"body.{i}.rdb{j}")
        h = writer.scaled_residual(block_in, h, f"body.{i}.out")
    writer.add(feat, writer.conv(h, "conv_body"), OUTPUT_NAME)
    in_ch = state["conv_first.weight"].shape[1]
    out_ch = state["conv_body.weight"].shape[0]
    graph = helper.make_graph(
        writer.nodes, "rrdbnet_trunk",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, in_ch, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, out_ch, "height", "width"])],
        initializer=writer.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="adassr")
