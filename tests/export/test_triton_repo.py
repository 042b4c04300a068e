"""``adassr export --triton-repo``: every config.pbtxt parses with Triton's own ModelConfig schema."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from adassr.cli import main
from adassr.export.errors import ExportError
from adassr.export.triton_repo import TritonRepoOptions, write_repository
from adassr.runtime.errors import StoreError
from adassr.runtime.server.triton_client import parse_model_config
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

from ..runtime._models import fallback_and_canon, publish_camera


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fallback_and_canon(tmp_path / "store", canon_fp16=True)


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_repository_layout_and_configs_parse(store: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    models = write_repository(
        repo, store, options=TritonRepoOptions(tile=64, max_batch_size=8, preferred_batch_sizes=(4, 8))
    )
    assert sorted(m.name for m in models) == ["adassr__fallback", "adassr_canon"]
    for model in models:
        config = _parse(repo / model.name / "config.pbtxt")
        assert config.name == model.name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 8
        (inp,) = config.input
        (out,) = config.output
        assert (inp.name, list(inp.dims), inp.data_type) == ("lr", [3, 64, 64], model_config_pb2.TYPE_FP32)
        assert (out.name, list(out.dims), out.data_type) == ("sr", [3, 256, 256], model_config_pb2.TYPE_FP32)
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.version_policy.latest.num_versions == 1
        assert config.parameters["adassr_scale"].string_value == "4"
        onnx_file = repo / model.name / "1" / "model.onnx"
        camera = "canon" if model.name.endswith("canon") else FALLBACK_CAMERA
        expected = CameraStore.open(store, camera).verified_path("model.onnx")
        assert _sha(onnx_file) == _sha(expected) == model.sha256
        # The client reads the same config in the JSON form Triton's HTTP API returns.
        info = parse_model_config(json_format.MessageToDict(config, preserving_proto_field_name=True))
        assert (info.tile, info.scale, info.input_name, info.output_name, info.max_batch_size) == (64, 4, "lr", "sr", 8)


def test_output_dims_follow_the_camera_scale(tmp_path: Path) -> None:
    """A x2 camera's output is [3, 2t, 2t]: every tested camera was x4, so dims of 4t for any scale went
    unnoticed (mutation testing), and Triton refuses a model whose outputs contradict its config."""
    store = tmp_path / "store"
    publish_camera(store, "x2cam", seed=3, scale=2)
    repo = tmp_path / "repo"
    write_repository(repo, store, ["x2cam"], options=TritonRepoOptions(tile=48))
    config = _parse(repo / "adassr_x2cam" / "config.pbtxt")
    assert list(config.input[0].dims) == [3, 48, 48] and list(config.output[0].dims) == [3, 96, 96]
    assert config.parameters["adassr_scale"].string_value == "2"


def test_the_schema_check_is_real(store: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository(repo, store, ["canon"])
    text = (repo / "adassr_canon" / "config.pbtxt").read_text()
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("max_batch_size", "max_batch"), model_config_pb2.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("TYPE_FP32", "TYPE_FLOAT"), model_config_pb2.ModelConfig())


def test_new_adaptation_becomes_a_new_version(store: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (first,) = write_repository(repo, store, ["canon"])
    assert (first.version, first.new_version) == (1, True)
    (again,) = write_repository(repo, store, ["canon"])
    assert (again.version, again.new_version) == (1, False)  # same bytes: no new version
    publish_camera(store, "canon", seed=5)  # re-adapted and re-exported
    (second,) = write_repository(repo, store, ["canon"])
    assert (second.version, second.new_version) == (2, True) and second.sha256 != first.sha256
    model_dir = repo / "adassr_canon"
    assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2"]
    assert _sha(model_dir / "1" / "model.onnx") == first.sha256  # the old version stays for rollback
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no staging leftovers
    _parse(model_dir / "config.pbtxt")


def test_one_camera_named_in_two_spellings_is_one_model(store: Path, tmp_path: Path) -> None:
    """``--camera canon --camera Canon`` planned version 2 twice; the second rename failed after the
    first had been written, reported as an unwritable repository."""
    repo = tmp_path / "repo"
    write_repository(repo, store, ["canon"])
    publish_camera(store, "canon", seed=5)
    models = write_repository(repo, store, ["canon", "Canon", " CANON "])
    assert [(m.name, m.version, m.new_version) for m in models] == [("adassr_canon", 2, True)]
    assert sorted(p.name for p in (repo / "adassr_canon").iterdir() if p.is_dir()) == ["1", "2"]


def test_folders_triton_does_not_take_for_versions_do_not_count(store: Path, tmp_path: Path) -> None:
    """Triton skips "007" (a leading zero) and other digits; "0" and "-4" are versions 0 and -4 to it, below 1."""
    repo = tmp_path / "repo"
    write_repository(repo, store, ["canon"])
    for odd in ("007", "0", "-4", "\u0663"):  # the last: ARABIC-INDIC DIGIT THREE, which str.isdigit() takes
        (repo / "adassr_canon" / odd).mkdir()
    publish_camera(store, "canon", seed=5)
    (model,) = write_repository(repo, store, ["canon"])
    assert (model.version, model.new_version) == (2, True)
    assert (repo / "adassr_canon" / "2" / "model.onnx").is_file()


def test_a_folder_triton_reads_as_a_version_it_cannot_load_is_refused(store: Path, tmp_path: Path) -> None:
    """Triton reads "7.bak" as version 7 (std::stoll) and then loads <model>/7: with that backup beside
    version 1 the next export became version 2, which Triton never served (a helper's review)."""
    from adassr.export.triton_repo import triton_version

    assert [triton_version(n) for n in ("1", "7.bak", " 5", "0", "007", "01", "x1", "\u0663", "-2")] == \
        [1, 7, 5, 0, None, None, None, None, -2]
    repo = tmp_path / "repo"
    write_repository(repo, store, ["canon"])
    (repo / "adassr_canon" / "7.bak").mkdir()
    publish_camera(store, "canon", seed=6)
    with pytest.raises(ExportError, match=r"7\.bak reads as version 7 to Triton .* rename"):
        write_repository(repo, store, ["canon"])
    assert sorted(p.name for p in (repo / "adassr_canon").iterdir() if p.is_dir()) == ["1", "7.bak"]
    (repo / "adassr_canon" / "7").mkdir()  # a version 7 of its own: Triton loads that one, and 8 comes next
    (model,) = write_repository(repo, store, ["canon"])
    assert model.version == 8


def test_options_fp16_and_cpu_instances(store: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    options = TritonRepoOptions(precision="fp16", instance_kind="KIND_CPU", instance_count=2)
    (model,) = write_repository(repo, store, ["canon"], options)
    config = _parse(repo / model.name / "config.pbtxt")
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    fp16_file = CameraStore.open(store, "canon").verified_path("model_fp16.onnx")
    assert model.sha256 == _sha(fp16_file)


def test_trt_accelerator_has_one_profile_for_the_batches_a_cache_and_a_warm_up(store: Path, tmp_path: Path) -> None:
    """Without a profile onnxruntime sized the TensorRT engine on the first batch and built it again for
    every larger one (minutes each); without a cache every model load built it again."""
    repo = tmp_path / "repo"
    options = TritonRepoOptions(precision="fp16", tile=64, max_batch_size=4, preferred_batch_sizes=(2, 4),
                                trt_accelerator=True, trt_cache_dir="/var/cache/trt/")
    (model,) = write_repository(repo, store, ["canon"], options)
    config = _parse(repo / model.name / "config.pbtxt")
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and dict(accel.parameters) == {
        "precision_mode": "FP16",
        "trt_profile_min_shapes": "lr:1x3x64x64",
        "trt_profile_opt_shapes": "lr:4x3x64x64",
        "trt_profile_max_shapes": "lr:4x3x64x64",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"/var/cache/trt/adassr_canon-{model.sha256[:16]}",  # one level: ORT's mkdir
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": "/var/cache/trt/adassr_canon",
    }
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 4 and list(warmup.inputs) == ["lr"]
    tiles = warmup.inputs["lr"]
    assert list(tiles.dims) == [3, 64, 64] and tiles.zero_data
    assert tiles.data_type == config.input[0].data_type == model_config_pb2.TYPE_FP16  # the export's io_dtype
    (plain,) = write_repository(tmp_path / "plain", store, ["canon"],
                                TritonRepoOptions(tile=64, max_batch_size=4, preferred_batch_sizes=(4,),
                                                  trt_accelerator=True))
    (accel,) = _parse(plain.directory / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["precision_mode"] == "FP32" and "trt_engine_cache_enable" not in accel.parameters
    # onnxruntime names cached engines after the graph, not the weights: a new version gets its own folder
    publish_camera(store, "canon", seed=7, fp16=True)
    (second,) = write_repository(repo, store, ["canon"], options)
    (accel,) = _parse(repo / second.name / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert second.version == 2 and second.sha256 != model.sha256
    assert accel.parameters["trt_engine_cache_path"] == f"/var/cache/trt/adassr_canon-{second.sha256[:16]}"
    # --no-trt-profile (Triton 24.03 refuses the profile keys): the rest stays
    (old_triton,) = write_repository(tmp_path / "old", store, ["canon"], TritonRepoOptions(
        tile=64, max_batch_size=4, preferred_batch_sizes=(4,), trt_accelerator=True, trt_profile=False))
    config = _parse(old_triton.directory / "config.pbtxt")
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(accel.parameters) == {"precision_mode": "FP32"} and config.model_warmup[0].batch_size == 4
    (old_cached,) = write_repository(tmp_path / "old2", store, ["canon"], TritonRepoOptions(
        tile=64, max_batch_size=4, preferred_batch_sizes=(4,), trt_accelerator=True, trt_profile=False,
        trt_cache_dir="/var/cache/trt"))  # 24.03 knows the engine cache, not the timing-cache keys (24.04)
    config = _parse(old_cached.directory / "config.pbtxt")
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert sorted(accel.parameters) == ["precision_mode", "trt_engine_cache_enable", "trt_engine_cache_path"]


def test_a_cache_folder_of_any_unicode_name_reads_back_from_the_config(store: Path, tmp_path: Path) -> None:
    """JSON escapes (``\\ud83d\\ude00`` for an emoji) were written into config.pbtxt, which protobuf's text
    format does not take as escapes: the parser refused them or named another folder."""
    folder = "/var/cache/trt \U0001F600 café\n\x1b\"q\\"
    options = TritonRepoOptions(tile=64, max_batch_size=4, preferred_batch_sizes=(4,), trt_accelerator=True,
                                trt_cache_dir=folder)
    (model,) = write_repository(tmp_path / "repo", store, ["canon"], options)
    text = (model.directory / "config.pbtxt").read_text(encoding="ascii")
    (accel,) = _parse(model.directory / "config.pbtxt").optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["trt_timing_cache_path"] == f"{folder}/adassr_canon" and "\\u" not in text


@pytest.mark.parametrize(("options", "message"), [
    ({"trt_accelerator": True, "instance_kind": "KIND_CPU"}, "would do nothing"),
    ({"trt_cache_dir": "/var/cache/trt"}, "add --trt-accelerator"),
    ({"trt_accelerator": True, "trt_cache_dir": "cache/trt"}, "absolute path on the Triton host"),
    ({"trt_accelerator": True, "trt_cache_dir": "/cache/caf\udcff/x"}, "must be UTF-8 text"),  # a non-UTF-8 name
    ({"trt_profile": False}, "add --trt-accelerator"),
])
def test_trt_accelerator_options_that_cannot_work_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        TritonRepoOptions(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "message"), [
    ({"max_batch_size": 2**70}, f"--max-batch must be from 1 to 1024, got {2**70}"),  # written into config.pbtxt
    ({"max_batch_size": 0}, "--max-batch must be from 1 to 1024, got 0"),
    ({"instance_count": 2**70}, f"--instances must be from 1 to 256, got {2**70}"),  # int32 fields in Triton
    ({"instance_count": 0}, "--instances must be from 1 to 256, got 0"),  # was about a queue delay never set
    ({"max_queue_delay_us": -1}, "the max queue delay must be >= 0 microseconds, got -1"),  # uint64 in Triton
    ({"tile": 7}, "--tile must be from 8 to"),
])
def test_counts_triton_cannot_take_are_refused_naming_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(ExportError, match=re.escape(message)):
        TritonRepoOptions(**options)  # type: ignore[arg-type]


def test_rerun_leaves_the_config_untouched(store: Path, tmp_path: Path) -> None:
    """Triton in poll mode reloads a model whose files change: a rerun that changes nothing used to
    rewrite config.pbtxt (new inode and mtime) and so reloaded every model of every replica."""
    repo = tmp_path / "repo"
    (model,) = write_repository(repo, store, ["canon"])
    config = model.directory / "config.pbtxt"
    before = config.stat()
    (again,) = write_repository(repo, store, ["canon"])
    after = config.stat()
    assert not again.new_version and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    smaller = TritonRepoOptions(max_batch_size=4, preferred_batch_sizes=(4,))
    (changed,) = write_repository(repo, store, ["canon"], smaller)
    assert not changed.new_version and _parse(config).max_batch_size == 4  # a changed config is written


def _store_engine(cam: CameraStore, plan: bytes, *, tensorrt_version: str = "10.13.0",
                  profile: tuple[tuple[int, ...], ...] = ((1, 3, 32, 32), (4, 3, 64, 64), (4, 3, 128, 128))) -> str:
    """An engine stored by the real engine cache, as `adassr export --engine tensorrt` stores one; only
    the build is stood in for (the bytes stand in for a plan: no TensorRT builder here). Returns its file."""
    from adassr.runtime.engines.cache import BuildOutput, EngineCache
    from adassr.runtime.engines.key import EngineKey, GpuIdentity, ProfileShape

    def build(tmp: Path) -> BuildOutput:
        tmp.write_bytes(plan)
        return BuildOutput(seconds=0.0)

    key = EngineKey(kind="camera", source_sha256=_sha(cam.verified_path("model.onnx")),
                    tensorrt_version=tensorrt_version, gpu=GpuIdentity("NVIDIA H200", (9, 0)), precision="fp32",
                    profiles=(ProfileShape(*profile),))
    record, built = EngineCache.for_camera(cam).ensure(key, build)
    assert built
    return record.file


def test_tensorrt_plan_needs_an_engine_in_the_store(store: Path, tmp_path: Path) -> None:
    options = TritonRepoOptions(platform="tensorrt_plan", tile=64, max_batch_size=4, preferred_batch_sizes=(4,))
    with pytest.raises(ExportError, match="no fp32 TensorRT engine"):
        write_repository(tmp_path / "repo", store, ["canon"], options)
    cam = CameraStore.open(store, "canon")
    engine = b"serialized-engine-bytes-for-the-layout-test"
    engine_file = _store_engine(cam, engine)
    assert engine_file.startswith("engines/")  # relative to the camera folder (it used to be looked up twice deep)
    (model,) = write_repository(tmp_path / "repo", store, ["canon"], options)
    assert (model.directory / "1" / "model.plan").read_bytes() == engine
    config = _parse(model.directory / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and list(config.input[0].dims) == [3, 64, 64]
    provenance = json.loads((model.directory / "adassr_versions.json").read_text())["1"]
    assert provenance["tensorrt_version"] == "10.13.0" and provenance["gpu_name"] == "NVIDIA H200"
    assert provenance["engine_file"] == engine_file
    small = TritonRepoOptions(platform="tensorrt_plan", tile=256, max_batch_size=4, preferred_batch_sizes=(4,))
    with pytest.raises(ExportError, match="profile takes batches"):  # the profile does not take 256 px tiles
        write_repository(tmp_path / "repo2", store, ["canon"], small)
    # An engine of another TensorRT release for the same GPU: which plan a Triton release loads is ambiguous.
    _store_engine(cam, b"another-tensorrt-plan", tensorrt_version="10.8.0")
    with pytest.raises(ExportError, match=r"several GPUs or TensorRT versions \(NVIDIA H200 with TensorRT 10\.13"):
        write_repository(tmp_path / "repo3", store, ["canon"], options)
    # Re-adapted and re-exported: the engine records stay, but they were built from the old ONNX model.
    engines = CameraStore.open(store, "canon").read_manifest()["engines"]
    publish_camera(store, "canon", seed=5)
    assert CameraStore.open(store, "canon").read_manifest()["engines"] == engines
    with pytest.raises(ExportError, match="built from an earlier export"):
        write_repository(tmp_path / "repo", store, ["canon"], options)
    assert sorted(p.name for p in model.directory.iterdir() if p.is_dir()) == ["1"]


def test_an_engine_whose_profile_starts_above_batch_one_or_the_tile_is_not_taken(store: Path,
                                                                                  tmp_path: Path) -> None:
    """Triton sends any batch from 1 to max_batch_size: a profile from batch 2, or from a tile larger than the
    repository's, fails the smaller requests at run time, so such an engine is refused when the repository is
    written (a helper's mutant dropped the lower-bound check and passed)."""
    options = TritonRepoOptions(platform="tensorrt_plan", tile=64, max_batch_size=4, preferred_batch_sizes=(4,))
    for k, low in enumerate(((2, 3, 64, 64), (1, 3, 96, 96))):
        cam = CameraStore.open(store, "canon")
        _store_engine(cam, b"a-plan-of-another-profile-%d" % k, profile=(low, (4, 3, 128, 128), (4, 3, 128, 128)))
        with pytest.raises(ExportError, match="profile takes batches"):
            write_repository(tmp_path / f"repo{k}", store, ["canon"], options)
        publish_camera(store, "canon", seed=10 + k)  # a new export: the next engine is the only current one
    with pytest.raises(ExportError, match=r"must lie in 1\.\.4"):
        TritonRepoOptions(max_batch_size=4, preferred_batch_sizes=(2, 8))


def test_plans_of_different_tensorrt_releases_never_share_a_repository(store: Path, tmp_path: Path) -> None:
    """Each camera's engines were checked on their own: a repository could hold one camera's plan for
    TensorRT 10.13 and another's for 10.8, of which any one Triton release loads only one (a helper's review)."""
    options = TritonRepoOptions(platform="tensorrt_plan", tile=64, max_batch_size=4, preferred_batch_sizes=(4,))
    _store_engine(CameraStore.open(store, "canon"), b"plan-of-10.13")
    _store_engine(CameraStore.open(store, FALLBACK_CAMERA), b"plan-of-10.8", tensorrt_version="10.8.0")
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match=r"more than one GPU type or TensorRT release \(NVIDIA H200 with TensorRT "
                                          r"10\.13\.0: canon; NVIDIA H200 with TensorRT 10\.8\.0: _fallback\)"):
        write_repository(repo, store, ["canon", FALLBACK_CAMERA], options)
    assert not repo.exists()
    write_repository(repo, store, ["canon"], options)  # one target: written
    with pytest.raises(ExportError, match=r"10\.13\.0: adassr_canon \(already in the repository\); .*"
                                          r"10\.8\.0: _fallback"):
        write_repository(repo, store, [FALLBACK_CAMERA], options)  # beside a plan of another release
    assert sorted(p.name for p in repo.iterdir()) == [".adassr.lock", "adassr_canon"]
    # the same camera under another --triton-prefix is another model beside it: refused as well
    publish_camera(store, "canon", seed=21)  # adapted again: its 10.13 engine is stale, a 10.8 one is built
    _store_engine(CameraStore.open(store, "canon"), b"plan-of-10.8-canon", tensorrt_version="10.8.0")
    with pytest.raises(ExportError, match="more than one GPU type or TensorRT release"):
        write_repository(repo, store, ["canon"], TritonRepoOptions(
            platform="tensorrt_plan", tile=64, max_batch_size=4, preferred_batch_sizes=(4,), prefix="v2_"))
    # the same camera again with the other release replaces its own plan: no conflict with itself
    (canon,) = write_repository(repo, store, ["canon"], options)
    assert (canon.directory / "2" / "model.plan").read_bytes() == b"plan-of-10.8-canon"
    write_repository(tmp_path / "onnx", store, ["canon"])  # ONNX models never conflict
    (onnx_and_plan,) = write_repository(tmp_path / "onnx", store, [FALLBACK_CAMERA], options)
    assert (onnx_and_plan.directory / "1" / "model.plan").read_bytes() == b"plan-of-10.8"


def test_tensorrt_plan_names_a_command_that_builds_the_missing_engine(store: Path, tmp_path: Path) -> None:
    """For the fallback it used to name `adassr export --camera _fallback`, which export refuses."""
    options = TritonRepoOptions(platform="tensorrt_plan", tile=64, max_batch_size=4, preferred_batch_sizes=(4,))
    CameraStore.open(store, FALLBACK_CAMERA).update_manifest(lambda m: m.update(backbone={"name": "realsr-df2k"}))
    with pytest.raises(ExportError) as caught:
        write_repository(tmp_path / "repo", store, [FALLBACK_CAMERA], options)
    assert (f"`adassr export --backbone realsr-df2k --store {store} --engine tensorrt --tile 64 --tile-batch 4`"
            in str(caught.value))
    with pytest.raises(ExportError, match="`adassr export --camera canon --store .* --engine tensorrt --tile 64"):
        write_repository(tmp_path / "repo", store, ["canon"], options)


def test_tensorrt_plan_refuses_cpu_instances() -> None:
    with pytest.raises(ExportError, match="tensorrt_plan runs on GPUs only"):
        TritonRepoOptions(platform="tensorrt_plan", instance_kind="KIND_CPU")


def test_a_rollback_to_earlier_weights_becomes_the_newest_version(store: Path, tmp_path: Path) -> None:
    """Triton serves the latest version, so bytes equal to an older version must not count as unchanged."""
    repo = tmp_path / "repo"
    (first,) = write_repository(repo, store, ["canon"])
    publish_camera(store, "canon", seed=5)
    (second,) = write_repository(repo, store, ["canon"])
    publish_camera(store, "canon", seed=1, fp16=True)  # back to the first weights
    (third,) = write_repository(repo, store, ["canon"])
    assert [m.version for m in (first, second, third)] == [1, 2, 3] and third.new_version
    assert third.sha256 == first.sha256 != second.sha256
    assert _sha(repo / "adassr_canon" / "3" / "model.onnx") == first.sha256
    (again,) = write_repository(repo, store, ["canon"])
    assert (again.version, again.new_version) == (3, False)


def test_repository_problems_are_export_errors(store: Path, tmp_path: Path) -> None:
    import fcntl
    import os

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):  # was "File exists (a_file)"
        write_repository(a_file, store, ["canon"])
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "adassr_canon").write_text("not a folder")
    with pytest.raises(ExportError, match="is a file"):
        write_repository(repo, store, ["canon"])
    (repo / "adassr_canon").unlink()
    write_repository(repo, store, ["canon"])
    provenance = repo / "adassr_canon" / "adassr_versions.json"
    provenance.write_text("{damaged")
    publish_camera(store, "canon", seed=5)
    with pytest.raises(ExportError, match="not overwritten"):
        write_repository(repo, store, ["canon"])
    assert provenance.read_text() == "{damaged"
    assert sorted(p.name for p in (repo / "adassr_canon").iterdir() if p.is_dir()) == ["1"]
    provenance.unlink()
    fd = os.open(repo / ".adassr.lock", os.O_RDWR)  # another export holds the repository
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ExportError, match="another adassr export is writing"):
            write_repository(repo, store, ["canon"])
    finally:
        os.close(fd)
    (model,) = write_repository(repo, store, ["canon"])
    assert (model.version, model.new_version) == (2, True)


