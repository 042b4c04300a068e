"""`adassr cameras`: what a store holds, without a server (a helper's journey found no command for it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adassr.cli import main
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

from ._models import publish_camera


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "models"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1, fp16=True)
    dashcam = CameraStore.open(store, "dashcam", create=True)  # adapted, not exported yet
    dashcam.publish("adapted.safetensors", lambda p: p.write_bytes(b"weights"), stage="adapt")
    dashcam.update_manifest(lambda m: m.update(niqe_before=5.5, niqe_after=5.25, kept_backbone=False, scale=4))
    return store


def test_each_camera_is_listed_with_its_state_and_the_command_it_needs(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    (store / "Broken").mkdir()  # a manifest under a name no camera has
    (store / "Broken" / "manifest.json").write_text("{}")
    assert main(["cameras", "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("_fallback: exported (fp32); x4")
    assert lines[1].startswith("canon: exported (fp16, fp32); x4")
    assert lines[2].startswith("dashcam: adapted, not exported; NIQE 5.500 -> 5.250; x4")
    assert lines[2].endswith(f"run `adassr export --camera dashcam --store {store}`")
    assert lines[3].startswith("Broken: holds a manifest but is not used")
    assert main(["cameras", "--store", str(store), "--json"]) == 0
    listed = {c["camera"]: c for c in json.loads(capsys.readouterr().out)["cameras"]}
    assert listed["dashcam"]["state"] == "adapted, not exported" and listed["canon"]["exports"] == ["fp16", "fp32"]


def test_verify_names_a_file_that_fails_its_checksum_and_exits_1(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    assert main(["cameras", "--store", str(store), "--verify"]) == 0
    assert "canon: exported (fp16, fp32); x4" in capsys.readouterr().out
    canon = CameraStore.open(store, "canon")
    model = canon.artifact_path("model.onnx")
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    (store / "nikon").mkdir()
    (store / "nikon" / "manifest.json").write_text("not json")
    assert main(["cameras", "--store", str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "canon: refused: " in out and "sha256" in out
    assert "nikon: refused: " in out and "dashcam: adapted, not exported" in out
    assert main(["cameras", "--store", str(store)]) == 1  # the damaged manifest is named without --verify too
    capsys.readouterr()


def test_a_missing_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cameras", "--store", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["cameras", "--store", str(tmp_path / "empty")]) == 0
    assert (f"holds no camera yet (`adassr adapt --camera NAME --images PHOTO_FOLDER --store {tmp_path / 'empty'}`, "
            f"or `adassr export --backbone realesrgan-x4plus --store {tmp_path / 'empty'}`") in capsys.readouterr().out


def test_verify_looks_again_when_an_export_replaced_the_files_meanwhile(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An export committed during `--verify` removes the previous model file: the check failed with "listed in
    the manifest but missing" though the camera was fine (a helper's load test: 2 in 59,836)."""
    from adassr.runtime.cameras_cli import summarise
    from adassr.runtime.errors import StoreError

    store = _store(tmp_path)
    real = CameraStore.verified_path
    calls: list[str] = []

    def racing(self: CameraStore, name: str, manifest: object = None) -> Path:
        calls.append(name)
        if len(calls) == 1:
            raise StoreError(f"{name} is listed in the manifest but missing (another process may have just "
                             "replaced it: retry)")
        return real(self, name, manifest)  # type: ignore[arg-type]

    monkeypatch.setattr(CameraStore, "verified_path", racing)
    summary = summarise(store, "canon", verify=True)
    assert summary.problem is None and len(summary.verified) == 2 and len(calls) == 3


# -- from mutation testing: behaviour no test checked ---------------------------------------------


def test_exports_of_earlier_weights_are_shown_with_the_command_that_renews_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Adapted again, exported in one precision only: the camera says its exports are outdated."""
    store = _store(tmp_path)

    def readapted(manifest: dict) -> None:
        manifest["weights_sha256"] = "new"
        manifest["exports"]["onnx"]["weights_sha256"] = "old"
        manifest["exports"]["onnx_fp16"]["weights_sha256"] = "new"

    CameraStore.open(store, "canon").update_manifest(readapted)
    main(["cameras", "--store", str(store)])
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("canon:")]
    assert "exports of earlier weights" in line and f"adassr export --camera canon --store {store}" in line


def test_verify_checks_the_adapted_weights_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    weights = CameraStore.open(store, "dashcam").artifact_path("adapted.safetensors")
    weights.write_bytes(b"weightz")
    assert main(["cameras", "--store", str(store), "--verify"]) == 1
    assert "dashcam: refused" in capsys.readouterr().out


def test_a_camera_folder_that_is_a_broken_link_is_named_not_left_out(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import os

    store = _store(tmp_path)
    os.symlink(tmp_path / "nonexistent", store / "nikon")
    assert main(["cameras", "--store", str(store)]) == 1
    out = capsys.readouterr().out
    assert "nikon: refused: its folder cannot be read" in out


def test_a_broken_link_above_a_path_is_named(tmp_path: Path) -> None:
    """An -o or a store under a dangling link: the link is named, not a bare "File exists" (the folders
    above the path are looked at, nearest first)."""
    import os

    from adassr.runtime.links import broken_link

    os.symlink(tmp_path / "gone", tmp_path / "l")
    said = broken_link(tmp_path / "l" / "sub" / "x.png")
    assert said is not None and said.startswith(f"{tmp_path / 'l'} is a symbolic link to")
    assert broken_link(tmp_path / "fine" / "x.png") is None


def test_a_link_through_a_file_is_not_called_a_loop(tmp_path: Path) -> None:
    """os.stat on a link to ``a_file/sub`` fails with ENOTDIR, not ELOOP: that is no loop of links, but a link
    to nothing (it went unnamed, and the callers showed a bare "File exists")."""
    import os

    from adassr.runtime.links import broken_link

    (tmp_path / "a_file").write_text("x")
    os.symlink(tmp_path / "a_file" / "sub", tmp_path / "l")
    target = tmp_path / "a_file" / "sub"
    assert broken_link(tmp_path / "l") == f"{tmp_path / 'l'} is a symbolic link to {target}, which does not exist"
    assert broken_link(tmp_path / "l" / "x.png") == broken_link(tmp_path / "l")
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    assert broken_link(loop / "x.png") == f"{loop} is a loop of symbolic links"
