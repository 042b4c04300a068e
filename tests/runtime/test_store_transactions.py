"""Store transactions: validation before work, old-or-new publication, clean-up, modes, external data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from adassr.runtime.errors import StoreError
from adassr.runtime.routing import resolve_model
from adassr.runtime.store import CameraStore, camera_folder_for_writing, sha256_file
from adassr.runtime.tempfiles import NAME_MAX, create_temp, remove_stale_temps, temp_stem

from ._models import build_tiny_sr, publish_camera
from ._processes import dead_pid


def _text(store: CameraStore, name: str, text: str) -> dict:
    return store.publish(name, lambda p: p.write_text(text), stage="test")


@pytest.mark.parametrize("change, match", [
    ({"scale": 1e9}, "'scale' must be an integer from 1 to 16"),
    ({"scale": 10**9}, "'scale' must be an integer from 1 to 16"),
    ({"artifacts": "oops"}, "'artifacts' must be an object"),
    ({"artifacts": {"model.onnx": {"sha256": "x"}}}, "no valid sha256"),
    ({"artifacts": {"model.onnx": {"sha256": "0" * 64, "file": "../x"}}}, "plain file name"),
    ({"exports": []}, "'exports' must be an object"),
    ({"exports": {"onnx": {"file": "model.onnx", "multiple_of": True}}}, "multiple_of"),
    ({"backbone": "realesrgan"}, "'backbone' must be an object"),
])
def test_bad_manifest_values_are_store_errors_for_every_reader(tmp_path: Path, change: dict, match: str) -> None:
    store = publish_camera(tmp_path, "canon")
    data = json.loads(store.manifest_path.read_text())
    data.update(change)
    store.manifest_path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=match):
        store.read_manifest()
    with pytest.raises(StoreError, match=match):
        resolve_model(tmp_path, camera="canon")


def test_failed_transaction_leaves_the_previous_version_and_no_files(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    _text(store, "w.bin", "old")
    before = sorted(p.name for p in store.directory.iterdir())
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.stage("w.bin", lambda p: p.write_text("new"), stage="test")
        assert store.verified_path("w.bin").read_text() == "old"  # staged, not visible
        raise RuntimeError("crash before the commit")
    assert store.verified_path("w.bin").read_text() == "old"
    assert sorted(p.name for p in store.directory.iterdir()) == before


def test_artifacts_and_manifest_commit_together_and_old_files_go(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    _text(store, "a.bin", "a1")
    _text(store, "b.bin", "b1")
    old_files = {store.artifact_path("a.bin"), store.artifact_path("b.bin")}
    with store.transaction() as tx:
        tx.stage("a.bin", lambda p: p.write_text("a2"), stage="test")
        tx.stage("b.bin", lambda p: p.write_text("b2"), stage="test")
        # Before the commit a reader still sees the complete old version.
        old = store.read_manifest()
        assert [store.verified_path(n, old).read_text() for n in ("a.bin", "b.bin")] == ["a1", "b1"]
        tx.commit(lambda m: m.update({"note": "v2"}))
    new = store.read_manifest()
    assert new["note"] == "v2"
    assert [store.verified_path(n, new).read_text() for n in ("a.bin", "b.bin")] == ["a2", "b2"]
    # A reader that read the previous manifest just before the commit still finds its files: they stay
    # one commit longer (a re-export used to delete them under a running upscale or server reload).
    assert [store.verified_path(n, old).read_text() for n in ("a.bin", "b.bin")] == ["a1", "b1"]
    assert sorted(new["superseded_files"]) == sorted(p.name for p in old_files)
    _text(store, "c.bin", "c1")  # the next commit removes them
    assert not any(p.exists() for p in old_files)
    assert store.read_manifest()["superseded_files"] == []


def test_a_failed_transaction_that_staged_a_superseded_file_again_keeps_it(tmp_path: Path) -> None:
    """Commit A, commit B (A's file is superseded: kept one commit for readers of the old manifest), then a
    transaction stages A's bytes again (content-addressed: A's very file) and fails: its clean-up must not
    delete A's file, which a reader of the previous manifest may still open."""
    store = CameraStore.open(tmp_path, "canon", create=True)
    _text(store, "w.bin", "A")
    first = store.read_manifest()
    _text(store, "w.bin", "B")
    second = store.read_manifest()
    superseded = store.path(first["artifacts"]["w.bin"]["file"])
    assert superseded.name in second["superseded_files"] and superseded.exists()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.stage("w.bin", lambda p: p.write_text("A"), stage="test")
        raise RuntimeError("crash before the commit")
    assert superseded.exists() and store.verified_path("w.bin", first).read_text() == "A"
    assert store.verified_path("w.bin").read_text() == "B"


