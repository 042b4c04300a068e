"""adapt -> export -> runtime with a tiny backbone from a caller's registry (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adassr.adapt.archs import ArchParams, BackboneEntry, BackboneRegistry, SafetensorsSource
from adassr.adapt.config import cpu_demo_defaults
from adassr.adapt.groups import select_group
from adassr.adapt.run import adapt_camera, manifest_record
from adassr.adapt.weights import load_backbone, load_safetensors_weights, save_safetensors_weights
from adassr.export.onnx import export_camera
from adassr.runtime.errors import ConfigError
from adassr.runtime.images import read_image, write_image
from adassr.runtime.pipeline import RuntimeOptions, Upscaler
from adassr.runtime.store import CameraStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BackboneRegistry:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    entry = BackboneEntry(name="tiny", scale=4, arch=ArchParams(num_feat=8, num_block=2, num_grow_ch=4),
                          source=SafetensorsSource(path), licence="test only", description="tiny random RRDBNet")
    torch.manual_seed(0)
    save_safetensors_weights(path, entry.build(), entry)
    return BackboneRegistry([entry])


@pytest.fixture(scope="module")
def camera_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nokia").mkdir()
    pixels = read_image(SAMPLES / "nokia" / "iptc.jpg").pixels
    write_image(root / "nokia" / "crop.png", np.ascontiguousarray(pixels[200:330, 250:380]))
    return root


def test_registry_backbone_from_a_safetensors_file(tiny: BackboneRegistry) -> None:
    loaded = load_backbone("tiny", registry=tiny)
    assert loaded.entry.name == "tiny" and len(loaded.model.body) == 2
    assert loaded.source.startswith("safetensors ")


def test_a_store_folder_linked_to_the_photos_is_refused_before_any_work(tiny: BackboneRegistry, camera_dir: Path,
                                                                         tmp_path: Path) -> None:
    """`<store>/nokia -> photos/nokia`: adapt wrote its weights, manifest and report among the photos, and
    from then on the scan took that folder for a store's and skipped its photos (a helper's hunt)."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "nokia").symlink_to(camera_dir / "nokia")
    before = sorted(p.name for p in (camera_dir / "nokia").iterdir())
    config = cpu_demo_defaults().with_overrides(steps=1, lr_patch=12, eval_crop=48, feature_bank=4)
    with pytest.raises(ConfigError, match="holds its photo .*crop.png: adapt would write its model and manifest"):
        adapt_camera(select_group(camera_dir, "nokia"), config, store_root=store, backbone_name="tiny", registry=tiny)
    assert sorted(p.name for p in (camera_dir / "nokia").iterdir()) == before


