"""Whole-run checks of ``adassr upscale`` (reported once, exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adassr.runtime.errors import BackendError, ConfigError, StoreError
from adassr.runtime.preflight import (
    check_output_folders,
    check_required_providers,
    check_store_serves,
    check_threads,
)
from adassr.runtime.store import CameraStore

from ._models import publish_camera


@pytest.mark.parametrize("threads", [0, -1, 10**6, True])
def test_invalid_thread_counts(threads: int) -> None:
    with pytest.raises(ConfigError, match="--threads must be an integer from 1"):
        check_threads(threads)
    check_threads(None)
    check_threads(2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_output_folders([folder / "a.png"])
    finally:
        folder.chmod(0o700)


def test_a_folder_that_refuses_new_files_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same refusal as above for any user, root included (root writes into a 0500 folder, so the test
    above is skipped there): the folder's file system answers EACCES to the probe."""
    import adassr.runtime.preflight as preflight

    folder = tmp_path / "ro"
    folder.mkdir()
    real = preflight.create_temp

    def refusing(target: Path) -> tuple[int, Path]:
        if target.parent == folder:
            raise PermissionError(13, "Permission denied")
        return real(target)

    monkeypatch.setattr(preflight, "create_temp", refusing)
    with pytest.raises(ConfigError, match=f"the output folder {folder} is not writable \\(creating a file in "
                                          f"{folder} failed: Permission denied\\); choose another -o"):
        check_output_folders([folder / "a.png"])
    with pytest.raises(ConfigError, match=f"creating a file in {folder} failed"):  # a folder still to be made
        check_output_folders([folder / "new" / "a.png"])
    check_output_folders([tmp_path / "a.png"])


def test_output_folder_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"not writable \\(creating a file in {tmp_path / 'file'} failed"):
        check_output_folders([tmp_path / "file" / "sub" / "a.png"])  # names where it failed, not only the target
    if Path("/proc/self").is_dir():  # a folder that takes no new file: the reason was just "No such file"
        with pytest.raises(ConfigError, match="creating a file in /proc failed"):
            check_output_folders([Path("/proc/x.png")])
    check_output_folders([tmp_path / "new" / "deeper" / "a.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created, no probe left


def test_required_provider_missing() -> None:
    with pytest.raises(BackendError, match="CUDAExecutionProvider not available"):
        check_required_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], require=True)
    check_required_providers(["CUDAExecutionProvider"], require=False)
    check_required_providers(["CPUExecutionProvider"], require=True)


def test_empty_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        check_store_serves(tmp_path / "nowhere", camera=None)
    with pytest.raises(StoreError, match="holds no exported model"):
        check_store_serves(tmp_path, camera=None)
    CameraStore.open(tmp_path, "canon", create=True).update_manifest(lambda m: None)  # adapted, not exported
    with pytest.raises(StoreError, match="holds no exported model"):
        check_store_serves(tmp_path, camera=None)
    publish_camera(tmp_path, "nokia")
    assert check_store_serves(tmp_path, camera=None) == "nokia"
    assert check_store_serves(tmp_path, camera="NOKIA") == "nokia"  # routing's case folding (was refused)
    with pytest.raises(StoreError, match="no exported model for camera 'canon' and no fallback"):
        check_store_serves(tmp_path, camera="canon")
    publish_camera(tmp_path, "_fallback")
    assert check_store_serves(tmp_path, camera="canon") == "_fallback"
    assert check_store_serves(tmp_path, camera=None) == "_fallback"


