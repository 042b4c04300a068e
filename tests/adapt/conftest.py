"""Fixtures shared by the adaptation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HR = Path(__file__).resolve().parents[1] / "data" / "hr"


@pytest.fixture(scope="session")
def acceptance_photos() -> list[np.ndarray]:
    """The five clean photos of tests/data/hr as float32 RGB in [0, 1], cropped to a multiple of 4."""
    out = []
    for path in sorted(HR.glob("*.png")):
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4])
    assert len(out) == 5
    return out
