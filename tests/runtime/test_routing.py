from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from adassr.runtime.errors import CameraError, StoreError
from adassr.runtime.images import read_image
from adassr.runtime.routing import adapted_but_not_exported, resolve_model
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

from ._models import publish_camera

ROOT = Path(__file__).resolve().parents[2]
CANON_JPG = ROOT / "samples" / "cameras" / "canon" / "flower.jpg"  # EXIF Make "Canon"
NOKIA_JPG = ROOT / "samples" / "cameras" / "nokia" / "iptc.jpg"  # EXIF Make "Nokia"
NO_EXIF_PNG = ROOT / "tests" / "data" / "hr" / "astronaut.png"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    publish_camera(tmp_path, "canon", seed=1, fp16=True)
    return tmp_path


def test_explicit_camera(store: Path) -> None:
    d = resolve_model(store, camera="Canon")
    assert (d.camera_requested, d.camera_group, d.model_camera, d.reason) == ("Canon", "canon", "canon", "explicit")
    assert d.onnx_path == CameraStore.open(store, "canon").artifact_path("model.onnx") and d.onnx_path.is_file()
    assert d.artifact == "model.onnx" and d.onnx_path.name.startswith("model.")
    assert d.precision == "fp32" and d.export_key == "onnx" and d.scale == 4 and not d.is_fallback
    assert d.input_name == "lr" and d.output_name == "sr"
    assert d.sha256 == d.manifest["artifacts"]["model.onnx"]["sha256"]
    assert d.label.startswith("canon/model.onnx (fp32, sha256 ")


def test_fallback_can_be_asked_for(store: Path) -> None:
    d = resolve_model(store, camera=FALLBACK_CAMERA, image=CANON_JPG)
    assert d.model_camera == FALLBACK_CAMERA and d.reason == "explicit" and d.is_fallback


def test_exif_make_routes_to_the_camera_group(store: Path, tmp_path: Path) -> None:
    import shutil

    photo = tmp_path / "in" / "photos" / "flower.jpg"  # a folder that names no camera
    photo.parent.mkdir(parents=True)
    shutil.copy(CANON_JPG, photo)
    image = read_image(photo)
    assert image.exif_make and image.exif_make.lower().startswith("canon")
    for source in (image, photo):
        d = resolve_model(store, image=source)
        assert (d.camera_requested, d.camera_group, d.model_camera, d.reason) == (None, "canon", "canon", "exif-make")


def test_a_folder_named_after_a_camera_in_the_store_routes_first(store: Path, tmp_path: Path) -> None:
    """adapt's order: the folder, then the EXIF Make, then a file-name prefix."""
    import shutil

    in_canon = tmp_path / "in" / "canon" / "iptc.jpg"  # EXIF Make Nokia, in a folder named canon
    in_canon.parent.mkdir(parents=True)
    shutil.copy(NOKIA_JPG, in_canon)
    for source in (in_canon, read_image(in_canon)):
        d = resolve_model(store, image=source)
        assert (d.camera_group, d.model_camera, d.reason) == ("canon", "canon", "folder")
    in_other = tmp_path / "in" / "sony" / "iptc.jpg"  # sony is not in the store: the EXIF Make decides
    in_other.parent.mkdir(parents=True)
    shutil.copy(NOKIA_JPG, in_other)
    d = resolve_model(store, image=in_other)
    assert d.camera_group == "nokia" and d.is_fallback and "no model for 'nokia'" in d.reason
    assert resolve_model(store, image=CANON_JPG).reason == "folder"  # samples/cameras/canon/flower.jpg


def test_group_without_a_model_is_served_by_the_fallback(store: Path) -> None:
    d = resolve_model(store, image=NOKIA_JPG)
    assert d.camera_group == "nokia" and d.model_camera == FALLBACK_CAMERA and d.is_fallback
    assert d.reason.startswith("fallback: no model for 'nokia'")
    assert d.onnx_path == CameraStore.open(store, FALLBACK_CAMERA).artifact_path("model.onnx")


def test_unknown_explicit_camera_falls_back_and_says_so(store: Path) -> None:
    d = resolve_model(store, camera="nikon")
    assert d.model_camera == FALLBACK_CAMERA and d.camera_requested == "nikon"
    assert "explicitly requested camera 'nikon'" in d.reason and d.reason.startswith("fallback:")
    assert d.reason.endswith("(no manifest)")  # not "no exported model": the camera is not in the store at all


