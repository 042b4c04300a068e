"""Camera-group names: bad folder names and EXIF Makes are skipped with a reason, case clashes refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.adapt.groups import discover_groups, scan_groups, select_group, single_image_group
from adassr.runtime.cameras import closest_camera_hint, validate_group_name
from adassr.runtime.errors import CameraError

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"
LONG_MAKE = "Verylongcameramakername" * 4  # 92 characters: above the 64-character group-name limit


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def long_make_jpeg(path: Path) -> Path:
    image = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[271] = LONG_MAKE
    image.save(path, exif=exif.tobytes())
    return path


def test_invalid_folder_name_is_skipped_not_fatal(tmp_path: Path) -> None:
    _png(tmp_path / "My Camera" / "a.png")
    shutil.copytree(SAMPLES / "canon", tmp_path / "canon")
    scan = scan_groups(tmp_path)
    assert set(scan.groups) == {"canon"}
    assert [s.path.name for s in scan.skipped] == ["My Camera"]
    assert "not a valid camera group name" in scan.skipped[0].reason
    assert select_group(tmp_path, "canon").name == "canon"


def test_folders_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "Tiny" / "a.png")
    _png(tmp_path / "tiny" / "b.png")
    _png(tmp_path / "other" / "c.png")
    scan = scan_groups(tmp_path)
    assert set(scan.groups) == {"other"}
    assert sorted(s.path.name for s in scan.skipped) == ["Tiny", "tiny"]
    with pytest.raises(CameraError, match=r"differ only in case"):
        select_group(tmp_path, "tiny")
    assert select_group(tmp_path, "other").name == "other"


def test_overlong_exif_make_is_skipped_with_reason(tmp_path: Path) -> None:
    long_make_jpeg(tmp_path / "long.jpg")
    shutil.copy(SAMPLES / "canon" / "flower.jpg", tmp_path / "a.jpg")
    scan = scan_groups(tmp_path)
    assert set(scan.groups) == {"canon"} == set(discover_groups(tmp_path))
    assert [s.path.name for s in scan.skipped] == ["long.jpg"]
    assert "not a valid group name" in scan.skipped[0].reason
    with pytest.raises(CameraError, match="not a valid group name"):
        single_image_group(tmp_path / "long.jpg")
    assert single_image_group(tmp_path / "long.jpg", "mine").name == "mine"


def test_adapt_list_shows_groups_and_skipped_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    _png(tmp_path / "My Camera" / "a.png")
    _png(tmp_path / "Tiny" / "a.png")
    _png(tmp_path / "tiny" / "b.png")
    shutil.copytree(SAMPLES / "canon", tmp_path / "canon")
    assert main(["adapt", "--list", "--images", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("canon (")
    assert f"skipped {tmp_path / 'My Camera'}: folder name 'My Camera' is not a valid camera group name" in out
    assert out.count("differ only in case") == 2


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("nokai", " Did you mean 'nokia'?"),  # transposed letters
        ("NINTEDO", " Did you mean 'nintendo'?"),  # a letter missing, any case
        ("fuji", " Did you mean 'fujifilm'?"),  # an abbreviation
        ("fuj", " Did you mean 'fujifilm'?"),  # three letters are the shortest abbreviation named
        ("fu", ""),
        ("nikon", ""),  # shares letters with canon, but is another make
        ("sony", ""),
        ("nokia", ""),  # the name itself is no typo
        ("_fallback", ""),
    ],
)
def test_closest_camera_hint(name: str, hint: str) -> None:
    assert closest_camera_hint(name, ["canon", "nokia", "nintendo", "fujifilm", "_fallback"]) == hint


@pytest.mark.parametrize("name", ["con", "NUL", "aux.cam", "com1", "lpt9", "prn"])
def test_windows_device_names_are_refused_with_a_replacement(name: str) -> None:
    """A store folder named 'con' could not be copied to a Windows box (a Triton repository, a backup)."""
    with pytest.raises(CameraError, match=r"device name on Windows.*e\.g\. '[a-z0-9]+_cam'"):
        validate_group_name(name)


def test_trailing_dot_is_refused_and_similar_names_pass() -> None:
    with pytest.raises(CameraError, match=r"must not end with '\.'.*use 'nikon'"):
        validate_group_name("nikon.")
    for fine in ("console", "com", "com10", "auxiliary", "nul_cam", "a.b"):
        assert validate_group_name(fine) == fine


def test_device_named_folder_is_skipped_not_fatal(tmp_path: Path) -> None:
    _png(tmp_path / "con" / "a.png")
    _png(tmp_path / "canon" / "b.png")
    scan = scan_groups(tmp_path)
    assert set(scan.groups) == {"canon"}
    assert [s.path.name for s in scan.skipped] == ["con"]


def test_broken_links_and_fifos_named_like_images_are_listed_as_skipped(tmp_path: Path) -> None:
    """`adapt --list` counted a camera folder's readable images and dropped a broken link or a FIFO named
    *.png without a word; upscale reports such entries as failed files."""
    import os

    _png(tmp_path / "cam" / "a.png")
    (tmp_path / "cam" / "b.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "cam" / "c.png")
    (tmp_path / "top.jpg").symlink_to(tmp_path / "gone.jpg")
    scan = scan_groups(tmp_path)
    assert [m.path.name for m in scan.groups["cam"].members] == ["a.png"]
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons.keys() == {"b.png", "c.png", "top.jpg"}
    assert "link whose target does not exist" in reasons["b.png"] and "FIFO" in reasons["c.png"]
    assert "cannot be read" in reasons["top.jpg"]


def test_a_folder_of_broken_links_does_not_clash_with_a_real_camera_folder(tmp_path: Path) -> None:
    """g/Canon/a.png and g/canon/b.jpg (a broken link): both were refused as a case clash, so the real
    camera's group vanished (a review of the change that listed broken links)."""
    _png(tmp_path / "Canon" / "a.png")
    (tmp_path / "canon").mkdir()
    (tmp_path / "canon" / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    scan = scan_groups(tmp_path)
    assert [m.path.name for m in scan.groups["canon"].members] == ["a.png"] and not scan.conflicts
    assert [s.path.name for s in scan.skipped] == ["b.jpg"]


def test_group_name_limits_and_spelling() -> None:
    assert validate_group_name("a" * 64) == "a" * 64
    with pytest.raises(CameraError, match="1-64 characters"):
        validate_group_name("a" * 65)
    assert validate_group_name("  Nikon ") == "nikon"  # as typed, with stray spaces
    with pytest.raises(CameraError, match="must be a string, got int"):
        validate_group_name(5)  # type: ignore[arg-type]
    with pytest.raises(CameraError, match="'ÑOKIA X'"):  # named as typed, not as surrogate escapes
        validate_group_name("\udcc3\udc91OKIA X")
