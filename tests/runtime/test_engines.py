"""Engine cache keys, invalidation, profile planning, the build lock and refit bookkeeping.

TensorRT itself is not needed: the engine manager takes its TensorRT operations from an
``EngineToolkit``; here a toolkit writes small files whose bytes say what they were built from,
so the tests check what the bookkeeping does with real files, manifests and locks.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.engines import (
    EngineCache,
    EngineKey,
    GpuIdentity,
    ProfileShape,
    exact_profile,
    explain_mismatch,
    plan_profiles,
    select_profile,
)
from adassr.runtime.engines.manage import EngineRequest, ensure_camera_engine
from adassr.runtime.engines.refit import RefitReport
from adassr.runtime.errors import ConfigError, ShapeError, StoreError
from adassr.runtime.store import CameraStore, sha256_file
from adassr.runtime.tiling import TilingOptions, upscale_tiled

from ._models import build_tiny_sr

H200 = GpuIdentity("NVIDIA H200", (9, 0))
A100 = GpuIdentity("NVIDIA A100-SXM4-80GB", (8, 0))
PROFILE = (ProfileShape((1, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64)),)


def _key(**changes: object) -> EngineKey:
    base = EngineKey(kind="camera", source_sha256="a" * 64, tensorrt_version="10.13.0", gpu=H200,
                     precision="fp16", profiles=PROFILE)
    return replace(base, **changes)  # type: ignore[arg-type]


# -- keys -----------------------------------------------------------------------------------------


def test_key_digest_changes_with_every_field_and_round_trips() -> None:
    key = _key()
    variants = [
        _key(source_sha256="b" * 64), _key(tensorrt_version="10.14.1"), _key(gpu=A100),
        _key(gpu=GpuIdentity("NVIDIA H200", (9, 1))), _key(precision="bf16"),
        _key(profiles=(exact_profile(1, 64, 64),)), _key(optimization_level=5), _key(refittable=True),
        _key(kind="base"),
    ]
    digests = {key.digest, *(v.digest for v in variants)}
    assert len(digests) == len(variants) + 1
    assert EngineKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert key.digest == _key().digest  # deterministic
    assert key.file_name.startswith("camera-fp16-nvidia-h200-sm90-trt10.13.0-")
    assert key.file_name.endswith(key.digest[:16] + ".engine")


@pytest.mark.parametrize("stored, phrase", [
    (_key(source_sha256="b" * 64), "built from ONNX model bbbbbbbbbbbb..."),
    (_key(tensorrt_version="10.14.1"), "built with TensorRT 10.14.1"),
    (_key(gpu=GpuIdentity("NVIDIA H200", (9, 1))), "built for NVIDIA H200 (sm_91)"),
    (_key(precision="bf16"), "precision bf16, fp16 is wanted"),
    (_key(profiles=PROFILE + PROFILE), "profiles min"),
    (_key(optimization_level=5), "optimisation level 5, 3 is wanted"),
    (_key(refittable=True), "refittable=True weight_stripped=False, wanted refittable=False"),
    (_key(kind="base"), "a base engine, a camera engine is needed"),
    (_key(key_version=1), "engine key format 1"),
], ids=["source", "tensorrt", "compute-capability", "precision", "profiles", "level", "refit", "kind", "format"])
def test_mismatch_names_every_differing_field(stored: EngineKey, phrase: str) -> None:
    """The log line that says why an engine is rebuilt (minutes) must name the field that differs: a
    reason missing (only the compute capability, a second profile or the key format differing) left it
    empty (mutation testing)."""
    reasons = explain_mismatch(stored, _key())
    assert len(reasons) == 1 and phrase in reasons[0], reasons


def test_mismatch_names_an_older_bf16_layer_set() -> None:
    reasons = explain_mismatch(_key(precision="bf16", bf16_layers=1), _key(precision="bf16"))
    assert len(reasons) == 1 and "bf16 layer set 1" in reasons[0], reasons


def test_profile_opt_outside_min_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        ProfileShape((1, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8))
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        ProfileShape((1, 3, 16, 16), (1, 3, 8, 8), (1, 3, 32, 32))


@pytest.mark.parametrize("changes, message", [
    ({"precision": "int8"}, "precision must be one of fp32, fp16, bf16"),
    ({"source_sha256": "xyz"}, "64 lowercase hex"),
    ({"profiles": ()}, "at least one optimisation profile"),
    ({"optimization_level": 9}, "0-5"),
    ({"weight_stripped": True}, "must be refittable"),
])
def test_invalid_keys_are_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _key(**changes)


def test_mismatch_explains_other_gpu_and_other_tensorrt() -> None:
    reasons = explain_mismatch(_key(gpu=A100, tensorrt_version="10.3.0"), _key())
    assert "built with TensorRT 10.3.0, this is TensorRT 10.13.0" in reasons
    assert "built for NVIDIA A100-SXM4-80GB (sm_80), this GPU is NVIDIA H200 (sm_90)" in reasons
    assert explain_mismatch(_key(), _key()) == []


# -- profiles -------------------------------------------------------------------------------------


def test_profile_for_padded_tiles_is_the_tile_shape_up_to_the_batch() -> None:
    plan = plan_profiles(TilingOptions(tile=100, batch_size=4), multiple_of=8)
    assert plan.profiles == (ProfileShape((1, 3, 104, 104), (4, 3, 104, 104), (4, 3, 104, 104)),)
    assert plan.fixed_tile == 104


def test_every_call_the_runtime_makes_fits_the_planned_profile() -> None:
    for options in (TilingOptions(tile=48, overlap=8, batch_size=3), TilingOptions(tile=0),
                    TilingOptions(tile=48, overlap=8, batch_size=2, pad_to_tile=False)):
        plan = plan_profiles(options, min_side=8, max_side=160)
        shapes: list[tuple[int, ...]] = []

        def infer(batch: np.ndarray, shapes: list[tuple[int, ...]] = shapes) -> np.ndarray:
            shapes.append(batch.shape)
            return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)

        for h, w in ((70, 130), (20, 30)):
            upscale_tiled(np.random.default_rng(0).random((h, w, 3), dtype=np.float32), infer, scale=2,
                          options=options)
        assert shapes
        for shape in shapes:
            assert plan.select(shape) == 0, (options, shape)



def test_unpadded_tiles_of_a_tiny_image_fit_the_default_profile() -> None:
    """An image a pixel or two wide with pre_pad 0 sends tiles that small; the profile began at 16."""
    options = TilingOptions(tile=64, overlap=8, pre_pad=0, pad_to_tile=False)
    plan = plan_profiles(options)
    shapes: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)

    for h, w in ((1, 1), (2, 70), (15, 3)):
        upscale_tiled(np.zeros((h, w, 3), np.float32), infer, scale=2, options=options)
    assert {s[2] for s in shapes} & {1, 2, 3, 15}
    assert all(plan.select(shape) == 0 for shape in shapes)


def test_the_tensorrt_backend_refuses_untiled_runs_and_onnxruntime_builds_per_shape(tmp_path: Path) -> None:
    """A whole photo can be any size, beyond any profile's maximum (it was 1024 px, silently)."""
    from adassr.runtime.pipeline import RuntimeOptions, engine_for_route, gpu_settings
    from adassr.runtime.routing import resolve_model

    from ._models import publish_camera

    publish_camera(tmp_path, "canon")
    route = resolve_model(tmp_path, camera="canon")
    untiled = RuntimeOptions(tmp_path, backend="tensorrt", tiling=TilingOptions(tile=0))
    with pytest.raises(ConfigError, match="the tensorrt backend needs tiles"):
        engine_for_route(route, untiled)
    assert gpu_settings(route, replace(untiled, backend="onnxruntime")).profiles == ()

