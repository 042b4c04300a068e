"""Partial refits: which weights a camera's export changes against the backbone's, and the bookkeeping.

The weight comparison runs for real on ONNX exports of a tiny RRDBNet (backbone, a camera whose
tail was changed, a camera equal to the backbone), in fp32 and fp16. The engine bookkeeping runs
with a toolkit standing in for TensorRT: its "engine" is a JSON map of weight name -> value hash,
so a test can check that a base built from the backbone's ONNX plus the named changed weights is
exactly the camera's weights. That shows the decision logic is right, not that TensorRT accepts
the refit (``tests/runtime/test_tensorrt_gpu.py`` checks that on a GPU box).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.weights import state_dict_sha256
from adassr.export.tensorrt import export_model_as_camera
from adassr.runtime.engines import EngineKey, GpuIdentity, ProfileShape
from adassr.runtime.engines.manage import EngineRequest, EngineResult, ensure_camera_engine
from adassr.runtime.engines.onnx_weights import WeightDiff, diff_initializers, diff_onnx_files, read_initializers
from adassr.runtime.engines.refit import PartialRefitError, RefitReport
from adassr.runtime.errors import BackendError, WeightsError
from adassr.runtime.store import CameraStore

from ..runtime._models import build_tiny_sr

TAIL = ("conv_hr.weight", "conv_hr.bias", "conv_last.weight", "conv_last.bias")
PROFILE = (ProfileShape((1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)),)
ONNX_FILE = {"fp32": "model.onnx", "fp16": "model_fp16.onnx"}


def _backbone() -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``_fallback`` = the backbone; ``canon`` = backbone with a changed tail; ``same`` = the backbone's weights."""
    root = tmp_path_factory.mktemp("store")
    backbone = _backbone()
    digest = state_dict_sha256(backbone.state_dict())
    tail = copy.deepcopy(backbone)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in tail.named_parameters():
            if name in TAIL:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    export_model_as_camera(backbone, root, "_fallback", backbone="tiny-rrdbnet")
    export_model_as_camera(tail, root, "canon", backbone="tiny-rrdbnet", backbone_sha256=digest)
    export_model_as_camera(copy.deepcopy(backbone), root, "same", backbone="tiny-rrdbnet", backbone_sha256=digest)
    return root


def _onnx(root: Path, camera: str, precision: str) -> Path:
    return CameraStore.open(root, camera).verified_path(ONNX_FILE[precision])


# -- the ONNX-level weight difference, on real exports ---------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_diff_names_exactly_the_changed_tail(store: Path, precision: str) -> None:
    diff = diff_onnx_files(_onnx(store, "canon", precision), _onnx(store, "_fallback", precision))
    assert sorted(diff.changed) == sorted(TAIL)
    model = onnx.load(str(_onnx(store, "canon", precision)))
    assert diff.total == len(model.graph.initializer) > len(TAIL)
    assert diff.summary == f"partial: 4 of {diff.total} weights"
    if precision == "fp16":  # the fp16 file stores the changed weights as float16
        assert {i.data_type for i in model.graph.initializer if i.name in TAIL} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_diff_of_the_backbones_own_weights_is_empty(store: Path, precision: str) -> None:
    same, backbone = _onnx(store, "same", precision), _onnx(store, "_fallback", precision)
    assert same.read_bytes() != backbone.read_bytes()  # the metadata names another camera
    diff = diff_onnx_files(same, backbone)
    assert diff.changed == () and diff.total > 0


def test_the_structure_hash_covers_weight_shapes() -> None:
    """Two graphs whose weights differ in shape only are not one structure (the hash keys the weight-stripped
    base engines a camera is refitted into)."""
    from adassr.runtime.engines.onnx_weights import structure_sha256

    base = onnx.load_from_string(build_tiny_sr(seed=3))
    reshaped = onnx.ModelProto()
    reshaped.CopyFrom(base)
    init = next(i for i in reshaped.graph.initializer if len(i.dims) >= 2)
    values = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(values.reshape(values.shape[0], -1), init.name))
    assert structure_sha256(reshaped) != structure_sha256(base)
    with pytest.raises(WeightsError, match=init.name):
        diff_initializers(reshaped, base)


