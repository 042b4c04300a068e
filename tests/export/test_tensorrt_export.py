"""Engine export bookkeeping on real exports of a tiny RRDBNet (TensorRT's own work comes from a
toolkit that writes files; the TensorRT calls themselves are type-checked, and run on a GPU box)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest
import torch

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.export.structure import structure_sha256
from adassr.export.tensorrt import EngineOptions, export_engine, export_model_as_camera
from adassr.runtime.engines import EngineKey, GpuIdentity
from adassr.runtime.engines.refit import RefitReport
from adassr.runtime.errors import ConfigError
from adassr.runtime.store import CameraStore, sha256_file
from adassr.runtime.tiling import TilingOptions

from ..runtime._models import build_tiny_sr


def test_structure_hash_ignores_weights_and_metadata_only() -> None:
    a, b = onnx.load_from_string(build_tiny_sr(seed=1)), onnx.load_from_string(build_tiny_sr(seed=2))
    assert a.graph.initializer[0].raw_data != b.graph.initializer[0].raw_data or \
        list(a.graph.initializer[0].float_data) != list(b.graph.initializer[0].float_data)
    entry = b.metadata_props.add()
    entry.key, entry.value = "camera", "other"
    assert structure_sha256(a) == structure_sha256(b)
    wider = onnx.load_from_string(build_tiny_sr(seed=1, channels=16))
    assert structure_sha256(wider) != structure_sha256(a)
    assert a.graph.initializer[0].name  # the proto was not cleared in place


class Toolkit:
    """Writes engines naming their inputs, counts builds and refits."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def tensorrt_version(self) -> str:
        return "10.13.0"

    def gpu(self, device: int) -> GpuIdentity:
        return GpuIdentity("NVIDIA H200", (9, 0))

    def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path, target: Path) -> float:
        self.calls.append(f"build {key.kind} {key.precision} {key.profiles[0].max}")
        target.write_text(f"{key.kind} from {sha256_file(onnx_path)}")
        return 1.0

    def refit(self, base_engine: Path, onnx_path: Path, target: Path) -> float:
        self.calls.append("refit")
        target.write_text(f"refit of {base_engine.read_text()} with {sha256_file(onnx_path)}")
        return 0.2

    def refit_partial(self, base_engine: Path, onnx_path: Path, names: Sequence[str], target: Path) -> RefitReport:
        self.calls.append(f"refit_partial {len(names)}")
        target.write_text(f"refit of {base_engine.read_text()} with {list(names)} of {sha256_file(onnx_path)}")
        return RefitReport(0.1, len(names))


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for seed, camera in enumerate(("canon", "nokia")):
        export_model_as_camera(_tiny(seed), root, camera, backbone="tiny-rrdbnet", precision="both")
    return root


def test_exports_record_one_structure_for_cameras_of_one_backbone(fleet: Path) -> None:
    records = [CameraStore.open(fleet, c).read_manifest()["exports"] for c in ("canon", "nokia")]
    assert records[0]["onnx"]["structure_sha256"] == records[1]["onnx"]["structure_sha256"]
    assert records[0]["onnx_fp16"]["structure_sha256"] == records[1]["onnx_fp16"]["structure_sha256"]
    assert records[0]["onnx"]["structure_sha256"] != records[0]["onnx_fp16"]["structure_sha256"]
    assert records[0]["onnx"]["sha256"] != records[1]["onnx"]["sha256"]


def test_fleet_costs_one_build_per_precision_and_a_refit_per_camera(fleet: Path) -> None:
    kit = Toolkit()
    options = EngineOptions(precision="fp16", tiling=TilingOptions(tile=128, overlap=16, batch_size=2))
    first = export_engine(fleet, "canon", options, toolkit=kit, export_missing=False)
    second = export_engine(fleet, "nokia", options, toolkit=kit, export_missing=False)
    again = export_engine(fleet, "nokia", options, toolkit=kit, export_missing=False)
    assert kit.calls == ["build base fp16 (2, 3, 128, 128)", "refit", "refit"]
    assert not again.built and again.path == second.path
    fp16_onnx = CameraStore.open(fleet, "nokia").verified_path("model_fp16.onnx")
    assert second.path.read_text().endswith(sha256_file(fp16_onnx))
    assert first.base is not None and second.record.base == first.base.key.digest
    bf16 = export_engine(fleet, "canon", EngineOptions(precision="bf16", refit=False), toolkit=kit,
                         export_missing=False)
    assert kit.calls[-1] == "build camera bf16 (1, 3, 512, 512)" and bf16.base is None
    fp32_onnx = CameraStore.open(fleet, "canon").verified_path("model.onnx")
    assert bf16.path.read_text() == f"camera from {sha256_file(fp32_onnx)}"


