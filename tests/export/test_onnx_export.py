"""Export to ONNX: round trip, metadata, manifest, fp16, refusal paths (tiny random RRDBNet), and one
real-backbone export (slow)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import adassr
from adassr.adapt.archs.registry import ArchParams, BackboneEntry, BackboneRegistry, WeightSource
from adassr.adapt.weights import LoadedBackbone, checkpoints, load_safetensors_weights, save_safetensors_weights
from adassr.export import onnx as onnx_export
from adassr.export.cli import add_export_arguments, run_export
from adassr.export.crops import bundled_photos, photo_crops, read_rgb, textured_windows
from adassr.export.errors import ExportError
from adassr.export.fp16 import FP16_MAX, convert_to_fp16, evaluate_fp16_storage
from adassr.runtime.errors import AdassrError, ConfigError, StoreError
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore, sha256_file

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "cameras" / "canon" / "flower.jpg"
TINY = BackboneEntry(
    name="tiny-test",
    scale=4,
    arch=ArchParams(num_feat=16, num_block=2, num_grow_ch=8),
    source=WeightSource("none", "none", "none.param", "none.bin"),
    licence="test only",
    description="tiny random-weight RRDBNet for tests",
)
REGISTRY = BackboneRegistry([TINY])
CAMERA = "testcam"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_store(root: Path, camera: str = CAMERA, seed: int = 0) -> str:
    """A store like the adapt stage leaves it: adapted.safetensors (tiny random weights) + manifest."""
    torch.manual_seed(seed)
    model = TINY.build()
    store = CameraStore.open(root, camera, create=True)
    digest: dict[str, str] = {}

    def write(path: Path) -> None:
        digest["weights"] = save_safetensors_weights(path, model, TINY, metadata={"stage": "adapt"}, atomic=False)

    store.publish("adapted.safetensors", write, stage="adapt", extra={"backbone": TINY.name})
    store.update_manifest(lambda m: m.update({
        "images": [{"path": str(REPO / "no-such-photo.jpg"), "derivation": "exif"},
                   {"path": str(PHOTO), "derivation": "exif"}],
        "backbone": {"name": TINY.name, "weights_sha256": "unused"},
        "scale": 4,
        "weights_sha256": digest["weights"],
    }))
    return digest["weights"]


def torch_model(root: Path, camera: str = CAMERA) -> torch.nn.Module:
    return load_safetensors_weights(CameraStore.open(root, camera).verified_path("adapted.safetensors"), TINY).model


def photo_batch(shape: tuple[int, int, int], offset: int = 0) -> np.ndarray:
    """(N, 3, H, W) float32 crops of a real photo, at different places for each batch item."""
    n, h, w = shape
    image = read_rgb(PHOTO)
    crops = [image[100 + offset + 37 * i : 100 + offset + 37 * i + h, 150 + 23 * i : 150 + 23 * i + w]
             for i in range(n)]
    return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, onnx_export.ExportResult]:
    root = tmp_path_factory.mktemp("store")
    make_store(root)
    result = onnx_export.export_camera(root, CAMERA, precision="both", registry=REGISTRY)
    return root, result


def test_round_trip_matches_torch_at_two_sizes_and_batch_2(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    root, _ = exported
    store = CameraStore.open(root, CAMERA)
    path = store.verified_path("model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["lr"] and [o.name for o in session.get_outputs()] == ["sr"]
    model = torch_model(root)
    for shape in [(1, 24, 40), (2, 36, 28)]:
        batch = photo_batch(shape)
        got = session.run(["sr"], {"lr": batch})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(batch)).numpy()
        assert got.shape == (shape[0], 3, 4 * shape[1], 4 * shape[2])
        assert np.abs(got - want).max() <= onnx_export.FP32_TOLERANCE
        assert np.abs(want).max() > 0.01  # the comparison is not between two near-zero outputs


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runtime_serves_the_exported_model_like_pytorch(exported: tuple[Path, onnx_export.ExportResult],
                                                        precision: str) -> None:
    """Export -> torch-free runtime (routing by camera name, onnxruntime backend, untiled):
    the 8-bit result equals PyTorch's fp32 output quantised the same way, within one level
    (no pre-padding: the runtime's reflect pre-pad would change the border on purpose)."""
    from adassr.runtime.images import LoadedImage
    from adassr.runtime.pipeline import RuntimeOptions, Upscaler
    from adassr.runtime.tiling import TilingOptions

    root, _ = exported
    crop = np.ascontiguousarray(read_rgb(PHOTO)[120:150, 160:204])
    pixels = np.round(crop * 255).astype(np.uint8)
    image = LoadedImage(pixels, None, 8, None, None, None)
    options = RuntimeOptions(store=root, precision=precision, tiling=TilingOptions(tile=0, pre_pad=0))
    upscaler = Upscaler(options)
    try:
        result = upscaler.upscale(image, camera=CAMERA)
    finally:
        upscaler.close()
    assert result.route is not None and result.route.precision == precision
    assert result.route.model_camera == CAMERA
    with torch.no_grad():
        lr = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
        want = torch_model(root)(lr)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    want8 = np.round(want * 255).astype(np.int16)
    assert result.pixels.shape == (120, 176, 3) and result.pixels.dtype == np.uint8
    assert np.abs(result.pixels.astype(np.int16) - want8).max() <= 1
    assert want8.std() > 2  # a real image came out, not a constant


def test_model_is_one_file_with_dynamic_axes_and_metadata(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    root, _ = exported
    manifest = CameraStore.open(root, CAMERA).read_manifest()
    for name, precision in [("model.onnx", "fp32"), ("model_fp16.onnx", "fp16")]:
        proto = onnx.load(str(CameraStore.open(root, CAMERA).artifact_path(name, manifest)), load_external_data=False)
        assert all(init.data_location != TensorProto.EXTERNAL for init in proto.graph.initializer)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["camera"] == CAMERA
        assert meta["scale"] == "4"
        assert meta["backbone"] == TINY.name
        assert meta["weights_sha256"] == manifest["weights_sha256"]
        assert meta["adassr_version"] == adassr.__version__
        assert meta["precision"] == precision
        assert (meta["input_name"], meta["output_name"], meta["io_dtype"]) == ("lr", "sr", "float32")
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
        assert {o.domain or "" for o in proto.opset_import} >= {""}
        assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == onnx_export.OPSET
        # IR 9, which onnxruntime 1.17 (and the Triton releases that bundle it) still loads; nothing of IR 10 left
        assert proto.ir_version == onnx_export.IR_VERSION == 9
        assert not any(n.metadata_props for n in proto.graph.node) and not proto.functions
        onnx.checker.check_model(proto, full_check=True)
    # Only the expected files, no external-data side files.
    manifest = CameraStore.open(root, CAMERA).read_manifest()
    files = {record["file"] for record in manifest["artifacts"].values()} | {"manifest.json"}
    assert set(manifest["artifacts"]) == {"adapted.safetensors", "model.onnx", "model_fp16.onnx"}
    assert sorted(p.name for p in (root / CAMERA).iterdir() if not p.name.startswith(".")) == sorted(files)


def test_fp32_model_keeps_the_rrdb_scalings_as_1x1_convs(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    """The RRDB-level 0.2 scalings (one per block, not after a Conv) are 1x1 Convs in the fp32 file only."""
    root, _ = exported
    store = CameraStore.open(root, CAMERA)
    manifest = store.read_manifest()
    fp32 = onnx.load(str(store.artifact_path("model.onnx", manifest)), load_external_data=False)
    fp16 = onnx.load(str(store.artifact_path("model_fp16.onnx", manifest)), load_external_data=False)
    as_conv = [n for n in fp32.graph.node if n.name.endswith("/scale_as_conv")]
    assert len(as_conv) == 2 and all(n.op_type == "Conv" for n in as_conv)  # the tiny model has 2 RRDB blocks
    producers = {out: n.op_type for n in fp32.graph.node for out in n.output}
    assert all(producers.get(i) == "Conv" for n in fp32.graph.node if n.op_type == "Mul" for i in n.input[:1])
    assert not any(n.name.endswith("/scale_as_conv") for n in fp16.graph.node)


def test_manifest_records_exports_with_checksums(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    root, result = exported
    manifest = json.loads((root / CAMERA / "manifest.json").read_text())
    onnx_rec, fp16_rec = manifest["exports"]["onnx"], manifest["exports"]["onnx_fp16"]
    assert result.exports == manifest["exports"]
    for rec, file, precision in [(onnx_rec, "model.onnx", "fp32"), (fp16_rec, "model_fp16.onnx", "fp16")]:
        assert rec["file"] == file and rec["precision"] == precision
        assert (rec["input_name"], rec["output_name"], rec["scale"], rec["opset"]) == ("lr", "sr", 4, 20)
        assert rec["weights_sha256"] == manifest["weights_sha256"]
        on_disk = root / CAMERA / manifest["artifacts"][file]["file"]
        assert rec["sha256"] == sha256_file(on_disk) == manifest["artifacts"][file]["sha256"]
        assert manifest["artifacts"][file]["stage"] == "export"
        assert str(PHOTO) in rec["validated_on"]  # the first *readable* camera image
        import onnxruntime
        import torch

        import adassr  # what made and validated it (provenance)

        assert rec["versions"]["adassr"] == adassr.__version__ and rec["versions"]["torch"] in torch.__version__
        assert rec["versions"]["onnxruntime"] == onnxruntime.__version__ and set(rec["versions"]) == {
            "adassr", "torch", "onnx", "onnxscript", "onnxruntime"}
    assert 0 <= onnx_rec["max_abs_error_vs_torch"] <= 1e-4 == onnx_rec["tolerance"]
    assert 0 < fp16_rec["max_abs_error_vs_torch"] <= fp16_rec["tolerance"] == onnx_export.FP16_TOLERANCE
    # onnxruntime ran the fp16 file too (fp16 input rounding: never exactly 0); 0.0 read as a perfect check
    # when the export stopped running it (mutation testing)
    assert 0 < fp16_rec["onnxruntime_cpu_max_abs_error_vs_torch"] <= fp16_rec["tolerance"]
    # conv_first + 2 RRDB x (3 RDB x (Mul + Add) + Mul + Add) + the trunk Add
    assert fp16_rec["fp32_node_count"] == 1 + 2 * (3 * 2 + 2) + 1
    assert 0 < fp16_rec["max_abs_activation"] < FP16_MAX
    # fp16 validation covered every bundled photo.
    for photo in bundled_photos():
        assert photo.name in fp16_rec["validated_on"]


def test_fp16_graph_is_half_except_conv_first_and_residual_sums(
    exported: tuple[Path, onnx_export.ExportResult],
) -> None:
    root, _ = exported
    proto = onnx.load(str(CameraStore.open(root, CAMERA).verified_path("model_fp16.onnx")))
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    types.update({v.name: v.type.tensor_type.elem_type for v in proto.graph.input})
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 2 * 3 * 5 + 5  # conv_first, 2 RRDB x 3 RDB x 5 convs, body/up1/up2/hr/last
    for node in proto.graph.node:
        if node.op_type == "Cast":
            continue
        fp32 = node.name == "conv_first/conv2d" or node.op_type in ("Add", "Mul")
        want = TensorProto.FLOAT if fp32 else TensorProto.FLOAT16
        assert types[node.output[0]] == want, node.name
        if node.op_type == "Conv":  # the weights are stored in the node's precision
            assert types[node.input[1]] == want, node.name
    assert types["lr"] == types["sr"] == TensorProto.FLOAT
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    # to fp16: the input of each of the 6 dense blocks (the first is conv_first's output), of
    # conv_body and of the upsampler (the trunk); to fp32: each conv5 and conv_body output entering
    # a residual sum; and the model output.
    assert len(casts) == (2 * 3 + 1 + 1) + (2 * 3 + 1) + 1


def test_fp16_model_on_bundled_photos_is_finite_and_close(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    root, _ = exported
    proto = onnx.load(str(CameraStore.open(root, CAMERA).verified_path("model_fp16.onnx")))
    crops = photo_crops(bundled_photos(), size=24)
    assert crops is not None and crops.batch.shape[0] == 5
    with torch.no_grad():
        want = torch_model(root)(torch.from_numpy(crops.batch)).numpy()
    evaluation = evaluate_fp16_storage(proto, {"lr": crops.batch})
    assert evaluation.nonfinite_nodes == ()
    assert np.isfinite(evaluation.output).all()
    error = np.abs(evaluation.output - want).max()
    assert 0 < error <= onnx_export.FP16_TOLERANCE  # > 0: the activations really were rounded to half
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["sr"], {"lr": crops.batch})[0]
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - want).max() <= onnx_export.FP16_TOLERANCE


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    make_store(tmp_path)
    weights = CameraStore.open(tmp_path, CAMERA).artifact_path("adapted.safetensors")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    assert not list((tmp_path / CAMERA).glob("model*.onnx"))


@pytest.mark.parametrize("field, value, message", [
    ("weights_sha256", "0" * 64, r"holds weights .*the manifest records 000000000000\.\.\.; the store is inconsistent"),
    ("scale", 2, r"manifest scale 2 differs from backbone 'tiny-test' \(x4\)"),
])
def test_a_manifest_contradicting_its_weights_is_refused(tmp_path: Path, field: str, value: object,
                                                         message: str) -> None:
    """The weights file passes its checksum, but the manifest's digest or scale is another's (a partial or
    hand edit): the export would publish a model under the wrong digest or scale."""
    make_store(tmp_path)
    CameraStore.open(tmp_path, CAMERA).update_manifest(lambda m: m.update({field: value}))
    with pytest.raises(StoreError, match=message):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    assert not list((tmp_path / CAMERA).glob("model*.onnx"))


def test_a_backbone_whose_stated_scale_is_not_what_it_does_is_refused(tmp_path: Path) -> None:
    """onnxruntime is compared with PyTorch, so both equally wrong would pass: the output shape is checked
    against the registry's scale."""
    from adassr.export.crops import ValidationInput

    model = TINY.build().eval()
    batch = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(ExportError, match=r"maps \(1, 3, 16, 16\) to \(1, 3, 64, 64\), not \(N, 3, 2H, 2W\)"):
        onnx_export.reference_cases(model, [ValidationInput(batch, "a crop")], scale=2)


def test_outputs_of_another_shape_are_an_export_error() -> None:
    with pytest.raises(ExportError, match=r"returned shape \(1, 3, 8, 8\), PyTorch \(1, 3, 16, 16\), on a crop"):
        onnx_export._compare("onnxruntime", np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 16, 16)), 1e-4, "a crop")


def test_the_recorded_fp32_error_is_the_largest_over_the_cases(exported: tuple[Path, onnx_export.ExportResult]) -> None:
    import onnx

    from adassr.export.crops import ValidationInput

    root, _ = exported
    path = CameraStore.open(root, CAMERA).verified_path("model.onnx")
    data = path.read_bytes()
    batch = np.random.default_rng(1).random((1, 3, 12, 12), dtype=np.float32)
    got = onnx_export.run_session(onnx_export.open_session(data), batch)
    cases = [onnx_export.Case(ValidationInput(batch, "first"), got + 6e-5),
             onnx_export.Case(ValidationInput(batch, "second"), got + 1e-5)]
    assert onnx_export.validate_fp32(data, onnx.load_from_string(data), cases) == pytest.approx(6e-5, rel=0.05)


def test_an_export_of_one_precision_keeps_the_other_of_the_same_weights(tmp_path: Path) -> None:
    """fp32, then fp16 of the same weights: both stay published and readable."""
    make_store(tmp_path)
    onnx_export.export_camera(tmp_path, CAMERA, precision="fp32", registry=REGISTRY)
    onnx_export.export_camera(tmp_path, CAMERA, precision="fp16", registry=REGISTRY)
    store = CameraStore.open(tmp_path, CAMERA)
    assert set(store.read_manifest()["exports"]) == {"onnx", "onnx_fp16"}
    store.update_manifest(lambda m: None)  # a later commit: superseded files go, published ones stay
    assert store.verified_path("model.onnx").is_file() and store.verified_path("model_fp16.onnx").is_file()


def test_missing_store_camera_and_weights(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        onnx_export.export_camera(tmp_path / "nowhere", CAMERA, registry=REGISTRY)
    with pytest.raises(StoreError, match="adapt --camera"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    make_store(tmp_path)
    CameraStore.open(tmp_path, CAMERA).artifact_path("adapted.safetensors").unlink()
    with pytest.raises(StoreError, match="missing"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)


def _published(root: Path) -> tuple[list[str], dict]:
    manifest = CameraStore.open(root, CAMERA).read_manifest()
    files = sorted(p.name for p in (root / CAMERA).glob("model*.onnx"))
    return files, manifest


def test_failed_fp32_validation_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(tmp_path)
    real = onnx_export.torch_reference
    monkeypatch.setattr(onnx_export, "torch_reference", lambda model, batch: real(model, batch) + 2e-4)
    with pytest.raises(ExportError, match=r"max abs 0\.0002.*nothing was published"):
        onnx_export.export_camera(tmp_path, CAMERA, precision="both", registry=REGISTRY)
    files, manifest = _published(tmp_path)
    assert files == [] and "exports" not in manifest
    assert set(manifest["artifacts"]) == {"adapted.safetensors"}


def test_non_finite_weights_or_outputs_are_refused_before_the_export(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN weights (a diverged run) were blamed on onnxruntime, after a trace, a failed validation, a
    second trace of a 'stale' cached graph and a second failure."""
    torch.manual_seed(0)
    model = TINY.build()
    with torch.no_grad():
        model.conv_first.weight[0, 0, 0, 0] = float("nan")
    store = CameraStore.open(tmp_path, CAMERA, create=True)
    digest: dict[str, str] = {}

    def write(path: Path) -> None:  # as an adassr that did not refuse to save NaN weights wrote them
        digest["weights"] = save_safetensors_weights(path, model, TINY, atomic=False)

    monkeypatch.setattr(checkpoints, "check_finite", lambda state, origin: None)
    store.publish("adapted.safetensors", write, stage="adapt", extra={"backbone": TINY.name})
    monkeypatch.undo()
    store.update_manifest(lambda m: m.update({"backbone": {"name": TINY.name}, "scale": 4,
                                              "weights_sha256": digest["weights"]}))

    def no_trace(*_a: object, **_k: object) -> None:
        raise AssertionError("traced although the weights hold NaN")

    monkeypatch.setattr(onnx_export, "export_fp32", no_trace)
    with pytest.raises(ExportError, match=f"the weights of '{CAMERA}' hold NaN or infinite values \\(1 tensor"
                                          f"\\(s\\), e.g. 'conv_first.weight'\\); adapt the camera again, then "
                                          f"export it \\(`adassr adapt --camera {CAMERA} --images .* --store "
                                          f"{tmp_path}`, then `adassr export --camera {CAMERA} --store {tmp_path}`\\)"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    monkeypatch.undo()
    make_store(tmp_path)  # finite weights whose output overflows: PyTorch's own output is named
    real = onnx_export.torch_reference
    monkeypatch.setattr(onnx_export, "torch_reference", lambda m, batch: real(m, batch) * np.inf)
    with pytest.raises(ExportError, match="PyTorch's own output of the weights of 'testcam' is NaN or infinite"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    assert "exports" not in _published(tmp_path)[1]


def test_the_fp16_checks_each_refuse_what_they_are_for(exported: tuple[Path, onnx_export.ExportResult],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of the fp16 validation's three checks, against references made to fail only it: one pixel far
    off (max abs), every pixel a little off (mean abs, a systematic error) and onnxruntime's own run (a
    helper's mutants disabled each check or loosened the tolerance 100-fold, and every test passed)."""
    from adassr.export.crops import ValidationInput

    root, _ = exported
    data = CameraStore.open(root, CAMERA).verified_path("model_fp16.onnx").read_bytes()
    proto = onnx.load_from_string(data)
    batch = photo_batch((1, 20, 20))
    exact = evaluate_fp16_storage(proto, {"lr": batch}).output

    def cases(reference: np.ndarray) -> list[onnx_export.Case]:
        return [onnx_export.Case(ValidationInput(batch, "a crop"), reference)]

    report = onnx_export.validate_fp16(data, proto, cases(exact))
    assert report.max_abs_error == 0.0 and report.onnxruntime_max_abs_error <= onnx_export.FP16_TOLERANCE
    one_off = exact.copy()
    one_off[0, 0, 5, 5] += 0.05  # 2.5x the max tolerance, far under the mean's
    with pytest.raises(ExportError, match="fp16"):
        onnx_export.validate_fp16(data, proto, cases(one_off), onnxruntime_cases=0)
    with pytest.raises(ExportError, match="mean abs"):  # each pixel within the max tolerance
        onnx_export.validate_fp16(data, proto, cases(exact + 0.005), onnxruntime_cases=0)
    monkeypatch.setattr(onnx_export, "run_session", lambda session, batch: exact + 0.05)
    with pytest.raises(ExportError, match="onnxruntime"):
        onnx_export.validate_fp16(data, proto, cases(exact))


def test_failed_fp16_validation_publishes_neither_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.export.fp16 as fp16

    make_store(tmp_path)
    real = fp16.evaluate_fp16_storage

    def overflowing(model: onnx.ModelProto, inputs: dict) -> fp16.Fp16Evaluation:
        result = real(model, inputs)
        return fp16.Fp16Evaluation(result.output, np.inf, result.largest, ("body.1.rdb3.conv5/conv2d_30",))

    monkeypatch.setattr(fp16, "evaluate_fp16_storage", overflowing)
    with pytest.raises(ExportError, match="overflows"):
        onnx_export.export_camera(tmp_path, CAMERA, precision="both", registry=REGISTRY)
    files, manifest = _published(tmp_path)
    assert files == [] and "exports" not in manifest


def _tiny_loaded(path: Path, seed: int) -> LoadedBackbone:
    torch.manual_seed(seed)
    save_safetensors_weights(path, TINY.build(), TINY)
    return load_safetensors_weights(path, TINY)


def test_fallback_export_records_the_weights_it_publishes_and_a_failed_first_leaves_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adassr.adapt.weights import state_dict_sha256

    loaded = _tiny_loaded(tmp_path / "a.safetensors", seed=3)
    with torch.no_grad():  # changed after loading: the digest it was loaded with no longer describes it
        next(loaded.model.parameters()).add_(0.5)
    onnx_export.export_loaded_fallback(tmp_path / "store", loaded, validation_image=PHOTO)
    manifest = CameraStore.open(tmp_path / "store", FALLBACK_CAMERA).read_manifest()
    actual = state_dict_sha256(loaded.model.state_dict())
    assert actual != loaded.weights_sha256
    assert manifest["weights_sha256"] == manifest["exports"]["onnx"]["weights_sha256"] == actual
    bad_photo = tmp_path / "not-an-image.png"
    bad_photo.write_text("no")
    with pytest.raises(AdassrError):
        onnx_export.export_loaded_fallback(tmp_path / "new-store", loaded, validation_image=bad_photo)
    assert not (tmp_path / "new-store").exists()

    def failing_build(*args: object, **kwargs: object) -> None:
        raise ExportError("the export failed")

    monkeypatch.setattr(onnx_export, "build_models", failing_build)
    with pytest.raises(ExportError, match="the export failed"):
        onnx_export.export_loaded_fallback(tmp_path / "new-store", loaded, validation_image=PHOTO)
    assert not (tmp_path / "new-store").exists()  # a first export failed: no empty folder, nor the new store
    assert (tmp_path / "store" / FALLBACK_CAMERA / "manifest.json").exists()


def test_fallback_export_manifest_and_stale_exports_dropped(tmp_path: Path) -> None:
    first = _tiny_loaded(tmp_path / "a.safetensors", seed=3)
    onnx_export.export_loaded_fallback(tmp_path / "store", first, precision="both", validation_image=PHOTO)
    store = CameraStore.open(tmp_path / "store", FALLBACK_CAMERA)
    assert set(store.read_manifest()["exports"]) == {"onnx", "onnx_fp16"}

    loaded = _tiny_loaded(tmp_path / "b.safetensors", seed=4)  # other weights, fp32 only
    result = onnx_export.export_loaded_fallback(tmp_path / "store", loaded, validation_image=PHOTO)
    manifest = store.read_manifest()
    assert result.camera == manifest["camera"] == FALLBACK_CAMERA
    assert manifest["backbone"]["name"] == TINY.name and manifest["scale"] == 4
    assert loaded.weights_sha256 != first.weights_sha256
    assert manifest["weights_sha256"] == loaded.weights_sha256 == manifest["exports"]["onnx"]["weights_sha256"]
    # The fp16 model of the first weights is no longer listed, so the runtime cannot serve it.
    assert set(manifest["exports"]) == {"onnx"} and "model_fp16.onnx" not in manifest["artifacts"]
    # The files of the first export are no longer the model: besides the new one and the manifest, only
    # they remain, listed as superseded, for readers of the previous manifest until the next commit.
    on_disk = sorted(p.name for p in store.directory.iterdir() if not p.name.startswith("."))
    assert len(manifest["superseded_files"]) == 2  # the first export's fp32 and fp16 models
    assert on_disk == sorted(["manifest.json", manifest["artifacts"]["model.onnx"]["file"],
                              *manifest["superseded_files"]])
    store.update_manifest(lambda m: None)  # the next commit
    on_disk = sorted(p.name for p in store.directory.iterdir() if not p.name.startswith("."))
    assert on_disk == sorted(["manifest.json", manifest["artifacts"]["model.onnx"]["file"]])
    with pytest.raises(StoreError, match="no model_fp16.onnx"):
        store.verified_path("model_fp16.onnx")
    proto = onnx.load(str(store.verified_path("model.onnx")))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["camera"], meta["weights_sha256"]) == (FALLBACK_CAMERA, loaded.weights_sha256)


def test_export_refuses_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    import threading

    make_store(tmp_path)
    held, release = threading.Event(), threading.Event()

    def writer() -> None:  # another writer: its own thread (flock excludes per open file, as between processes)
        with CameraStore.open(tmp_path, CAMERA).lock():
            held.set()
            release.wait(20)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(20)
        with pytest.raises(StoreError, match="another adassr process"):
            onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    finally:
        release.set()
        thread.join(20)
    assert not list((tmp_path / CAMERA).glob("model*.onnx"))


def test_a_first_use_export_waits_for_another_and_takes_its_result(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `upscale` first runs racing: the second failed at once on the lock ("another adassr process is
    writing ...") instead of waiting for the export the first was publishing."""
    import threading

    make_store(tmp_path)
    first = onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)  # the other process's export
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with CameraStore.open(tmp_path, CAMERA).lock():
            held.set()
            release.wait(0.5)

    def no_export(*_a: object, **_k: object) -> None:
        raise AssertionError("exported again although the camera's export is current")

    monkeypatch.setattr(onnx_export, "build_models", no_export)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(20)
        again = onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY, lock_timeout_s=20, if_missing=True)
    finally:
        release.set()
        thread.join(20)
    assert again.exports == first.exports
    monkeypatch.undo()
    loaded = _tiny_loaded(tmp_path / "b.safetensors", seed=4)
    fallback = onnx_export.export_loaded_fallback(tmp_path, loaded, validation_image=PHOTO)  # the same rule
    monkeypatch.setattr(onnx_export, "build_models", no_export)
    assert onnx_export.export_loaded_fallback(tmp_path, loaded, validation_image=PHOTO,
                                              if_missing=True).exports == fallback.exports
    # Exports of other weights (a backbone package upgraded) are not current: exported again.
    monkeypatch.undo()
    other = _tiny_loaded(tmp_path / "c.safetensors", seed=5)
    renewed = onnx_export.export_loaded_fallback(tmp_path, other, validation_image=PHOTO, if_missing=True)
    assert renewed.exports != fallback.exports
    assert {r["weights_sha256"] for r in renewed.exports.values()} == {other.weights_sha256}


def test_keep_fp32_fixes_an_overflowing_op() -> None:
    """The converter's fp32 islands: x*1000*1000*1e-6 overflows fp16 (1e6 > 65504) unless the
    second and third Mul stay in fp32, and the fp16-storage evaluation detects the overflow."""
    consts = [numpy_helper.from_array(np.array(v, np.float32), f"k{i}") for i, v in enumerate([1000.0, 1000.0, 1e-6])]
    nodes = [helper.make_node("Mul", ["x", "k0"], ["a"], name="m0"),
             helper.make_node("Mul", ["a", "k1"], ["b"], name="m1"),
             helper.make_node("Mul", ["b", "k2"], ["y"], name="m2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.array([[0.1, 0.5, 1.0, 2.0]], np.float32)

    half = convert_to_fp16(model, keep_fp32=[])
    onnx.checker.check_model(half, full_check=True)
    assert evaluate_fp16_storage(half, {"x": x}).nonfinite_nodes == ("m1", "m2")

    with pytest.raises(ExportError, match="got the string 'm1'"):  # its letters used to be taken for node names
        convert_to_fp16(model, keep_fp32="m1")
    mixed = convert_to_fp16(model, keep_fp32=["m1", "m2"])
    onnx.checker.check_model(mixed, full_check=True)
    evaluation = evaluate_fp16_storage(mixed, {"x": x})
    assert evaluation.nonfinite_nodes == ()
    np.testing.assert_allclose(evaluation.output, x, rtol=1e-3)
    got = ort.InferenceSession(mixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x, rtol=1e-3)


def test_textured_windows_prefers_texture_and_do_not_overlap() -> None:
    rng = np.random.default_rng(0)
    image = np.full((64, 128, 3), 0.5, np.float32)
    image[:, 64:] = rng.random((64, 64, 3), dtype=np.float32)
    windows = textured_windows(image, 32, 2)
    assert len(windows) == 2
    assert all(x >= 64 for _, x in windows)
    (y0, x0), (y1, x1) = windows
    assert abs(y0 - y1) >= 32 or abs(x0 - x1) >= 32
    # the most textured window in the centre of a 64 px photo: two apart all the same (it used to
    # repeat the centre one, validating on two copies of one crop)
    centred = rng.random((64, 64, 3), dtype=np.float32) * 0.1
    centred[16:48, 16:48] *= 10
    (y0, x0), (y1, x1) = textured_windows(centred, 32, 2)
    assert abs(y0 - y1) >= 32 or abs(x0 - x1) >= 32
    for size, count in ((0, 2), (65, 2), (32, 0)):
        with pytest.raises(ExportError, match="must be an integer"):
            textured_windows(centred, size, count)


def test_a_validation_photo_too_small_for_the_non_square_check_is_refused(tmp_path: Path) -> None:
    from adassr.export.crops import validation_inputs
    from adassr.runtime.images import write_image

    small = write_image(tmp_path / "small.png", np.full((24, 40, 3), 90, np.uint8))
    with pytest.raises(ExportError, match="needs at least 29x29 pixels.*--validation-image"):
        validation_inputs(small)
    batch, non_square = validation_inputs(write_image(tmp_path / "ok.png", np.full((30, 70, 3), 90, np.uint8)))
    assert batch.batch.shape == (2, 3, 30, 30) and non_square.batch.shape == (1, 3, 20, 28)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(argv)


def test_cli_arguments_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _cli(["--camera", "a", "--backbone", "b"])
    with pytest.raises(ExportError, match="--camera NAME or --backbone NAME"):  # --triton-repo needs neither
        run_export(_cli([]))
    args = _cli(["--camera", "nokia", "--store", str(tmp_path / "none"), "--precision", "both"])
    assert args.precision == "both" and args.backbone is None
    with pytest.raises(StoreError, match="does not exist"):
        run_export(args)


@pytest.mark.parametrize("argv, words", [
    (["--camera", "c", "--tile", "-5"], "--tile is for TensorRT engines: add --engine tensorrt"),
    (["--camera", "c", "--tile-batch", "0", "--gpu", "1"], "--gpu, --tile-batch are for TensorRT engines"),
    (["--camera", "c", "--trt-accelerator", "--max-batch", "0"], "--max-batch, --trt-accelerator are for the Triton"),
    (["--triton-repo", "r", "--engine", "tensorrt"], "--triton-repo publishes existing exports and builds nothing"),
    (["--camera", "c", "--engine", "tensorrt", "--max-batch", "4"], "an engine build does not write: run `adassr "
                                                                   "export --triton-repo DIR ...` after it"),
    (["--triton-repo", "r", "--tile-batch", "4"], "--tile-batch is for building TensorRT engines, which "
                                                  "--triton-repo does not do: build the engine first"),
])
def test_options_of_another_mode_are_refused_not_ignored(argv: list[str], words: str, tmp_path: Path) -> None:
    """Each of these returned 0 and did nothing with the option."""
    with pytest.raises(AdassrError, match=words):
        run_export(_cli([*argv, "--store", str(tmp_path)]))


def test_a_bad_engine_tile_is_refused_before_the_onnx_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--engine tensorrt --tile -5 exported and published the ONNX model, then failed on the tile."""
    import adassr.runtime.engines.trt as trt

    def no_tensorrt() -> None:
        raise AssertionError("TensorRT was loaded although the tile was bad")

    monkeypatch.setattr(trt, "load_tensorrt", no_tensorrt)
    make_store(tmp_path)
    with pytest.raises(ConfigError, match="--tile -5 / --tile-batch 1: tile must be >= 0"):
        run_export(_cli(["--camera", CAMERA, "--store", str(tmp_path), "--engine", "tensorrt", "--tile", "-5"]))
    assert "exports" not in _published(tmp_path)[1]


@pytest.mark.slow
def test_real_backbone_fallback_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The 23-block Real-ESRGAN x4plus through the CLI: fp32 within 1e-4, fp16 validated on every bundled photo."""
    from adassr.adapt.weights import load_backbone

    assert run_export(_cli(["--backbone", "realesrgan-x4plus", "--store", str(tmp_path), "--precision", "both"])) == 0
    printed = capsys.readouterr().out
    store = CameraStore.open(tmp_path, FALLBACK_CAMERA)
    manifest = store.read_manifest()
    assert f"{store.verified_path('model_fp16.onnx', manifest)} (fp16" in printed  # the real file on disk
    fp32, fp16 = manifest["exports"]["onnx"], manifest["exports"]["onnx_fp16"]
    assert fp32["max_abs_error_vs_torch"] <= 1e-4
    assert fp16["max_abs_error_vs_torch"] <= onnx_export.FP16_TOLERANCE
    assert fp16["max_abs_activation"] < FP16_MAX / 100  # wide headroom below the fp16 range
    # An independent check at another size: onnxruntime fp32 vs PyTorch on a 24x40 crop.
    batch = photo_batch((1, 24, 40))
    session = ort.InferenceSession(str(store.verified_path("model.onnx")), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = load_backbone("realesrgan-x4plus").model(torch.from_numpy(batch)).numpy()
    assert np.abs(session.run(["sr"], {"lr": batch})[0] - want).max() <= 1e-4


def test_the_validation_photo_skips_members_adapt_could_not_use(tmp_path: Path) -> None:
    """The manifest lists every member of the group; a damaged or tiny first one failed the export."""
    from PIL import Image

    from adassr.export.crops import find_validation_photo

    empty = tmp_path / "a_empty.png"
    empty.write_bytes(b"")
    tiny = tmp_path / "b_tiny.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tiny)
    good = tmp_path / "c_good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(good)
    entries = [{"path": str(p)} for p in (empty, tiny, tmp_path / "gone.png", good)]
    assert find_validation_photo(entries) == good


def test_a_truncated_member_a_folder_and_a_users_samples_folder_do_not_stop_the_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A truncated first member (a good header) failed every export of the camera; `--validation-image DIR`
    said "does not exist"; run from a folder with its own samples/cameras, the fp16 check read the user's
    photos (all of them, one damaged one failing the export) instead of the bundled ones."""
    from PIL import Image

    from adassr.export.crops import MAX_BUNDLED_PHOTOS, find_validation_photo
    from adassr.export.errors import ExportError

    good = tmp_path / "b_good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(good, quality=90)
    truncated = tmp_path / "a_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    assert find_validation_photo([{"path": str(truncated)}, {"path": str(good)}]) == good
    with pytest.raises(ExportError, match="is a folder"):
        find_validation_photo(explicit=tmp_path)

    bundled = bundled_photos()
    project = tmp_path / "project"
    (project / "samples" / "cameras" / "mine").mkdir(parents=True)
    shutil.copy(truncated, project / "samples" / "cameras" / "mine" / "x.jpg")
    monkeypatch.chdir(project)
    assert bundled_photos() == bundled and 0 < len(bundled) <= MAX_BUNDLED_PHOTOS
    with caplog.at_level("WARNING"):
        crops = photo_crops([truncated, *bundled[:1]], size=24)
    assert crops is not None and crops.batch.shape[0] == 1
    assert any("not using" in r.getMessage() and "a_truncated.jpg" in r.getMessage() for r in caplog.records)


def test_without_a_checkout_the_validation_photo_error_fits_the_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """After `pip install .` a backbone export failed with "the camera's images are not readable from
    here" (no camera involved), and the commands adassr suggested lacked the --validation-image they need."""
    import importlib.util

    import adassr.export.crops as crops
    from adassr.cli import main
    from adassr.export.crops import find_validation_photo
    from adassr.export.errors import ExportError

    monkeypatch.setattr(crops, "_checkout_roots", lambda: [tmp_path / "site-packages"])  # an installed wheel
    with pytest.raises(ExportError) as backbone:
        find_validation_photo((), None)
    assert "camera's" not in str(backbone.value)
    assert "comes with a checkout of adassr, not with an installed package; pass a photo with --validation-image" in (
        str(backbone.value))
    with pytest.raises(ExportError, match="the camera's images are not readable from here, and the bundled"):
        find_validation_photo([{"path": str(tmp_path / "gone.png")}], None)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    photo = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    store = tmp_path / "models"
    assert main(["upscale", "-i", str(photo), "-o", str(tmp_path / "out.png"), "--store", str(store)]) == 2
    assert f"adassr export --backbone realesrgan-x4plus --store {store} --validation-image PHOTO" in (
        capsys.readouterr().err)


def test_export_sizes_its_thread_pools_like_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """export ignored ADASSR_THREADS (its validation session took onnxruntime's default, every logical
    CPU) and accepted a value every other command refuses."""
    from adassr.cli import main
    from adassr.export.onnx import open_session
    from tests.runtime._models import build_tiny_sr

    monkeypatch.setenv("ADASSR_THREADS", "abc")
    assert main(["export", "--backbone", "realesrgan-x4plus", "--store", str(tmp_path / "s")]) == 2
    assert "ADASSR_THREADS must be an integer from 1 to 1024" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    monkeypatch.setenv("ADASSR_THREADS", "1")
    session = open_session(build_tiny_sr(seed=0))
    assert session.get_session_options().intra_op_num_threads == 1


def _export_by_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``adassr export --camera CAMERA`` on the tiny backbone (its registry passed in for the test)."""
    real = onnx_export.export_camera
    monkeypatch.setattr(onnx_export, "export_camera",
                        lambda *args, **kwargs: real(*args, **kwargs, registry=REGISTRY))
    return run_export(_cli(["--camera", CAMERA, "--store", str(tmp_path)]))


def test_a_signal_during_the_export_publishes_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT printed only "interrupted", SIGTERM nothing at all (a helper's hunt): one line now says what was kept."""
    import os
    import signal

    make_store(tmp_path)
    before = CameraStore.open(tmp_path, CAMERA).read_manifest()
    real = onnx_export.torch_reference

    def signalled(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGTERM)  # while the export is validated
        return real(model, batch)

    monkeypatch.setattr(onnx_export, "torch_reference", signalled)
    assert _export_by_cli(tmp_path, monkeypatch) == 143
    err = capsys.readouterr().err
    assert err == (f"export: interrupted by SIGTERM; nothing was published: the model and exports of camera "
                   f"'{CAMERA}' are unchanged\n")
    assert CameraStore.open(tmp_path, CAMERA).read_manifest() == before
    assert sorted(p.name for p in (tmp_path / CAMERA).iterdir()) == sorted(
        p.name for p in (tmp_path / CAMERA).iterdir() if not p.name.endswith(".tmp"))
    assert not list((tmp_path / CAMERA).glob("model*.onnx"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back


def test_a_signal_while_the_export_commits_waits_for_it_and_says_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal

    from adassr.runtime.store import StoreTransaction

    make_store(tmp_path)
    real = StoreTransaction.commit

    def commit(self: StoreTransaction, *args: object, **kwargs: object) -> dict:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the manifest is written
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StoreTransaction, "commit", commit)
    assert _export_by_cli(tmp_path, monkeypatch) == 130
    assert capsys.readouterr().err == ("export: interrupted by SIGINT; the signal came as the export was saved, "
                                       "which completed: the ONNX export is published\n")
    files, manifest = _published(tmp_path)
    assert len(files) == 1 and manifest["exports"]["onnx"]["file"] == "model.onnx"
    assert sha256_file(tmp_path / CAMERA / files[0]) == manifest["exports"]["onnx"]["sha256"]


def test_without_onnxruntime_the_export_fails_before_tracing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime validates every export: without it the export traced for a minute, then failed (a helper's
    minimal-install journey); it fails at once now, naming the extra."""
    import importlib.util

    make_store(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))

    def no_trace(*_a: object, **_k: object) -> None:
        raise AssertionError("traced although onnxruntime is missing")

    monkeypatch.setattr(onnx_export, "export_fp32", no_trace)
    with pytest.raises(ExportError, match=r"validating the export needs onnxruntime .*\[cpu\]"):
        onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    with pytest.raises(ExportError, match="validating the export needs onnxruntime"):
        onnx_export.export_fallback(tmp_path, "realesrgan-x4plus")
