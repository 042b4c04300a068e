"""TensorRT on a real GPU: build, run, refit and reuse an engine of a tiny real ONNX model.

Skipped (with the reason) without TensorRT or a CUDA device; run by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def _need_gpu_and_tensorrt() -> None:
    from adassr.runtime.engines.trt import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()  # absent, type stubs only, or not TensorRT 10
    if reason is not None:
        pytest.skip(f"no usable TensorRT: {reason}")
    from adassr.runtime.gpu import device_count

    if device_count() == 0:
        pytest.skip("no CUDA device")


def _reference(onnx_file: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime_and_refit_and_reuse(tmp_path: Path, precision: str, cuda_graph: bool) -> None:
    _need_gpu_and_tensorrt()
    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines import ProfileShape
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine
    from adassr.runtime.store import CameraStore

    from ._models import publish_camera

    for seed, camera in enumerate(("cam_a", "cam_b")):
        store = publish_camera(tmp_path, camera, seed=seed, fp16=True)
        store.update_manifest(lambda m: [r.update(structure_sha256="d" * 64) for r in m["exports"].values()])
    profiles = (ProfileShape((1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32)),) * 2  # one per stream
    kit = TensorRTToolkit()
    results = [ensure_camera_engine(EngineRequest(tmp_path, c, precision, profiles), kit) for c in ("cam_a", "cam_b")]
    assert results[0].base_built and not results[1].base_built and results[1].record.refit_s is not None
    again = ensure_camera_engine(EngineRequest(tmp_path, "cam_b", precision, profiles), kit)
    assert not again.built and not again.base_built
    batch = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)  # 3 chunks over 2 streams
    tolerance = 2e-4 if precision == "fp32" else 2e-2
    for camera, result in zip(("cam_a", "cam_b"), results, strict=True):
        onnx_name = "model_fp16.onnx" if precision == "fp16" else "model.onnx"
        want = _reference(CameraStore.open(tmp_path, camera).verified_path(onnx_name), batch)
        with TensorRTBackend(result.path, cuda_graph=cuda_graph, streams=2) as backend:
            for _ in range(2):  # the second call replays the captured graphs
                got = backend.infer(batch)
                assert np.abs(got - want).max() < tolerance
            # other batch sizes between replays, and calls from other threads (the device is per thread)
            assert np.abs(backend.infer(batch[:1]) - want[:1]).max() < tolerance
            with ThreadPoolExecutor(4) as pool:
                outs = list(pool.map(backend.infer, [batch, batch[:3], batch, batch[1:]]))
            for got, rows in zip(outs, (slice(0, 5), slice(0, 3), slice(0, 5), slice(1, 5)), strict=True):
                assert np.abs(got - want[rows]).max() < tolerance


def _publish_onnx(root: Path, camera: str, files: dict[str, bytes], backbone_sha256: str) -> None:
    """A camera whose exports are ``files`` (export key -> ONNX bytes), adapted from ``backbone_sha256``."""
    import onnx

    from adassr.runtime.engines.onnx_weights import structure_sha256
    from adassr.runtime.store import CameraStore

    store = CameraStore.open(root, camera, create=True)
    records: dict[str, dict[str, object]] = {}
    for key, data in files.items():
        name = "model_fp16.onnx" if key == "onnx_fp16" else "model.onnx"
        store.publish(name, lambda p, data=data: p.write_bytes(data), stage="export")
        records[key] = {"file": name, "scale": 4, "input_name": "lr", "output_name": "sr",
                        "weights_sha256": backbone_sha256 if camera == "_fallback" else "c" * 64,
                        "structure_sha256": structure_sha256(onnx.load_from_string(data))}

    def update(manifest: dict[str, object]) -> None:
        manifest["scale"] = 4
        manifest["backbone"] = {"name": "tiny", "weights_sha256": backbone_sha256}
        manifest.setdefault("exports", {}).update(records)  # type: ignore[attr-defined]

    store.update_manifest(update)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_partial_refit_sets_only_the_changed_weights_and_matches_a_full_refit(tmp_path: Path, precision: str) -> None:
    _need_gpu_and_tensorrt()
    import onnx
    from onnx import numpy_helper

    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines import ProfileShape
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine
    from adassr.runtime.store import CameraStore

    from ._models import build_tiny_sr

    def files(change_tail: bool) -> dict[str, bytes]:
        out = {}
        for key, half in (("onnx", False), ("onnx_fp16", True)):
            model = onnx.load_from_string(build_tiny_sr(seed=0, fp16=half))
            if change_tail:  # the last convolution only: its weights x3, its bias + 0.05
                for init in model.graph.initializer:
                    if init.name in ("w4", "b4"):
                        values = numpy_helper.to_array(init)
                        values = values * 3 if init.name == "w4" else values + 0.05
                        init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))
            out[key] = model.SerializeToString()
        return out

    _publish_onnx(tmp_path, "_fallback", files(False), "b" * 64)
    _publish_onnx(tmp_path, "cam", files(True), "b" * 64)
    profiles = (ProfileShape((1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32)),)
    kit = TensorRTToolkit()
    partial = ensure_camera_engine(EngineRequest(tmp_path, "cam", precision, profiles), kit)
    refit = partial.record.refit
    assert refit is not None and refit.mode == "partial", refit
    assert sorted(refit.changed) == ["b4", "w4"] and (refit.weights_set or 0) >= 2
    assert partial.base is not None and not partial.base.key.weight_stripped
    batch = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    onnx_name = "model_fp16.onnx" if precision == "fp16" else "model.onnx"
    want = _reference(CameraStore.open(tmp_path, "cam").verified_path(onnx_name), batch)
    backbone = _reference(CameraStore.open(tmp_path, "_fallback").verified_path(onnx_name), batch)
    tolerance = 2e-4 if precision == "fp32" else 2e-2
    assert np.abs(want - backbone).max() > 10 * tolerance  # an engine left with the backbone's weights would fail
    with TensorRTBackend(partial.path, streams=1) as engine:
        got_partial = engine.infer(batch)
    assert np.abs(got_partial - want).max() < tolerance
    full = ensure_camera_engine(EngineRequest(tmp_path, "cam", precision, profiles, partial_refit=False), kit)
    assert full.record.refit is not None and full.record.refit.mode == "full"
    with TensorRTBackend(full.path, streams=1) as engine:
        got_full = engine.infer(batch)
    assert np.abs(got_partial - got_full).max() < tolerance
    print(f"{precision}: partial refit {partial.record.refit_s:.3f} s ({refit.summary}, {refit.weights_set} set), "
          f"full refit {full.record.refit_s:.3f} s")


@pytest.mark.parametrize("scale", [2, 3])
def test_engine_of_a_model_that_is_not_x4_returns_its_own_scale(tmp_path: Path, scale: int) -> None:
    """The backend used to assume x4: it sized the output buffer and the result for 4x the input, so a
    x2 or x3 camera read back the wrong bytes (and a model above x4 would have written past the buffer)."""
    _need_gpu_and_tensorrt()
    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines import ProfileShape
    from adassr.runtime.engines.manage import EngineRequest, TensorRTToolkit, ensure_camera_engine
    from adassr.runtime.store import CameraStore

    from ._models import publish_camera

    store = publish_camera(tmp_path, "cam", scale=scale)
    store.update_manifest(lambda m: [r.update(structure_sha256="d" * 64) for r in m["exports"].values()])
    profiles = (ProfileShape((1, 3, 16, 16), (2, 3, 32, 32), (2, 3, 32, 32)),)
    result = ensure_camera_engine(EngineRequest(tmp_path, "cam", "fp32", profiles), TensorRTToolkit())
    batch = np.random.default_rng(1).random((3, 3, 24, 20), dtype=np.float32)
    want = _reference(CameraStore.open(tmp_path, "cam").verified_path("model.onnx"), batch)
    with TensorRTBackend(result.path, streams=1) as backend:
        got = backend.infer(batch)
        assert backend.model_metadata() == {"scale": str(scale)}  # what the manifest's scale is checked against
    assert got.shape == (3, 3, 24 * scale, 20 * scale) == want.shape
    assert np.abs(got - want).max() < 2e-4