def _crash_after_staging(root: str) -> None:  # runs in a child process
    store = CameraStore.open(root, "canon")
    with store.transaction() as tx:
        tx.stage("w.bin", lambda p: p.write_text("new"), stage="test")
        os._exit(9)  # killed between staging and commit: no clean-up runs


def test_killed_writer_leaves_old_model_and_next_lock_holder_cleans_up(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "canon", create=True)
    _text(store, "w.bin", "old")
    code = ("from tests.runtime.test_store_transactions import _crash_after_staging; "
            f"_crash_after_staging({str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 9
    stale = tmp_path / "canon" / f".w.bin.{dead_pid()}.0123abcd.tmp"
    stale.write_text("left by kill -9")
    names = {p.name for p in store.directory.iterdir()}
    assert len(names) == 5  # .lock, manifest, old file, orphaned staged file, stale tmp
    assert store.verified_path("w.bin").read_text() == "old"  # readers are unaffected
    with store.transaction() as tx:
        tx.commit()
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [".lock", "manifest.json", store.artifact_path("w.bin").name])


def test_stale_temporaries_of_live_processes_are_kept(tmp_path: Path) -> None:
    live = tmp_path / f".x.png.{os.getpid()}.00ff.tmp"
    dead = tmp_path / f".x.png.{dead_pid()}.00ff.tmp"
    other = tmp_path / "x.png.tmp"
    for p in (live, dead, other):
        p.write_text("t")
    assert remove_stale_temps(tmp_path) == [dead.name]
    assert live.exists() and other.exists() and not dead.exists()


def test_a_temporary_file_whose_process_id_looks_alive_goes_after_a_day_or_under_the_lock(tmp_path: Path) -> None:
    """A killed writer's file whose pid is alive again (pid 1 in a container, a reused id) stayed for good."""
    from adassr.runtime.tempfiles import ABANDONED_AFTER_S

    old, young = (tmp_path / f".{n}.png.{os.getpid()}.00ff.tmp" for n in ("old", "young"))
    for p in (old, young):
        p.write_text("t")
    os.utime(old, (time.time() - ABANDONED_AFTER_S - 60,) * 2)
    fd, mine = create_temp(tmp_path / "mine.png")
    os.close(fd)
    os.utime(mine, (time.time() - ABANDONED_AFTER_S - 60,) * 2)  # a long write of this process: never touched
    assert remove_stale_temps(tmp_path) == [old.name]
    assert remove_stale_temps(tmp_path, locked=True) == [young.name]
    assert mine.exists()
    mine.unlink()
    assert remove_stale_temps(tmp_path, locked=True) == []  # and it is forgotten once gone