def test_image_without_exif_make_falls_back(store: Path) -> None:
    d = resolve_model(store, image=NO_EXIF_PNG)
    assert d.camera_group is None and d.reason == "fallback: no EXIF Make"


def test_adapted_but_not_exported_camera_falls_back(store: Path) -> None:
    nikon = CameraStore.open(store, "nikon", create=True)
    nikon.update_manifest(lambda m: m.update(weights_sha256="0" * 64))
    d = resolve_model(store, camera="nikon")
    assert d.is_fallback
    assert f"(adapted but not exported: run `adassr export --camera nikon --store {store}`)" in d.reason
    assert adapted_but_not_exported(store, "nikon") and adapted_but_not_exported(store, "nikon", precision="fp16")
    assert not adapted_but_not_exported(store, "canon")  # exported
    assert not adapted_but_not_exported(store, "sony")  # unknown
    assert not adapted_but_not_exported(store, FALLBACK_CAMERA)
    assert not adapted_but_not_exported(store / "missing", "nikon")


def test_precision_choice(store: Path) -> None:
    d = resolve_model(store, camera="canon", precision="fp16")
    assert d.export_key == "onnx_fp16" and d.precision == "fp16" and d.artifact == "model_fp16.onnx"
    d = resolve_model(store, image=NOKIA_JPG, precision="fp16")  # the fallback has only fp32
    assert d.is_fallback and d.precision == "fp32" and "serving fp32" in d.reason


def test_a_camera_exported_in_fp16_only_serves_fp32_requests(tmp_path: Path) -> None:
    """It used to fall back to the unadapted model, saying the camera was "adapted but not exported"."""
    from adassr.runtime.routing import adapted_but_not_exported, can_serve

    publish_camera(tmp_path, FALLBACK_CAMERA)
    store = publish_camera(tmp_path, "canon", seed=1, fp16=True)
    store.update_manifest(lambda m: (m["exports"].pop("onnx"), m["artifacts"].pop("model.onnx")))
    d = resolve_model(tmp_path, camera="canon")
    assert d.model_camera == "canon" and d.precision == "fp16" and d.artifact == "model_fp16.onnx"
    assert d.reason == "explicit; no fp32 export for 'canon', serving fp16"
    assert can_serve(tmp_path, camera="canon") and not adapted_but_not_exported(tmp_path, "canon")


def test_no_fallback_says_how_to_make_one(tmp_path: Path) -> None:
    publish_camera(tmp_path, "canon")
    assert resolve_model(tmp_path, camera="canon").model_camera == "canon"
    with pytest.raises(StoreError, match=rf"adassr export --backbone realesrgan-x4plus --store {tmp_path}`"):
        resolve_model(tmp_path, camera="nikon")  # the hint names the store it was given


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        resolve_model(tmp_path / "nowhere", camera="canon")