def test_adapt_export_serve_with_a_tiny_backbone(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.adapt.pairs as pairs_module

    torch.set_num_threads(1)
    config = cpu_demo_defaults().with_overrides(steps=3, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    group = select_group(camera_dir, "nokia")
    store = tmp_path / "store"
    samplers: list[dict[str, object]] = []
    real_sampler = pairs_module.make_pair_sampler

    def recording_sampler(images, kernel, pair_config, **kw):  # type: ignore[no-untyped-def]
        samplers.append({"kernel": np.array(kernel), "weights": kw.get("weights"), "images": len(images)})
        return real_sampler(images, kernel, pair_config, **kw)

    monkeypatch.setattr(pairs_module, "make_pair_sampler", recording_sampler)  # imported when adapt runs
    outcome = adapt_camera(group, config, store_root=store, backbone_name="tiny", registry=tiny)
    manifest = CameraStore.open(store, "nokia").read_manifest()
    # the pairs are made with the camera's estimated kernel (the one recorded), weighted by the attention maps
    (used,) = samplers
    recorded = np.asarray(manifest["kernel"]["kernel"], dtype=np.float64)
    assert used["kernel"].shape == recorded.shape and np.allclose(used["kernel"], recorded, atol=1e-6)
    weights = used["weights"]
    assert isinstance(weights, list) and len(weights) == used["images"] == 1
    assert float(np.ptp(weights[0])) > 0.05  # a weight map, not a uniform stand-in
    assert manifest["backbone"]["name"] == "tiny" and manifest["steps"] == outcome.steps
    assert [h[0] for h in manifest["niqe_evaluation"]["history"]][:2] == [0, 1]
    assert manifest["niqe_evaluation"]["crop"] == 48 and manifest["niqe_evaluation"]["crop_sizes"] == [[48, 48]] * len(
        manifest["niqe_evaluation"]["images"])  # the crops as scored (an image smaller than the crop: whole)
    adapted = load_safetensors_weights(outcome.weights_path, "tiny", registry=tiny)
    assert adapted.weights_sha256 == manifest["weights_sha256"]

    export_camera(store, "nokia", registry=tiny)
    photo = read_image(camera_dir / "nokia" / "crop.png")
    with Upscaler(RuntimeOptions(store=store)) as upscaler:
        result = upscaler.upscale(photo, camera="nokia")
    assert result.route is not None and result.route.model_camera == "nokia"
    assert result.pixels.shape == (4 * 130, 4 * 130, 3)
    # the adapted weights served: the same pixels as the adapted model run directly (away from the borders)
    with torch.no_grad():
        x = torch.from_numpy(photo.pixels.astype(np.float32).transpose(2, 0, 1)[None] / 255)
        ref = adapted.model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    got = result.pixels.astype(np.float32) / 255
    assert np.abs(got[100:420, 100:420] - ref[100:420, 100:420]).max() <= 2 / 255


def test_manifest_record_is_a_pure_function_of_its_inputs(tiny: BackboneRegistry, camera_dir: Path) -> None:
    from adassr.adapt.loop import InternalResult

    backbone = load_backbone("tiny", registry=tiny)
    result = InternalResult(state_dict={}, kept_backbone=False, niqe_before=[5.0, 7.0], niqe_after=[4.0, 6.0],
                            steps=10, best_step=10, stop_reason="budget", history=[(0, 6.0), (10, 5.0)])
    group = select_group(camera_dir, "nokia")
    args = (group, cpu_demo_defaults(), backbone, {"kernel": [[1.0]]}, result, ["a.png", "b.png"])
    kw = dict(precision="fp32", device="cpu", trainable="tail", wall_time_s=1.5, weights_sha256="ab",
              versions={"adassr": "0"})
    record = manifest_record(*args, **kw)
    assert record == manifest_record(*args, **kw)
    assert record["niqe_before"] == 6.0 and record["niqe_after"] == 5.0
    assert record["per_image"][1] == {"path": "b.png", "niqe_before": 7.0, "niqe_after": 6.0}
    assert record["backbone"]["name"] == "tiny" and record["scale"] == 4 and record["kernel"] == {"kernel": [[1.0]]}


def test_re_adapting_reuses_the_weight_maps(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.adapt.attention as attention

    real, calls = attention.compute_weight_map, []

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "compute_weight_map", counting)
    monkeypatch.setenv("ADASSR_THREADS", "1")  # the same run needs the same thread count (docs/cpu.md)
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, precision="fp32")
    group = select_group(camera_dir, "nokia")
    store = tmp_path / "store"
    first = adapt_camera(group, config, store_root=store, backbone_name="tiny", registry=tiny)
    assert len(calls) == 1 and len(list((store / "_cache" / "weight_maps").glob("*.npy"))) == 1
    second = adapt_camera(group, config, store_root=store, backbone_name="tiny", registry=tiny)
    assert len(calls) == 1  # the second run read the map
    assert second.niqe_after == first.niqe_after  # same seed, same map: the same run
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["_cache", "nokia"]


def test_a_re_run_never_replaces_a_better_current_model(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run was compared with the backbone only: one that diverged, or kept the backbone, or adapted
    worse, replaced the camera's working model (and exited 0)."""
    import adassr.adapt.loop as loop

    torch.set_num_threads(1)
    config = cpu_demo_defaults().with_overrides(steps=4, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, precision="fp32",
                                                backbone_margin=0)
    group = select_group(camera_dir, "nokia")
    first = adapt_camera(group, config, store_root=tmp_path, backbone_name="tiny", registry=tiny)
    assert not first.kept_backbone
    store = CameraStore.open(tmp_path, "nokia")
    manifest = store.manifest_path.read_bytes()

    broken = adapt_camera(group, config.with_overrides(lr=1e10), store_root=tmp_path, backbone_name="tiny",
                          registry=tiny)  # its outputs go flat at once: this run keeps the backbone
    assert broken.kept_current and broken.weights_path == first.weights_path
    assert broken.niqe_after == pytest.approx(first.niqe_after)  # the current model, scored on the same crops
    assert "the camera's current model scores NIQE" in broken.stop_reason and "nothing was published" in (
        broken.stop_reason)
    assert store.manifest_path.read_bytes() == manifest and first.weights_path.is_file()

    real = loop.evaluate_model
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: [s + 1.0 for s in real(*a, **k)])
    worse_current = adapt_camera(group, config.with_overrides(seed=2), store_root=tmp_path, backbone_name="tiny",
                                 registry=tiny)  # the current model now scores worse than any result: replaced
    assert not worse_current.kept_current and store.manifest_path.read_bytes() != manifest
    assert first.weights_path.name in store.read_manifest()["superseded_files"]  # goes at the next commit

    manifest = store.manifest_path.read_bytes()
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: [s - 5.0 for s in real(*a, **k)])
    better_current = adapt_camera(group, config.with_overrides(seed=3), store_root=tmp_path, backbone_name="tiny",
                                  registry=tiny)  # an adapted result, but the current model scores better
    assert better_current.kept_current and "beats this run's adapted weights'" in better_current.stop_reason
    assert store.manifest_path.read_bytes() == manifest
    replaced = adapt_camera(group, config.with_overrides(seed=3), store_root=tmp_path, backbone_name="tiny",
                            registry=tiny, replace=True)  # --replace: the result is published anyway
    assert not replaced.kept_current and store.manifest_path.read_bytes() != manifest


