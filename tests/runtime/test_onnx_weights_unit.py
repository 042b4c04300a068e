"""The ONNX weight reading a partial TensorRT refit relies on, on small real models (no TensorRT, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from adassr.runtime.engines.onnx_weights import diff_initializers, read_initializers, structure_sha256
from adassr.runtime.errors import BackendError, WeightsError

from ._models import build_tiny_sr


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _add_one(model: onnx.ModelProto, name: str) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1, name))


def test_the_structure_hash_ignores_metadata_and_doc_strings_and_leaves_the_model_as_it_was() -> None:
    base = onnx.load_from_string(build_tiny_sr(seed=3))
    described = onnx.load_from_string(build_tiny_sr(seed=4, metadata={"camera": "canon"}))
    described.doc_string, described.producer_version, described.graph.doc_string = "camera", "9.9", "graph"
    before = described.SerializeToString(deterministic=True)
    assert structure_sha256(described) == structure_sha256(base)  # other values and metadata: one structure
    assert described.SerializeToString(deterministic=True) == before
    renamed = _copy(base)
    renamed.graph.initializer[0].name = "w0_renamed"
    assert structure_sha256(renamed) != structure_sha256(base)


def test_the_diff_counts_every_initializer_and_keeps_the_graph_order() -> None:
    base = onnx.load_from_string(build_tiny_sr(seed=3))
    changed = _copy(base)
    _add_one(changed, "b2")
    _add_one(changed, "w0")
    diff = diff_initializers(changed, base)
    names = [i.name for i in base.graph.initializer]
    assert names.index("w0") < names.index("b2")  # the graph's order, not the names' sorted one
    assert diff.changed == ("w0", "b2") and diff.total == len(names)


def test_the_diff_is_bit_for_bit_a_one_ulp_change_counts() -> None:
    base = onnx.load_from_string(build_tiny_sr(seed=3))
    changed = _copy(base)
    init = next(i for i in changed.graph.initializer if i.name == "b2")
    values = numpy_helper.to_array(init).copy()
    values[1] = np.nextafter(values[1], np.float32(1))
    init.CopyFrom(numpy_helper.from_array(values, "b2"))
    assert diff_initializers(changed, base).changed == ("b2",)


def test_a_graph_with_another_node_count_is_a_weights_error() -> None:
    base = onnx.load_from_string(build_tiny_sr(seed=3))
    longer = _copy(base)
    longer.graph.node.append(onnx.helper.make_node("Identity", ["sr"], ["sr_copy"]))
    with pytest.raises(WeightsError, match=f"{len(base.graph.node) + 1} graph nodes in the camera's export"):
        diff_initializers(longer, base)


def test_read_initializers_returns_just_the_names_asked_for_also_from_external_data(tmp_path: Path) -> None:
    model = onnx.load_from_string(build_tiny_sr(seed=3))
    expected = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    arrays = read_initializers(path, ["w1"])
    assert list(arrays) == ["w1"] and np.array_equal(arrays["w1"], expected)


def test_a_missing_or_damaged_model_file_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot read ONNX model"):
        read_initializers(tmp_path / "absent.onnx", ["w1"])
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07this is not an onnx model" * 10)
    with pytest.raises(BackendError, match="cannot parse ONNX model"):
        read_initializers(damaged, ["w1"])
