"""The fp16 converter and the fp16-storage evaluator on small hand-made ONNX graphs.

The export tests run both on the tiny RRDBNet only, so whatever that model never reaches went untested:
each test here was written against a change that mutation testing made unnoticed (it fails under it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adassr.export.fp16 import Fp16Error, convert_to_fp16, evaluate_fp16_storage

X = np.array([[0.1, 0.5, 1.0, 2.0]], np.float32)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: Sequence[str] = ("y",),
           itype: int = TensorProto.FLOAT, otype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", itype, [1, 4])],
                              [helper.make_tensor_value_info(o, otype, [1, 4]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _const(name: str, value: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _run(model: onnx.ModelProto, x: np.ndarray = X) -> list[Any]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _conv(w: Any, bias: Sequence[float] = (0.5,), **attrs: Any) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(w, np.float32), "w"), _const("b", list(bias))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_the_converter_refuses_what_it_cannot_convert() -> None:
    """A misspelt keep_fp32 node once gave a fully fp16 model without a word; an op, or graph I/O, the
    converter does not handle must be refused, not converted wrongly."""
    mul = _model([helper.make_node("Mul", ["x", "k"], ["y"], name="m")], [_const("k", 2.0)])
    with pytest.raises(Fp16Error, match="not in the graph"):
        convert_to_fp16(mul, keep_fp32=["mm"])
    identity16 = _model([helper.make_node("Identity", ["x"], ["y"], name="i")], [],
                        itype=TensorProto.FLOAT16, otype=TensorProto.FLOAT16)
    with pytest.raises(Fp16Error, match="not float32"):
        convert_to_fp16(identity16, keep_fp32=[])
    with pytest.raises(Fp16Error, match="'y' is not float32"):
        convert_to_fp16(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [], otype=TensorProto.DOUBLE),
                        keep_fp32=[])
    with pytest.raises(Fp16Error, match="does not support op 'Sigmoid'"):
        convert_to_fp16(_model([helper.make_node("Sigmoid", ["x"], ["y"], name="s")], []), keep_fp32=[])


def test_the_default_policy_keeps_add_and_mul_in_fp32() -> None:
    model = _model([helper.make_node("Mul", ["x", "k"], ["a"], name="m0"),
                    helper.make_node("Relu", ["a"], ["y"], name="r")], [_const("k", 3.0)])
    half = convert_to_fp16(model)
    assert {i.name: i.data_type for i in half.graph.initializer} == {"k": TensorProto.FLOAT}
    assert [n.op_type for n in half.graph.node] == ["Mul", "Cast", "Relu", "Cast"]


def test_graphs_the_rrdbnet_export_never_makes_convert_to_valid_models() -> None:
    """An initializer read by an fp16 and an fp32 node, a generated name already in the graph, and a graph
    output that another node reads each gave an invalid model (inconsistent types, not SSA, KeyError)."""
    shared = _model([helper.make_node("Mul", ["x", "k"], ["a"], name="m0"),
                     helper.make_node("Mul", ["a", "k"], ["y"], name="m1")], [_const("k", 3.0)])
    clash = _model([helper.make_node("Mul", ["x", "k"], ["x_fp16"], name="n0"),
                    helper.make_node("Mul", ["x", "x_fp16"], ["y"], name="n1")], [_const("k", 2.0)])
    reread = _model([helper.make_node("Relu", ["x"], ["y"], name="r"),
                     helper.make_node("Mul", ["y", "k"], ["z"], name="m")], [_const("k", 2.0)], outputs=("y", "z"))
    for model, keep, want in [(shared, ["m1"], [X * 9]), (clash, ["n0"], [X * X * 2]), (reread, [], [X, 2 * X])]:
        half = convert_to_fp16(model, keep_fp32=keep)
        onnx.checker.check_model(half, full_check=True)
        for got, expected in zip(_run(half), want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_the_evaluation_reports_the_largest_activations_first_and_their_max() -> None:
    """What the manifest records (max_abs_activation, largest_activations): ranked, the max (not the min),
    Cast nodes left out."""
    model = _model([helper.make_node("Mul", ["x", "k"], ["a"], name="big"),
                    helper.make_node("Mul", ["a", "k2"], ["y"], name="small")],
                   [_const("k", 100.0), _const("k2", 0.01)])
    e = evaluate_fp16_storage(convert_to_fp16(model, keep_fp32=[]), {"x": X})
    assert e.largest == (("big", 200.0), ("small", 2.0)) and e.max_abs_fp16 == 200.0 and e.nonfinite_nodes == ()
    nan = evaluate_fp16_storage(convert_to_fp16(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], []),
                                                keep_fp32=[]), {"x": np.array([[np.nan, 1, 1, 1]], np.float32)})
    assert nan.largest == (("r", np.inf),) and nan.max_abs_fp16 == np.inf


def test_a_negative_overflow_is_found_and_at_most_ten_nodes_are_named() -> None:
    model = _model([helper.make_node("Mul", ["x", "k"], ["y"], name="m")], [_const("k", 1000.0)])
    e = evaluate_fp16_storage(convert_to_fp16(model, keep_fp32=[]), {"x": np.array([[-100, 1, 1, 1]], np.float32)})
    assert e.nonfinite_nodes == ("m",) and e.max_abs_fp16 == np.inf
    nodes = [helper.make_node("Mul", ["x", "k"], ["t0"], name="n0")]
    nodes += [helper.make_node("Mul", [f"t{i}", "one"], [f"t{i + 1}"], name=f"n{i + 1}") for i in range(11)]
    nodes += [helper.make_node("Identity", ["t11"], ["y"], name="id")]
    chain = convert_to_fp16(_model(nodes, [_const("k", 40000.0), _const("one", 1.0)]), keep_fp32=[])  # 2 x 40000
    e = evaluate_fp16_storage(chain, {"x": X})
    assert e.nonfinite_nodes == tuple(f"n{i}" for i in range(10)) and len(e.largest) == 10


def test_the_evaluator_follows_each_op_s_attributes() -> None:
    x = np.array([[-1.0, -2.0, 3.0, 4.0]], np.float32)
    for node, want in [
        (helper.make_node("LeakyRelu", ["x"], ["y"], name="l", alpha=0.1), np.where(x < 0, 0.1 * x, x)),
        (helper.make_node("Relu", ["x"], ["y"], name="r"), np.maximum(x, 0)),
    ]:
        np.testing.assert_allclose(evaluate_fp16_storage(_model([node], []), {"x": x}).output, want, rtol=1e-6)
    cat = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["y"], name="c", axis=0)], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    assert evaluate_fp16_storage(helper.make_model(cat), {"x": x}).output.shape == (2, 4)
    fine = np.array([[1 + 2**-12, 1, 1, 1]], np.float32)  # an fp32 graph input is not rounded to fp16
    identity = _model([helper.make_node("Identity", ["x"], ["y"], name="i")], [])
    assert evaluate_fp16_storage(identity, {"x": fine}).output[0, 0] == np.float32(1 + 2**-12)


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2], pads=[1, 1, 1, 1]), dict(dilations=[2, 2], pads=[2, 2, 2, 2])])
def test_the_evaluator_s_conv_strides_and_dilations_match_onnxruntime(attrs: dict[str, Any]) -> None:
    model = _conv(np.random.default_rng(0).random((1, 1, 3, 3)), **attrs)
    x = np.random.default_rng(1).random((1, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(evaluate_fp16_storage(model, {"x": x}).output, _run(model, x)[0], rtol=1e-5)


def test_conv_outputs_are_stored_in_fp16_where_overflow_shows() -> None:
    """Treating Conv as exact hid the very overflow the evaluation exists to find."""
    x = np.full((1, 1, 4, 4), 300, np.float32)  # 300 * 300 = 9e4 > 65504
    e = evaluate_fp16_storage(convert_to_fp16(_conv(np.full((1, 1, 1, 1), 300)), keep_fp32=[]), {"x": x})
    assert e.nonfinite_nodes == ("c",)
    v = 1 + 2**-10  # exact in fp16; v * v + 0.5 is not
    e = evaluate_fp16_storage(convert_to_fp16(_conv(np.full((1, 1, 1, 1), v)), keep_fp32=[]),
                              {"x": np.full((1, 1, 4, 4), v, np.float32)})
    assert e.output[0, 0, 0, 0] == np.float32(np.float16(v * v + 0.5)) != np.float32(v * v + 0.5)


@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 0, 0]), dict(auto_pad="SAME_UPPER")])
def test_conv_paddings_the_evaluator_does_not_compute_are_refused(attrs: dict[str, Any]) -> None:
    with pytest.raises(Fp16Error):
        evaluate_fp16_storage(_conv(np.ones((1, 1, 3, 3)), **attrs), {"x": np.ones((1, 1, 4, 4), np.float32)})


def test_a_grouped_conv_and_resizes_other_than_integer_nearest_are_refused() -> None:
    grouped = _conv(np.ones((2, 1, 1, 1)), bias=(0.5, 0.5), group=2)
    with pytest.raises(Fp16Error, match="group"):
        evaluate_fp16_storage(grouped, {"x": np.ones((1, 2, 4, 4), np.float32)})
    for attrs, scales in [
        (dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 2, 2]),
        (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 1.5, 1.5]),
    ]:
        graph = helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", **attrs)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_const("s", scales)])
        with pytest.raises(Fp16Error, match="Resize"):
            evaluate_fp16_storage(helper.make_model(graph), {"x": np.ones((1, 1, 2, 2), np.float32)})