def test_select_profile_refuses_shapes_outside_every_profile() -> None:
    with pytest.raises(ShapeError, match="rebuild the engine for these tile settings"):
        select_profile(PROFILE, (3, 3, 64, 64))
    assert select_profile((exact_profile(1, 8, 8), *PROFILE), (2, 3, 64, 64)) == 1
    assert select_profile((*PROFILE, *PROFILE), (2, 3, 64, 64)) == 0  # the first of equal copies
    assert exact_profile(2, 8, 16) == ProfileShape((2, 3, 8, 16), (2, 3, 8, 16), (2, 3, 8, 16))  # height, width


def test_unpadded_tiles_get_a_dynamic_profile_up_to_the_tile_from_one_image_to_the_batch() -> None:
    """Without pad_to_tile the largest input is the tile (not max_side), and a small image sends one tile."""
    options = TilingOptions(tile=48, overlap=8, batch_size=4, pad_to_tile=False)
    plan = plan_profiles(options, min_side=8, opt_side=32)
    assert plan.profiles == (ProfileShape((1, 3, 8, 8), (4, 3, 32, 32), (4, 3, 48, 48)),)
    assert plan.fixed_tile == 0
    shapes: list[tuple[int, ...]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)

    upscale_tiled(np.zeros((10, 10, 3), np.float32), infer, scale=2, options=options)
    assert shapes == [(1, 3, 30, 30)] and plan.select(shapes[0]) == 0


