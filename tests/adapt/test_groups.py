from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.adapt.groups import GROUND_TRUTH_REASON, discover_groups, scan_groups, select_group, single_image_group
from adassr.runtime.errors import CameraError

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"


def test_bundled_samples_group_by_folder() -> None:
    groups = discover_groups(SAMPLES)
    assert set(groups) == {"canon", "nintendo", "nokia"}
    assert len(groups["nintendo"].members) == 2
    assert {m.derivation for g in groups.values() for m in g.members} == {"folder"}


def test_flat_folder_groups_by_exif_then_filename(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "canon" / "flower.jpg", tmp_path / "a.jpg")
    shutil.copy(SAMPLES / "nintendo" / "sugarshack.mpo", tmp_path / "b.mpo")
    shutil.copy(SAMPLES / "nokia" / "iptc.jpg", tmp_path / "c.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "Nikon_006_LR4.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "42.png")
    groups = discover_groups(tmp_path)
    assert set(groups) == {"canon", "nintendo", "nokia", "nikon", "ungrouped"}
    assert groups["canon"].members[0].derivation == "exif-make"
    assert groups["nikon"].members[0].derivation == "filename-prefix"
    assert groups["ungrouped"].members[0].path.name == "42.png"


def test_unknown_group_lists_what_was_found() -> None:
    with pytest.raises(CameraError) as info:
        select_group(SAMPLES, "sony")
    message = str(info.value)
    assert "'sony'" in message
    for name in ("canon", "nintendo", "nokia"):
        assert name in message
    assert "by folder" in message


def test_a_camera_named_in_another_case_or_with_spaces_finds_its_group(tmp_path: Path) -> None:
    (tmp_path / "nikon").mkdir()
    _noise_png(tmp_path / "nikon" / "a.png")
    assert select_group(tmp_path, " Nikon ").name == "nikon"


def test_a_loose_image_of_a_group_refused_for_a_case_clash_makes_no_group(tmp_path: Path) -> None:
    """Folders Tiny/ and tiny/ are refused as one ambiguous group: a loose Tiny_001_LR4.png must not make
    `adapt --list` show a group `tiny` that `adapt --camera tiny` then refuses."""
    for folder in ("Tiny", "tiny"):
        (tmp_path / folder).mkdir()
        _noise_png(tmp_path / folder / "a.png")
    _noise_png(tmp_path / "Tiny_001_LR4.png")
    scan = scan_groups(tmp_path)
    assert "tiny" not in scan.groups and "tiny" in scan.conflicts
    assert any(s.path.name == "Tiny_001_LR4.png" for s in scan.skipped)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no images found"):
        select_group(tmp_path, "canon")
    with pytest.raises(CameraError, match="does not exist"):
        discover_groups(tmp_path / "missing")


def test_single_image_group() -> None:
    group = single_image_group(SAMPLES / "canon" / "flower.jpg")
    assert group.name == "canon" and group.members[0].derivation == "single-image"
    assert single_image_group(SAMPLES / "canon" / "flower.jpg", "MyCam").name == "mycam"
    with pytest.raises(CameraError, match="not an image"):
        single_image_group(SAMPLES.parent / "README.md")
    with pytest.raises(CameraError, match="does not exist"):
        single_image_group(SAMPLES / "canon" / "no_such.jpg")
    with pytest.raises(CameraError, match="is a folder; .* --images DIR"):
        single_image_group(SAMPLES / "canon")


def test_a_single_image_that_names_no_camera_needs_camera(tmp_path: Path) -> None:
    """Once it was published as a camera called 'ungrouped', which the next such image overwrote."""
    _noise_png(tmp_path / "holiday.png")
    with pytest.raises(CameraError, match="names no camera .* --camera NAME"):
        single_image_group(tmp_path / "holiday.png")
    assert single_image_group(tmp_path / "holiday.png", "beach").name == "beach"