def test_diff_refuses_another_structure(store: Path) -> None:
    fp32, fp16 = (onnx.load(str(_onnx(store, "canon", p))) for p in ("fp32", "fp16"))
    with pytest.raises(WeightsError, match=r"not the same network structure \(initializers only in the camera's "
                                           r"export \[\], only in the backbone's \['body.0/mul_\d+/scale_as_conv"):
        diff_initializers(fp16, fp32)
    retyped = onnx.ModelProto()
    retyped.CopyFrom(fp32)
    init = next(i for i in retyped.graph.initializer if i.name == "conv_last.bias")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name))
    with pytest.raises(WeightsError, match=r"'conv_last.bias' is float16 \[3\] in the camera's export, float32 \[3\]"):
        diff_initializers(retyped, fp32)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(fp32)
    renamed.graph.node[3].name = "renamed"
    with pytest.raises(WeightsError, match="node 'renamed' differs"):
        diff_initializers(renamed, fp32)


def test_diff_sees_a_single_changed_value_and_reads_it_back(tmp_path: Path) -> None:
    base = onnx.load_from_string(build_tiny_sr(seed=3))
    changed = onnx.ModelProto()
    changed.CopyFrom(base)
    init = next(i for i in changed.graph.initializer if i.name == "b2")
    values = numpy_helper.to_array(init).copy()
    values[1] = float(values[1]) + 1e-6
    init.CopyFrom(numpy_helper.from_array(values, "b2"))
    assert diff_initializers(changed, base).changed == ("b2",)
    path = tmp_path / "changed.onnx"
    onnx.save(changed, str(path))
    assert read_initializers(path, ["b2"])["b2"].tobytes() == values.tobytes()
    with pytest.raises(BackendError, match="no initializers"):
        read_initializers(path, ["b2", "not_there"])


# -- the engine bookkeeping with a toolkit whose engines are weight maps ----------------------------


def _weights(onnx_path: Path) -> dict[str, str]:
    model = onnx.load(str(onnx_path))
    return {i.name: hashlib.sha256(numpy_helper.to_array(i).tobytes()).hexdigest() for i in model.graph.initializer}


class WeightMapToolkit:
    """An "engine" is ``{"stripped": bool, "weights": {name: value hash}}``; refits change the map."""

    def __init__(self, *, refuse_partial: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.refuse_partial = refuse_partial

    def tensorrt_version(self) -> str:
        return "10.13.0"

    def gpu(self, device: int) -> GpuIdentity:
        return GpuIdentity("NVIDIA H200", (9, 0))

    def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path, target: Path) -> float:
        self.calls.append(("build", key.kind, onnx_path.parent.name, "stripped" if key.weight_stripped else "weights"))
        weights = {} if key.weight_stripped else _weights(onnx_path)
        target.write_text(json.dumps({"stripped": key.weight_stripped, "weights": weights}))
        return 1.0

    def refit(self, base_engine: Path, onnx_path: Path, target: Path) -> float:
        self.calls.append(("refit", onnx_path.parent.name))
        target.write_text(json.dumps({"stripped": False, "weights": _weights(onnx_path)}))
        return 0.5

    def refit_partial(self, base_engine: Path, onnx_path: Path, names: Sequence[str], target: Path) -> RefitReport:
        self.calls.append(("refit_partial", onnx_path.parent.name, *sorted(names)))
        if self.refuse_partial:
            raise PartialRefitError("conv_hr.weight is not a refittable weight of the base engine")
        engine = json.loads(base_engine.read_text())
        assert not engine["stripped"], "a partial refit needs a base engine that holds weights"
        camera = _weights(onnx_path)
        engine["weights"].update({name: camera[name] for name in names})
        target.write_text(json.dumps(engine))
        return RefitReport(0.01, len(names), len(engine["weights"]))


