"""Reading a camera group's images: unreadable files are skipped with one warning, not fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from adassr.adapt.groups import CameraGroup, GroupMember
from adassr.adapt.run import load_group_images
from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.images import read_image, write_image

HR = Path(__file__).resolve().parents[1] / "data" / "hr"


def _group(*paths: Path) -> CameraGroup:
    return CameraGroup("cam", tuple(GroupMember(p, "folder") for p in paths))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    photo = read_image(HR / "coffee.png").pixels[:60, :80]
    paths = {"good": tmp_path / "good.png", "gray": tmp_path / "gray.png", "empty": tmp_path / "empty.png",
             "text": tmp_path / "notes.jpg", "cut": tmp_path / "cut.png"}
    write_image(paths["good"], np.ascontiguousarray(photo))
    write_image(paths["gray"], np.ascontiguousarray(photo[..., 1:2]))
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("not an image")
    paths["cut"].write_bytes(paths["good"].read_bytes()[:200])
    return paths


def test_all_readable_images_load_as_float_rgb(files: dict[str, Path]) -> None:
    loaded = load_group_images(_group(files["good"], files["gray"]))
    assert loaded.unreadable == () and loaded.group.paths == (files["good"], files["gray"])
    assert [im.shape for im in loaded.images] == [(60, 80, 3), (60, 80, 3)]
    assert all(im.dtype == np.float32 and im.min() >= 0.0 and im.max() <= 1.0 for im in loaded.images)
    assert np.array_equal(loaded.images[1][..., 0], loaded.images[1][..., 2])  # gray replicated


def test_unreadable_images_are_skipped_with_one_warning(files: dict[str, Path], caplog) -> None:
    group = _group(files["empty"], files["good"], files["text"], files["cut"], files["gray"])
    with caplog.at_level(logging.WARNING):
        loaded = load_group_images(group)
    assert loaded.group.paths == (files["good"], files["gray"]) and len(loaded.images) == 2
    assert [Path(p).name for p, _ in loaded.unreadable] == ["empty.png", "notes.jpg", "cut.png"]
    assert "empty" in loaded.unreadable[0][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 unreadable image(s) of 5" in warnings[0]
    assert all(name in warnings[0] for name in ("empty.png", "notes.jpg", "cut.png"))


def test_a_group_with_no_readable_image_fails_naming_them(files: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match=r"none of its 3 images can be read: .*empty\.png.*notes\.jpg.*cut\.png"):
        load_group_images(_group(files["empty"], files["text"], files["cut"]))


def test_a_one_image_group_keeps_that_images_own_error(files: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match=r"empty\.png: file is empty") as info:
        load_group_images(_group(files["empty"]))
    assert "none of its" not in str(info.value)


def test_an_empty_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no images"):
        load_group_images(CameraGroup("cam", ()))