def test_temporaries_of_killed_engine_builds_and_cache_writes_are_removed(tmp_path: Path) -> None:
    """A build killed mid-write left its partial engine (hundreds of MB) in engines/ or _engines/ for
    good; only the camera folder itself was swept."""
    from adassr.runtime.engines import EngineCache
    from adassr.runtime.lru_folder import STALE_TEMP_AGE_S, evict_least_recent

    store = CameraStore.open(tmp_path, "canon", create=True)
    _text(store, "w.bin", "x")
    dead = dead_pid()
    engines = store.directory / "engines"
    engines.mkdir()
    partial = engines / f".camera-fp16-x.engine.{dead}.0123abcd.tmp"
    # this process's id but not its file: a writer in another container (every container's first process is
    # pid 1) or a reused id; it was kept for good. Under the lock no live writer can own it.
    same_pid = engines / f".camera-fp16-y.engine.{os.getpid()}.0123abcd.tmp"
    for path in (partial, same_pid):
        path.write_bytes(b"partial engine")
    fd, mine = create_temp(engines / "camera-fp16-z.engine")  # this process's write in progress
    os.close(fd)
    with store.transaction():
        pass
    assert not partial.exists() and not same_pid.exists() and mine.exists()
    mine.unlink()

    shared = EngineCache.shared(tmp_path)
    shared.folder.mkdir()
    base_partial = shared.folder / f".base-fp16-x.engine.{dead}.0123abcd.tmp"
    base_partial.write_bytes(b"partial base")
    with shared.lock():
        pass
    assert not base_partial.exists()

    cache = tmp_path / "_cache" / "weight_maps"
    cache.mkdir(parents=True)
    old, young = (cache / f".{n}.npy.{dead}.0123abcd.tmp" for n in ("old", "young"))
    for path in (old, young):
        path.write_bytes(b"partial map")
    os.utime(old, (time.time() - STALE_TEMP_AGE_S - 60,) * 2)
    evict_least_recent(cache, "*.npy", 1 << 20)  # every cache write ends with this
    assert not old.exists() and young.exists()  # a young one may be another machine's write in progress


@pytest.mark.parametrize("name", ["a" * 236 + ".png", "é" * 120 + ".png", "b" * 251 + ".png"])
def test_a_long_file_name_gets_a_temporary_file_and_its_stale_ones_are_found(tmp_path: Path, name: str) -> None:
    """Writing `<236 a's>.png` failed with "File name too long": the temporary name added about 26
    characters to a name the file system accepts."""
    from adassr.runtime.images import write_image

    assert len(os.fsencode(name)) <= NAME_MAX
    target = tmp_path / name
    write_image(target, np.full((4, 5, 3), 7, np.uint8))
    assert target.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [name]
    fd, tmp = create_temp(target)
    os.close(fd)
    assert len(os.fsencode(tmp.name)) <= NAME_MAX and temp_stem(name) in tmp.name
    stale = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{dead_pid()}."))
    tmp.rename(stale)
    other = tmp_path / f".{temp_stem('c' * 236 + '.png')}.{dead_pid()}.00ff.tmp"
    other.write_text("another target's")
    assert remove_stale_temps(tmp_path, target=name) == [stale.name]
    assert other.exists() and target.is_file()


def test_temp_stems_of_long_names_differ_and_short_names_are_kept() -> None:
    assert temp_stem("x.png") == "x.png"
    long_a, long_b = "a" * 240 + "1.png", "a" * 240 + "2.png"
    assert temp_stem(long_a) != temp_stem(long_b)
    assert temp_stem(long_a).startswith("a" * 100) and len(os.fsencode(temp_stem(long_a))) < 230
    assert temp_stem("é" * 127).encode("utf-8").decode("utf-8")  # cut on a character boundary