def test_engine_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="fp32, fp16, bf16"):
        EngineOptions(precision="int8")
    with pytest.raises(ConfigError, match="--gpu must be >= 0"):
        EngineOptions(device=-2)


def test_bf16_needs_the_engine_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    assert main(["export", "--backbone", "realesrgan-x4plus", "--store", str(tmp_path), "--precision", "bf16"]) == 2
    assert "--precision bf16 exists only for TensorRT engines" in capsys.readouterr().err


def test_an_untiled_engine_is_refused_because_nothing_loads_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    assert main(["export", "--backbone", "realesrgan-x4plus", "--store", str(tmp_path), "--engine", "tensorrt",
                 "--tile", "0"]) == 2
    assert "--tile 0 (untiled) would build an engine that no command loads" in capsys.readouterr().err
    assert not (tmp_path / "_fallback").exists()


def test_engine_export_without_tensorrt_fails_before_exporting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main
    from adassr.runtime.engines.trt import tensorrt_available

    if tensorrt_available():
        pytest.skip("real TensorRT is installed")
    assert main(["export", "--backbone", "realesrgan-x4plus", "--store", str(tmp_path), "--engine", "tensorrt",
                 "--precision", "fp16"]) == 2
    assert "[tensorrt]'" in capsys.readouterr().err
    assert not (tmp_path / "_fallback").exists()  # nothing was exported


def test_serving_uses_an_engine_export_built_with_other_builder_settings(tmp_path: Path) -> None:
    """upscale/serve ask for level 3 and refit; an export with --opt-level 5 or --no-refit was built
    again beside it on the first upscale (minutes of building, the exported engine never used)."""
    from adassr.runtime.engines.manage import EngineRequest, ensure_camera_engine

    export_model_as_camera(_tiny(3), tmp_path, "canon", backbone="tiny-rrdbnet", precision="fp32")
    kit = Toolkit()
    tiling = TilingOptions(tile=128, overlap=16, batch_size=2)
    level5 = export_engine(tmp_path, "canon", EngineOptions(precision="fp32", optimization_level=5, tiling=tiling),
                           toolkit=kit, export_missing=False)
    assert kit.calls == ["build base fp32 (2, 3, 128, 128)", "refit"]
    serving = EngineRequest(tmp_path, "canon", "fp32", level5.record.key.profiles, any_stored_settings=True)
    used = ensure_camera_engine(serving, kit)
    assert not used.built and used.path == level5.path and len(kit.calls) == 2
    own = export_engine(tmp_path, "canon", EngineOptions(precision="fp32", refit=False, tiling=tiling), toolkit=kit,
                        export_missing=False)  # level 3, built from the ONNX: level 5 still wins
    assert kit.calls[-1] == "build camera fp32 (2, 3, 128, 128)"
    assert ensure_camera_engine(serving, kit).path == level5.path and len(kit.calls) == 3
    level5.path.write_text("damaged")  # fails its checksum: the next variant serves
    assert ensure_camera_engine(serving, kit).path == own.path and len(kit.calls) == 3
    other_profile = EngineRequest(tmp_path, "canon", "fp16", level5.record.key.profiles, any_stored_settings=True)
    with pytest.raises(Exception, match="no onnx_fp16 export"):  # another precision is never taken instead
        ensure_camera_engine(other_profile, kit)
    exact = EngineRequest(tmp_path, "canon", "fp32", level5.record.key.profiles)  # export's own request: builds
    assert ensure_camera_engine(exact, kit).built and len(kit.calls) > 3
