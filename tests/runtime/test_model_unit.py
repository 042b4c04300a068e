"""The LoadedImage record's checks and the listing / ICC helpers of :mod:`adassr.runtime.images._model`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageCms

from adassr.runtime.errors import ImageError
from adassr.runtime.images._model import LoadedImage, icc_colour_space, is_image_file, unreadable_image_entry


def test_loaded_image_refuses_four_channels_and_a_mismatched_alpha() -> None:
    with pytest.raises(ImageError, match="H x W x 1 or H x W x 3"):
        LoadedImage(np.zeros((2, 2, 4), np.uint8), None, 8, None, None, None)
    with pytest.raises(ImageError, match="alpha must be"):
        LoadedImage(np.zeros((2, 3, 3), np.uint8), np.zeros((3, 2), np.uint8), 8, None, None, None)
    with pytest.raises(ImageError, match="alpha must be"):
        LoadedImage(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint16), 8, None, None, None)
    ok = LoadedImage(np.zeros((2, 3, 1), np.uint16), np.zeros((2, 3), np.uint16), 16, None, None, None)
    assert (ok.height, ok.width, ok.channels) == (2, 3, 1)


def test_icc_colour_space_of_a_real_profile_a_short_one_and_odd_bytes() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert icc_colour_space(profile) == "RGB"
    assert icc_colour_space(profile[:127]) is None  # no whole 128-byte header
    odd = profile[:16] + b"R\x7fB\x00" + profile[20:]
    assert icc_colour_space(odd) == "R?B?"  # DEL and NUL are not printable


def test_image_listing_rules(tmp_path: Path) -> None:
    (tmp_path / "a.PNG").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "notes.txt").write_bytes(b"x")
    assert [p.name for p in sorted(tmp_path.iterdir()) if is_image_file(p)] == ["a.PNG"]
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    os.mkfifo(tmp_path / "pipe.TIF")
    assert unreadable_image_entry(tmp_path / "gone.jpg") == "a link whose target does not exist"
    assert unreadable_image_entry(tmp_path / "pipe.TIF") == "not a regular file (a FIFO, socket or device)"
    for name in ("a.PNG", "folder.png", "notes.txt", "missing.png"):
        assert unreadable_image_entry(tmp_path / name) is None, name