def test_store_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = CameraStore.open(tmp_path, "canon", create=True)
        _text(store, "w.bin", "x")
        assert store.artifact_path("w.bin").stat().st_mode & 0o777 == 0o644
        assert store.manifest_path.stat().st_mode & 0o777 == 0o644
        os.umask(0o002)
        _text(store, "w.bin", "y")
        assert store.artifact_path("w.bin").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def _model_with_external_data(folder: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


def test_onnx_with_external_data_is_refused_unless_listed_with_sha256(tmp_path: Path) -> None:
    src = _model_with_external_data(tmp_path)
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    with pytest.raises(StoreError, match="external-data"):
        store.publish("model.onnx", lambda p: p.write_bytes(src.read_bytes()), stage="export")
    # Hand-placed files: refused until the manifest lists the external file with its sha256.
    (store.directory / "model.onnx").write_bytes(src.read_bytes())
    (store.directory / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    record = {"sha256": sha256_file(src), "stage": "export"}
    store.update_manifest(lambda m: m["artifacts"].update({"model.onnx": record}))
    with pytest.raises(StoreError, match="weights.bin' which the manifest does not list|does not list"):
        store.verified_path("model.onnx")
    external = [{"file": "weights.bin", "sha256": sha256_file(store.directory / "weights.bin")}]
    listed = {**record, "external_data": external}
    store.update_manifest(lambda m: m["artifacts"].update({"model.onnx": listed}))
    assert store.verified_path("model.onnx") == store.directory / "model.onnx"
    (store.directory / "weights.bin").write_bytes(b"\0" * 36)
    with pytest.raises(StoreError, match="fails its checksum"):
        store.verified_path("model.onnx")


def test_self_contained_model_has_no_external_data() -> None:
    from adassr.runtime.onnx_external import external_data_files

    assert external_data_files(build_tiny_sr()) == []
    with pytest.raises(StoreError, match="not a well-formed ONNX"):
        external_data_files(b"\xff\xff\xff")


def _external(name: str, location: str) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, np.float32), name)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("raw_data")
    return tensor


def test_external_data_is_found_in_every_place_onnx_allows_and_strings_are_no_tensors() -> None:
    """The scanner took AttributeProto field 9 (strings) for tensors and 10 (tensors) for graphs: a
    self-contained model with a strings attribute was refused as malformed, and external data in a
    tensors or graphs attribute went unchecked into the store."""
    from adassr.runtime.onnx_external import _CHILDREN, _Kind, external_data_files

    fields = {f.name: f.number for f in onnx.AttributeProto.DESCRIPTOR.fields}
    assert _CHILDREN[(_Kind.ATTRIBUTE, fields["tensors"])] is _Kind.TENSOR
    assert _CHILDREN[(_Kind.ATTRIBUTE, fields["graphs"])] is _Kind.GRAPH
    assert (_Kind.ATTRIBUTE, fields["strings"]) not in _CHILDREN

    def model(node: onnx.NodeProto) -> bytes:
        graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    strings = helper.make_node("Custom", [], ["y"], domain="x", names=["a", "bc", "\u00e9" * 40])
    assert external_data_files(model(strings)) == []
    tensors = helper.make_node("Custom", [], ["y"], domain="x", ts=[_external("t0", "tensors.bin")])
    assert external_data_files(model(tensors)) == ["tensors.bin"]
    inner = helper.make_graph([], "inner", [], [], [_external("t1", "graphs.bin")])
    graphs = helper.make_node("Custom", [], ["y"], domain="x", gs=[inner])
    assert external_data_files(model(graphs)) == ["graphs.bin"]
    nowhere = _external("t2", "x.bin")
    del nowhere.external_data[:]
    with pytest.raises(StoreError, match="names no location"):
        external_data_files(model(helper.make_node("Custom", [], ["y"], domain="x", ts=[nowhere])))
    trained = onnx.ModelProto()
    trained.ParseFromString(model(strings))
    trained.training_info.add().initialization.CopyFrom(inner)
    assert external_data_files(trained.SerializeToString()) == ["graphs.bin"]


def test_a_nested_transaction_is_refused_at_once_not_after_a_timeout(tmp_path: Path) -> None:
    import time

    store = CameraStore.open(tmp_path, "cam")
    _text(store, "a.txt", "1")
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="already locked by this thread: store transactions do not nest"):
        store.update_manifest(lambda m: store.update_manifest(lambda m2: None))
    assert time.monotonic() - t0 < 2.0  # it used to wait 10 s, then blame another process
    store.update_manifest(lambda m: None)  # the lock was released: a later transaction runs