def test_against_a_kept_backbone_the_current_model_has_the_early_stop_s_margin(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The early stop keeps adapted weights unless they are worse than the backbone by more than
    --backbone-margin; a re-run that kept the backbone holds the current model to the same rule (the
    margin was applied the other way, so a model the early stop would keep was replaced)."""
    import json

    import adassr.adapt.loop as loop

    torch.set_num_threads(1)
    config = cpu_demo_defaults().with_overrides(steps=4, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, precision="fp32",
                                                backbone_margin=0.1)
    group = select_group(camera_dir, "nokia")
    adapt_camera(group, config, store_root=tmp_path, backbone_name="tiny", registry=tiny)
    store = CameraStore.open(tmp_path, "nokia")
    first = store.read_manifest()
    assert not first["kept_backbone"]
    backbone_scores = [p["niqe_before"] for p in first["per_image"]]
    # A run whose training diverged publishes nothing over a model, even one the margin would replace
    # (mutation testing: the rule above kept the current model in every case tested).
    real_loss = loop._Trainer.loss

    def nan_loss(self: loop._Trainer, batch: object) -> tuple[torch.Tensor, torch.Tensor]:
        loss, sr = real_loss(self, batch)  # type: ignore[arg-type]
        return loss * float("nan"), sr

    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: [b + 0.2 for b in backbone_scores])
    monkeypatch.setattr(loop._Trainer, "loss", nan_loss)
    diverged = adapt_camera(group, config, store_root=tmp_path, backbone_name="tiny", registry=tiny)
    assert diverged.kept_current and "diverged" in diverged.stop_reason, diverged.stop_reason
    assert store.read_manifest() == first
    monkeypatch.setattr(loop._Trainer, "loss", real_loss)
    for worse_by, stays in ((0.05, True), (0.2, False)):
        monkeypatch.setattr(loop, "evaluate_model", lambda *a, d=worse_by, **k: [b + d for b in backbone_scores])
        outcome = adapt_camera(group, config.with_overrides(lr=1e10), store_root=tmp_path, backbone_name="tiny",
                               registry=tiny)  # this run keeps the backbone
        assert outcome.kept_current is stays, worse_by
    assert json.loads(store.manifest_path.read_text())["kept_backbone"]  # replaced by the backbone at last


@pytest.mark.parametrize("extra, message", [
    ({"eval_crop": 20}, "--eval-crop 20 is too small: NIQE needs two 96x96 blocks of the x4 output, so the LR crop "
                        "must be at least 48 px"),
    ({"admm_iters": 2, "external_hr": Path("/nonexistent/hr")}, "no images found"),
])
def test_bad_settings_fail_before_the_set_up(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, extra: dict, message: str) -> None:
    """Both used to surface only after the kernel estimate, the weight maps and a whole internal step."""
    import adassr.adapt.run as run
    from adassr.runtime.errors import ConfigError

    def no_set_up(*_a: object, **_k: object) -> None:
        raise AssertionError("the set-up ran although a setting was bad")

    monkeypatch.setattr(run, "_prepare_inputs", no_set_up)
    config = cpu_demo_defaults().with_overrides(steps=2, lr_patch=12, **extra)
    with pytest.raises(ConfigError, match=message.replace(".", "\\.")):
        adapt_camera(select_group(camera_dir, "nokia"), config, store_root=tmp_path, backbone_name="tiny",
                     registry=tiny)


def test_the_manifest_records_absolute_image_paths(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`adapt --images photos` recorded 'photos/nokia/crop.png': export, started elsewhere, could not find
    the camera's validation photo from it."""
    import json

    monkeypatch.chdir(camera_dir.parent)
    group = select_group(Path(camera_dir.name), "nokia")
    assert not group.members[0].path.is_absolute()
    config = cpu_demo_defaults().with_overrides(steps=1, eval_every=1, lr_patch=12, eval_crop=48,
                                                lambda_perceptual=0, feature_bank=4)
    adapt_camera(group, config, store_root=tmp_path, backbone_name="tiny", registry=tiny)
    manifest = json.loads((tmp_path / "nokia" / "manifest.json").read_text())
    paths = [m["path"] for m in manifest["images"]] + manifest["pairs"]["images_used"]
    assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)