def test_every_camera_is_checked_before_any_is_written(store: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for cameras, words in ((["canon", "nope"], "no manifest|nope"), ([FALLBACK_CAMERA, "canon"], "no fp16"),
                           ("canon", "a list of camera names")):
        opts = TritonRepoOptions(precision="fp16") if cameras == [FALLBACK_CAMERA, "canon"] else None
        with pytest.raises((ExportError, StoreError), match=words):
            write_repository(repo, store, cameras, opts)  # type: ignore[arg-type]
        assert not repo.exists()  # nothing was written, not even the folder
    for inside in (store / "canon", store, tmp_path):  # inside the store, the store, around the store
        with pytest.raises(ExportError, match="must be separate folders"):
            write_repository(inside, store, ["canon"])
    assert not (store / "canon" / "adassr_canon").exists()
    # a model folder that is a link into the store (or to the store) passed that check, and the model's config,
    # versions and provenance were written among the camera's files (a helper's hunt)
    repo.mkdir()
    for target in (store / "canon", store):
        (repo / "adassr_canon").symlink_to(target)
        before = sorted(p.name for p in (store / "canon").iterdir())
        with pytest.raises(ExportError, match="through a link.*in the model store .* or holds it"):
            write_repository(repo, store, ["canon"])
        assert sorted(p.name for p in (store / "canon").iterdir()) == before
        (repo / "adassr_canon").unlink()
    with pytest.raises(ExportError, match="options must be a TritonRepoOptions"):
        write_repository(repo, store, ["canon"], {"tile": 256})  # type: ignore[arg-type]


def test_a_model_name_another_camera_owns_is_refused(store: Path, tmp_path: Path) -> None:
    """Cameras `x` (prefix adassr_) and `adassr_x` (no prefix) both map to the model adassr_x: the second
    export became version 2 of the first camera's model, so Triton served the wrong camera's weights."""
    publish_camera(store, "x", seed=3)
    publish_camera(store, "adassr_x", seed=4)
    repo = tmp_path / "repo"
    (first,) = write_repository(repo, store, ["x"])
    before = sorted(p.name for p in (repo / "adassr_x").iterdir())
    with pytest.raises(ExportError, match="serves camera 'x', not 'adassr_x'"):
        write_repository(repo, store, ["adassr_x"], TritonRepoOptions(prefix=""))
    assert sorted(p.name for p in (repo / "adassr_x").iterdir()) == before
    (repo / "adassr_x" / "adassr_versions.json").unlink()  # the config still names the camera
    with pytest.raises(ExportError, match="serves camera 'x', not 'adassr_x'"):
        write_repository(repo, store, ["adassr_x"], TritonRepoOptions(prefix=""))


def test_a_camera_of_the_same_name_from_another_store_is_named(store: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Two stores (two sites) with a camera ``canon`` published into one repository took turns as
    versions of one model, silently: each version now records its store, and the CLI warns."""
    other = tmp_path / "other_store"
    publish_camera(other, FALLBACK_CAMERA, seed=0)
    publish_camera(other, "canon", seed=7)
    repo = tmp_path / "repo"
    args = ["export", "--triton-repo", str(repo), "--camera", "canon", "--instance-kind", "KIND_CPU"]
    assert main([*args, "--store", str(store)]) == 0
    record = json.loads((repo / "adassr_canon" / "adassr_versions.json").read_text())["1"]
    assert record["store"] == str(store.resolve())
    assert "warning" not in capsys.readouterr().err
    assert main([*args, "--store", str(store)]) == 0  # the same store again: no warning
    assert "warning" not in capsys.readouterr().err
    assert main([*args, "--store", str(other)]) == 0
    err = capsys.readouterr().err
    assert f"last published from the store {store.resolve()}" in err and "another --triton-prefix" in err
    (model,) = write_repository(repo, other, ["canon"])  # other's own version now: nothing to say
    assert (model.version, model.previous_store) == (2, None)
    shutil.copytree(other, tmp_path / "moved")  # the same bytes from a moved store: named once, then recorded
    (moved,) = write_repository(repo, tmp_path / "moved", ["canon"])
    assert (moved.version, moved.new_version, moved.previous_store) == (2, False, str(other.resolve()))
    (again,) = write_repository(repo, tmp_path / "moved", ["canon"])
    assert again.previous_store is None


def test_a_model_that_cannot_be_written_stops_the_run_before_any_is(store: Path, tmp_path: Path) -> None:
    """Per-camera checks ran inside the writing loop: 'canon' was written before the next camera's name was
    found invalid (over 128 characters), and the message did not say why."""
    publish_camera(store, "z" * 40, seed=3)
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="over Triton's 128"):
        write_repository(repo, store, ["canon", "z" * 40], TritonRepoOptions(prefix="p" * 100))
    assert not repo.exists()
    repo.mkdir()
    (repo / "adassr_canon").mkdir()
    (repo / "adassr_canon" / "adassr_versions.json").write_text("{damaged")  # found while planning
    with pytest.raises(ExportError, match="not overwritten"):
        write_repository(repo, store, [FALLBACK_CAMERA, "canon"])
    assert sorted(p.name for p in repo.iterdir()) == [".adassr.lock", "adassr_canon"]  # no fallback model


def test_models_the_store_no_longer_backs_are_named(store: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """After a re-adaptation (exports dropped) or a camera removed, the default run wrote the rest and said
    nothing: the fleet kept serving the old model, or a camera's model that no longer exists."""
    import shutil

    from adassr.export.triton_repo import repository_warnings

    publish_camera(store, "gone", seed=6)
    repo = tmp_path / "repo"
    write_repository(repo, store)
    assert repository_warnings(repo, store) == []
    CameraStore.open(store, "canon").update_manifest(lambda m: m.pop("exports"))  # what re-adapting does
    shutil.rmtree(store / "gone")
    CameraStore.open(store, "fresh", create=True).update_manifest(lambda m: None)  # adapted, never exported
    assert main(["export", "--store", str(store), "--triton-repo", str(repo)]) == 0
    err = capsys.readouterr().err
    assert ("warning: camera 'canon' has no export now (adapted again since?): its Triton model still serves the "
            f"earlier export; run `adassr export --camera canon --store {store}`, then rerun") in err
    assert "warning: camera 'fresh' has no export, so it has no Triton model" in err
    assert "warning: the Triton model 'adassr_gone' serves camera 'gone', which this store does not have (any " \
           f"more); unless another store writes it into this repository, remove {repo / 'adassr_gone'}" in err


def test_a_stray_folder_in_the_store_is_named(store: Path, tmp_path: Path) -> None:
    """It failed with only "invalid camera group name 'Bad Name'", not saying it was a folder of the store."""
    (store / "Bad Name").mkdir()
    (store / "Bad Name" / "manifest.json").write_text("{}")
    with pytest.raises(ExportError, match="the store folder .*Bad Name holds a manifest, but its name is no camera"):
        write_repository(tmp_path / "repo", store)
    with pytest.raises(StoreError, match="the store has no fallback model .*--backbone realesrgan-x4plus"):
        CameraStore.open(tmp_path, FALLBACK_CAMERA).read_manifest()


def test_options_must_be_integers_where_config_pbtxt_wants_them() -> None:
    import numpy as np

    for kwargs in ({"tile": 256.0}, {"max_batch_size": 8.0}, {"preferred_batch_sizes": (4.0,)},
                   {"instance_count": 1.5}, {"tile": "256"}):
        with pytest.raises(ExportError, match="must be an integer|tuple\\[int"):
            TritonRepoOptions(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="from 8 to 8192"):
        TritonRepoOptions(tile=10**7)
    with pytest.raises(ExportError, match="repeat a size"):
        TritonRepoOptions(preferred_batch_sizes=(4, 4))
    opts = TritonRepoOptions(tile=np.int64(128), preferred_batch_sizes=(8, 4))  # type: ignore[arg-type]
    assert type(opts.tile) is int and opts.preferred_batch_sizes == (4, 8)


def test_refuses_a_tampered_model(store: Path, tmp_path: Path) -> None:
    path = CameraStore.open(store, "canon").verified_path("model.onnx")
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ExportError, match="checksum"):
        write_repository(tmp_path / "repo", store, ["canon"])
    assert not (tmp_path / "repo" / "adassr_canon" / "1").exists()


def test_each_model_is_hashed_once_and_a_file_changed_after_its_check_is_not_published(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before writing hashes each model; the writes reuse that checksum (each file used to be
    hashed again, unverified) and the copy is compared with it."""
    import adassr.export.triton_repo as triton_repo

    hashed: list[str] = []
    real = triton_repo.sha256_file
    monkeypatch.setattr(triton_repo, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    write_repository(tmp_path / "repo", store)
    assert [name.split(".model.onnx.")[0] for name in hashed] == [".adassr__fallback", ".adassr_canon"]
    assert all(name.endswith(".tmp") for name in hashed)  # the two staged copies; the store's files: verified_path

    path = CameraStore.open(store, "canon").verified_path("model.onnx")
    original = path.read_bytes()

    def tamper_after_the_check(plan: object) -> object:
        path.write_bytes(original[:-4] + b"\0\0\0\0")  # another export replaced the file meanwhile
        return write_model(plan)  # type: ignore[arg-type]

    write_model = triton_repo.write_model
    monkeypatch.setattr(triton_repo, "write_model", tamper_after_the_check)
    publish_camera(store, "canon", seed=7)  # new bytes, so the repository would take a new version
    path = CameraStore.open(store, "canon").verified_path("model.onnx")
    original = path.read_bytes()
    with pytest.raises(ExportError, match="does not match the checksum its manifest records"):
        write_repository(tmp_path / "repo", store, ["canon"])
    assert sorted(p.name for p in (tmp_path / "repo" / "adassr_canon").iterdir() if p.name.isdigit()) == ["1"]
    assert not [p for p in (tmp_path / "repo" / "adassr_canon").iterdir() if p.name.startswith(".")]

    def reexport_after_the_check(plan: object) -> object:
        publish_camera(store, "canon", seed=11)  # new content-addressed files; the checked one stays one commit
        publish_camera(store, "canon", seed=12)  # longer (superseded), and is removed by this second export
        return write_model(plan)  # type: ignore[arg-type]

    publish_camera(store, "canon", seed=10)  # a sound export again
    monkeypatch.setattr(triton_repo, "write_model", reexport_after_the_check)
    with pytest.raises(ExportError, match="was replaced while the repository was written"):  # was "cannot write
        write_repository(tmp_path / "repo2", store, ["canon"])  # the Triton repository ...; choose a writable folder"
    assert not (tmp_path / "repo2").exists()  # no empty model folder (Triton would find a broken model there)


def test_cli(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    code = main(
        [
            "export",
            "--triton-repo",
            str(repo),
            "--store",
            str(store),
            "--camera",
            "canon",
            "--camera",
            FALLBACK_CAMERA,
            "--tile",
            "128",
            "--instance-kind",
            "KIND_CPU",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "canon:" in out and "new version" in out
    assert list(_parse(repo / "adassr_canon" / "config.pbtxt").input[0].dims) == [3, 128, 128]
    assert main(["export", "--triton-repo", str(repo), "--store", str(store), "--platform", "tensorrt_plan"]) == 2
    assert "TensorRT engine" in capsys.readouterr().err
    assert main(["export", "--store", str(store)]) == 2
    assert "--camera NAME or --backbone NAME" in capsys.readouterr().err


def test_a_new_version_never_appears_without_its_config(store: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The version folder was renamed into place before config.pbtxt was written: a polling Triton could
    load a new model without its config, or a new tile shape with the previous dims (a helper's review)."""
    import adassr.export.triton_repo as triton_repo

    repo = tmp_path / "repo"
    real = triton_repo._publish_version
    seen: list[bytes] = []

    def publish(staging: Path, version_dir: Path) -> None:
        seen.append((version_dir.parent / "config.pbtxt").read_bytes())  # what Triton sees when the version appears
        assert (staging / "model.onnx").is_file()  # copied (and checked) before the config was written
        real(staging, version_dir)

    monkeypatch.setattr(triton_repo, "_publish_version", publish)
    (first,) = write_repository(repo, store, ["canon"], TritonRepoOptions(tile=64))
    assert b"dims: [ 3, 64, 64 ]" in seen[-1]
    publish_camera(store, "canon", seed=9)
    (second,) = write_repository(repo, store, ["canon"], TritonRepoOptions(tile=128))
    assert second.version == 2 and b"dims: [ 3, 128, 128 ]" in seen[-1]

    def failing(*args: object) -> None:
        raise OSError(28, "No space left on device")

    publish_camera(store, "canon", seed=10)
    config = (repo / second.name / "config.pbtxt").read_bytes()
    monkeypatch.setattr(triton_repo, "_publish_version", failing)
    with pytest.raises(ExportError, match="No space left"):
        write_repository(repo, store, ["canon"], TritonRepoOptions(tile=96))
    assert (repo / second.name / "config.pbtxt").read_bytes() == config  # version 2 keeps its own config
    assert sorted(p.name for p in (repo / second.name).iterdir()) == ["1", "2", "adassr_versions.json",
                                                                      "config.pbtxt"]  # no staging folder left
    with pytest.raises(ExportError, match="No space left"):
        write_repository(tmp_path / "fresh", store, ["canon"], TritonRepoOptions(tile=96))
    assert not (tmp_path / "fresh" / second.name).exists()  # no model folder with a config and no version
    assert not (tmp_path / "fresh").exists()  # nor its staged copy: the repository this run made is gone
    # the copy of an export that was killed (its pid is gone) is removed by the next export of that model
    killed = repo / f".{second.name}.model.onnx.999999999.0123456789ab.tmp"
    killed.write_bytes(b"half a model")
    # and so is the staging folder of one killed between the move into it and the rename (a whole model's
    # copy each, which stayed for good; a helper's hunt of the reliability promises)
    staged = repo / second.name / ".3.04s_kv00"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(b"a whole model")
    (repo / second.name / ".1.bak").mkdir()  # a user's folder is no staging folder: it stays
    monkeypatch.setattr(triton_repo, "_publish_version", real)
    write_repository(repo, store, ["canon"], TritonRepoOptions(tile=96))
    assert sorted(p.name for p in repo.iterdir()) == [".adassr.lock", second.name]
    assert sorted(p.name for p in (repo / second.name).iterdir()) == [".1.bak", "1", "2", "3",
                                                                      "adassr_versions.json", "config.pbtxt"]


def test_the_served_version_never_gets_the_next_versions_engine_cache(store: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The config naming version 2's engine folder was written while version 1 was still the one served: a
    Triton polling then reloaded version 1 with it, built version 1's engine there, and version 2 loaded that
    engine (onnxruntime names engines after the graph), serving the old weights for good (a helper's review)."""
    import adassr.export.triton_repo as triton_repo

    repo = tmp_path / "repo"
    options = TritonRepoOptions(tile=64, max_batch_size=4, preferred_batch_sizes=(4,), trt_accelerator=True,
                                trt_cache_dir="/var/cache/trt")
    (first,) = write_repository(repo, store, ["canon"], options)
    config_path = first.directory / "config.pbtxt"
    cache_of_1 = f"/var/cache/trt/adassr_canon-{first.sha256[:16]}"
    assert cache_of_1 in config_path.read_text()
    states: list[tuple[str, str]] = []  # (served version, config) at every write and at the new version's rename
    real_write, real_publish = triton_repo.atomic_write_bytes, triton_repo._publish_version

    def served() -> str:
        return max(p.name for p in first.directory.iterdir() if p.name.isdigit())

    def write(path: Path, data: bytes) -> None:
        real_write(path, data)
        if path == config_path:
            states.append((served(), data.decode()))

    def publish(staging: Path, version_dir: Path) -> None:
        real_publish(staging, version_dir)
        states.append((served(), config_path.read_text()))

    monkeypatch.setattr(triton_repo, "atomic_write_bytes", write)
    monkeypatch.setattr(triton_repo, "_publish_version", publish)
    publish_camera(store, "canon", seed=12)
    (second,) = write_repository(repo, store, ["canon"], options)
    cache_of_2 = f"/var/cache/trt/adassr_canon-{second.sha256[:16]}"
    assert second.version == 2 and len(states) == 3
    for version, config in states:
        if version == "1":  # while version 1 is served, the config names no other version's engines
            assert cache_of_2 not in config and "trt_engine_cache_path" not in config
        else:
            assert cache_of_1 not in config
    assert states[-1] == ("2", config_path.read_text()) and cache_of_2 in states[-1][1]
    # interrupted after the new version appeared: the interim config serves it; a rerun adds the cache
    publish_camera(store, "canon", seed=13)
    fail_after_publish = {"armed": True}

    def write_fails_once_published(path: Path, data: bytes) -> None:
        if path == config_path and served() == "3" and fail_after_publish.pop("armed", False):
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(triton_repo, "atomic_write_bytes", write_fails_once_published)
    with pytest.raises(ExportError, match="No space left"):
        write_repository(repo, store, ["canon"], options)
    assert served() == "3" and "trt_engine_cache_path" not in config_path.read_text()
    (third,) = write_repository(repo, store, ["canon"], options)
    assert third.version == 3 and not third.new_version
    assert f"/var/cache/trt/adassr_canon-{third.sha256[:16]}" in config_path.read_text()


def test_a_failed_restore_of_the_config_does_not_hide_the_first_failure(store: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.export.triton_repo as triton_repo

    repo = tmp_path / "repo"
    write_repository(repo, store, ["canon"], TritonRepoOptions(tile=64))
    publish_camera(store, "canon", seed=11)
    real_write = triton_repo.atomic_write_bytes
    writes: list[Path] = []

    def write_then_fail(path, data):  # type: ignore[no-untyped-def]
        writes.append(path)
        if len(writes) > 1:  # the restore, on the disk that just filled up
            raise StoreError(f"cannot write {path}: No space left on device")
        return real_write(path, data)

    def rename_fails(*args: object) -> None:
        raise OSError(28, "No space left on device (the rename)")

    monkeypatch.setattr(triton_repo, "atomic_write_bytes", write_then_fail)
    monkeypatch.setattr(triton_repo, "_publish_version", rename_fails)
    with pytest.raises(ExportError, match=r"the rename"):
        write_repository(repo, store, ["canon"], TritonRepoOptions(tile=96))
    assert len(writes) == 2  # the new config, then the restore that failed


def test_damaged_manifest_fields_the_triton_export_reads_are_clear_errors(store: Path, tmp_path: Path) -> None:
    """`"engines": [1]` ended in an AttributeError traceback, and a manifest without any 'scale' wrote a
    config with output dims [3, 0, 0] (a helper's hunt)."""
    camera = CameraStore.open(store, "canon")

    def damage(manifest: dict) -> None:
        manifest["engines"] = [1]
        manifest.pop("scale", None)
        for record in manifest["exports"].values():
            record.pop("scale", None)

    camera.update_manifest(damage)
    with pytest.raises(ExportError, match="no valid integer 'scale'"):
        write_repository(tmp_path / "repo", store, ["canon"])
    camera.update_manifest(lambda m: m.update(scale=4))
    (model,) = write_repository(tmp_path / "repo", store, ["canon"])  # the damaged engine records: no engine
    config = (model.directory / "config.pbtxt").read_text()
    assert "[ 3, 0, 0 ]" not in config and "adassr_scale" in config and 'string_value: "4"' in config
    with pytest.raises(ExportError, match="no .*TensorRT engine"):
        write_repository(tmp_path / "plans", store, ["canon"], TritonRepoOptions(platform="tensorrt_plan"))


def test_a_linked_lock_file_is_refused_and_version_folders_follow_the_umask(store: Path, tmp_path: Path) -> None:
    """The repository lock was opened through a planted link (creating a file outside the repository), and
    version folders were 0755 whatever the umask (a group could not remove old versions) (a helper's review)."""
    import os
    import stat

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".adassr.lock").symlink_to(tmp_path / "outside")
    with pytest.raises(ExportError, match=r"\.adassr\.lock is a symbolic link"):
        write_repository(repo, store, ["canon"])
    assert not (tmp_path / "outside").exists()
    (repo / ".adassr.lock").unlink()
    old = os.umask(0o002)
    try:
        (model,) = write_repository(repo, store, ["canon"])
    finally:
        os.umask(old)
    assert stat.S_IMODE((model.directory / "1").stat().st_mode) == 0o775
    assert stat.S_IMODE(model.directory.stat().st_mode) == 0o775


def test_a_missing_fp16_export_names_the_command_that_makes_it(store: Path, tmp_path: Path) -> None:
    """The hint for the fallback was `adassr export --camera _fallback --precision fp16`, which export refuses
    (the fallback is exported from its backbone), and it left out the --store (a helper's review)."""
    with pytest.raises(ExportError, match=rf"camera '_fallback' has no fp16 ONNX export; run `adassr export --backbone "
                                          rf"realesrgan-x4plus --precision fp16 --store {store}`"):
        write_repository(tmp_path / "repo", store, [FALLBACK_CAMERA], TritonRepoOptions(precision="fp16"))


def test_one_broken_camera_does_not_hold_back_the_whole_store(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`export --triton-repo DIR` of the whole store stopped at the first damaged camera, so one broken
    manifest held back every other camera's new version. Now each broken camera is named and left out
    (its Triton model as it was), the others are published, and the exit code is 1."""
    repo = tmp_path / "repo"
    publish_camera(store, "sony", seed=3)
    publish_camera(store, "nikon", seed=4)
    write_repository(repo, store)
    sony_config = (repo / "adassr_sony" / "config.pbtxt").read_text()
    (store / "sony" / "manifest.json").write_text("{damaged")
    nikon = CameraStore.open(store, "nikon")
    nikon.artifact_path("model.onnx", nikon.read_manifest()).write_bytes(b"changed")  # fails its checksum
    publish_camera(store, "canon", seed=5, fp16=True)  # a new version to publish

    with pytest.raises(StoreError, match="sony"):  # the library without on_skip: as before
        write_repository(repo, store)
    skipped: list[tuple[str, str]] = []
    models = write_repository(repo, store, on_skip=lambda camera, why: skipped.append((camera, why)))
    assert sorted(m.camera for m in models) == [FALLBACK_CAMERA, "canon"]
    reasons = dict(skipped)
    assert sorted(reasons) == ["nikon", "sony"] and len(skipped) == 2
    assert "fails its checksum" in reasons["nikon"] and "manifest.json" in reasons["sony"]
    assert (repo / "adassr_sony" / "config.pbtxt").read_text() == sony_config  # its model as it was
    with pytest.raises(StoreError, match="sony"):  # named cameras are checked as a whole, as before
        write_repository(repo, store, ["canon", "sony"], on_skip=lambda camera, why: None)

    publish_camera(store, "canon", seed=6, fp16=True)
    assert main(["export", "--store", str(store), "--triton-repo", str(repo)]) == 1
    captured = capsys.readouterr()
    assert "warning: camera 'sony' left out: " in captured.err and "its Triton model, if it has one, is unchanged" \
        in captured.err
    assert "error: 2 camera(s) left out (nikon, sony)" in captured.err
    assert "canon: " in captured.out and "(new version" in captured.out

    for camera in ("canon", FALLBACK_CAMERA):
        (store / camera / "manifest.json").write_text("{damaged")
    with pytest.raises(ExportError, match="no camera in .* could be published"):
        write_repository(repo, store, on_skip=lambda camera, why: None)


def test_an_export_that_loses_the_race_for_a_new_repository_leaves_the_winner_alone(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two exports into a repository that did not exist: the one that lost the lock removed the winner's
    lock file and the folder (the winner then failed, and a third export could run beside it) (a helper's
    hunt of concurrent processes)."""
    import os

    import adassr.export.triton_repo as triton_repo
    from adassr.runtime.store import try_exclusive_lock

    repo = tmp_path / "new-repo"
    real_source = triton_repo._source
    held: list[int] = []

    def winner_arrives(*args: object, **kwargs: object) -> object:  # after the loser saw no repository
        if not held:
            repo.mkdir()
            fd = os.open(repo / triton_repo.LOCK_FILE, os.O_RDWR | os.O_CREAT)
            assert try_exclusive_lock(fd)  # another open file: as another process holds it
            held.append(fd)
        return real_source(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(triton_repo, "_source", winner_arrives)
    try:
        with pytest.raises(ExportError, match="another adassr export is writing"):
            write_repository(repo, store, ["canon"])
        assert (repo / triton_repo.LOCK_FILE).is_file()  # the winner's lock and folder stay
        assert os.path.samestat(os.fstat(held[0]), os.stat(repo / triton_repo.LOCK_FILE))
    finally:
        for fd in held:
            os.close(fd)
    monkeypatch.undo()
    (model,) = write_repository(repo, store, ["canon"])  # the winner's turn, in effect: it works
    assert model.version == 1


def test_a_manifest_scale_that_contradicts_the_model_file_is_refused(tmp_path: Path) -> None:
    """A hand-edited manifest 'scale' wrote a config whose output dims Triton refuses at every request (a
    helper's review): the scale the ONNX file records (adassr export writes it) is checked."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0, metadata={"scale": "4"})
    canon = publish_camera(store, "canon", seed=1, metadata={"scale": "4"})
    canon.update_manifest(lambda m: [m.update(scale=2)] + [r.update(scale=2) for r in m["exports"].values()])
    with pytest.raises(ExportError, match=r"its manifest says the model upscales x2, but its model file .* records "
                                          r"x4.*adassr export --camera canon"):
        write_repository(tmp_path / "repo", store, ["canon"])
    skipped: list[str] = []
    (model,) = write_repository(tmp_path / "repo", store, on_skip=lambda camera, why: skipped.append(camera))
    assert model.camera == FALLBACK_CAMERA and skipped == ["canon"]  # the whole store: the others go on


def test_a_stored_model_of_a_newer_ir_version_is_refused(tmp_path: Path) -> None:
    """An export made before the exports declared IR 9 (IR 10) was copied into the repository without a word,
    for Triton releases bundling onnxruntime < 1.18 to refuse (a helper's hunt of stores across versions)."""
    import onnx

    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    canon = publish_camera(store, "canon", seed=1)
    manifest = canon.read_manifest()
    name = manifest["exports"]["onnx"]["file"]
    path = canon.artifact_path(name, manifest)
    proto = onnx.load(str(path))
    proto.ir_version = 10
    data = proto.SerializeToString()
    path.write_bytes(data)
    canon.update_manifest(lambda m: m["artifacts"][name].update(sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ExportError, match=r"camera 'canon': its model file .* declares ONNX IR version 10.*"
                                          r"run `adassr export --camera canon --store .*` again"):
        write_repository(tmp_path / "repo", store, ["canon"])
    assert not (tmp_path / "repo" / "adassr_canon").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("io_dtype", "float16", r"says the model's input 'lr' is float16, but model\S*\.onnx declares float32"),
    ("input_name", "input", r"names the model's input 'input', but model\S*\.onnx has no such input \(inputs: 'lr'\)"),
    ("output_name", "out", r"names the model's output 'out', but model\S*\.onnx has no such output \(outputs: 'sr'\)"),
])
def test_a_manifest_whose_tensors_contradict_the_model_file_is_refused(tmp_path: Path, field: str, value: str,
                                                                       message: str) -> None:
    """A hand-edited manifest's tensor names or type went into config.pbtxt unchecked, for Triton to refuse the
    model when it loads it: the model file's own inputs and outputs are checked against the record."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    canon = publish_camera(store, "canon", seed=1)
    canon.update_manifest(lambda m: m["exports"]["onnx"].update({field: value}))
    with pytest.raises(ExportError, match=f"camera 'canon': its manifest {message}; run `adassr export --camera canon"):
        write_repository(tmp_path / "repo", store, ["canon"])
    assert not (tmp_path / "repo" / "adassr_canon").exists()