def test_a_writer_that_leaves_a_folder_or_bad_extra_fields_publishes_nothing(tmp_path: Path) -> None:
    from adassr.runtime.errors import ConfigError

    store = CameraStore.open(tmp_path, "cam")
    _text(store, "a.txt", "1")

    def folder(path: Path) -> None:
        path.unlink()
        (path / "inner").mkdir(parents=True)

    with pytest.raises(StoreError, match="produced a folder, not a file"):
        store.publish("d.txt", folder, stage="test")
    with pytest.raises(ConfigError, match="may not set sha256"):
        store.publish("e.txt", lambda p: p.write_text("x"), stage="test", extra={"sha256": "0" * 64})
    with pytest.raises(ConfigError, match="must be JSON values"):
        store.publish("f.txt", lambda p: p.write_text("x"), stage="test", extra={"when": object()})
    assert sorted(p.name for p in store.directory.iterdir() if not p.name.startswith(".")) == sorted(
        [store.read_manifest()["artifacts"]["a.txt"]["file"], "manifest.json"])
    assert list(store.read_manifest()["artifacts"]) == ["a.txt"]


def test_a_lock_file_removed_while_waiting_for_it_is_not_taken_as_the_lock(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's remove_if_unused (a first run that published nothing) can unlink .lock and its
    folder while this one waits on the old file: the flock it then gets protects nothing, and a third
    writer creating the folder anew would hold the lock too."""
    import adassr.runtime.store as store_module
    from adassr.runtime.errors import StoreError

    store = CameraStore.open(tmp_path, "canon", create=True)
    with store.lock():
        pass
    real = store_module.try_exclusive_lock
    calls: list[int] = []

    def removed_just_before(fd: int) -> bool:
        if not calls:  # the other process removes the file and its folder right before this flock succeeds
            (store.directory / ".lock").unlink()
            store.directory.rmdir()
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(store_module, "try_exclusive_lock", removed_just_before)
    with store.lock():
        assert len(calls) == 2 and (store.directory / ".lock").is_file()  # it locked the file the path names
        monkeypatch.undo()
        errors: list[BaseException] = []

        def third_writer() -> None:  # its own thread: flock excludes per open file, as between processes
            try:
                with CameraStore.open(tmp_path, "canon").lock():
                    pass
            except StoreError as exc:
                errors.append(exc)

        import threading

        thread = threading.Thread(target=third_writer)
        thread.start()
        thread.join(20)
        assert len(errors) == 1 and "another adassr process" in str(errors[0])  # so a third writer is kept out


def test_a_lock_file_that_never_matches_its_path_is_an_error_not_a_spin(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that reports another identity for the path than for the open file made the lock loop
    spin at full CPU, past any timeout."""
    from adassr.runtime.errors import StoreError

    store = CameraStore.open(tmp_path, "canon", create=True)
    monkeypatch.setattr(CameraStore, "_lock_file_is", lambda self, key: False)
    with pytest.raises(StoreError, match="cannot confirm the lock file"), store.lock(timeout_s=0.5):
        pass


def test_a_folder_removed_while_the_lock_file_is_opened_is_made_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run that published nothing removes its empty camera folder (remove_if_unused); a writer
    waiting for the camera then failed with "cannot open the lock file ...: No such file or directory;
    choose a writable location" when the removal fell between its mkdir and its open."""
    import adassr.runtime.store as store_module

    store = CameraStore.open(tmp_path, "canon")
    real_open = os.open
    raced: list[str] = []

    def open_after_removal(path, flags, *args):  # type: ignore[no-untyped-def]
        if str(path).endswith(".lock") and len(raced) < 2:
            raced.append(str(path))
            os.rmdir(store.directory)  # the other writer's remove_if_unused, just now
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_module.os, "open", open_after_removal)
    with store.transaction() as tx:
        tx.commit()
    monkeypatch.undo()
    assert len(raced) == 2 and store.exists()