def test_tampered_model_is_caught_by_its_checksum(store: Path) -> None:
    path = CameraStore.open(store, "canon").artifact_path("model.onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights: still a loadable model
    path.write_bytes(bytes(data))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime would not notice
    with pytest.raises(StoreError, match="fails its checksum"):
        resolve_model(store, camera="canon")
    d = resolve_model(store, camera="canon", verify=False)  # routing alone does not read the file
    with pytest.raises(StoreError, match=r"\(model.onnx\) fails its checksum"):
        d.verify()
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        resolve_model(store, camera="canon")


def test_damaged_manifest_is_an_error_not_a_fallback(store: Path) -> None:
    (store / "canon" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        resolve_model(store, image=CANON_JPG)


def test_invalid_camera_name(store: Path) -> None:
    with pytest.raises(CameraError, match="invalid camera group name") as info:
        resolve_model(store, camera="../etc")
    assert "EXIF Make" not in str(info.value)
    with pytest.raises(CameraError, match="names the group 'canon', so use that"):  # the Make as EXIF spells it
        resolve_model(store, camera="Canon Inc.")
    with pytest.raises(CameraError) as info:
        resolve_model(store, camera="my camera")  # two words that are no maker's: no guess
    assert "EXIF Make" not in str(info.value)


def test_overlong_exif_make_is_served_by_the_fallback(store: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    path = tmp_path / "long.jpg"
    exif = Image.Exif()
    exif[271] = "Verylongcameramakername" * 4
    Image.fromarray(np.full((16, 16, 3), 99, np.uint8)).save(path, exif=exif.tobytes())
    d = resolve_model(store, image=path)
    assert d.is_fallback and "names no valid camera group" in d.reason
    d = resolve_model(store, image=read_image(path))
    assert d.is_fallback
    # also under a camera's file-name prefix: adapt leaves the image out of every group, so canon's model was
    # never trained on it; it was served by canon (a helper's hunt)
    prefixed = tmp_path / "Canon_001_LR4.jpg"
    prefixed.write_bytes(path.read_bytes())
    for source in (prefixed, read_image(prefixed)):
        d = resolve_model(store, image=source)
        assert d.is_fallback and "names no valid camera group" in d.reason


def test_realsr_style_file_names_route_to_their_camera_when_it_is_in_the_store(store: Path, tmp_path: Path) -> None:
    """No EXIF Make: `Canon_006_LR4.png` goes to canon, as `adapt` grouped it; unknown prefixes do not
    turn into a camera name (`IMG_0001.png` is served by the fallback for its missing EXIF Make)."""
    import shutil

    from adassr.runtime.cameras import camera_from_filename

    named = tmp_path / "Canon_006_LR4.png"
    shutil.copy(NO_EXIF_PNG, named)
    for source in (named, read_image(named)):
        d = resolve_model(store, image=source)
        assert (d.camera_group, d.model_camera, d.reason) == ("canon", "canon", "filename-prefix")
    other = tmp_path / "IMG_0001.png"
    shutil.copy(NO_EXIF_PNG, other)
    d = resolve_model(store, image=other)
    assert d.is_fallback and d.reason == "fallback: no EXIF Make" and d.camera_group is None
    no_model = tmp_path / "Nikon_006_LR4.png"  # a real prefix, but no nikon in the store: no made-up group
    shutil.copy(NO_EXIF_PNG, no_model)
    d = resolve_model(store, image=no_model)
    assert d.is_fallback and d.reason == "fallback: no EXIF Make" and d.camera_group is None
    exif_wins = tmp_path / "Nikon_001_LR4.jpg"
    shutil.copy(CANON_JPG, exif_wins)
    assert resolve_model(store, image=exif_wins).reason == "exif-make"
    assert camera_from_filename("Nikon_006_LR4.png") == "nikon" and camera_from_filename("42.png") is None
    assert camera_from_filename("x_1.png") is None  # one letter is not a prefix
    assert camera_from_filename("Sony-0042.png") == "sony"  # a hyphen separates the prefix too


def test_a_fallback_names_a_store_camera_of_the_same_brand(store: Path) -> None:
    """Photos whose EXIF Make says Nokia, a camera adapted from a folder named ``nokia-n8``: the fallback
    serves them (a longer name may be another camera), and the reason names the split."""
    publish_camera(store, "nokia-n8", seed=2)
    d = resolve_model(store, image=NOKIA_JPG)
    assert d.is_fallback and d.camera_group == "nokia"
    assert "the store has 'nokia-n8'" in d.reason and "camera 'nokia-n8' explicitly" in d.reason
    assert "the store has" not in resolve_model(store, image=NO_EXIF_PNG).reason  # no group: nothing to relate


def test_the_same_brand_note_looks_up_only_related_cameras(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image routed to the fallback had the whole store listed and each camera's manifest looked up for
    the note: O(images x cameras) (a store of 300 cameras, 5.7 ms an image; a helper's review). Now only
    the names that abbreviate the group are looked at."""
    import os

    from adassr.runtime import store as store_module

    publish_camera(store, "nokia-n8", seed=2)
    for k in range(40):
        (store / f"cam{k:03d}").mkdir()
        (store / f"cam{k:03d}" / "manifest.json").write_text("{}")
    looked: list[str] = []
    real_lstat = os.lstat

    def counted(path: object, *args: object, **kw: object) -> os.stat_result:
        looked.append(str(path))
        return real_lstat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "lstat", counted)
    d = resolve_model(store, image=NOKIA_JPG, verify=False)
    assert "the store has 'nokia-n8'" in d.reason
    assert not [p for p in looked if "/cam0" in p], looked


def test_same_brand_names() -> None:
    from adassr.runtime.cameras import closest_camera_hint, same_brand_names

    assert same_brand_names("fujifilm", ["fuji", "fujifilm", "canon"]) == ["fuji"]
    assert same_brand_names("fuji", ["fujifilm", "fujinon", "fu"]) == ["fujifilm", "fujinon"]
    assert same_brand_names("fu", ["fujifilm"]) == []  # two letters abbreviate too many names
    assert closest_camera_hint("fujifilm", ["fuji", "canon"]) == " Did you mean 'fuji'?"


def test_a_utf8_or_accented_exif_make_keeps_its_letters(tmp_path: Path) -> None:
    """EXIF text written as UTF-8 (Pillow reads it as Latin-1) and accented Makes give the plain
    Latin name, not one cut at the first accent; a Make in another script names no group."""
    from PIL import Image

    from adassr.runtime.cameras import normalise_camera_name
    from adassr.runtime.images import read_camera_exif
    from adassr.runtime.routing import camera_group_of

    photo = tmp_path / "z.jpg"
    exif = Image.Exif()
    exif[0x010F] = "Zeiß Ōptik GmbH".encode()  # bytes: stored as written, as a camera writing UTF-8 does
    Image.new("RGB", (8, 8)).save(photo, exif=exif.tobytes())
    assert read_camera_exif(photo)[0] == "Zeiß Ōptik GmbH"
    assert camera_group_of(photo) == ("zeiss", "Zeiß Ōptik GmbH")
    exif[0x010F] = "Caf\xe9".encode("latin-1")  # not valid UTF-8: kept as Latin-1
    Image.new("RGB", (8, 8)).save(photo, exif=exif.tobytes())
    assert read_camera_exif(photo)[0] == "Café" and camera_group_of(photo)[0] == "cafe"
    assert normalise_camera_name("ŠKODA") == "skoda" and normalise_camera_name("小米") == ""
    # the makers' renamed companies keep their group: an Olympus camera's model serves the OM System photos
    assert normalise_camera_name("OM Digital Solutions") == "olympus"
    assert normalise_camera_name("OLYMPUS IMAGING CORP.") == "olympus"
    assert normalise_camera_name("EASTMAN KODAK COMPANY") == "kodak" and normalise_camera_name("HMD Global") == "nokia"


def test_a_relative_path_routes_by_its_folder_as_adapt_groups_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``upscale -i .`` inside photos/nikon gave bare names ("x.png"): no folder, so the fallback served
    photos adapt had trained as nikon."""
    import shutil

    from adassr.adapt.groups import select_group
    from adassr.runtime.routing import route_by_image

    nikon = tmp_path / "photos" / "nikon"
    nikon.mkdir(parents=True)
    shutil.copy(NO_EXIF_PNG, nikon / "x.png")
    (tmp_path / "photos" / "card").symlink_to(nikon)  # a linked folder is named by its link, on both sides
    monkeypatch.chdir(nikon)
    assert select_group(".", "nikon").members[0].path.name == "x.png"
    for spelling in ("x.png", "./x.png", "../nikon/x.png"):
        assert route_by_image(spelling, lambda name: name == "nikon")[:2] == ("nikon", "folder"), spelling
    monkeypatch.chdir(tmp_path)
    assert route_by_image("photos/card/x.png", lambda name: name == "card")[:2] == ("card", "folder")
    assert [m.path.name for m in select_group("photos/card", "card").members] == ["x.png"]


def test_the_typo_hint_never_suggests_the_ungrouped_collection(tmp_path: Path) -> None:
    import shutil

    from adassr.adapt.groups import select_group

    shutil.copy(NO_EXIF_PNG, tmp_path / "42.png")  # names no camera: "ungrouped"
    with pytest.raises(CameraError) as caught:
        select_group(tmp_path, "ungroupd")
    assert "Did you mean" not in str(caught.value) and "unknown camera group 'ungroupd'" in str(caught.value)


def test_a_camera_folder_that_cannot_be_looked_into_is_an_error_not_the_fallback(store: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera folder on a share that was not mounted (a link to nothing), a loop of links or an unreadable
    folder counted as "no model": its photos were served by the fallback and replaced the adapted model's
    outputs, exit 0 (a helper's review)."""
    import os
    import shutil

    shutil.move(store / "canon", tmp_path / "nas_canon")
    (store / "canon").symlink_to(tmp_path / "nas_canon")
    assert resolve_model(store, camera="canon").model_camera == "canon"  # through the link: served
    (tmp_path / "nas_canon").rename(tmp_path / "nas_canon.off")  # the share is gone
    for ask in ({"camera": "canon"}, {"image": CANON_JPG}):  # samples/cameras/canon: routed by its folder
        with pytest.raises(StoreError, match=f"the camera folder {store / 'canon'} is a link to .*nas_canon, which "
                                             "does not exist"):
            resolve_model(store, **ask)  # type: ignore[arg-type]
    (store / "canon").unlink()
    (store / "canon").symlink_to("canon")  # a loop
    with pytest.raises(StoreError, match=r"cannot look into the camera folder .*canon is a loop of symbolic links; "
                                         r"fix or remove the link"):
        resolve_model(store, camera="canon")
    from adassr.runtime.store import scan_store

    assert scan_store(store).unreadable == {"canon": f"{store / 'canon'} is a loop of symbolic links"}  # serve
    (store / "canon").unlink()
    (store / "canon").symlink_to(tmp_path / "nas_canon.off" / "gone")  # serve's scan: not "no camera" either
    assert "which does not exist" in scan_store(store).unreadable["canon"] and "canon" not in scan_store(store).cameras
    (store / "canon").unlink()
    (tmp_path / "nas_canon.off").rename(store / "canon")
    real_lstat = os.lstat

    def unreadable(path, *args, **kw):  # type: ignore[no-untyped-def]
        if str(path).startswith(str(store / "canon")):
            raise PermissionError(13, "Permission denied", str(path))  # chmod 000 (root reads it anyway)
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", unreadable)
    with pytest.raises(StoreError, match="cannot look into the camera folder .*: Permission denied; give the user"):
        resolve_model(store, camera="canon")
    monkeypatch.undo()
    assert resolve_model(store, camera="nikon").is_fallback  # a camera that is simply absent: the fallback
    (store / "nikon").write_text("not a camera folder")  # a file where the folder would be: no camera either
    assert resolve_model(store, camera="nikon").is_fallback
    assert "nikon" not in scan_store(store).cameras and "nikon" not in scan_store(store).unreadable


# -- from mutation testing: behaviour no test checked ---------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"file": None}, r"exports\['onnx'\] (has no|needs a plain) 'file'"),
    ({"file": 3}, r"exports\['onnx'\] (has no|needs a plain) 'file'"),
    ({"scale": 0}, r"(?i)scale"),
    ({"multiple_of": 0}, r"multiple_of"),
], ids=["file-missing", "file-not-text", "scale-0", "multiple-of-0"])
def test_a_damaged_export_record_is_one_store_error_naming_the_manifest(store: Path, change: dict,
                                                                         message: str) -> None:
    """Not a KeyError, nor one error per image deep in the tiling."""
    import json

    path = store / "canon" / "manifest.json"
    manifest = json.loads(path.read_text())
    record = manifest["exports"]["onnx"]
    for key, value in change.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message) as info:
        resolve_model(store, camera="canon")
    assert "manifest.json" in str(info.value)


def test_an_unknown_camera_can_be_served_by_the_fallback(store: Path, tmp_path: Path) -> None:
    from adassr.runtime.routing import can_serve

    assert can_serve(store, camera="unknown") and can_serve(store, camera="canon") and can_serve(store)
    only_camera = tmp_path / "only"
    publish_camera(only_camera, "canon", seed=1)
    assert can_serve(only_camera, camera="canon")
    assert not can_serve(only_camera, camera="unknown") and not can_serve(only_camera)


def test_a_tampered_fallback_model_is_caught_by_its_checksum(store: Path) -> None:
    path = CameraStore.open(store, FALLBACK_CAMERA).artifact_path("model.onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="fails its checksum"):
        resolve_model(store, image=NO_EXIF_PNG)
    with pytest.raises(StoreError, match="fails its checksum"):
        resolve_model(store, camera="unknown")


def test_an_unknown_precision_is_a_config_error(store: Path) -> None:
    from adassr.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown precision 'bf16'; valid: fp32, fp16"):
        resolve_model(store, camera="canon", precision="bf16")


def test_group_names_the_store_reserves_or_windows_refuses_never_come_from_names() -> None:
    """(Mutation testing.) A leading underscore is the store's own (`_fallback`), CON and NUL are devices on
    Windows: no camera group; `_FALLBACK` asks for the fallback as `_fallback` does; a name typed under a C
    locale (surrogate-escaped UTF-8) keeps its letters; a maker's noise words make no group."""
    from adassr.runtime.cameras import camera_from_filename, camera_name, normalise_camera_name, validate_group_name
    from adassr.runtime.errors import CameraError

    with pytest.raises(CameraError):
        validate_group_name("_foo")
    assert camera_from_filename("CON_001.png") is None and camera_from_filename("Nul_2.png") is None
    assert camera_name(" _FALLBACK ") == FALLBACK_CAMERA
    assert normalise_camera_name("\udcc3\udc91OKIA") == "nokia"
    assert normalise_camera_name("Digital Camera Co") == ""
