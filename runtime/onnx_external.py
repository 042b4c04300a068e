"""Find the external-data files an ONNX model refers to, without the ``onnx`` package.

An ONNX tensor may keep its bytes in another file (``TensorProto.data_location == EXTERNAL`` with a
``location`` entry in ``external_data``); onnxruntime then opens that file relative to the model.
The store must know every such file, so this module walks the protobuf wire format of a
``ModelProto`` and returns every ``location`` it finds in the graph's initializers, sparse
initializers, node attributes (``t``, ``tensors``, ``sparse_tensor``) and nested subgraphs
(``g``, ``graphs``), in ``ModelProto.functions`` and in ``ModelProto.training_info``.

Field numbers (onnx.proto3, checked against ``onnx``'s descriptors in the tests): ModelProto.graph 7,
training_info 20, functions 25; TrainingInfoProto.initialization 1, algorithm 2; GraphProto.node 1,
initializer 5, sparse_initializer 15; NodeProto.attribute 5; AttributeProto.t 5, g 6, strings 9
(not descended into), tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23;
SparseTensorProto.values 1, indices 2; TensorProto external_data 13, data_location 14;
StringStringEntryProto.key 1, value 2; FunctionProto.node 7, attribute_proto 11 (defaults). A tensor
marked EXTERNAL without a ``location`` is an error (onnxruntime could not load it).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

from adassr.runtime.errors import StoreError

_MAX_DEPTH = 64


class _Kind(Enum):
    MODEL = "model"
    TRAINING = "training"
    GRAPH = "graph"
    NODE = "node"
    ATTRIBUTE = "attribute"
    SPARSE = "sparse"
    TENSOR = "tensor"
    FUNCTION = "function"


# (message kind, field number) -> kind of the embedded message worth descending into.
_CHILDREN: dict[tuple[_Kind, int], _Kind] = {
    (_Kind.MODEL, 7): _Kind.GRAPH,
    (_Kind.MODEL, 20): _Kind.TRAINING,
    (_Kind.MODEL, 25): _Kind.FUNCTION,
    (_Kind.TRAINING, 1): _Kind.GRAPH,
    (_Kind.TRAINING, 2): _Kind.GRAPH,
    (_Kind.FUNCTION, 7): _Kind.NODE,
    (_Kind.FUNCTION, 11): _Kind.ATTRIBUTE,
    (_Kind.GRAPH, 1): _Kind.NODE,
    (_Kind.GRAPH, 5): _Kind.TENSOR,
    (_Kind.GRAPH, 15): _Kind.SPARSE,
    (_Kind.NODE, 5): _Kind.ATTRIBUTE,
    (_Kind.ATTRIBUTE, 5): _Kind.TENSOR,
    (_Kind.ATTRIBUTE, 6): _Kind.GRAPH,
    (_Kind.ATTRIBUTE, 10): _Kind.TENSOR,
    (_Kind.ATTRIBUTE, 11): _Kind.GRAPH,
    (_Kind.ATTRIBUTE, 22): _Kind.SPARSE,
    (_Kind.ATTRIBUTE, 23): _Kind.SPARSE,
    (_Kind.SPARSE, 1): _Kind.TENSOR,
    (_Kind.SPARSE, 2): _Kind.TENSOR,
}


class _WireError(Exception):
    pass


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """``(field number, wire type, varint value or (start, end) of a length-delimited value)``."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _WireError("length past the end")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _WireError(f"unsupported wire type {wire}")
    if pos != end:
        raise _WireError("field past the end")


def _tensor_locations(data: memoryview, start: int, end: int) -> list[str]:
    external = False
    locations: list[str] = []
    for number, wire, value in _fields(data, start, end):
        if number == 14 and wire == 0:
            external = value == 1
        elif number == 13 and wire == 2 and isinstance(value, tuple):
            key = val = None
            for n2, w2, v2 in _fields(data, *value):
                if w2 == 2 and isinstance(v2, tuple):
                    text = bytes(data[v2[0]:v2[1]]).decode("utf-8", "replace")
                    if n2 == 1:
                        key = text
                    elif n2 == 2:
                        val = text
            if key == "location" and val is not None:
                locations.append(val)
    if external and not locations:
        raise _WireError("a tensor stored externally names no location")
    return locations if external or locations else []


def _walk(data: memoryview, start: int, end: int, kind: _Kind, depth: int, out: list[str]) -> None:
    if depth > _MAX_DEPTH:
        raise _WireError("nesting too deep")
    if kind is _Kind.TENSOR:
        out.extend(_tensor_locations(data, start, end))
        return
    for number, wire, value in _fields(data, start, end):
        child = _CHILDREN.get((kind, number))
        if child is not None and wire == 2 and isinstance(value, tuple):
            _walk(data, value[0], value[1], child, depth + 1, out)


def external_data_files(model: bytes, *, name: str = "model") -> list[str]:
    """The distinct external-data ``location`` values of a serialized ONNX model, in first-seen order.

    Raises :class:`StoreError` when the bytes are not a well-formed protobuf message.
    """
    found: list[str] = []
    try:
        _walk(memoryview(model), 0, len(model), _Kind.MODEL, 0, found)
    except _WireError as exc:
        raise StoreError(f"{name} is not a well-formed ONNX file ({exc}); rerun `adassr export`") from None
    return list(dict.fromkeys(found))