def test_dynamic_profile_bounds_are_clamped_or_refused_with_their_own_words() -> None:
    untiled = TilingOptions(tile=0, batch_size=2)
    assert plan_profiles(untiled, min_side=64, opt_side=32, max_side=128).profiles[0].opt == (2, 3, 64, 64)
    assert plan_profiles(untiled, min_side=0, max_side=64).profiles[0].min == (1, 3, 1, 1)
    assert plan_profiles(TilingOptions(tile=8, overlap=0, pad_to_tile=False), min_side=8).profiles == (
        ProfileShape((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),)  # the tile equal to min_side is fine
    with pytest.raises(ConfigError, match="largest input side 4 is below the smallest 8"):
        plan_profiles(TilingOptions(tile=4, overlap=0, pad_to_tile=False), min_side=8)
    with pytest.raises(ConfigError, match="multiple_of must be >= 1"):
        plan_profiles(TilingOptions(tile=128), multiple_of=0)


# -- the engine manager with a file-writing toolkit -----------------------------------------------


class FileToolkit:
    """Writes engines as text naming their inputs; counts builds and refits in a log file."""

    def __init__(self, gpu: GpuIdentity = H200, version: str = "10.13.0", log: Path | None = None,
                 delay_s: float = 0.0) -> None:
        self._gpu, self._version, self._log, self._delay = gpu, version, log, delay_s

    def tensorrt_version(self) -> str:
        return self._version

    def gpu(self, device: int) -> GpuIdentity:
        return self._gpu

    def _note(self, line: str) -> None:
        if self._log is not None:
            with open(self._log, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path, target: Path) -> float:
        time.sleep(self._delay)
        target.write_text(f"engine {key.kind} {key.digest} from {sha256_file(onnx_path)} input {input_name}")
        timing_cache.write_text("timing")
        self._note(f"build {key.kind} {onnx_path.parent.name}")
        return 0.5

    def refit(self, base_engine: Path, onnx_path: Path, target: Path) -> float:
        target.write_text(f"{base_engine.read_text()} refitted with {sha256_file(onnx_path)}")
        self._note(f"refit {onnx_path.parent.name}")
        return 0.1

    def refit_partial(self, base_engine: Path, onnx_path: Path, names: Sequence[str], target: Path) -> RefitReport:
        target.write_text(f"{base_engine.read_text()} refitted {list(names)} from {sha256_file(onnx_path)}")
        self._note(f"refit_partial {onnx_path.parent.name}")
        return RefitReport(0.05, len(names))


def _camera(root: Path, name: str, seed: int, structure: str | None = "c" * 64) -> CameraStore:
    """A camera with a real (tiny) exported ONNX model whose weights depend on ``seed``."""
    weights = build_tiny_sr(seed=seed)
    store = CameraStore.open(root, name, create=True)
    record = {"file": "model.onnx", "scale": 4, "input_name": "lr", "output_name": "sr", "precision": "fp32"}
    if structure:
        record["structure_sha256"] = structure
    with store.transaction() as tx:
        tx.stage("model.onnx", lambda tmp: tmp.write_bytes(weights), stage="export")
        tx.commit(lambda m: m.setdefault("exports", {}).update({"onnx": record}))
    return store


def _request(root: Path, camera: str, **kw: object) -> EngineRequest:
    return EngineRequest(store_root=root, camera=camera, precision=str(kw.pop("precision", "fp32")),
                         profiles=PROFILE, **kw)  # type: ignore[arg-type]


def test_refit_mode_builds_one_base_per_structure_and_refits_each_camera(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    kit = FileToolkit(log=log)
    _camera(tmp_path, "canon", 1)
    _camera(tmp_path, "nokia", 2)
    first = ensure_camera_engine(_request(tmp_path, "canon"), kit)
    second = ensure_camera_engine(_request(tmp_path, "nokia"), kit)
    assert (first.built, first.base_built, second.built, second.base_built) == (True, True, True, False)
    assert log.read_text().splitlines() == ["build base canon", "refit canon", "refit nokia"]
    assert first.base is not None and second.base is not None and first.base.file == second.base.file
    assert first.record.base == second.record.base == first.base.key.digest
    assert first.base.key.weight_stripped and first.base.key.refittable
    nokia_onnx = CameraStore.open(tmp_path, "nokia").verified_path("model.onnx")
    assert "refitted with " + sha256_file(nokia_onnx) in second.path.read_text()
    manifest = CameraStore.open(tmp_path, "nokia").read_manifest()
    (record,) = manifest["engines"].values()
    assert record["base_file"] == first.base.file and record["sha256"] == sha256_file(second.path)
    assert (tmp_path / "_engines" / "index.json").is_file()
    # one timing cache per GPU, TensorRT version and builder flags (TF32 and REFIT change the kernels timed)
    assert [p.name for p in (tmp_path / "_engines").glob("timing-*.cache")] == [
        "timing-nvidia-h200-sm90-trt10.13.0-fp32-refit.cache"]


def test_second_run_builds_nothing(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    _camera(tmp_path, "canon", 0)
    first = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit(log=log))
    again = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit(log=log))
    assert not again.built and not again.base_built and again.path == first.path
    assert len(log.read_text().splitlines()) == 2


def test_other_gpu_or_tensorrt_never_loads_a_foreign_engine_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _camera(tmp_path, "canon", 0, structure=None)
    h200 = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.engines"):
        a100 = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit(gpu=A100))
        newer = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit(version="10.14.1"))
    assert a100.built and newer.built and len({h200.path, a100.path, newer.path}) == 3
    text = caplog.text
    assert "built for NVIDIA H200 (sm_90), this GPU is NVIDIA A100-SXM4-80GB (sm_80)" in text
    assert "built with TensorRT 10.13.0, this is TensorRT 10.14.1" in text
    assert h200.path.is_file()  # engines of other machines are kept for them
    again = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit(gpu=A100))
    assert not again.built and again.path == a100.path


