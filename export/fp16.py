"""Half-precision ONNX models: fp32 -> fp16 graph conversion and an fp16-storage evaluator.

Conversion (:func:`convert_to_fp16`): every float tensor of the graph becomes float16 (weights,
biases, the 0.2 residual scale, activations) except the nodes named in ``keep_fp32``; Cast nodes
are inserted wherever a tensor crosses between the two precisions. The graph keeps float32 I/O:
the input is cast after the kept-fp32 consumers and the output is cast back to float32, so a
client feeds and reads float32 either way. Resize's ``roi`` / ``scales`` inputs stay float32 (the
ONNX spec requires it).

Which nodes stay in fp32 (:func:`default_fp32_nodes`, policy :data:`FP32_POLICY`):

- the Conv nodes that read the graph input (RRDBNet's ``conv_first``, 3 -> 64 channels, about
  0.01 % of the MACs): rounding the [0, 1] input to fp16 (up to 2.4e-4) is amplified by the
  GAN-trained network to about 0.01 at single output pixels;
- every Add and Mul node: in RRDBNet these are exactly the residual connections (``x + 0.2 *
  conv5``, ``x + 0.2 * rdb3``, ``feat + conv_body``), a running sum over 69 + 23 + 1 additions whose
  value (up to about 7) grows while the increments stay small, so fp16 rounding accumulates there.

Measured with :func:`evaluate_fp16_storage` on the bundled photos and ``tests/data/hr`` (20 inputs),
max abs error vs fp32 for Real-ESRGAN x4plus / RealSR DF2K / x4plus-anime: all fp16 0.012 / 0.030 /
0.010; conv_first in fp32 0.009 / 0.014 / 0.011; conv_first and the residual stream in fp32 (this
policy) 0.0039 / 0.0046 / 0.0038. No activation comes near the fp16 range (largest |activation|
39 / 53 / 53, in dense-block conv outputs, against 65504), so nothing *overflows*; the Casts cost
MAC-free elementwise work (142 Casts for 23 blocks). See docs/export.md.

Evaluation (:func:`evaluate_fp16_storage`): onnxruntime's CPU provider on x86 has no float16 Conv
kernel; it silently inserts Casts and runs an fp16 graph in fp32, so it cannot show an fp16
overflow. This evaluator runs the *same ONNX graph* node by node with torch, computing each node in
float32 (as GPU fp16 kernels accumulate in fp32) and rounding every output to the dtype the graph
declares (float16 tensors round to nearest and overflow to inf exactly as fp16 storage does). It
supports the op set of the RRDBNet export only and raises :class:`Fp16Error` on anything else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    import torch
from onnx import TensorProto, helper, numpy_helper

from adassr.export.errors import ExportError

FP16_MAX = 65504.0

# Ops whose output holds (a selection of) their input values, so fp16 inputs give exact fp16 outputs.
_EXACT_OPS = frozenset({"Concat", "Resize", "Identity", "Relu"})
# Ops whose float inputs / outputs all share one type T (converted as a whole).
_UNIFORM_OPS = frozenset({"Conv", "LeakyRelu", "Concat", "Add", "Mul", "Relu", "Identity"})
# Resize: only input 0 (X) is data; roi (1) and scales (2) stay float32, sizes (3) is int64.
_RESIZE_DATA_INPUTS = frozenset({0})


class Fp16Error(ExportError):
    """The fp16 conversion or evaluation met a graph it does not support."""


FP32_POLICY = "conv_first (reads the float32 input) and the residual sums (every Add and Mul) in float32"


def default_fp32_nodes(model: onnx.ModelProto) -> frozenset[str]:
    """Nodes kept in fp32 by default (:data:`FP32_POLICY`): the Conv nodes reading a graph input,
    and every Add / Mul node (RRDBNet's residual connections)."""
    inputs = {value.name for value in model.graph.input}
    return frozenset(
        n.name
        for n in model.graph.node
        if (n.op_type == "Conv" and inputs.intersection(n.input)) or n.op_type in ("Add", "Mul")
    )


def _data_inputs(node: onnx.NodeProto) -> list[int]:
    """Indices of the node's inputs that carry the node's float type T."""
    if node.op_type == "Resize":
        return [i for i in _RESIZE_DATA_INPUTS if i < len(node.input) and node.input[i]]
    if node.op_type in _UNIFORM_OPS:
        return [i for i, name in enumerate(node.input) if name]
    raise Fp16Error(
        f"fp16 conversion does not support op {node.op_type!r} (node {node.name!r}); "
        "export with --precision fp32, or extend export/fp16.py for this op"
    )


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _check_convertible(model: onnx.ModelProto, keep: frozenset[str]) -> None:
    src = model.graph
    unknown = keep - {n.name for n in src.node}
    if unknown:
        raise Fp16Error(f"keep_fp32 names nodes that are not in the graph: {sorted(unknown)}")
    for value in [*src.input, *src.output]:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise Fp16Error(f"graph I/O {value.name!r} is not float32; convert an fp32 model")


class _Fp16Graph:
    """The converted graph under construction: new nodes, initializers and each tensor's element type."""

    def __init__(self, src: onnx.GraphProto, keep: frozenset[str]) -> None:
        self.keep = keep
        self.initializers = {init.name: init for init in src.initializer}
        # The element type each consumer wants of each initializer (its own type where it is not data).
        self.wanted: dict[str, set[int]] = {}
        for node in src.node:
            data = set(_data_inputs(node))
            for i, name in enumerate(node.input):
                if name in self.initializers:
                    want = self.precision(node) if i in data else self.initializers[name].data_type
                    self.wanted.setdefault(name, set()).add(want)
        self.taken = set(self.initializers) | {v.name for v in src.input} | {n.name for n in src.node}
        self.taken |= {out for n in src.node for out in n.output}
        self.dtype: dict[str, int] = {v.name: v.type.tensor_type.elem_type for v in src.input}
        self.new_inits: dict[str, onnx.TensorProto] = {}
        self.converted: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def precision(self, node: onnx.NodeProto) -> int:
        return TensorProto.FLOAT if node.name in self.keep else TensorProto.FLOAT16

    def as_type(self, name: str, elem: int) -> str:
        """``name`` as a tensor of ``elem``: a converted initializer or the output of a Cast."""
        key = (name, elem)
        if key in self.converted:
            return self.converted[key]
        source_type = self.initializers[name].data_type if name in self.initializers else self.dtype[name]
        if source_type != elem and source_type not in _NUMPY:
            raise Fp16Error(f"tensor {name!r} of element type {source_type} feeds a float input; it cannot be cast")
        if name in self.initializers:
            target = self._initializer_as(name, elem)
        elif self.dtype[name] == elem:
            target = name
        else:
            target = _unique(f"{name}_{_suffix(elem)}", self.taken)
            self.cast(name, target, elem)
        self.converted[key] = target
        return target

    def _initializer_as(self, name: str, elem: int) -> str:
        init = self.initializers[name]
        if init.data_type == elem:
            self.new_inits[name] = init
            return name
        target = name if self.wanted[name] == {elem} else _unique(f"{name}_{_suffix(elem)}", self.taken)
        array = numpy_helper.to_array(init).astype(_NUMPY[elem])
        self.new_inits[target] = numpy_helper.from_array(array, target)
        return target

    def cast(self, source: str, target: str, elem: int) -> None:
        self.nodes.append(helper.make_node("Cast", [source], [target], name=_unique(f"cast_{target}", self.taken),
                                           to=elem))
        self.dtype[target] = elem

    def add_node(self, node: onnx.NodeProto, internal: Mapping[str, str]) -> None:
        """``node`` computed in its precision, its data inputs cast to it; outputs renamed by ``internal``."""
        elem = self.precision(node)
        data = set(_data_inputs(node))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        for i, name in enumerate(node.input):
            name = internal.get(name, name)
            if not name:
                new.input.append(name)
            elif i in data:
                new.input.append(self.as_type(name, elem))
            elif name in self.initializers:
                new.input.append(self.as_type(name, self.initializers[name].data_type))
            else:
                new.input.append(name)
        for i, name in enumerate(node.output):
            new.output[i] = internal.get(name, name)
            self.dtype[new.output[i]] = elem
        self.nodes.append(new)


def convert_to_fp16(model: onnx.ModelProto, *, keep_fp32: Collection[str] | None = None) -> onnx.ModelProto:
    """Return an fp16 copy of the fp32 ``model`` with float32 I/O (see the module docstring).

    ``keep_fp32``: node names computed in fp32 (default :func:`default_fp32_nodes`).
    """
    src = model.graph
    if isinstance(keep_fp32, str):
        raise ExportError(f"keep_fp32 must be a collection of node names, got the string {keep_fp32!r}: pass "
                          f"[{keep_fp32!r}]")
    keep = default_fp32_nodes(model) if keep_fp32 is None else frozenset(keep_fp32)
    _check_convertible(model, keep)
    build = _Fp16Graph(src, keep)
    # Graph outputs produced in fp16 are computed under an internal name and cast back at the end.
    producers = {out: node for node in src.node for out in node.output}
    internal = {
        v.name: _unique(f"{v.name}_{_suffix(TensorProto.FLOAT16)}", build.taken)
        for v in src.output
        if v.name in producers and build.precision(producers[v.name]) == TensorProto.FLOAT16
    }
    for node in src.node:
        build.add_node(node, internal)
    for name, inner in internal.items():
        build.nodes.append(helper.make_node("Cast", [inner], [name], name=_unique(f"cast_{name}", build.taken),
                                           to=TensorProto.FLOAT))
        build.dtype[name] = TensorProto.FLOAT

    graph = helper.make_graph(build.nodes, src.name, list(src.input), list(src.output), list(build.new_inits.values()))
    for info in src.value_info:
        if info.name in build.dtype and info.name not in build.initializers:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(info)
            copy.type.tensor_type.elem_type = build.dtype[info.name]
            graph.value_info.append(copy)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(graph)
    return out


_NUMPY: dict[int, type[np.floating[Any]]] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def _suffix(elem: int) -> str:
    return "fp16" if elem == TensorProto.FLOAT16 else "fp32"


# -- fp16-storage evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class Fp16Evaluation:
    """Output of :func:`evaluate_fp16_storage` and the largest |value| per fp16 tensor producer."""

    output: np.ndarray
    max_abs_fp16: float
    largest: tuple[tuple[str, float], ...]  # (node name, max |output|), largest first, up to 10
    nonfinite_nodes: tuple[str, ...]  # first nodes (up to 10) whose fp16 output held inf / NaN


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def evaluate_fp16_storage(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> Fp16Evaluation:
    """Run ``model`` computing in float32 and storing each tensor in its declared dtype.

    Only the ops of an RRDBNet export (Conv, LeakyRelu, Concat, Add, Mul, Resize nearest, Cast,
    Identity, Relu) are supported. Graphs with several outputs return the first. Values are kept
    as float32 tensors rounded to float16 where the graph says float16 (torch's float16 CPU ops are
    slow; the rounding is the same).
    """
    import torch

    values, types = _initial_values(model, inputs)
    largest: dict[str, float] = {}
    nonfinite: list[str] = []
    with torch.no_grad():
        for node in model.graph.node:
            y, elem = _run_node(node, values, types)
            if elem == TensorProto.FLOAT16:
                y = _stored_fp16(node, y, largest, nonfinite)
            elif elem != TensorProto.FLOAT:
                raise Fp16Error(f"node {node.name!r} produces element type {elem}, not float16/float32")
            values[node.output[0]] = y
            types[node.output[0]] = elem
    output = values[model.graph.output[0].name].numpy()
    ranked = tuple(sorted(largest.items(), key=lambda kv: -kv[1])[:10])
    return Fp16Evaluation(
        output=output,
        max_abs_fp16=max(largest.values(), default=0.0),
        largest=ranked,
        nonfinite_nodes=tuple(nonfinite),
    )


def _initial_values(
    model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The initializers and graph inputs as float32 tensors (already rounded), with their element types."""
    import torch

    values: dict[str, torch.Tensor] = {}
    types: dict[str, int] = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        values[init.name] = torch.from_numpy(array.astype(array.dtype if array.dtype.kind != "f" else np.float32))
        types[init.name] = init.data_type
    for value in model.graph.input:
        values[value.name] = torch.from_numpy(np.asarray(inputs[value.name], dtype=np.float32))
        types[value.name] = TensorProto.FLOAT
    return values, types


def _run_node(node: onnx.NodeProto, values: Mapping[str, torch.Tensor],
              types: Mapping[str, int]) -> tuple[torch.Tensor, int]:
    """One node computed in float32: ``(output, its element type)``."""
    import torch
    from torch.nn import functional as F

    def same_type(names: list[str]) -> int:
        kinds = {types[n] for n in names}
        if len(kinds) != 1:
            raise Fp16Error(
                f"node {node.name!r} ({node.op_type}) mixes element types {sorted(kinds)}: the graph is invalid")
        return kinds.pop()

    a = _attrs(node)
    op, ins = node.op_type, list(node.input)
    if op == "Conv":
        return _conv(node, a, values), same_type([n for n in ins if n])
    if op in ("LeakyRelu", "Relu", "Identity"):
        x = values[ins[0]]
        if op == "LeakyRelu":
            return F.leaky_relu(x, float(a.get("alpha", 0.01))), types[ins[0]]
        return (torch.relu(x) if op == "Relu" else x), types[ins[0]]
    if op == "Concat":
        return torch.cat([values[n] for n in ins], dim=int(a["axis"])), same_type(ins)
    if op in ("Add", "Mul"):
        y = values[ins[0]] + values[ins[1]] if op == "Add" else values[ins[0]] * values[ins[1]]
        return y, same_type(ins[:2])
    if op == "Resize":
        return _resize_nearest(node, a, values), types[ins[0]]
    if op == "Cast":
        return values[ins[0]], int(a["to"])
    raise Fp16Error(f"fp16 evaluation does not support op {op!r} (node {node.name!r})")


def _stored_fp16(
    node: onnx.NodeProto, y: torch.Tensor, largest: dict[str, float], nonfinite: list[str]
) -> torch.Tensor:
    """``y`` rounded to float16 storage; records its largest magnitude and whether it overflowed."""
    import math

    import torch

    op = node.op_type
    if op not in _EXACT_OPS:  # the others move already-rounded values: no new rounding
        y = y.to(torch.float16).to(torch.float32)
    low, high = torch.aminmax(y) if y.numel() else (torch.zeros(()), torch.zeros(()))
    peak = max(-float(low), float(high))  # inf propagates; NaN makes the max NaN below
    peak = peak if not (math.isnan(float(low)) or math.isnan(float(high))) else math.nan
    if not math.isfinite(peak) and len(nonfinite) < 10:
        nonfinite.append(node.name)
    if op != "Cast":
        largest[node.name] = peak if math.isfinite(peak) else math.inf
    return y


def _conv(node: onnx.NodeProto, a: Mapping[str, Any], values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    from torch.nn import functional as F

    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or a.get("group", 1) != 1:
        raise Fp16Error(f"Conv {node.name!r}: only explicit pads and group=1 are supported")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise Fp16Error(f"Conv {node.name!r}: asymmetric pads {pads} are not supported")
    bias = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    return F.conv2d(values[node.input[0]], values[node.input[1]], bias,
                    stride=tuple(a.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                    dilation=tuple(a.get("dilations", [1, 1])))


def _resize_nearest(node: onnx.NodeProto, a: Mapping[str, Any], values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    import torch
    from torch.nn import functional as F

    mode = a.get("mode", b"nearest")
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    if (mode, ctm, nearest) != (b"nearest", b"asymmetric", b"floor") or len(node.input) < 3 or not node.input[2]:
        raise Fp16Error(f"Resize {node.name!r}: only nearest/asymmetric/floor with scales is supported")
    x, scales = values[node.input[0]], values[node.input[2]]
    assert isinstance(x, torch.Tensor) and isinstance(scales, torch.Tensor)
    s = [float(v) for v in scales.tolist()]
    if s[:2] != [1.0, 1.0] or any(v != int(v) or v < 1 for v in s[2:]):
        raise Fp16Error(f"Resize {node.name!r}: only integer spatial scales are supported, got {s}")
    return F.interpolate(x, scale_factor=(s[2], s[3]), mode="nearest")
