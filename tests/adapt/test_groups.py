from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.adapt.groups import discover_groups, select_group, single_image_group
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
        single_image_group(SAMPLES / "README.md")