def test_more_tail_blocks_than_the_backbone_has_is_said(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """--tail-blocks 100 on a 23-block backbone trained all 23 without a word."""
    import logging

    import adassr.adapt.run as run

    class Stop(Exception):
        pass

    def stop(*_a: object, **_k: object) -> None:
        raise Stop

    monkeypatch.setattr(run, "_prepare_inputs", stop)
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        adapt_camera(select_group(camera_dir, "nokia"), cpu_demo_defaults().with_overrides(tail_blocks=5),
                     store_root=tmp_path, backbone_name="tiny", registry=tiny)
    assert "--tail-blocks 5 is more than the backbone's 2 RRDB blocks: all 2 train" in caplog.text


def test_the_seed_range_is_checked_up_front() -> None:
    from adassr.adapt.config import MAX_SEED
    from adassr.runtime.errors import ConfigError

    assert cpu_demo_defaults().with_overrides(seed=MAX_SEED).seed == MAX_SEED
    for seed in (-1, -2000, MAX_SEED + 1, 10**23):  # numpy and torch once refused these after the set-up
        with pytest.raises(ConfigError, match="seed must be an integer from 0 to 2147483647"):
            cpu_demo_defaults().with_overrides(seed=seed)


def test_re_adapting_forgets_engines_and_a_report_it_did_not_redraw(tiny: BackboneRegistry, camera_dir: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines were built from the old weights' ONNX; the old report shows the old run's history."""
    import adassr.adapt.report as report

    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    group = select_group(camera_dir, "nokia")
    store = CameraStore.open(tmp_path, "nokia", create=True)
    adapt_camera(group, config, store_root=tmp_path, backbone_name="tiny", registry=tiny)
    first = store.read_manifest()
    assert first["report"] == "report.png" and "report.png" in first["artifacts"]
    store.update_manifest(lambda m: m.setdefault("engines", {}).update(
        old={"file": "engines/camera-fp32-old.engine", "sha256": "0" * 64}))
    (store.directory / "engines").mkdir()
    (store.directory / "engines" / "camera-fp32-old.engine").write_bytes(b"plan of the old weights")
    (store.directory / "engines" / "camera-fp32-stray.engine").write_bytes(b"no record refers to it")
    store.update_manifest(lambda m: None)
    assert sorted(p.name for p in store.directory.glob("engines/*")) == ["camera-fp32-old.engine"]  # referenced
    monkeypatch.setattr(report, "matplotlib_available", lambda: False)
    adapt_camera(group, config.with_overrides(seed=2), store_root=tmp_path, backbone_name="tiny", registry=tiny)
    second = store.read_manifest()
    assert second["report"] is None and "report.png" not in second["artifacts"] and "engines" not in second
    old_files = {p.relative_to(store.directory).as_posix() for p in store.directory.glob("report.*.png")}
    old_files |= {p.relative_to(store.directory).as_posix() for p in store.directory.glob("engines/*.engine")}
    assert old_files == set(second["superseded_files"]) - {first["artifacts"]["adapted.safetensors"]["file"]}
    store.update_manifest(lambda m: None)  # the next commit removes them (superseded files stay one commit)
    assert not list(store.directory.glob("report.*.png"))  # the old file went with its record
    assert not list(store.directory.glob("engines/*.engine"))  # so did the engine (it used to stay on disk)


def test_a_flat_image_is_left_out_of_the_niqe_evaluation(tiny: BackboneRegistry, camera_dir: Path,
                                                          tmp_path: Path) -> None:
    """NIQE of a featureless picture swings widely: it alone once decided that a run 'adapted'."""
    folder = tmp_path / "images" / "mixed"
    folder.mkdir(parents=True)
    textured = read_image(camera_dir / "nokia" / "crop.png").pixels
    write_image(folder / "a_textured.png", textured)
    write_image(folder / "b_flat.png", np.full((150, 150, 3), 128, np.uint8))
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    adapt_camera(select_group(tmp_path / "images", "mixed"), config, store_root=tmp_path / "store",
                 backbone_name="tiny", registry=tiny)
    manifest = CameraStore.open(tmp_path / "store", "mixed").read_manifest()
    diag = manifest["kernel"]["diagnostics"]
    flat = [diag["image_paths"][i] for i in diag["images_skipped_flat"]]
    assert flat == [str(folder / "b_flat.png")]  # the indices name images by the list recorded beside them
    assert manifest["niqe_evaluation"]["images"] == [str(folder / "a_textured.png")]
    assert [p["path"] for p in manifest["per_image"]] == [str(folder / "a_textured.png")]
    assert str(folder / "b_flat.png") in manifest["pairs"]["images_used"]  # still trained on


def test_a_group_of_flat_pictures_is_published_with_a_warning_and_valid_json(
        tiny: BackboneRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """All white and all black: NIQE is undefined (NaN) on some crops, which the manifest writer
    refused (a traceback after the training); nothing said the pictures carry no structure."""
    import logging

    folder = tmp_path / "images" / "flat"
    folder.mkdir(parents=True)
    write_image(folder / "a_white.png", np.full((160, 200, 3), 255, np.uint8))
    write_image(folder / "b_black.png", np.zeros((160, 200, 3), np.uint8))
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        adapt_camera(select_group(tmp_path / "images", "flat"), config, store_root=tmp_path / "store",
                     backbone_name="tiny", registry=tiny)
    assert "no image carries structure above its noise" in caplog.text
    manifest = CameraStore.open(tmp_path / "store", "flat").read_manifest()  # valid JSON, read back
    scores = [p[k] for p in manifest["per_image"] for k in ("niqe_before", "niqe_after")]
    assert all(s is None or isinstance(s, float) for s in scores)


def test_flat_jpeg_frames_beside_a_photo_are_left_out_and_alone_warn(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A flat noisy frame after JPEG (a wall, a covered lens) looks structured to its own noise estimate:
    beside a photo it is left out of the kernel and the NIQE evaluation; a group of such frames only
    is fitted (a dim, textured group looks the same) and the run says what the kernel was read from."""
    import logging

    from adassr.adapt.degradation import jpeg_roundtrip

    rng = np.random.default_rng(0)
    frames = [jpeg_roundtrip(np.clip(0.45 + rng.normal(0, 5 / 255, (160, 200, 3)), 0, 1).astype(np.float32), 60)
              for _ in range(2)]
    mixed, walls = tmp_path / "images" / "mixed", tmp_path / "images" / "walls"
    for folder in (mixed, walls):
        folder.mkdir(parents=True)
        for i, frame in enumerate(frames):
            write_image(folder / f"wall{i}.png", np.round(frame * 255).astype(np.uint8))
    write_image(mixed / "photo.png", read_image(camera_dir / "nokia" / "crop.png").pixels)
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        adapt_camera(select_group(tmp_path / "images", "mixed"), config, store_root=tmp_path / "store",
                     backbone_name="tiny", registry=tiny)
    manifest = CameraStore.open(tmp_path / "store", "mixed").read_manifest()
    diag = manifest["kernel"]["diagnostics"]
    assert sorted(diag["image_paths"][i] for i in diag["images_skipped_faint"]) == [str(mixed / "wall0.png"),
                                                                                   str(mixed / "wall1.png")]
    assert manifest["niqe_evaluation"]["images"] == [str(mixed / "photo.png")]
    assert "faint structure only" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        adapt_camera(select_group(tmp_path / "images", "walls"), config, store_root=tmp_path / "store",
                     backbone_name="tiny", registry=tiny)
    assert "camera group 'walls': the blur kernel was fitted on faint structure only" in caplog.text
    assert CameraStore.open(tmp_path / "store", "walls").read_manifest()["kernel"]["diagnostics"][
        "faint_structure_only"]


def test_tiny_images_do_not_take_the_places_of_usable_ones(tiny: BackboneRegistry, camera_dir: Path,
                                                           tmp_path: Path) -> None:
    """Nineteen thumbnails and one photo, eight read: the evenly spaced pick skipped the photo, and the
    run failed saying no image was large enough."""
    folder = tmp_path / "images" / "thumbs"
    folder.mkdir(parents=True)
    photo = read_image(camera_dir / "nokia" / "crop.png").pixels
    for i in range(19):
        write_image(folder / f"t{i:02d}.png", np.ascontiguousarray(photo[:16, i:i + 20]))
    write_image(folder / "z_photo.png", photo)
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, max_images=8)
    adapt_camera(select_group(tmp_path / "images", "thumbs"), config, store_root=tmp_path / "store",
                 backbone_name="tiny", registry=tiny)
    pairs = CameraStore.open(tmp_path / "store", "thumbs").read_manifest()["pairs"]
    assert pairs["images_used"] == [str(folder / "z_photo.png")]
    skipped = {s["path"] for s in pairs["images_skipped"] if "too small" in s["reason"]}
    assert skipped == {str(folder / f"t{i:02d}.png") for i in range(19)}


def test_with_the_bicubic_kernel_images_too_small_for_it_do_not_take_the_places_of_usable_ones(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path) -> None:
    """With ``--kernel bicubic`` the kernel's size is known before reading: the header check must use it, or
    images large enough for a 1x1 kernel but not for bicubic's take the places of usable ones (mutation
    testing: checked with (1, 1), the photo was not among the eight read and the run failed)."""
    from adassr.adapt.pairs import PairConfig, min_image_size
    from adassr.adapt.run import _known_kernel_shape

    pair = PairConfig(scale=4, lr_patch=12)
    lowest, needed = min_image_size(pair, (1, 1)), min_image_size(pair, _known_kernel_shape("bicubic", 4))
    side = (lowest + needed) // 2
    assert lowest <= side < needed
    folder = tmp_path / "images" / "thumbs"
    folder.mkdir(parents=True)
    photo = read_image(camera_dir / "nokia" / "crop.png").pixels
    for i in range(19):
        write_image(folder / f"t{i:02d}.png", np.ascontiguousarray(photo[i:i + side, :side]))
    write_image(folder / "z_photo.png", photo)
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, max_images=8, kernel="bicubic")
    adapt_camera(select_group(tmp_path / "images", "thumbs"), config, store_root=tmp_path / "store",
                 backbone_name="tiny", registry=tiny)
    pairs = CameraStore.open(tmp_path / "store", "thumbs").read_manifest()["pairs"]
    assert pairs["images_used"] == [str(folder / "z_photo.png")]