def test_reexported_onnx_rebuilds_and_removes_the_stale_engine(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _camera(tmp_path, "canon", 3, structure=None)
    old = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    _camera(tmp_path, "canon", 4, structure=None)
    with caplog.at_level(logging.WARNING):
        new = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    store = CameraStore.open(tmp_path, "canon")
    assert new.built and old.record.file in store.read_manifest()["superseded_files"]  # kept for its readers
    assert "built from ONNX model" in caplog.text
    assert len(store.read_manifest()["engines"]) == 1
    store.update_manifest(lambda m: None)  # the next commit removes it
    assert not old.path.exists()



def test_engines_of_both_current_exports_stay(tmp_path: Path) -> None:
    """An fp32 build used to delete the camera's fp16 engine (built from model_fp16.onnx, another
    sha256) and the other way round, on every GPU: two services with different precisions rebuilt forever."""
    store = _camera(tmp_path, "canon", 3, structure=None)
    fp16 = {"file": "model_fp16.onnx", "scale": 4, "input_name": "lr", "output_name": "sr", "precision": "fp16"}
    with store.transaction() as tx:
        tx.stage("model_fp16.onnx", lambda tmp: tmp.write_bytes(build_tiny_sr(seed=4)), stage="export")
        tx.commit(lambda m: m["exports"].update({"onnx_fp16": fp16}))
    half = ensure_camera_engine(_request(tmp_path, "canon", refit=False, precision="fp16"), FileToolkit())
    full = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit(gpu=A100))
    assert half.built and full.built and half.path.is_file() and full.path.is_file()
    again = ensure_camera_engine(_request(tmp_path, "canon", refit=False, precision="fp16"), FileToolkit())
    assert not again.built and again.path == half.path
    assert len(CameraStore.open(tmp_path, "canon").read_manifest()["engines"]) == 2