def _ensure(root: Path, camera: str, kit: WeightMapToolkit, precision: str = "fp16") -> EngineResult:
    return ensure_camera_engine(EngineRequest(root, camera, precision, PROFILE), kit)


@pytest.fixture()
def scratch(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "store"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_camera_engine_is_the_backbone_base_plus_only_the_changed_weights(scratch: Path, precision: str) -> None:
    kit = WeightMapToolkit()
    result = _ensure(scratch, "canon", kit, precision)
    backbone_onnx = _onnx(scratch, "_fallback", precision)
    assert kit.calls == [("build", "base", "_fallback", "weights"), ("refit_partial", "canon", *sorted(TAIL))]
    assert result.base is not None and result.base_built and result.built
    assert result.base.key.source_sha256 == hashlib.sha256(backbone_onnx.read_bytes()).hexdigest()
    assert result.base.key.refittable and not result.base.key.weight_stripped
    assert result.base.source_file == f"_fallback/{backbone_onnx.name}"
    camera_onnx = _onnx(scratch, "canon", precision)
    assert json.loads(result.path.read_text())["weights"] == _weights(camera_onnx)  # nothing missed
    (record,) = CameraStore.open(scratch, "canon").read_manifest()["engines"].values()
    assert record["base"] == result.base.key.digest
    refit = record["refit"]
    total = len(onnx.load(str(camera_onnx)).graph.initializer)
    assert refit["mode"] == "partial" and refit["summary"] == f"partial: 4 of {total} weights"
    assert sorted(refit["changed_weights"]) == sorted(TAIL) and refit["changed_count"] == 4
    assert refit["weights_set"] == 4 and refit["backbone_onnx_sha256"] == result.base.key.source_sha256


def test_fleet_shares_the_backbone_base_and_a_second_run_does_nothing(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.runtime.engines.refit as refit_module

    compared: list[str] = []

    def counting_diff(camera: Path, backbone: Path) -> WeightDiff:
        compared.append(Path(camera).parent.name)
        return diff_onnx_files(camera, backbone)

    monkeypatch.setattr(refit_module, "diff_onnx_files", counting_diff)
    kit = WeightMapToolkit()
    canon = _ensure(scratch, "canon", kit)
    same = _ensure(scratch, "same", kit)
    fallback = _ensure(scratch, "_fallback", kit)
    assert kit.calls[1:] == [("refit_partial", "canon", *sorted(TAIL)), ("refit_partial", "same"),
                             ("refit_partial", "_fallback")]
    assert not same.base_built and not fallback.base_built
    assert canon.base is not None and same.base is not None and canon.base.file == same.base.file
    info = same.record.refit
    assert info is not None and info.summary == f"partial: 0 of {info.total} weights" and info.changed == ()
    calls = len(kit.calls)
    assert compared == ["canon", "same", "_fallback"]
    again = [_ensure(scratch, c, kit) for c in ("canon", "same", "_fallback")]
    assert len(kit.calls) == calls and not any(r.built or r.base_built for r in again)
    assert len(compared) == 3  # a stored engine that fits costs no weight comparison


def test_camera_of_another_backbone_is_refitted_fully_and_says_why(scratch: Path) -> None:
    CameraStore.open(scratch, "canon").update_manifest(lambda m: m["backbone"].update(weights_sha256="e" * 64))
    kit = WeightMapToolkit()
    result = _ensure(scratch, "canon", kit)
    assert kit.calls == [("build", "base", "canon", "stripped"), ("refit", "canon")]
    assert result.base is not None and result.base.key.weight_stripped
    assert result.record.refit is not None and result.record.refit.mode == "full"
    assert "the camera was adapted from eeeeeeeeeeee" in str(result.record.refit.reason)
    assert json.loads(result.path.read_text())["weights"] == _weights(_onnx(scratch, "canon", "fp16"))


def test_without_a_backbone_export_the_refit_is_full_and_names_the_command(scratch: Path) -> None:
    shutil.rmtree(scratch / "_fallback")
    result = _ensure(scratch, "canon", WeightMapToolkit())
    assert result.record.refit is not None and result.record.refit.mode == "full"
    assert "`adassr export --backbone tiny-rrdbnet --precision fp16` exports it" in str(result.record.refit.reason)
    record = CameraStore.open(scratch, "canon").read_manifest()["engines"][result.record.key.digest]
    assert record["refit"]["summary"] == "full" and record["refit"]["changed_count"] == 0


def test_a_refused_partial_refit_falls_back_to_a_full_one_once(
        scratch: Path, caplog: pytest.LogCaptureFixture) -> None:
    kit = WeightMapToolkit(refuse_partial=True)
    with caplog.at_level(logging.WARNING):
        result = _ensure(scratch, "canon", kit)
    assert [c[0] for c in kit.calls] == ["build", "refit_partial", "build", "refit"]
    assert "partial refit refused" in caplog.text
    assert result.record.refit is not None and result.record.refit.mode == "full"
    assert result.record.refit.partial_failed_base is not None
    assert json.loads(result.path.read_text())["weights"] == _weights(_onnx(scratch, "canon", "fp16"))
    calls = len(kit.calls)
    again = _ensure(scratch, "canon", kit)  # not retried on every run
    assert len(kit.calls) == calls and not again.built and again.path == result.path


def test_a_refusal_outlives_a_rebuild_and_ends_with_another_base(scratch: Path) -> None:
    """The refusal is kept in the record of a full refit rebuilt later (a damaged engine): forgotten, the next
    run tried the partial refit again, refused again. And it holds for that partial base only: a record of a
    refusal from another base (the backbone exported again) gets the partial refit tried again (mutation
    testing)."""
    kit = WeightMapToolkit(refuse_partial=True)
    first = _ensure(scratch, "canon", kit)
    assert first.record.refit is not None and first.record.refit.partial_failed_base is not None
    first.path.write_text("damaged")  # fails its checksum: rebuilt
    calls = len(kit.calls)
    rebuilt = _ensure(scratch, "canon", kit)
    assert rebuilt.built and "refit_partial" not in [c[0] for c in kit.calls[calls:]]
    assert rebuilt.record.refit is not None
    assert rebuilt.record.refit.partial_failed_base == first.record.refit.partial_failed_base
    rebuilt.path.write_text("damaged")
    calls = len(kit.calls)
    _ensure(scratch, "canon", kit)
    assert "refit_partial" not in [c[0] for c in kit.calls[calls:]]  # still not retried

    store = CameraStore.open(scratch, "canon")

    def refused_from_another_base(manifest: dict) -> None:
        for record in manifest["engines"].values():
            if record.get("refit"):
                record["refit"]["partial_failed_base"] = "0" * 64

    store.update_manifest(refused_from_another_base)
    _ensure(scratch, "canon", kit).path.write_text("damaged")
    calls = len(kit.calls)
    _ensure(scratch, "canon", kit)
    assert "refit_partial" in [c[0] for c in kit.calls[calls:]]


def test_turning_partial_refits_off_refits_every_weight(scratch: Path) -> None:
    kit = WeightMapToolkit()
    result = ensure_camera_engine(EngineRequest(scratch, "canon", "fp16", PROFILE, partial_refit=False), kit)
    assert kit.calls == [("build", "base", "canon", "stripped"), ("refit", "canon")]
    assert result.record.refit is not None and result.record.refit.reason == "partial refits were turned off"
    partial = _ensure(scratch, "canon", kit)  # the current mode's base differs: refitted again, partially
    assert kit.calls[-1][0] == "refit_partial" and partial.built
    assert partial.record.refit is not None and partial.record.refit.mode == "partial"