def test_a_misnamed_store_folder_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder copied in by hand ('Canon', 'con') stopped the whole run: opening it raised CameraError."""
    import shutil

    from adassr.runtime.store import list_cameras, misnamed_folders

    publish_camera(tmp_path, "nokia")
    shutil.copytree(tmp_path / "nokia", tmp_path / "Canon")
    shutil.copytree(tmp_path / "nokia", tmp_path / "con")
    assert list_cameras(tmp_path) == ["nokia"]
    assert [(folder.name, "Windows" in why or "lower case" in why) for folder, why in misnamed_folders(tmp_path)] \
        == [("Canon", True), ("con", True)]
    with caplog.at_level("WARNING"):
        assert check_store_serves(tmp_path, camera=None) == "nokia"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("holds a manifest but is not used" in m for m in warned)
    assert str(tmp_path / "con") in warned[1]


def test_a_folder_that_is_the_lower_case_folder_is_no_misnamed_one(tmp_path: Path) -> None:
    """On a case-insensitive file system (APFS, NTFS) `Canon/` is the folder `canon` opens: it was skipped
    as misnamed. Simulated here with a link, the same folder under a second name."""
    from adassr.runtime.store import list_cameras, misnamed_folders

    publish_camera(tmp_path, "canon")
    (tmp_path / "Canon").symlink_to(tmp_path / "canon")
    assert list_cameras(tmp_path) == ["canon"] and misnamed_folders(tmp_path) == []


def test_one_damaged_manifest_does_not_stop_the_other_cameras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged canon manifest stopped `upscale --camera nokia` and `serve` altogether, and a surprise
    in one camera's reload stopped the later cameras' reloads (a helper's hunt)."""
    import adassr.runtime.server.models as models
    from adassr.runtime.backends import open_backend
    from adassr.runtime.server.models import ModelRegistry

    publish_camera(tmp_path, "canon")
    publish_camera(tmp_path, "nokia")
    (tmp_path / "canon" / "manifest.json").write_text('{"schema_version": ' + "9" * 5000 + "}")
    assert check_store_serves(tmp_path, camera="nokia") == "nokia"
    with pytest.raises(StoreError, match="canon/manifest.json is not valid JSON"):
        CameraStore.open(tmp_path, "canon").read_manifest()
    publish_camera(tmp_path, "zeiss")
    real = models.resolve_model

    def surprise(store: Path, *, camera: str, **kwargs: object) -> object:
        if camera == "nokia":
            raise ValueError("something nobody expected")
        return real(store, camera=camera, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "resolve_model", surprise)
    registry = ModelRegistry(tmp_path, open_model=lambda route: open_backend("onnxruntime", route.verify(),
                                                                               providers=("cpu",), threads=1))
    registry.refresh()
    assert sorted(registry.models) == ["zeiss"] and {"canon", "nokia"} <= set(registry.problems)
    assert "something nobody expected" in registry.problems["nokia"]


def test_a_dangling_or_damaged_manifest_is_reported_not_skipped_or_misnamed(tmp_path: Path) -> None:
    """A manifest that is a link to nothing was left out by the folder listing (its images went to the
    fallback, serve listed no problem), and a damaged manifest of the camera asked for was reported as
    "no exported model ... run adassr export", which cannot fix it (a review)."""
    import os

    from adassr.runtime.store import list_cameras

    publish_camera(tmp_path, "nokia")
    publish_camera(tmp_path, "canon")
    manifest = tmp_path / "canon" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(tmp_path / "gone.json")
    assert list_cameras(tmp_path) == ["canon", "nokia"]
    with pytest.raises(StoreError, match="is a link to a file that does not exist"):
        check_store_serves(tmp_path, camera="canon")
    manifest.unlink()
    os.symlink("manifest.json", manifest)  # a loop
    with pytest.raises(StoreError, match="is a loop of links"):
        check_store_serves(tmp_path, camera="canon")
    assert check_store_serves(tmp_path, camera="nokia") == "nokia"


def test_the_largest_thread_count_is_accepted() -> None:
    from adassr.runtime.cpu_info import MAX_THREADS

    check_threads(MAX_THREADS)
    check_threads(1)
    with pytest.raises(ConfigError, match="--threads must be an integer from 1"):
        check_threads(MAX_THREADS + 1)


def test_the_fallback_is_tried_first_and_a_damaged_camera_is_no_exported_one(tmp_path: Path) -> None:
    """The fallback comes first even before a camera whose name sorts before ``_`` (digits), and a camera
    whose manifest cannot be read is not counted as exported (else a store holding only it "serves")."""
    from adassr.runtime.preflight import exported_cameras

    publish_camera(tmp_path, "1d")
    (tmp_path / "1d" / "manifest.json").write_text("{")
    assert exported_cameras(tmp_path, warn=False) == []
    with pytest.raises(StoreError, match="holds no exported model"):
        check_store_serves(tmp_path, camera=None)
    publish_camera(tmp_path, "0cam")
    publish_camera(tmp_path, "_fallback")
    assert exported_cameras(tmp_path, warn=False) == ["_fallback", "0cam"]
    assert check_store_serves(tmp_path, camera=None) == "_fallback"
