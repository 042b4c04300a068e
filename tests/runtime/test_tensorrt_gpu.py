"""TensorRT on a real GPU: build, run, refit and reuse an engine of a tiny real ONNX model.

Skipped (with the reason) without TensorRT or a CUDA device; run by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.engines.trt import tensorrt_available

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def _need_gpu_and_tensorrt() -> None:
    if not tensorrt_available():
        pytest.skip("TensorRT is not installed (only type stubs or nothing)")
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
