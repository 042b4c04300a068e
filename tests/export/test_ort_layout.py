"""Scalar Muls as 1x1 Convs: same outputs, only the Muls onnxruntime cannot fold are rewritten."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from adassr.export.ort_layout import scalar_muls_as_convs

from ..runtime._models import build_tiny_sr


def _block_model() -> onnx.ModelProto:
    """RRDB-like: c1 = conv(x); s = c1 + x'; out = concat(0.2 * s, conv(s) * 0.5) (the second Mul follows a Conv)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w0"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(np.array(0.2, np.float32), "c02")]
    nodes = [helper.make_node("Conv", ["lr", "w0"], ["a"], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w1"], ["b"], pads=[1] * 4),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Mul", ["s", "c02"], ["scaled"], name="outer_scale"),
             helper.make_node("Constant", [], ["c05"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
             helper.make_node("Conv", ["s", "w2"], ["d"], pads=[1] * 4),
             helper.make_node("Mul", ["c05", "d"], ["half"], name="after_conv"),
             helper.make_node("Concat", ["scaled", "half"], ["sr"], axis=1)]
    return _checked_model(nodes, inits, "block", out_channels=16)


def _checked_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], name: str, *,
                   out_channels: int) -> onnx.ModelProto:
    """A checked opset-17 model of ``nodes`` from ``lr`` (N x 3 x H x W) to ``sr`` (N x out_channels x H x W)."""
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", out_channels, "H", "W"])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"lr": x})[0])


def test_only_unfoldable_scalar_muls_become_convs() -> None:
    model = _block_model()
    rewritten, count = scalar_muls_as_convs(model)
    assert count == 1
    ops = {n.name or n.output[0]: n.op_type for n in rewritten.graph.node}
    assert "outer_scale" not in ops and ops["outer_scale/scale_as_conv"] == "Conv"
    assert ops["after_conv"] == "Mul"  # onnxruntime folds this one into the Conv before it
    assert [n.op_type for n in model.graph.node].count("Mul") == 2  # the input model is untouched
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(1).random((2, 3, 13, 17), dtype=np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=0, atol=1e-6)


def test_model_without_scalar_muls_is_unchanged() -> None:
    model = onnx.load_from_string(build_tiny_sr(seed=0))
    rewritten, count = scalar_muls_as_convs(model)
    assert count == 0 and [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


def test_bf16_engines_keep_the_scalings_written_as_convs_in_fp32() -> None:
    """The residual scaling 0.2 * x became a 1x1 Conv here, so a bf16 TensorRT build, which pinned only
    elementwise layers and the first convolution to fp32, ran these products in bf16 (a helper's review)."""
    from adassr.runtime.engines.trt import keeps_fp32

    rewritten, _ = scalar_muls_as_convs(_block_model())
    convs = {n.name or n.output[0]: n for n in rewritten.graph.node if n.op_type == "Conv"}
    pinned = {name for name, node in convs.items()
              if keeps_fp32("CONVOLUTION", name, reads_input=node.input[0] == "lr")}
    assert pinned == {"outer_scale/scale_as_conv", next(name for name, n in convs.items() if n.input[0] == "lr")}
    assert keeps_fp32("ELEMENTWISE", "any", reads_input=False) and not keeps_fp32("CONCATENATION", "x", False)


def _mixed_model() -> onnx.ModelProto:
    """Input scaling (a Mul on the graph input), a Constant-node scalar written first, two unnamed Muls
    with different scalars, an Add of a scalar (not a Mul: kept), an int64 and a 5-D scalar Mul (kept)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w0"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(np.array(0.3, np.float32), "c03"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "k"),
             numpy_helper.from_array(np.array(3, np.int64), "i3"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    nodes = [helper.make_node("Mul", ["lr", "k"], ["x0"]),
             helper.make_node("Conv", ["x0", "w0"], ["a"], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w1"], ["b"], pads=[1] * 4),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Constant", [], ["c02"], value=numpy_helper.from_array(np.array(0.2, np.float32))),
             helper.make_node("Mul", ["c02", "s"], ["p"]),
             helper.make_node("Mul", ["s", "c03"], ["q"]),
             helper.make_node("Add", ["s", "c03"], ["r"]),
             helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT64),
             helper.make_node("Mul", ["si", "i3"], ["ti"]),
             helper.make_node("Cast", ["ti"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["s", "ax"], ["s5"]),
             helper.make_node("Mul", ["s5", "c03"], ["u5"]),
             helper.make_node("Squeeze", ["u5", "ax"], ["u"]),
             helper.make_node("Concat", ["p", "q", "r", "t", "u"], ["sr"], axis=1)]
    return _checked_model(nodes, inits, "mixed", out_channels=40)


def test_only_float_4d_scalar_muls_not_after_a_conv_are_rewritten_whichever_side_the_scalar_is_on() -> None:
    model = _mixed_model()
    rewritten, count = scalar_muls_as_convs(model)
    assert count == 2  # p (a Constant node's scalar, written first) and q; not the input's Mul, the Add,
    ops = {n.output[0]: n.op_type for n in rewritten.graph.node}  # the int64 Mul or the 5-D Mul
    assert (ops["p"], ops["q"], ops["x0"], ops["r"], ops["ti"], ops["u5"]) == ("Conv", "Conv", "Mul", "Add", "Mul",
                                                                              "Mul")
    assert len({i.name for i in rewritten.graph.initializer}) == len(rewritten.graph.initializer)
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(3).random((1, 3, 7, 9), dtype=np.float32) * 255
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=0, atol=1e-5)
