from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from adassr.runtime.errors import CameraError, StoreError
from adassr.runtime.store import CameraStore, atomic_write_bytes, list_cameras, sha256_file


def _publish_text(store: CameraStore, name: str, text: str) -> dict:
    return store.publish(name, lambda p: p.write_text(text), stage="test")


def test_publish_records_checksum_and_verifies(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "Nikon", create=True)
    assert store.camera == "nikon"
    record = _publish_text(store, "a.bin", "hello")
    path = store.artifact_path("a.bin")
    assert path.name == f"a.{record['sha256'][:16]}.bin"
    assert record["sha256"] == sha256_file(path)
    manifest = store.read_manifest()
    assert manifest["artifacts"]["a.bin"]["bytes"] == 5
    assert store.verified_path("a.bin") == path
    assert list_cameras(tmp_path) == ["nikon"]



def test_an_unchanged_artifact_keeps_its_creation_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unchanged re-export rewrote "created" of the same bytes (a helper's review of provenance)."""
    import adassr.runtime.store as store_module

    store = CameraStore.open(tmp_path, "nikon", create=True)
    monkeypatch.setattr(store_module, "_now", lambda: "2026-01-01T00:00:00+00:00")
    first = _publish_text(store, "a.bin", "hello")
    monkeypatch.setattr(store_module, "_now", lambda: "2026-02-02T00:00:00+00:00")
    assert _publish_text(store, "a.bin", "hello")["created"] == first["created"] == "2026-01-01T00:00:00+00:00"
    assert _publish_text(store, "a.bin", "changed")["created"] == "2026-02-02T00:00:00+00:00"
    assert store.read_manifest()["artifacts"]["a.bin"]["created"] == "2026-02-02T00:00:00+00:00"


def test_a_copied_camera_folder_serves_under_its_folder_name(tmp_path: Path) -> None:
    """The folder name is the camera: a copy keeps working, and its next commit rewrites the copied
    manifest's informational 'camera' field to the folder name."""
    import shutil

    store = CameraStore.open(tmp_path, "nikon", create=True)
    _publish_text(store, "a.bin", "weights")
    shutil.copytree(store.directory, tmp_path / "nikon-b")
    copy = CameraStore.open(tmp_path, "nikon-b")
    assert copy.read_manifest()["camera"] == "nikon"
    assert copy.verified_path("a.bin").read_text() == "weights"
    _publish_text(copy, "b.bin", "more")
    assert copy.read_manifest()["camera"] == "nikon-b" and store.read_manifest()["camera"] == "nikon"
    assert list_cameras(tmp_path) == ["nikon", "nikon-b"]

def test_tampered_artifact_is_detected(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "model.bin", "original bytes")
    store.artifact_path("model.bin").write_text("tampered bytes")
    with pytest.raises(StoreError, match="fails its checksum"):
        store.verified_path("model.bin")
    store.artifact_path("model.bin").unlink()
    with pytest.raises(StoreError, match="missing"):
        store.verified_path("model.bin")
    with pytest.raises(StoreError, match="no other.onnx"):
        store.verified_path("other.onnx")


def test_crash_during_write_keeps_previous_artifact(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")

    def crashing_writer(p: Path) -> None:
        p.write_text("half-writ")
        raise KeyboardInterrupt  # simulated Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        store.publish("w.bin", crashing_writer, stage="test")
    assert store.verified_path("w.bin").read_text() == "good"
    leftovers = [p.name for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_ctrl_c_after_the_manifest_rename_keeps_the_new_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C during the folder fsync that follows the manifest's rename used to discard the staged
    file the new manifest already named: the camera stopped serving, and the next writer removed the
    previous file as an orphan."""
    import adassr.runtime.store as store_module

    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")
    before = store.manifest_path.read_bytes()
    real_fsync_dir = store_module._fsync_dir

    def interrupted_fsync_dir(directory: Path) -> None:
        real_fsync_dir(directory)
        if store.manifest_path.read_bytes() != before:  # the new manifest is in place
            raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_fsync_dir", interrupted_fsync_dir)
    with pytest.raises(KeyboardInterrupt):
        _publish_text(store, "w.bin", "newer")
    monkeypatch.undo()
    assert store.verified_path("w.bin").read_text() == "newer"  # committed, and its file is there
    _publish_text(store, "other.bin", "x")  # the next writer's orphan sweep keeps what is referenced
    assert store.verified_path("w.bin").read_text() == "newer"


def test_a_signal_between_the_rename_and_the_record_leaves_no_orphan(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while a staged file's folder was synced (after its rename, before its record) left the
    content-addressed file in the camera folder, known to nobody (a helper's bug hunt); the same bytes as
    the published model's file are kept."""
    import adassr.runtime.store as store_module

    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")
    published = store.verified_path("w.bin")
    real_fsync_dir = store_module._fsync_dir

    def interrupted(directory: Path) -> None:
        real_fsync_dir(directory)
        raise KeyboardInterrupt

    for text in ("newer", "good"):  # new bytes: removed; the published file's bytes: kept
        before = sorted(p.name for p in store.directory.iterdir())
        monkeypatch.setattr(store_module, "_fsync_dir", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _publish_text(store, "w.bin", text)
        monkeypatch.undo()
        assert sorted(p.name for p in store.directory.iterdir()) == before
        assert store.verified_path("w.bin") == published and published.read_text() == "good"


def test_empty_artifact_is_refused(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    with pytest.raises(StoreError, match="empty"):
        store.publish("e.bin", lambda p: None, stage="test")
    assert "e.bin" not in store.read_manifest_or_empty()["artifacts"]
    assert sorted(p.name for p in store.directory.iterdir()) == [".lock"]


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "sony", create=True)
    with pytest.raises(StoreError, match="adapt --camera sony"):
        store.read_manifest()
    atomic_write_bytes(store.manifest_path, b"{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read_manifest()
    atomic_write_bytes(store.manifest_path, b'{\n"camera": "sony')  # cut inside a string
    with pytest.raises(StoreError, match=r"\(Unterminated string starting at line 2\)"):  # "at at line" before
        store.read_manifest()
    store.manifest_path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StoreError, match="written by a newer adassr .schema_version 99.*upgrade adassr"):
        store.read_manifest()  # not damaged: moving it away would throw a good model away


@pytest.mark.parametrize("damage", [b"{bad", b"[1, 2]", b'{"schema_version": 1, "artifacts": []}', b"\xff\xfe",
                                    b'{"camera": "nokia", "artifacts": {}}', b'{"schema_version": 0, "artifacts": {}}',
                                    b'{"schema_version": "1", "artifacts": {}}'])
def test_a_damaged_manifest_names_the_way_out_and_the_way_out_works(tmp_path: Path, damage: bytes) -> None:
    """Rerunning the stage that wrote it cannot help (every stage reads the manifest first): the message
    says to move it away, and after that a new transaction (what adapt and export open) succeeds."""
    store = CameraStore.open(tmp_path, "nokia", create=True)
    _publish_text(store, "a.bin", "x")
    store.manifest_path.write_bytes(damage)
    for call in (store.read_manifest, store.transaction().__enter__):
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert f"mv {store.manifest_path} {store.manifest_path}.damaged" in message
        assert f"adassr adapt --camera nokia --images PHOTO_FOLDER --store {tmp_path}" in message
        assert "rerun the stage" not in message
    store.manifest_path.rename(store.manifest_path.with_name("manifest.json.damaged"))
    with store.transaction() as tx:
        tx.commit()
    assert store.read_manifest()["camera"] == "nokia"
    fallback = CameraStore.open(tmp_path, "_fallback", create=True)
    atomic_write_bytes(fallback.manifest_path, b"{bad")
    with pytest.raises(StoreError, match="export --backbone realesrgan-x4plus"):
        fallback.read_manifest()


def test_missing_store_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        CameraStore.open(tmp_path / "nope", "canon")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StoreError, match="is a file, not a folder"):  # was "does not exist"
        CameraStore.open(tmp_path / "afile", "canon")
    for bad in ["../etc", "", "a/b", ".hidden", "x" * 80]:
        with pytest.raises(CameraError):
            CameraStore.open(tmp_path, bad, create=True)
    store = CameraStore.open(tmp_path, "canon", create=True)
    with pytest.raises(StoreError):
        store.path("../manifest.json")


def test_missing_manifest_names_the_close_camera(tmp_path: Path) -> None:
    _publish_text(CameraStore.open(tmp_path, "nokia", create=True), "a.bin", "x")
    with pytest.raises(StoreError, match=r"no manifest for camera 'nokai' .*\. Did you mean 'nokia'\?$"):
        CameraStore.open(tmp_path, "nokai").read_manifest()  # no advice to adapt the typo
    with pytest.raises(StoreError) as info:
        CameraStore.open(tmp_path, "sony").read_manifest()
    assert "Did you mean" not in str(info.value)
    # the store given (it was left out), and --images (without it adapt reads the bundled samples: a helper's hunt)
    assert f"`adassr adapt --camera sony --images PHOTO_FOLDER --store {tmp_path}`" in str(info.value)
    with pytest.raises(StoreError, match=rf"`adassr export --backbone realesrgan-x4plus --store {tmp_path}`"):
        CameraStore.open(tmp_path, "_fallback").read_manifest()


def test_unwritable_store(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the store folder"):
        CameraStore.open(blocker, "canon", create=True)


def _hold_lock(root: str, ready, release) -> None:  # runs in a child process
    store = CameraStore.open(root, "canon", create=True)
    with store.lock():
        ready.set()
        release.wait(10)


def test_lock_serialises_writers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    child.start()
    try:
        assert ready.wait(20)
        store = CameraStore.open(tmp_path, "canon", create=True)
        with pytest.raises(StoreError, match="another adassr process") as refused, store.lock(timeout_s=0.3):
            pass
        # the holder named, so that a stopped or hung one can be found (a helper's hunt)
        assert f"another adassr process (pid {child.pid}) is writing camera 'canon'" in str(refused.value)
        assert f"`ps -p {child.pid}`), end it" in str(refused.value)
    finally:
        release.set()
        child.join(10)
    with store.lock(timeout_s=5):
        pass


def test_manifests_that_are_no_regular_file_or_absurd_are_clear_errors(tmp_path: Path) -> None:
    """A FIFO manifest hung every command, a link to /dev/zero ate the memory, a 5,000-digit integer and a
    link to nothing (taken for "no manifest": the fallback served) each ended otherwise (a helper's hunt)."""
    from adassr.runtime.errors import StoreError

    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")
    manifest = store.manifest_path
    text = manifest.read_text()
    manifest.write_text(text.replace('"schema_version"', '"scale": ' + "9" * 5000 + ', "schema_version"', 1))
    with pytest.raises(StoreError, match="is not valid JSON .*digits"):
        store.read_manifest()
    for make, match in [(lambda: os.mkfifo(manifest), "not a regular file"),
                        (lambda: manifest.symlink_to("/dev/zero"), "not a regular file"),
                        (lambda: manifest.symlink_to(tmp_path / "gone.json"), "a link to a file that does not exist")]:
        manifest.unlink()
        make()
        assert store.exists()
        with pytest.raises(StoreError, match=match):
            store.read_manifest()


def test_a_linked_engines_folder_is_never_cleaned_through_the_link(tmp_path: Path) -> None:
    """`<camera>/engines` as a link to a shared folder: every write transaction deleted the .engine files
    there that the camera's records did not name (a helper's hunt)."""
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    _publish_text(store, "w.bin", "good")
    shared = tmp_path / "shared_engines"
    shared.mkdir()
    (shared / "other.engine").write_text("another camera's engine")
    (shared / f".x.engine.{os.getpid() + 10**6}.0123abcd.tmp").write_text("not this camera's")
    (store.directory / "engines").symlink_to(shared)
    _publish_text(store, "w.bin", "newer")
    assert sorted(p.name for p in shared.iterdir())[-1] == "other.engine" and len(list(shared.iterdir())) == 2


def test_an_engine_record_dropped_never_deletes_through_a_linked_engines_folder(tmp_path: Path) -> None:
    """The clean-up of a dropped record (a re-adapt forgets the engine records) and of superseded files
    must not delete through `<camera>/engines` linked to a shared folder: another camera's engine may
    have that name (mutation testing: only the folder scan was covered)."""
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    _publish_text(store, "w.bin", "good")
    shared = tmp_path / "shared_engines"
    shared.mkdir()
    (shared / "a.engine").write_text("an engine other cameras use")
    (store.directory / "engines").symlink_to(shared)
    store.update_manifest(lambda m: m.__setitem__("engines", {"k": {"file": "engines/a.engine"}}))
    store.update_manifest(lambda m: m.pop("engines"))  # dropped: superseded for one commit
    store.update_manifest(lambda m: None)  # then the superseded files go
    assert (shared / "a.engine").read_text() == "an engine other cameras use"


def test_a_commit_of_an_invalid_manifest_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    """A stage writing a bad value (scale 0) must not commit it: every reader would then refuse the
    camera as damaged and its working model would be lost (mutation testing)."""
    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")
    before = store.manifest_path.read_bytes()
    with pytest.raises(StoreError), store.transaction() as tx:
        tx.stage("x.bin", lambda p: p.write_text("new"), stage="test")
        tx.commit(lambda m: m.update(scale=0))
    assert store.manifest_path.read_bytes() == before
    assert store.verified_path("w.bin").read_text() == "good"
    assert sorted(p.name for p in store.directory.iterdir() if "x" in p.name) == []  # the staged file went


def test_removing_an_unused_folder_keeps_the_lock_of_a_folder_in_use(tmp_path: Path) -> None:
    """The lock file goes only with the folder: removed from a folder in use, a third writer would lock a
    new file while another holds the old one, two writers at once (mutation testing)."""
    store = CameraStore.open(tmp_path, "canon", create=True)
    _publish_text(store, "w.bin", "good")
    assert store.remove_if_unused() is False
    assert (store.directory / ".lock").is_file() and store.read_manifest()["camera"] == "canon"
    empty = CameraStore.open(tmp_path, "sony", create=True)
    with empty.lock():
        pass
    assert empty.remove_if_unused() is True and not empty.directory.exists()


def test_onnxruntime_tensorrt_caches_go_with_their_onnx_file(tmp_path: Path) -> None:
    """onnxruntime's TensorRT cache folder is keyed by the ONNX file's sha256; one for an ONNX file the camera
    no longer has was never read again nor removed (tens to hundreds of MB per re-export; a helper's hunt).
    It stays while the previous manifest names its file (a running upscale may use it), then goes."""
    from adassr.runtime.backends.ort_options import ort_trt_cache_dir
    from adassr.runtime.engines import plan_profiles
    from adassr.runtime.tiling import TilingOptions

    from ._models import build_tiny_sr

    store = CameraStore.open(tmp_path, "canon", create=True)
    profiles = plan_profiles(TilingOptions(tile=96)).profiles

    def cache_of(record: dict) -> Path:
        folder = ort_trt_cache_dir(store.directory, record["sha256"], "fp32", profiles, "1.32.0")
        folder.mkdir(parents=True)
        (folder / "TensorrtExecutionProvider_cache_sm90.engine").write_bytes(b"engine")
        return folder

    def export(seed: int) -> dict:
        return store.publish("model.onnx", lambda p: p.write_bytes(build_tiny_sr(seed=seed)), stage="export")

    first = cache_of(export(seed=0))
    second = cache_of(export(seed=1))
    unknown = store.directory / "engines" / "ort-trt" / "notes"  # not a cache folder's name: left alone
    unknown.mkdir()
    assert first.is_dir() and second.is_dir()  # the first one's ONNX file is superseded, still readable
    _publish_text(store, "other.bin", "an unrelated commit")
    assert not first.exists() and (second / "TensorrtExecutionProvider_cache_sm90.engine").is_file()
    assert unknown.is_dir()


def test_a_camera_folder_that_links_to_another_cameras_folder_is_never_written_through(tmp_path: Path) -> None:
    """`<store>/canon -> nikon` (an alias for serving): adapting or exporting canon committed into nikon's folder,
    replacing nikon's model and rewriting its manifest as canon's (a helper's hunt). Reading through it still
    works, and a link to a folder outside the store (storage elsewhere) can be written."""
    nikon = CameraStore.open(tmp_path, "nikon", create=True)
    _publish_text(nikon, "w.bin", "nikon's model")
    (tmp_path / "canon").symlink_to("nikon")
    alias = CameraStore.open(tmp_path, "canon")
    assert alias.verified_path("w.bin").read_text() == "nikon's model"
    before = nikon.manifest_path.read_bytes()
    with pytest.raises(StoreError, match="is also the folder of camera 'nikon' in this store"):
        _publish_text(alias, "w.bin", "canon's model")
    with alias.transaction() as tx, pytest.raises(StoreError, match="would replace the model of 'nikon'"):
        tx.stage("w.bin", lambda p: p.write_text("canon's model"), stage="test")
    assert nikon.manifest_path.read_bytes() == before and nikon.verified_path("w.bin").read_text() == "nikon's model"
    assert [p.name for p in nikon.directory.iterdir() if p.name.startswith("w.")] == [
        nikon.artifact_path("w.bin").name]
    with alias.transaction() as tx:  # engines built from nikon's own model may be recorded through the alias
        tx.commit()
    # a link to a folder whose name is no camera's (Canon/ is not served as a camera) is no alias
    (tmp_path / "Sony").mkdir()
    (tmp_path / "sony").symlink_to("Sony")
    _publish_text(CameraStore.open(tmp_path, "sony"), "w.bin", "sony's model")
    elsewhere = tmp_path.parent / f"{tmp_path.name}_disk2" / "fuji"
    elsewhere.mkdir(parents=True)
    (tmp_path / "fuji").symlink_to(elsewhere)
    _publish_text(CameraStore.open(tmp_path, "fuji"), "w.bin", "fuji's model")
    assert (elsewhere / "manifest.json").is_file()
    # an alias of that link, and a second link to the same folder elsewhere, are aliases too (the first review
    # of this check only looked for links that end in the store)
    (tmp_path / "leica").symlink_to("fuji")
    (tmp_path / "pentax").symlink_to(elsewhere)
    for alias_name in ("leica", "pentax"):
        with pytest.raises(StoreError, match="would replace the model of 'fuji'"):
            _publish_text(CameraStore.open(tmp_path, alias_name), "w.bin", "not fuji's model")
    _publish_text(CameraStore.open(tmp_path, "fuji"), "w.bin", "fuji's newer model")
    assert CameraStore.open(tmp_path, "pentax").verified_path("w.bin").read_text() == "fuji's newer model"


def test_an_atomic_write_is_fsynced_before_its_rename_and_the_folder_after(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No test noticed a store write that skipped its fsyncs (a power cut after the rename could leave an
    empty manifest); a failing fsync must leave the old file and no temporary one."""
    import adassr.runtime.store as store_module

    from ._fs_events import record_fsyncs_and_renames

    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    events = record_fsyncs_and_renames(monkeypatch)
    atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"new"
    (renamed,) = [path for kind, path in events if kind == "replace"]
    assert events.index(("fsync", renamed)) < events.index(("replace", renamed))  # the data first, then the name
    assert events[-1] == ("fsync", str(tmp_path))  # and the folder, so the rename survives a power cut

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module.os, "fsync", failing)
    with pytest.raises(StoreError, match="Input/output error"):
        atomic_write_bytes(target, b"newer")
    monkeypatch.undo()
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_staged_file_is_fsynced_before_its_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged weights file must reach the disk before its content-addressed name does: else a power cut
    leaves a committed manifest naming an empty file (mutation testing: only atomic writes were checked)."""
    from ._fs_events import record_fsyncs_and_renames

    store = CameraStore.open(tmp_path, "canon", create=True)
    events = record_fsyncs_and_renames(monkeypatch)
    with store.transaction() as tx:
        record = tx.stage("w.bin", lambda p: p.write_text("weights"), stage="test")
        staged = [path for kind, path in events if kind == "replace"]
        tx.commit()
    monkeypatch.undo()
    (renamed,) = staged
    assert events.index(("fsync", renamed)) < events.index(("replace", renamed))
    assert ("fsync", str(store.directory)) in events[events.index(("replace", renamed)):]
    assert store.verified_path("w.bin").read_text() == "weights" and record["sha256"]


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """The lock was opened through a planted `.lock -> file` link and the file truncated to the writer's pid
    (a link to nothing created a file outside the store) (a helper's review)."""
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data\n")
    (tmp_path / "store" / "canon").mkdir(parents=True)
    cam = CameraStore.open(tmp_path / "store", "canon")
    (cam.directory / ".lock").symlink_to(precious)
    with pytest.raises(StoreError, match=r"the lock file .*\.lock is a symbolic link .*remove the link and rerun"), \
            cam.lock():
        pass
    assert precious.read_text() == "precious data\n"
    (cam.directory / ".lock").unlink()
    (cam.directory / ".lock").symlink_to(tmp_path / "created_outside")
    with pytest.raises(StoreError, match="is a symbolic link"), cam.lock():
        pass
    assert not (tmp_path / "created_outside").exists()


def test_suggested_commands_name_a_store_other_than_the_default(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Hints such as "run `adassr export --backbone realesrgan-x4plus`" left out the --store the user gave:
    followed as given they wrote into ./models and the command failed again (a helper's review)."""
    from adassr.runtime.store import store_option

    monkeypatch.chdir(tmp_path)
    assert store_option("models") == "" and store_option(tmp_path / "models") == ""
    assert store_option("elsewhere") == " --store elsewhere"
    assert store_option("my store") == " --store 'my store'"  # pasted as printed, it still works
    assert store_option("-dstore") == " --store ./-dstore"  # `--store -dstore`: "expected one argument"
    with pytest.raises(StoreError, match=r"run `adassr adapt --camera NAME --images PHOTO_FOLDER --store nowhere` and "
                                         r"`adassr export --camera NAME "
                                         r"--store nowhere`, or `adassr export --backbone realesrgan-x4plus --store "
                                         r"nowhere`"):
        CameraStore.open("nowhere", "canon")


def test_the_damaged_manifest_advice_quotes_its_paths(tmp_path: Path) -> None:
    """The advice printed `mv my store/canon/manifest.json ...` and `--store my store`, which fail as pasted."""
    import shlex

    from adassr.runtime.store import damaged_manifest_advice

    manifest = tmp_path / "my store" / "canon" / "manifest.json"
    advice = damaged_manifest_advice(manifest)
    quoted = shlex.quote(str(tmp_path / "my store"))
    assert f"--store {quoted}`" in advice and f"`mv {shlex.quote(str(manifest))} " in advice


def test_suggested_commands_survive_a_store_named_with_a_dash_and_name_the_photos(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hints followed as printed (a helper's hunt): `mv -dstore/canon/manifest.json ...` is an option to mv and
    `--store -dstore` one to argparse; an adapt hint without --images adapts the bundled samples (for a camera
    named like one of them) or fails. A relative path starting with '-' is written ./-path, and the photos are
    the ones the manifest records, or PHOTO_FOLDER to fill in."""
    from adassr.runtime.store import adapt_command, damaged_manifest_advice, photo_folder, shell_path

    monkeypatch.chdir(tmp_path)
    advice = damaged_manifest_advice(Path("-dstore") / "canon" / "manifest.json")
    assert "`mv ./-dstore/canon/manifest.json ./-dstore/canon/manifest.json.damaged`" in advice
    assert "`adassr adapt --camera canon --images PHOTO_FOLDER --store ./-dstore`" in advice
    assert "`adassr export --camera canon --store ./-dstore`" in advice
    assert shell_path("my photos") == "'my photos'" and shell_path("/abs/-x") == "/abs/-x"
    manifest = {"images": [{"path": "/data/cams/nikon/a.jpg", "derivation": "folder"},
                           {"path": "/data/cams/nikon/day 2/b.jpg", "derivation": "folder"}]}
    assert photo_folder(manifest) == "/data/cams/nikon" and photo_folder({}) is None
    assert adapt_command("nikon", "my store", manifest) == \
        "adassr adapt --camera nikon --images /data/cams/nikon --store 'my store'"
    # a camera adapted on one image: its folder would be another group, or every photo there (a helper's review)
    single = {"images": [{"path": "/data/shots/IMG_0001.png", "derivation": "single-image"}]}
    assert adapt_command("mycam", "s", single) == \
        "adassr adapt --image /data/shots/IMG_0001.png --camera mycam --store s"


def test_the_fallback_is_exported_again_from_the_backbone_its_manifest_names() -> None:
    """`adassr export --backbone realesrgan-x4plus` was suggested for a realsr-df2k fallback: pasted, it replaced
    the user's fallback with another backbone (a helper's review)."""
    from adassr.runtime.store import export_arguments

    assert export_arguments("_fallback", {"backbone": {"name": "realsr-df2k"}}) == "--backbone realsr-df2k"
    assert export_arguments("_fallback", {}) == "--backbone realesrgan-x4plus"
    assert export_arguments("canon", {"backbone": {"name": "realsr-df2k"}}) == "--camera canon"