def test_damaged_engine_is_rebuilt_not_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _camera(tmp_path, "canon", 0, structure=None)
    first = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    first.path.write_text("truncated")
    with caplog.at_level(logging.WARNING):
        again = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    assert again.built and "fails its checksum" in caplog.text
    assert again.path.read_text().startswith("engine camera")


def test_a_damaged_record_under_the_wanted_key_is_rebuilt_over(tmp_path: Path) -> None:
    """A record without its ``bytes`` filed under the wanted key's digest made every build fail with
    "malformed engine record" until the manifest was edited by hand."""
    _camera(tmp_path, "canon", 0, structure=None)
    first = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    store = CameraStore.open(tmp_path, "canon")
    store.update_manifest(lambda m: m["engines"][first.record.key.digest].pop("bytes"))
    again = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    assert again.built and again.path.is_file()
    assert "bytes" in store.read_manifest()["engines"][again.record.key.digest]
    assert not ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit()).built


def test_an_engine_of_an_older_key_version_is_superseded_by_its_rebuild(tmp_path: Path) -> None:
    """A key-version bump (TF32 off for fp16 / bf16) rebuilt the engine but kept the old one's file
    and record for good."""
    import dataclasses

    from adassr.runtime.engines.key import KEY_VERSION

    _camera(tmp_path, "canon", 0, structure=None)
    store = CameraStore.open(tmp_path, "canon")
    built = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    older = dataclasses.replace(built.record.key, key_version=KEY_VERSION - 1)

    old_file = built.record.file.replace(built.record.key.digest[:16], older.digest[:16])
    built.path.rename(store.directory / old_file)

    def as_older_version(manifest: dict) -> None:  # the same engine, as the previous version recorded it
        record = manifest["engines"].pop(built.record.key.digest)
        record.update(key=older.to_json(), file=old_file)
        manifest["engines"][older.digest] = record

    store.update_manifest(as_older_version)
    again = ensure_camera_engine(_request(tmp_path, "canon", refit=False), FileToolkit())
    assert again.built and again.record.key.key_version == KEY_VERSION
    assert list(store.read_manifest()["engines"]) == [again.record.key.digest]
    assert old_file in store.read_manifest()["superseded_files"]
    other = dataclasses.replace(older, precision="fp16")  # an older engine of another precision is not this one
    assert dataclasses.replace(other, key_version=KEY_VERSION) != again.record.key


def test_a_bf16_engine_of_the_earlier_fp32_layer_set_is_rebuilt_and_superseded(tmp_path: Path) -> None:
    """bf16 builds now keep the residual-scaling convolutions in fp32; an engine built before ran them in
    bf16 and was found again (also as a refit base), so deleting it did not help. fp32 and fp16 keys keep
    their digests."""
    import dataclasses

    from adassr.runtime.engines.key import BF16_LAYERS_VERSION, EngineKey, explain_mismatch

    _camera(tmp_path, "canon", 0, structure=None)
    store = CameraStore.open(tmp_path, "canon")
    built = ensure_camera_engine(_request(tmp_path, "canon", refit=False, precision="bf16"), FileToolkit())
    assert built.record.key.bf16_layers == BF16_LAYERS_VERSION
    older_json = {k: v for k, v in built.record.key.to_json().items() if k != "bf16_layers"}  # as recorded before
    older = EngineKey.from_json(older_json)
    assert older.bf16_layers == 1 and "bf16 layer set 1" in " ".join(explain_mismatch(older, built.record.key))
    old_file = built.record.file.replace(built.record.key.digest[:16], older.digest[:16])
    built.path.rename(store.directory / old_file)

    def as_before(manifest: dict) -> None:
        record = manifest["engines"].pop(built.record.key.digest)
        record.update(key=older_json, file=old_file)
        manifest["engines"][older.digest] = record

    store.update_manifest(as_before)
    again = ensure_camera_engine(_request(tmp_path, "canon", refit=False, precision="bf16", any_stored_settings=True),
                                 FileToolkit())
    assert again.built and list(store.read_manifest()["engines"]) == [again.record.key.digest]
    assert old_file in store.read_manifest()["superseded_files"]
    fp16 = dataclasses.replace(older, precision="fp16", bf16_layers=0)
    assert "bf16_layers" not in fp16.to_json()  # the fp32 / fp16 digests are what they were