def test_a_failed_first_writer_removes_the_folders_it_made_and_nothing_else(tmp_path: Path) -> None:
    """A failed first run left an empty store root behind (`adapt --store NEW` refused after the
    store was opened); a store root that existed, or that holds anything else, stays."""
    new_root = tmp_path / "new" / "store"
    with pytest.raises(KeyError), camera_folder_for_writing(new_root, "canon") as store:
        assert store.directory.is_dir()
        raise KeyError("the run failed")
    assert not new_root.exists() and (tmp_path / "new").is_dir()  # the store root, not its parents

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyError), camera_folder_for_writing(existing, "canon"):
        raise KeyError("the run failed")
    assert existing.is_dir() and not any(existing.iterdir())
    (existing / "canon").mkdir()  # a camera folder that existed (empty) stays too
    with pytest.raises(KeyError), camera_folder_for_writing(existing, "canon"):
        raise KeyError("the run failed")
    assert (existing / "canon").is_dir()

    with pytest.raises(KeyError), camera_folder_for_writing(new_root, "canon") as store:
        publish_camera(new_root, "sony", seed=1)  # another camera published meanwhile: the root is in use
        raise KeyError("the run failed")
    assert not store.exists() and (new_root / "sony" / "manifest.json").is_file()

    with camera_folder_for_writing(tmp_path / "kept", "canon") as store, store.transaction() as tx:
        tx.commit()  # a run that succeeds keeps everything
    assert store.exists()

    cached = tmp_path / "cached"  # a mistyped --store interrupted after the run cached its ONNX graph
    with pytest.raises(KeyboardInterrupt), camera_folder_for_writing(cached, "canon"):
        (cached / "_cache" / "onnx_graphs").mkdir(parents=True)
        (cached / "_cache" / "onnx_graphs" / "graph.onnx").write_bytes(b"67 MB of graph")
        raise KeyboardInterrupt
    assert not cached.exists()
    with pytest.raises(KeyboardInterrupt), camera_folder_for_writing(existing, "canon"):  # an existing store's
        (existing / "_cache").mkdir()  # caches stay
        raise KeyboardInterrupt
    assert (existing / "_cache").is_dir()

    kept = tmp_path / "kept-cache"  # `typo/../kept-cache` is this existing store: its caches are no run's
    (kept / "_cache" / "onnx_graphs").mkdir(parents=True)
    (kept / "_cache" / "onnx_graphs" / "graph.onnx").write_bytes(b"precious")
    with pytest.raises(KeyboardInterrupt), camera_folder_for_writing(tmp_path / "typo" / ".." / "kept-cache", "x"):
        raise KeyboardInterrupt
    assert (kept / "_cache" / "onnx_graphs" / "graph.onnx").read_bytes() == b"precious"


def _damaged(root: Path, how: str) -> tuple[CameraStore, Path]:
    """Camera 'cama' published, then its manifest damaged ``how``; returns the store and its model file."""
    store = publish_camera(root, "cama", seed=1)
    publish_camera(root, "camb", seed=2)
    model = store.artifact_path("model.onnx", store.read_manifest())
    manifest = json.loads(store.manifest_path.read_text())
    if how == "missing":
        store.manifest_path.unlink()
    elif how == "no artifacts":
        del manifest["artifacts"]
        del manifest["exports"]
        store.manifest_path.write_text(json.dumps(manifest))
    elif how == "wrong file":
        manifest["artifacts"]["model.onnx"]["file"] = "model.onnx"
        store.manifest_path.write_text(json.dumps(manifest))
    elif how == "export without artifact":
        manifest["artifacts"] = {"notes.txt": _text(store, "notes.txt", "a file of its own")}
        manifest["exports"] = json.loads(store.manifest_path.read_text())["exports"] | manifest["exports"]
        store.manifest_path.write_text(json.dumps(manifest))
    else:  # another camera's manifest, through a link
        store.manifest_path.unlink()
        store.manifest_path.symlink_to(root / "camb" / "manifest.json")
    return store, model