def _noise_png(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_realsr_hr_images_are_left_out_of_the_lr_group(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A RealSR-style flat folder: each _LR4 image sits next to its _HR original, which must not be trained on."""
    import logging

    from adassr.adapt.groups import GROUND_TRUTH_REASON, scan_groups

    for i in (1, 2):
        _noise_png(tmp_path / f"Nikon_00{i}_LR4.png", i)
        _noise_png(tmp_path / f"Nikon_00{i}_HR.png", i + 10)
    (tmp_path / "canon").mkdir()
    _noise_png(tmp_path / "canon" / "street.png")
    _noise_png(tmp_path / "canon" / "street_hr.png")
    _noise_png(tmp_path / "canon" / "chrome.png")  # 'hr' inside a word is not a token
    scan = scan_groups(tmp_path)
    assert [m.path.name for m in scan.groups["nikon"].members] == ["Nikon_001_LR4.png", "Nikon_002_LR4.png"]
    assert [m.path.name for m in scan.groups["canon"].members] == ["chrome.png", "street.png"]
    left_out = sorted((s.group, s.path.name) for s in scan.skipped if s.reason == GROUND_TRUTH_REASON)
    assert left_out == [("canon", "street_hr.png"), ("nikon", "Nikon_001_HR.png"), ("nikon", "Nikon_002_HR.png")]
    with caplog.at_level(logging.WARNING):
        group = select_group(tmp_path, "nikon")
    assert len(group.members) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "left out 2 image(s)" in warning and "Nikon_001_HR.png" in warning


def test_a_group_of_only_hr_images_says_so(tmp_path: Path) -> None:
    _noise_png(tmp_path / "Nikon_001_HR.png")
    _noise_png(tmp_path / "Canon_001_LR4.png")
    with pytest.raises(CameraError, match=r"'nikon' .* has only images whose names mark them as high-resolution"):
        select_group(tmp_path, "nikon")


def test_marks_ground_truth_needs_an_hr_token() -> None:
    from adassr.adapt.groups import marks_ground_truth

    marked = ["Nikon_001_HR.png", "hr_0001.png", "img-HR.jpg", "a.hr.png", "HR.png", "photo hr.png"]
    unmarked = ["chrome.png", "Nikon_001_LR4.png", "three.png", "hrx.png", "shr_1.png", "Nikon_001_HR4x.png"]
    assert all(marks_ground_truth(Path(n)) for n in marked)
    assert not any(marks_ground_truth(Path(n)) for n in unmarked)


def test_images_in_a_folder_named_after_the_camera_join_its_group(tmp_path: Path) -> None:
    """`adapt --images photos/nikon --camera nikon`: the folder's loose images belong to the folder's camera
    (the folder rule applied to the folder given), those with another camera's EXIF Make too: upscale routes
    them by the folder, so they stayed in canon's group, whose model never served them (a helper's hunt)."""
    folder = tmp_path / "nikon"
    folder.mkdir()
    _noise_png(folder / "0001.png", 1)
    _noise_png(folder / "0002.png", 2)
    _noise_png(folder / "Nikon_003_LR4.png", 3)
    _noise_png(folder / "DSC_0004.png", 4)  # a camera's default name prefix, no EXIF: used to be group 'dsc'
    _noise_png(folder / "IMG_0005.png", 5)
    shutil.copy(SAMPLES / "canon" / "flower.jpg", folder / "other.jpg")  # EXIF Canon: joins too
    _noise_png(folder / "Con_006.png", 6)  # names no valid group (skipped elsewhere): joins too (a review)
    exif = Image.Exif()
    exif[271] = "CON"
    Image.open(folder / "0001.png").save(folder / "con_make.jpg", exif=exif.tobytes())
    group = select_group(folder, "nikon")
    assert [m.path.name for m in group.members] == ["0001.png", "0002.png", "Con_006.png", "DSC_0004.png",
                                                    "IMG_0005.png", "Nikon_003_LR4.png", "con_make.jpg",
                                                    "other.jpg"]
    assert {m.derivation for m in group.members} == {"folder"}
    assert [m.path.name for m in select_group(folder, "canon").members] == ["other.jpg"]  # asked for by Make
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    _noise_png(elsewhere / "0001.png")
    with pytest.raises(CameraError, match="unknown camera group 'nikon'.*ungrouped"):
        select_group(elsewhere, "nikon")
    with pytest.raises(CameraError, match=r"unknown camera group 'nikno' in .*\. Did you mean 'nikon'\?"):
        select_group(folder, "nikno")


def test_generic_photo_name_prefixes_make_no_camera_and_the_error_names_the_folders_group(tmp_path: Path) -> None:
    """Stripped photos named IMG_1001.JPG (Canon's and the iPhone's default) became camera 'img'; and
    `adapt --images photos/2026-11 --camera dashcam` listed that 'img' group where `adapt --list` showed
    '2026-11', never saying that the folder's own name made the group (a helper's journey)."""
    from adassr.runtime.cameras import camera_from_filename

    assert [camera_from_filename(n) for n in ("IMG_1001.JPG", "DSCF0001.jpg", "PXL_2026.jpg", "dsc-1.png",
                                              "Nikon_006_LR4.png", "DJI_0001.JPG")] == [
        None, None, None, None, "nikon", "dji"]
    flat = tmp_path / "photos"
    flat.mkdir()
    for k in range(2):
        _noise_png(flat / f"IMG_{k:04d}.png", k)
    assert set(scan_groups(flat).groups) == {"ungrouped"}
    dated = tmp_path / "2026-11"
    dated.mkdir()
    for k in range(2):
        _noise_png(dated / f"IMG_{k:04d}.png", k)
    with pytest.raises(CameraError, match=r"Groups found: 2026-11 \(2 image\(s\), by folder\)\. The folder .* is "
                                          r"itself named '2026-11', so its loose images are group '2026-11': adapt "
                                          r"them with --camera 2026-11, or put them in a folder named dashcam\."):
        select_group(dated, "dashcam")
    assert len(select_group(dated, "2026-11").members) == 2


def test_a_camera_folder_whose_photos_sit_in_dated_subfolders_says_so(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """photos/dashcam/2026-11/*.JPG: adapt said "no images in photos or its camera subfolders; pass the folder
    of your photos", which the user had done (a helper's journey with a camera of their own)."""
    dated = tmp_path / "photos" / "dashcam" / "2026-11"
    dated.mkdir(parents=True)
    _noise_png(dated / "IMG_1001.png")
    scan = scan_groups(tmp_path / "photos")
    (skipped,) = scan.skipped
    assert skipped.path == tmp_path / "photos" / "dashcam" and not scan.groups
    assert "only in folders below it (e.g. 2026-11/IMG_1001.png)" in skipped.reason
    with pytest.raises(CameraError, match=r"no images found in .*dashcam: it holds no images itself, only in folders "
                                          r"below it .* move or link them into .*dashcam"):
        select_group(tmp_path / "photos", "dashcam")
    store = tmp_path / "photos" / "models" / "canon"  # a model store inside the photos: its reports are no photos
    store.mkdir(parents=True)
    (store / "manifest.json").write_text('{"schema_version": 1, "camera": "canon", "artifacts": {}}')
    _noise_png(store / "report.png")
    assert [s.path.name for s in scan_groups(tmp_path / "photos").skipped] == ["dashcam"]
    nikon = tmp_path / "photos" / "nikon"  # photos of its own, and more below: those are named, not read
    (nikon / "2026-11").mkdir(parents=True)
    _noise_png(nikon / "a.png")
    _noise_png(nikon / "2026-11" / "b.png", 2)
    scan = scan_groups(tmp_path / "photos")
    (below,) = [s for s in scan.skipped if s.group == "nikon"]
    assert below.path == nikon / "2026-11" and "are not read (e.g. 2026-11/b.png" in below.reason
    with caplog.at_level("WARNING"):
        assert [m.path.name for m in select_group(tmp_path / "photos", "nikon").members] == ["a.png"]
    assert "camera group 'nikon': photos in folders below the camera folder nikon/ are not read" in caplog.text
    shutil.rmtree(nikon)
    _noise_png(tmp_path / "photos" / "other.png")  # a loose photo: a group exists, dashcam still has none
    with pytest.raises(CameraError, match=r"camera group 'dashcam' has no images: .*only in folders below it"):
        select_group(tmp_path / "photos", "dashcam")


def test_adapt_list_of_a_folder_named_after_a_camera_shows_its_images_in_that_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`adapt --list --images photos/nikon` showed what `adapt --camera nikon` does not do: an image naming
    no valid group listed as skipped (it is adapted with nikon), one with a Canon Make in group canon."""
    from adassr.cli import main

    folder = tmp_path / "nikon"
    folder.mkdir()
    _noise_png(folder / "0001.png", 1)
    _noise_png(folder / "Con_002.png", 2)  # names no valid group
    shutil.copy(SAMPLES / "canon" / "flower.jpg", folder / "other.jpg")  # EXIF Canon
    _noise_png(folder / "tree_HR.png", 3)  # ground truth: skipped in any case
    assert main(["adapt", "--list", "--images", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["canon (1 image(s), by EXIF Make)",
                     "nikon (3 image(s), by folder)",
                     "nikon: 1 of its 3 images also name their camera, by file-name prefix or EXIF Make, so they are "
                     "in group canon too (--camera canon adapts that group as listed, --camera nikon the folder's 3)",
                     f"skipped {folder / 'tree_HR.png'}: {GROUND_TRUTH_REASON}"]
    assert [m.path.name for m in select_group(folder, "nikon").members] == ["0001.png", "Con_002.png", "other.jpg"]
    assert [m.path.name for m in select_group(folder, "canon").members] == ["other.jpg"]  # as the line says
    assert main(["adapt", "--list", "--images", str(tmp_path)]) == 0  # its parent: the folder rule, as before
    assert capsys.readouterr().out.splitlines() == ["nikon (3 image(s), by folder)",
                                                    f"skipped {folder / 'tree_HR.png'}: {GROUND_TRUTH_REASON}"]


def test_adapt_list_of_a_flat_folder_of_several_cameras_names_the_groups_their_names_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RealSR's flat layout (``Test/`` of ``Canon_*`` and ``Nikon_*`` files): `adapt --list` showed one group
    named after the folder, while `adapt --camera canon` took the Canon images alone, a group the list never
    showed (a docs audit). Both are listed now, each as the command takes it."""
    from adassr.cli import main

    folder = tmp_path / "Test"
    folder.mkdir()
    for k, name in enumerate(("Canon_006_LR4.png", "Canon_007_LR4.png", "Nikon_001_LR4.png", "IMG_0001.png")):
        _noise_png(folder / name, k)
    shutil.copy(SAMPLES / "canon" / "flower.jpg", folder / "flower.jpg")  # EXIF Canon
    assert main(["adapt", "--list", "--images", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "canon (3 image(s), by EXIF Make, by file-name prefix)",
        "nikon (1 image(s), by file-name prefix)",
        "test (5 image(s), by folder)",
        "test: 4 of its 5 images also name their camera, by file-name prefix or EXIF Make, so they are in groups "
        "canon and nikon too (--camera canon adapts that group as listed, --camera test the folder's 5)"]
    assert [m.path.name for m in select_group(folder, "canon").members] == [
        "Canon_006_LR4.png", "Canon_007_LR4.png", "flower.jpg"]
    assert [m.path.name for m in select_group(folder, "nikon").members] == ["Nikon_001_LR4.png"]
    assert len(select_group(folder, "test").members) == 5
    (folder / "canon").mkdir()  # a camera folder inside it too: --camera canon takes both, and the list says so
    _noise_png(folder / "canon" / "a.png", 7)
    assert main(["adapt", "--list", "--images", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "canon (4 image(s), by EXIF Make, by file-name prefix, by folder)"
    assert len(select_group(folder, "canon").members) == 4
    (folder / "canon" / "a.png").unlink()
    (folder / "canon").rmdir()
    assert main(["adapt", "--list", "--images", str(tmp_path)]) == 0  # from its parent: one folder group, no line
    assert capsys.readouterr().out.splitlines() == ["test (5 image(s), by folder)"]


def test_adapt_list_of_a_folder_named_after_a_prefix_group_names_only_the_other_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder ``canon/`` of ``Canon_*`` and ``Nikon_*`` files: the line names nikon, never canon itself (whose
    --camera takes the whole folder); a folder whose images name no other camera gets no line at all."""
    from adassr.cli import main

    folder = tmp_path / "canon"
    folder.mkdir()
    for k, name in enumerate(("Canon_006_LR4.png", "Canon_007_LR4.png", "Nikon_001_LR4.png")):
        _noise_png(folder / name, k)
    assert main(["adapt", "--list", "--images", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "canon (3 image(s), by folder)",
        "canon: 1 of its 3 images also name their camera, by file-name prefix or EXIF Make, so they are in group "
        "nikon too (--camera nikon adapts that group as listed, --camera canon the folder's 3)",
        "nikon (1 image(s), by file-name prefix)"]
    assert len(select_group(folder, "canon").members) == 3
    assert [m.path.name for m in select_group(folder, "nikon").members] == ["Nikon_001_LR4.png"]
    plain = tmp_path / "nikon"
    plain.mkdir()
    _noise_png(plain / "0001.png", 4)
    assert main(["adapt", "--list", "--images", str(plain)]) == 0
    assert capsys.readouterr().out.splitlines() == ["nikon (1 image(s), by folder)"]


@pytest.mark.parametrize("layout", [
    ("Test", ("Canon_1_LR4.png", "Canon_2_LR4.png", "Nikon_1_LR4.png", "x.png", "Canon_1_HR.png")),
    ("canon", ("canon/a.png", "canon/b.png", "nikon/c.png", "Canon_9.png", "IMG_1.png", "Nikon_5.png")),
    ("nikon", ("canon/a.png", "canon/b.png", "Canon_1.png", "Nikon_1.png", "x.png", "sony/z.png", "Sony_3.png")),
    ("nokia", ("flower.jpg", "iptc.jpg", "canon/flower2.jpg", "plain.png")),
    ("test", ("Canon_1_HR.png", "Canon_2_HR.png", "Nikon_1_LR4.png", "Nikon_1_HR.png")),
    ("fuji", ("fujifilm/a.png", "Fujifilm_1.png", "Fuji_2.png", "DSC_1.png")),
], ids=["flat", "camera-subfolders", "subfolder-and-prefix", "exif-makes", "ground-truth", "prefix-of-subfolder"])
def test_every_group_adapt_list_shows_has_the_members_camera_takes(tmp_path: Path, layout: tuple[str, tuple[str, ...]]
                                                                   ) -> None:
    """Each group `adapt --list` prints is the group `adapt --camera NAME` adapts, member for member, and the line
    under the folder's group counts the folder's images that the other listed groups share."""
    from adassr.adapt.groups import UNGROUPED, listed_groups

    name, files = layout
    folder = tmp_path / name
    for k, file in enumerate(files):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".jpg"):  # a real camera's EXIF Make (canon, nokia)
            shutil.copy(SAMPLES / ("nokia/iptc.jpg" if file == "iptc.jpg" else "canon/flower.jpg"), folder / file)
        else:
            _noise_png(folder / file, k)
    scan = listed_groups(folder)
    for group in scan.groups.values():
        if group.name != UNGROUPED:
            assert [m.path for m in group.members] == [m.path for m in select_group(folder, group.name).members]
    line = scan.also_line()
    if scan.also:
        own = {m.path for m in scan.groups[name.lower()].members}
        shared = own & {m.path for g in scan.also.values() for m in g.members}
        assert line is not None and line.startswith(f"{name.lower()}: {len(shared)} of its {len(own)} images "), line


def test_adapt_warns_when_a_folder_named_after_another_store_camera_will_route_the_images_there(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`--images photos/nikon --camera canon` (or `--image photos/nikon/x.jpg`) with nikon in the store: canon
    was trained on images that upscale and serve route to nikon by their folder (a helper's hunt)."""
    import argparse
    import logging

    from adassr.adapt.cli import _select

    folder = tmp_path / "photos" / "nikon"
    folder.mkdir(parents=True)
    shutil.copy(SAMPLES / "canon" / "flower.jpg", folder / "other.jpg")
    store = tmp_path / "store"

    def select(**given: object) -> list[str]:
        args = argparse.Namespace(**{"image": None, "images": None, "camera": None, "store": store, **given})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="adassr.adapt.cli"):
            assert [m.path.name for m in _select(args).members] == ["other.jpg"]
        return [r.getMessage() for r in caplog.records]

    assert select(images=folder, camera="canon") == []  # nikon is no camera of the store yet: routed by Make
    (store / "nikon").mkdir(parents=True)
    (store / "nikon" / "manifest.json").write_text("{}")
    for given in ({"images": folder, "camera": "canon"}, {"image": folder / "other.jpg"}):
        (warning,) = select(**given)
        assert "sit in a folder named after camera 'nikon' of the store" in warning and "--camera canon" in warning
    assert select(images=folder, camera="nikon") == []  # the folder's own camera


def test_a_folder_of_ground_truth_only_is_no_group_and_says_so(tmp_path: Path) -> None:
    """It used to list as a group of 0 images and fail later with "has no images"."""
    root = tmp_path / "photos"
    (root / "onlyhr").mkdir(parents=True)
    _noise_png(root / "onlyhr" / "Nikon_001_HR.png")
    _noise_png(root / "onlyhr" / "street_hr.png")
    (root / "cam").mkdir()
    _noise_png(root / "cam" / "a.png")
    scan = scan_groups(root)
    assert set(scan.groups) == {"cam"}
    with pytest.raises(CameraError, match="has only images whose names mark them as high-resolution ground truth"):
        select_group(root, "onlyhr")
    with pytest.raises(CameraError, match="has only images whose names mark them as high-resolution ground truth"):
        select_group(root / "onlyhr", "onlyhr")  # the folder given is named for the camera


def test_an_hr_image_or_the_ungrouped_collection_is_no_camera_to_adapt(tmp_path: Path) -> None:
    _noise_png(tmp_path / "Nikon_001_HR.png")
    _noise_png(tmp_path / "holiday.png")
    with pytest.raises(CameraError, match="marks it as high-resolution ground truth"):
        single_image_group(tmp_path / "Nikon_001_HR.png")  # it used to adapt camera 'nikon' to its HR photo
    with pytest.raises(CameraError, match="marks it as high-resolution ground truth"):
        single_image_group(tmp_path / "Nikon_001_HR.png", "nikon")
    with pytest.raises(CameraError, match="'ungrouped' is not a camera"):
        select_group(tmp_path, "ungrouped")  # mixed cameras: it used to be published as a camera
    with pytest.raises(CameraError, match="'ungrouped' is not a camera"):
        single_image_group(tmp_path / "holiday.png", "ungrouped")


def test_an_unreadable_folder_is_skipped_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to end in a PermissionError traceback (tests run as root, which permissions do not stop,
    so the denial is simulated)."""
    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    (root / "cam").mkdir()
    _noise_png(root / "cam" / "a.png")
    real = Path.iterdir
    denied = {root / "locked"}

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    scan = scan_groups(root)
    assert set(scan.groups) == {"cam"}
    assert [(s.path.name, "Permission denied" in s.reason) for s in scan.skipped] == [("locked", True)]
    denied.add(root)
    with pytest.raises(CameraError, match=r"cannot read the images folder .*photos \(Permission denied\)"):
        scan_groups(root)


def test_a_folder_of_loose_images_joins_its_group_without_comparing_every_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each loose image was looked up in the list of those moving: N x N comparisons (10,000 photos
    without EXIF Make took 23 s to group; a helper's review). Now each member is looked at once."""
    from adassr.adapt import groups

    folder = tmp_path / "nikon"
    folder.mkdir()
    pixels = np.zeros((8, 8, 3), np.uint8)
    for k in range(300):
        Image.fromarray(pixels).save(folder / f"{k:04d}.png")
    compared = 0
    real_eq = groups.GroupMember.__eq__

    def counted(self: object, other: object) -> bool:
        nonlocal compared
        compared += 1
        return real_eq(self, other)  # type: ignore[arg-type]

    monkeypatch.setattr(groups.GroupMember, "__eq__", counted)
    group = select_group(folder, "nikon")
    assert len(group.members) == 300 and {m.derivation for m in group.members} == {"folder"}
    assert compared < 300, compared


def test_a_brand_split_between_a_folder_and_an_exif_make_is_named(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Photos of one maker under a folder ``nokia-n8/`` and loose ones whose EXIF Make says Nokia: two
    groups (a longer name may be another camera), and adapting one names the other."""
    import logging

    (tmp_path / "nokia-n8").mkdir()
    _noise_png(tmp_path / "nokia-n8" / "a.png")
    shutil.copy(SAMPLES / "nokia" / "iptc.jpg", tmp_path / "b.jpg")
    with caplog.at_level(logging.WARNING):
        group = select_group(tmp_path, "nokia-n8")
    assert [m.path.name for m in group.members] == ["a.png"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "also hold group nokia (1 image(s), by EXIF Make)" in warning and "nokia-n8/" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        select_group(SAMPLES, "canon")  # no related names: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    (tmp_path / "nokia-n8-pro").mkdir()  # two folders named on purpose: two cameras, no warning between them
    _noise_png(tmp_path / "nokia-n8-pro" / "c.png")
    (tmp_path / "b.jpg").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        select_group(tmp_path, "nokia-n8")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_links_add_no_image_and_no_group(tmp_path: Path) -> None:
    """A symlink or hard link to a group's image was trained and scored as another photo, and a
    subfolder linking back to the images folder became a group mixing every camera in it."""
    import os

    nokia = tmp_path / "nokia"
    nokia.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(nokia / name)
    (nokia / "c.png").symlink_to(nokia / "a.png")
    os.link(nokia / "b.png", nokia / "d.png")
    shutil.copy(SAMPLES / "canon" / "flower.jpg", tmp_path / "flower.jpg")  # EXIF Make Canon
    (nokia / "0.png").symlink_to(nokia / "b.png")  # a link sorting before the file it names
    (tmp_path / "all").symlink_to(tmp_path)
    (tmp_path / "nokia2").symlink_to(nokia)
    (tmp_path / "card").symlink_to(nokia)  # sorts before nokia/: the real folder still keeps its name
    scan = scan_groups(tmp_path)
    assert set(scan.groups) == {"canon", "nokia"}
    assert [m.path.name for m in scan.groups["nokia"].members] == ["a.png", "b.png"]
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert all("same file as" in reasons[name] for name in ("0.png", "c.png", "d.png"))
    assert all("is a link to" in reasons[name] for name in ("all", "card", "nokia2"))
    # a link in a camera's folder to a loose photo: the photo is that camera's (it went to the loose
    # file's group, and the camera lost it; a helper's hunt)
    (nokia / "flower_link.jpg").symlink_to(tmp_path / "flower.jpg")
    scan = scan_groups(tmp_path)
    assert [m.path.name for m in scan.groups["nokia"].members] == ["a.png", "b.png", "flower_link.jpg"]
    assert "canon" not in scan.groups
    assert "same file as" in {s.path.name: s.reason for s in scan.skipped}["flower.jpg"]


def test_a_filesystem_without_inode_numbers_keeps_every_image(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network shares and FUSE mounts report inode 0 for every file: all images but one were
    dropped as links of each other."""
    import os

    nokia = tmp_path / "nokia"
    nokia.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(nokia / name)
    (nokia / "d.png").symlink_to(nokia / "a.png")
    real_stat = Path.stat

    def no_inode(self: Path, *, follow_symlinks: bool = True) -> os.stat_result:
        st = real_stat(self, follow_symlinks=follow_symlinks)
        return os.stat_result((st.st_mode, 0, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                               int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))

    monkeypatch.setattr(Path, "stat", no_inode)
    scan = scan_groups(tmp_path)
    assert [m.path.name for m in scan.groups["nokia"].members] == ["a.png", "b.png", "c.png"]


def _heif(path: Path) -> Path:
    """A file that begins as a phone's HEIF photo does (its ftyp box)."""
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    return path


def test_heif_and_raw_photos_are_named_as_skipped_and_a_group_of_them_only_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A phone's .heic photos were left out without a word: a group of only HEIF photos was an 'unknown
    camera group', and a group with some lost them in silence."""
    import logging

    for name in ("nikon", "iphone"):
        (tmp_path / name).mkdir()
    _noise_png(tmp_path / "nikon" / "a.png")
    (tmp_path / "nikon" / "DSC_0001.NEF").write_bytes(b"II*\x00" + b"\x00" * 60)
    _heif(tmp_path / "iphone" / "IMG_0001.HEIC")
    _heif(tmp_path / "iphone" / "IMG_0002.heic")
    _heif(tmp_path / "IMG_0003.HEIC")
    scan = scan_groups(tmp_path)
    assert list(scan.groups) == ["nikon"]
    skipped = sorted((s.group or "", s.path.name) for s in scan.skipped)
    assert skipped == [("", "IMG_0003.HEIC"), ("iphone", "IMG_0001.HEIC"), ("iphone", "IMG_0002.heic"),
                       ("nikon", "DSC_0001.NEF")]
    assert all("a format adassr does not read" in s.reason for s in scan.skipped)
    with pytest.raises(CameraError, match=r"camera group 'iphone' has no images adassr reads: 2 files .* HEIF "
                                          r"\(HEIC\) files \(2: IMG_0001.HEIC, IMG_0002.heic\): convert to JPEG"):
        select_group(tmp_path, "iphone")
    with caplog.at_level(logging.WARNING):
        assert [m.path.name for m in select_group(tmp_path, "nikon").members] == ["a.png"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "camera group 'nikon': 1 file in formats adassr does not read was left out: raw files (1: DSC_0001.NEF)" \
        in warning
    with pytest.raises(CameraError, match=r"no images found in .*\. 2 files in formats adassr does not read were "
                                          r"left out: HEIF \(HEIC\) files \(2: IMG_0001.HEIC, IMG_0002.heic\)"):
        select_group(tmp_path / "iphone", "iphone")


def test_heif_files_only_are_skipped_and_those_of_the_folder_given_are_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder named like a photo, and macOS's hidden ._IMG.HEIC companions, are no photos left out; the loose
    HEIF photos of a folder given as --images with its own camera name are the group's."""
    import logging

    phone = tmp_path / "iphone"
    (phone / "album.heic").mkdir(parents=True)
    _noise_png(phone / "a.png")
    _heif(phone / "IMG_0001.HEIC")
    _heif(phone / "._IMG_0001.HEIC")
    assert [s.path.name for s in scan_groups(phone).skipped] == ["IMG_0001.HEIC"]
    assert [s.path.name for s in scan_groups(tmp_path).skipped] == ["IMG_0001.HEIC"]
    with caplog.at_level(logging.WARNING):
        assert [m.path.name for m in select_group(phone, "iphone").members] == ["a.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("camera group 'iphone': 1 file in formats adassr does not read was left out: HEIF (HEIC) files "
               "(1: IMG_0001.HEIC)" in w for w in warnings), warnings


def test_adapt_list_names_a_folders_heif_photos_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A phone's folder of 500 .heic photos printed 500 `skipped` lines with the same advice; one line per
    folder now, in the listing's order, the other skipped sources as before."""
    from adassr.cli import main

    (tmp_path / "iphone").mkdir()
    (tmp_path / "nikon").mkdir()
    for k in range(5):
        _heif(tmp_path / "iphone" / f"IMG_000{k}.HEIC")
    _noise_png(tmp_path / "nikon" / "a.png")
    _noise_png(tmp_path / "nikon" / "a_HR.png")
    (tmp_path / "nikon" / "DSC_0001.NEF").write_bytes(b"II*\x00" + b"\x00" * 60)
    assert main(["adapt", "--list", "--images", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "nikon (1 image(s), by folder)"
    assert lines[1].startswith(f"skipped in {tmp_path / 'iphone'}: 5 files in formats adassr does not read were "
                               "left out: HEIF (HEIC) files (5: IMG_0000.HEIC, IMG_0001.HEIC, IMG_0002.HEIC, ...)")
    assert lines[2:] == [
        f"skipped in {tmp_path / 'nikon'}: 1 file in formats adassr does not read was left out: raw files "
        "(1: DSC_0001.NEF): develop to a 16-bit TIFF or PNG (or a JPEG) in a raw converter first (e.g. darktable, "
        "RawTherapee, `dcraw -T -6`)",
        f"skipped {tmp_path / 'nikon' / 'a_HR.png'}: {GROUND_TRUTH_REASON}"]