def test_an_engine_record_pointing_outside_its_folder_never_touches_that_file(tmp_path: Path) -> None:
    """A hand-edited record named ../../victim.txt: the rebuild that replaced it deleted the user's file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = _camera(tmp_path / "store", "canon", 0, structure=None)
    first = ensure_camera_engine(_request(tmp_path / "store", "canon", refit=False), FileToolkit())
    manifest = store.read_manifest()
    escaped = "../../victim.txt"
    manifest["engines"][first.record.key.digest]["file"] = escaped
    store.manifest_path.write_text(json.dumps(manifest))
    assert store.verified_path("model.onnx").is_file()  # the camera's ONNX model still serves
    with pytest.raises(StoreError, match="names the file '../../victim.txt', not engines/<name>.engine"):
        EngineCache.for_camera(store).path_of(replace(first.record, file=escaped))
    rebuilt = ensure_camera_engine(_request(tmp_path / "store", "canon", refit=False), FileToolkit())
    assert rebuilt.built and rebuilt.record.file.startswith("engines/") and victim.read_text() == "precious"
    with store.transaction() as tx:  # and no orphan sweep ever takes a record's path outside the folder
        tx.commit(lambda m: m["engines"].update({"x": {"file": "../../victim.txt"}}))
    with store.transaction() as tx:
        tx.commit(lambda m: m["engines"].pop("x"))
    assert victim.read_text() == "precious"

    # The shared folder's index is not a manifest: a record there is ignored, replaced and never unlinked.
    _camera(tmp_path / "shared", "canon", 0)
    refitted = ensure_camera_engine(_request(tmp_path / "shared", "canon"), FileToolkit())
    assert refitted.base is not None
    index = tmp_path / "shared" / "_engines" / "index.json"
    data = json.loads(index.read_text())
    data["engines"][refitted.base.key.digest]["file"] = "../../victim.txt"
    index.write_text(json.dumps(data))
    again = ensure_camera_engine(_request(tmp_path / "shared", "canon"), FileToolkit())
    assert victim.read_text() == "precious"
    rebuilt = json.loads(index.read_text())["engines"][refitted.base.key.digest]["file"]
    assert rebuilt == refitted.base.file and (tmp_path / "shared" / "_engines" / rebuilt).is_file()
    assert again.path.is_file()


def test_damaged_base_is_rebuilt_and_refitted_engines_stay_valid(tmp_path: Path) -> None:
    _camera(tmp_path, "canon", 0)
    first = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    assert first.base is not None
    EngineCache.shared(tmp_path).path_of(first.base).write_text("damaged base")
    again = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    # a refitted camera engine holds all its weights: it does not depend on the base's bytes
    assert again.base_built and not again.built and again.path == first.path
    # the rebuilt base (the same file name) stays: deleting it as the damaged one's file cost a rebuild each run
    assert again.base is not None
    rebuilt = EngineCache.shared(tmp_path).path_of(again.base)
    assert rebuilt.is_file() and sha256_file(rebuilt) == again.base.sha256
    third = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    assert not third.base_built and not third.built


def test_a_build_that_writes_an_empty_engine_records_nothing(tmp_path: Path) -> None:
    class EmptyBuilds(FileToolkit):
        def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path,
                  target: Path) -> float:
            target.write_bytes(b"")
            return 0.1

    store = _camera(tmp_path, "canon", 0, structure=None)
    with pytest.raises(StoreError, match="produced no engine; nothing was recorded"):
        ensure_camera_engine(_request(tmp_path, "canon", refit=False), EmptyBuilds())
    assert not store.read_manifest().get("engines")


def test_an_unreadable_shared_index_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    """Read as empty, the next build rewrote it with its own record alone: other GPUs' bases forgotten."""
    _camera(tmp_path, "canon", 0)
    ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    index = tmp_path / "_engines" / "index.json"
    index.write_text("{garbage")
    _camera(tmp_path, "nokia", 1)
    with pytest.raises(StoreError, match="index.json is unreadable .*delete it to rebuild the shared engines"):
        ensure_camera_engine(_request(tmp_path, "nokia"), FileToolkit())
    assert index.read_text() == "{garbage"