@pytest.mark.parametrize("how", ["missing", "no artifacts", "wrong file", "export without artifact", "linked"])
def test_a_manifest_that_does_not_match_its_folder_never_costs_the_camera_its_files(tmp_path: Path, how: str) -> None:
    """A transaction swept every content-addressed file its manifest did not list as it began, so a command that
    then failed (an export refusing the damaged manifest, an adapt with no usable image) had deleted the camera's
    model or weights (a helper's hunt of damaged manifests)."""
    store, model = _damaged(tmp_path / "s", how)
    data = model.read_bytes()
    with pytest.raises(RuntimeError, match="the command fails"), store.transaction():
        raise RuntimeError("the command fails after the transaction began")
    assert model.read_bytes() == data
    if how != "linked":  # a commit on that state keeps the unlisted file too
        with store.transaction() as tx:
            tx.stage("notes.txt", lambda p: p.write_text("kept"), stage="test")
            tx.commit()
        assert model.read_bytes() == data


def test_a_manifest_that_matches_its_folder_still_sweeps_a_killed_writers_files(tmp_path: Path) -> None:
    store = publish_camera(tmp_path / "s", "cama", seed=1)
    stray = store.directory / "model.0123456789abcdef.onnx"  # staged by a writer killed before its commit
    stray.write_bytes(b"left behind")
    with store.transaction():
        pass
    assert not stray.exists()
    store.artifact_path("model.onnx", store.read_manifest()).read_bytes()


def test_external_data_in_constants_subgraphs_sparse_tensors_and_functions_is_found() -> None:
    """Every place the module docstring names: a Constant's ``t``, an If's ``g``, a sparse initializer, a
    sparse_tensor attribute and a function's node each name their external file (else unverified bytes load)."""
    from adassr.runtime.onnx_external import external_data_files

    def model(node: onnx.NodeProto, **graph_kw: object) -> onnx.ModelProto:
        graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                                  **graph_kw)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    constant = helper.make_node("Constant", [], ["y"], value=_external("c", "constant.bin"))
    assert external_data_files(model(constant).SerializeToString()) == ["constant.bin"]
    inner = helper.make_graph([], "inner", [], [], [_external("t1", "branch.bin")])
    branch = helper.make_node("Custom", [], ["y"], domain="x", g=inner)
    assert external_data_files(model(branch).SerializeToString()) == ["branch.bin"]
    sparse = helper.make_sparse_tensor(_external("v", "values.bin"), _external("i", "indices.bin"), [8])
    plain = helper.make_node("Identity", ["y"], ["z"])
    assert external_data_files(model(plain, sparse_initializer=[sparse]).SerializeToString()) == [
        "values.bin", "indices.bin"]
    node = helper.make_node("Custom", [], ["y"], domain="x", s=sparse)
    assert external_data_files(model(node).SerializeToString()) == ["values.bin", "indices.bin"]
    with_function = model(plain)
    with_function.functions.add().node.append(
        helper.make_node("Constant", [], ["k"], value=_external("f", "function.bin")))
    assert external_data_files(with_function.SerializeToString()) == ["function.bin"]
    defaults = model(plain)  # a function's default attribute values (attribute_proto)
    defaults.functions.add().attribute_proto.append(helper.make_attribute("w", _external("d", "default.bin")))
    assert external_data_files(defaults.SerializeToString()) == ["default.bin"]
    many = helper.make_node("Custom", [], ["y"], domain="x")
    many.attribute.append(helper.make_attribute("ss", [sparse]))  # a sparse_tensors attribute
    assert external_data_files(model(many).SerializeToString()) == ["values.bin", "indices.bin"]
    for field in ("initialization", "algorithm"):  # training graphs
        trained = model(plain)
        getattr(trained.training_info.add(), field).CopyFrom(
            helper.make_graph([], "t", [], [], [_external("s", f"{field}.bin")]))
        assert external_data_files(trained.SerializeToString()) == [f"{field}.bin"], field


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes = b"") -> bytes:
    key = _varint_bytes(number << 3 | wire)
    if wire == 2:
        return key + _varint_bytes(len(payload)) + payload
    return key + payload