def test_training_gets_the_time_budget_less_the_set_up(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--time-budget`` counts the whole run: handing training the whole budget on top of the set-up went
    unnoticed (mutation testing). The internal step's budget is recorded on its way in (the real step runs)."""
    import adassr.adapt.run as run

    budgets: list[float | None] = []
    real = run.run_internal_step

    def recording(model, sampler, crops, metric, config, **kwargs):  # type: ignore[no-untyped-def]
        budgets.append(config.time_budget)
        return real(model, sampler, crops, metric, config, **kwargs)

    monkeypatch.setattr(run, "run_internal_step", recording)
    config = cpu_demo_defaults().with_overrides(steps=1, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, time_budget=1000.0)
    adapt_camera(select_group(camera_dir, "nokia"), config, store_root=tmp_path / "store", backbone_name="tiny",
                 registry=tiny)
    set_up = CameraStore.open(tmp_path / "store", "nokia").read_manifest()["timing"]["before_training_s"]
    assert len(budgets) == 1 and budgets[0] is not None and set_up > 0.01
    assert budgets[0] <= 1000.0 - set_up + 0.01  # the manifest rounds the set-up to 0.01 s


def test_a_batch_the_memory_cannot_hold_fails_before_the_set_up(tiny: BackboneRegistry, camera_dir: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`adapt --batch 512` on the CPU was killed by the kernel's out-of-memory killer minutes into the run,
    without a word: the training's memory is estimated before the set-up and the largest batch that fits
    named (here the memory left is set to 2 GB)."""
    import adassr.adapt.run as run
    import adassr.adapt.training_memory as training_memory

    def no_set_up(*_a: object, **_k: object) -> None:
        raise AssertionError("the set-up ran although the batch could not fit")

    monkeypatch.setattr(run, "_prepare_inputs", no_set_up)
    monkeypatch.setattr(training_memory, "memory_left_bytes", lambda: 2 * 1024**3)
    config = cpu_demo_defaults().with_overrides(steps=2, batch=512, device="cpu")
    with pytest.raises(ConfigError, match=r"training on the CPU with --batch 512 .* is left: use --batch \d+ or less"):
        adapt_camera(select_group(camera_dir, "nokia"), config, store_root=tmp_path, backbone_name="tiny",
                     registry=tiny)
    assert not (tmp_path / "nokia").exists()


# -- from mutation testing: a re-run's comparison with the current model ------------------------


def _rerun_config():  # type: ignore[no-untyped-def]
    return cpu_demo_defaults().with_overrides(steps=4, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                              lambda_perceptual=0, feature_bank=4, precision="fp32",
                                              backbone_margin=0)


def test_a_current_model_that_cannot_be_read_is_replaced_by_a_re_run(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Re-adapting is how a camera whose weights file is damaged is repaired: the re-run must publish, with
    a warning, not fail after its whole training."""
    import logging

    torch.set_num_threads(1)
    group = select_group(camera_dir, "nokia")
    first = adapt_camera(group, _rerun_config(), store_root=tmp_path, backbone_name="tiny", registry=tiny)
    data = first.weights_path.read_bytes()
    first.weights_path.write_bytes(data[: len(data) // 2])  # truncated on disk
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        second = adapt_camera(group, _rerun_config().with_overrides(seed=2), store_root=tmp_path,
                              backbone_name="tiny", registry=tiny)
    assert not second.kept_current
    assert any("current adapted weights cannot be read" in r.getMessage() for r in caplog.records)
    store = CameraStore.open(tmp_path, "nokia")
    assert store.verified_path("adapted.safetensors") == second.weights_path


def test_a_current_model_that_loses_crops_does_not_stay(tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A current model whose output goes flat on a crop (no NIQE there) must not win on the mean of the crops
    it still scores: it would keep a model that breaks some images over this run's result."""
    import math

    import adassr.adapt.loop as loop
    import adassr.adapt.run as run

    torch.set_num_threads(1)
    photos = tmp_path / "photos" / "nokia"
    photos.mkdir(parents=True)
    pixels = read_image(camera_dir / "nokia" / "crop.png").pixels
    write_image(photos / "a.png", pixels)
    write_image(photos / "b.png", np.ascontiguousarray(pixels[::-1, ::-1]))  # two images: two evaluation crops
    group = select_group(photos.parent, "nokia")
    adapt_camera(group, _rerun_config(), store_root=tmp_path / "store", backbone_name="tiny", registry=tiny)
    real_current, real_evaluate = run._current_weights, loop.evaluate_model
    current_models: list[object] = []
    crops: list[int] = []

    def current(*args: object, **kwargs: object) -> object:
        model = real_current(*args, **kwargs)  # type: ignore[arg-type]
        current_models.append(model)
        return model

    def evaluate(model: object, *args: object, **kwargs: object) -> list[float]:
        scores = real_evaluate(model, *args, **kwargs)  # type: ignore[arg-type]
        if any(model is m for m in current_models):
            crops.append(len(scores))
            return [math.nan] + [s - 5.0 for s in scores[1:]]  # flat on one crop, far better on the others
        return scores

    monkeypatch.setattr(run, "_current_weights", current)
    monkeypatch.setattr(loop, "evaluate_model", evaluate)
    second = adapt_camera(group, _rerun_config().with_overrides(seed=2), store_root=tmp_path / "store",
                          backbone_name="tiny", registry=tiny)
    assert crops and crops[0] >= 2  # the current model was scored, on more than the crop it loses
    assert not second.kept_current


def test_adapting_through_an_alias_of_another_camera_is_refused_before_any_work(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`<store>/nokia -> <store>/sony`: refused at the start, not after the training (at the first write)."""
    import adassr.adapt.run as run
    from adassr.runtime.errors import StoreError

    store = tmp_path / "store"
    sony = CameraStore.open(store, "sony", create=True)
    sony.publish("w.bin", lambda p: p.write_text("sony's model"), stage="test")
    (store / "nokia").symlink_to(store / "sony")

    def no_work(*_a: object, **_k: object) -> None:
        raise AssertionError("the set-up ran although the camera folder is another camera's")

    monkeypatch.setattr(run, "_prepare_inputs", no_work)
    with pytest.raises(StoreError, match="would replace the model of 'sony'"):
        adapt_camera(select_group(camera_dir, "nokia"), _rerun_config(), store_root=store, backbone_name="tiny",
                     registry=tiny)
    assert sony.verified_path("w.bin").read_text() == "sony's model"


def test_the_manifest_records_the_patch_the_images_allowed_and_what_was_used(tiny: BackboneRegistry,
                                                                             tmp_path: Path) -> None:
    """No image fits the requested 40 px patch: the patch shrinks to what the largest allows (without
    augmentation: --no-augment leaves more of the image for the patch), training uses that patch, and the
    manifest records both sizes, the minimum side, each used file's sha256, the one evaluated image
    (--eval-max-images 1), the set-up's time and the kernel the outcome names."""
    from adassr.adapt.pairs import PairConfig, min_image_size
    from adassr.runtime.store import sha256_file

    folder = tmp_path / "images" / "cam"
    folder.mkdir(parents=True)
    pixels = read_image(SAMPLES / "nokia" / "iptc.jpg").pixels
    write_image(folder / "a.png", np.ascontiguousarray(pixels[200:330, 250:380]))
    write_image(folder / "b.png", np.ascontiguousarray(pixels[60:190, 400:530]))
    config = cpu_demo_defaults().with_overrides(steps=1, eval_every=1, lr_patch=40, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4, augment=False,
                                                eval_max_images=1)
    outcome = adapt_camera(select_group(tmp_path / "images", "cam"), config, store_root=tmp_path / "store",
                           backbone_name="tiny", registry=tiny)
    manifest = CameraStore.open(tmp_path / "store", "cam").read_manifest()
    pairs = manifest["pairs"]
    shape = tuple(np.asarray(manifest["kernel"]["kernel"]).shape)
    plain = PairConfig(scale=4, lr_patch=40).without_augmentation()
    fitting = max(p for p in range(1, 41) if min_image_size(_with_patch(plain, p), shape) <= 130)
    assert pairs["requested_lr_patch"] == 40 and pairs["lr_patch"] == fitting < 40
    assert pairs["min_side"] == min_image_size(_with_patch(plain, fitting), shape)
    assert pairs["images_used"] == [str(folder / "a.png"), str(folder / "b.png")]
    assert pairs["images_used_sha256"] == [sha256_file(p) for p in pairs["images_used"]]
    assert [p["path"] for p in manifest["per_image"]] == manifest["niqe_evaluation"]["images"] == [
        str(folder / "a.png")]
    assert manifest["timing"]["before_training_s"] > 0
    assert outcome.kernel.startswith("Gaussian sigma") and manifest["steps"] == outcome.steps == 1
    assert outcome.report == manifest["report"]  # report.png, or None without matplotlib


def _with_patch(config, patch: int):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(config, lr_patch=patch)


def test_a_fixed_cameras_frames_are_one_scene_and_the_run_says_so(
        tiny: BackboneRegistry, camera_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Frames of one view (a CCTV camera) count as one image in the kernel estimate: the manifest records
    one scene and the single-image fit, and the run warns that the kernel rests on that scene."""
    import logging

    view = read_image(camera_dir / "nokia" / "crop.png").pixels.astype(np.float32)
    rng = np.random.default_rng(0)
    folder = tmp_path / "images" / "gate"
    folder.mkdir(parents=True)
    for i in range(2):
        frame = np.clip(view + rng.normal(0, 2, view.shape), 0, 255)
        write_image(folder / f"frame{i}.png", np.round(frame).astype(np.uint8))
    config = cpu_demo_defaults().with_overrides(steps=2, eval_every=1, lr_patch=12, eval_crop=48, seed=1,
                                                lambda_perceptual=0, feature_bank=4)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        adapt_camera(select_group(tmp_path / "images", "gate"), config, store_root=tmp_path / "store",
                     backbone_name="tiny", registry=tiny)
    assert "camera group 'gate': the 2 frames used for the blur kernel all show one scene" in caplog.text
    diag = CameraStore.open(tmp_path / "store", "gate").read_manifest()["kernel"]["diagnostics"]
    assert diag["n_scenes"] == 1 and diag["scene_of_image"] == [0, 0] and diag["mode"] == "single"