def test_camera_engine_refitted_from_another_base_is_refitted_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _camera(tmp_path, "canon", 0)
    stripped = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    with caplog.at_level(logging.WARNING):
        full = ensure_camera_engine(_request(tmp_path, "canon", weight_stripped=False), FileToolkit())
    assert full.base_built and full.built
    assert stripped.base is not None and full.base is not None and full.record.base == full.base.key.digest
    assert f"was refitted from base engine {stripped.base.key.digest[:16]}" in caplog.text


def test_missing_export_for_the_precision_names_the_command(tmp_path: Path) -> None:
    _camera(tmp_path, "canon", 0)
    with pytest.raises(StoreError, match="adassr export --camera canon --precision fp16"):
        ensure_camera_engine(_request(tmp_path, "canon", precision="fp16"), FileToolkit())


def _worker(root: str, log: str) -> None:
    ensure_camera_engine(_request(Path(root), "canon"), FileToolkit(log=Path(log), delay_s=1.0))


def test_two_processes_build_an_engine_once(tmp_path: Path) -> None:
    _camera(tmp_path, "canon", 0)
    log = tmp_path / "calls.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), str(log))) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert log.read_text().splitlines() == ["build base canon", "refit canon"]


# -- the runtime's tensorrt backend without TensorRT ------------------------------------------------


def test_upscale_with_tensorrt_backend_without_tensorrt_says_what_to_install(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main
    from adassr.runtime.engines.trt import tensorrt_available

    from ._models import publish_camera

    if tensorrt_available():
        pytest.skip("real TensorRT is installed")
    publish_camera(tmp_path / "store", "_fallback")
    image = Path(__file__).resolve().parents[2] / "samples" / "cameras" / "nokia" / "iptc.jpg"
    code = main(["upscale", "-i", str(image), "-o", str(tmp_path / "out.png"), "--store", str(tmp_path / "store"),
                 "--backend", "tensorrt", "--gpu", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "TensorRT" in err and "[tensorrt]'" in err
    assert "Traceback" not in err and not (tmp_path / "out.png").exists()


def test_tiles_sized_per_image_cannot_make_an_engine_profile() -> None:
    with pytest.raises(ConfigError, match="pass --tile N"):
        plan_profiles(TilingOptions(max_tile_pixels=512 * 512))


def test_profile_copies_give_each_stream_its_own_profile() -> None:
    plan = plan_profiles(TilingOptions(tile=128, batch_size=2), copies=3)
    assert len(plan.profiles) == 3 and len(set(plan.profiles)) == 1
    with pytest.raises(ConfigError, match="copies must be >= 1"):
        plan_profiles(TilingOptions(tile=128), copies=0)


@pytest.mark.parametrize("structure", [None, "c" * 64], ids=["own-build", "refit"])
def test_the_export_record_names_the_input_and_the_scale(tmp_path: Path, structure: str | None) -> None:
    """An export whose input is not called "lr", of a x2 model: the build gets its input name and the
    result its scale (not the defaults)."""
    store = _camera(tmp_path, "canon", 0, structure=structure)
    with store.transaction() as tx:
        tx.commit(lambda m: m["exports"]["onnx"].update({"input_name": "image", "scale": 2}))
    got = ensure_camera_engine(_request(tmp_path, "canon"), FileToolkit())
    assert got.scale == 2
    assert got.path.read_text().split(" refitted")[0].endswith("input image")