@pytest.mark.parametrize("data, why", [
    (b"\x80" * 10 + b"\x01\x00", "an 11-byte varint key (protobuf allows 10)"),
    (_field(99, 0, b"\xff" * 10 + b"\x01"), "an 11-byte varint value"),
    (_field(99, 1, b"\0" * 7), "a fixed 64-bit value cut short"),
    (_field(99, 5, b"\0" * 3), "a fixed 32-bit value cut short"),
    (b"\x3a\x05\x00", "a graph whose length runs past the end of the file"),
    (_field(7, 2, _field(1, 2, b"\x2a\x09\x00")), "a node whose attribute's length runs past the node"),
    (_field(7, 2, _field(99, 1, b"\0" * 4)), "a graph whose fixed 64-bit field runs past the graph"),
    (_field(1, 3) + _field(1, 4), "a group (wire types 3 and 4)"),
    (_field(2, 6), "wire type 6"),
    (_field(7, 2, _field(1, 7)), "wire type 7 inside a graph"),
])
def test_malformed_protobuf_is_a_store_error_never_another_exception_or_accepted(data: bytes, why: str) -> None:
    from adassr.runtime.onnx_external import external_data_files

    with pytest.raises(StoreError, match="not a well-formed ONNX file"):
        external_data_files(data, name="m.onnx")


def test_wire_types_and_long_varints_that_onnx_writes_are_read_past_exactly() -> None:
    """An ``axis=-1`` attribute is a 10-byte varint and unknown fixed 64/32-bit fields are skipped by their
    size: the scanner must neither refuse the model nor lose its step and miss the external file after them."""
    from adassr.runtime.onnx_external import external_data_files

    tensor = _external("w", "after.bin")
    graph = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["y"], axis=-1)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert b"\xff" * 9 + b"\x01" in model  # the 10-byte varint of -1
    assert external_data_files(model) == ["after.bin"]
    skipped = _field(99, 1, b"\x3a\x7f" * 4) + _field(98, 5, b"\x3a\x7f\x3a\x7f")  # look like a graph if misread
    assert external_data_files(skipped + model) == ["after.bin"]


def _nested_graph(levels: int, tensor: onnx.TensorProto) -> bytes:
    """A model whose graph holds a node whose ``g`` attribute holds a graph ... ``levels`` deep, the innermost
    graph having ``tensor`` as its initializer (3 messages per level: graph, node, attribute)."""
    graph = _field(5, 2, tensor.SerializeToString())
    for _ in range(levels):
        graph = _field(1, 2, _field(5, 2, _field(6, 2, graph)))  # GraphProto.node > NodeProto.attribute > .g
    return _field(7, 2, graph)


def test_nesting_is_followed_to_the_limit_and_refused_past_it_as_a_store_error() -> None:
    from adassr.runtime.onnx_external import external_data_files

    tensor = _external("t", "deep.bin")
    assert external_data_files(_nested_graph(20, tensor)) == ["deep.bin"]  # the tensor at depth 62 of 64
    for levels in (21, 400):  # depth 65: just past the limit; far past Python's recursion limit
        with pytest.raises(StoreError, match="not a well-formed ONNX file.*nesting too deep"):
            external_data_files(_nested_graph(levels, tensor))


def test_a_missing_external_data_file_fails_verification(tmp_path: Path) -> None:
    src = _model_with_external_data(tmp_path)
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    (store.directory / "model.onnx").write_bytes(src.read_bytes())
    weights = (tmp_path / "weights.bin").read_bytes()
    import hashlib

    record = {"sha256": sha256_file(src), "stage": "export",
              "external_data": [{"file": "weights.bin", "sha256": hashlib.sha256(weights).hexdigest()}]}
    store.update_manifest(lambda m: m["artifacts"].update({"model.onnx": record}))
    with pytest.raises(StoreError, match="weights.bin \\(external data of model.onnx\\) is missing"):
        store.verified_path("model.onnx")
    (store.directory / "weights.bin").mkdir()  # a folder of that name is no data file either
    with pytest.raises(StoreError, match="is missing or fails its checksum"):
        store.verified_path("model.onnx")
    (store.directory / "weights.bin").rmdir()
    (store.directory / "weights.bin").write_bytes(weights)
    assert store.verified_path("model.onnx") == store.directory / "model.onnx"
