"""The weight-map cache: computed once per image and setting, safe against bad files, bounded."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adassr.adapt.config import AttentionConfig
from adassr.adapt.weight_map_cache import WeightMapCache, store_cache_folder
from adassr.runtime.images import read_image, to_float32

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "cameras" / "nokia" / "iptc.jpg"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(to_float32(read_image(SAMPLE).pixels)[100:164, 200:280])


class _Counting:
    """A stand-in for the trunk pass: a map that depends on the image, and a call counter."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        gray = image.mean(axis=2)
        return (0.5 + gray / max(float(gray.mean()), 1e-6)).astype(np.float32)


def _cache(folder: Path, **kw: object) -> WeightMapCache:
    base: dict[str, object] = {"backbone_sha256": "a" * 64, "attention": AttentionConfig(max_side=256),
                               "precision": "bf16", "device_type": "cpu"}
    base.update(kw)
    return WeightMapCache(folder, **base)  # type: ignore[arg-type]


def test_second_request_loads_the_stored_map(tmp_path: Path, image: np.ndarray) -> None:
    compute = _Counting()
    cache = _cache(tmp_path / "maps")
    first = cache.get_or_compute(image, compute)
    second = _cache(tmp_path / "maps").get_or_compute(image.copy(), compute)  # a new run, same pixels
    assert compute.calls == 1
    np.testing.assert_array_equal(first, second)
    assert first.shape == image.shape[:2] and second.dtype == np.float32
    assert len(list((tmp_path / "maps").glob("*.npy"))) == 1


@pytest.mark.parametrize("change", ["pixels", "backbone", "attention", "precision", "device"])
def test_anything_the_map_depends_on_changes_the_key(tmp_path: Path, image: np.ndarray, change: str) -> None:
    compute = _Counting()
    _cache(tmp_path).get_or_compute(image, compute)
    other_image, cache = image, _cache(tmp_path)
    if change == "pixels":
        other_image = image.copy()
        other_image[0, 0, 0] += 1 / 255
    elif change == "backbone":
        cache = _cache(tmp_path, backbone_sha256="b" * 64)
    elif change == "attention":
        cache = _cache(tmp_path, attention=replace(AttentionConfig(max_side=256), temperature=12.0))
    elif change == "precision":
        cache = _cache(tmp_path, precision="fp32")
    else:
        cache = _cache(tmp_path, device_type="cuda")
    cache.get_or_compute(other_image, compute)
    assert compute.calls == 2


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "not finite", "huge header", "short data", "float64"])
def test_a_bad_file_is_recomputed_and_replaced(tmp_path: Path, image: np.ndarray, damage: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    compute = _Counting()
    cache = _cache(tmp_path)
    good = cache.get_or_compute(image, compute)
    path = tmp_path / f"{cache.key(image)}.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "wrong shape":
        np.save(path, good[:-1])
    elif damage == "float64":  # the right shape, another type: the map is float32 as documented
        np.save(path, good.astype(np.float64))
    elif damage in ("huge header", "short data"):  # a header whose shape the data does not hold
        shape = (10**6, 10**6) if damage == "huge header" else good.shape
        with path.open("wb") as f:  # the huge one stopped the run with MemoryError (3.6 TiB allocated)
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(good.tobytes()[:64])
    else:
        bad = good.copy()
        bad[3, 3] = np.nan
        np.save(path, bad)
    with caplog.at_level(logging.WARNING):
        again = cache.get_or_compute(image, compute)
    assert compute.calls == 2 and "recomputing" in caplog.text
    np.testing.assert_array_equal(again, good)
    assert again.dtype == np.float32
    np.testing.assert_array_equal(np.load(path), good)  # the bad file was replaced


def test_a_hit_marks_the_map_recently_used(tmp_path: Path, image: np.ndarray) -> None:
    """Maps reused by every re-adaptation must not be evicted first: a hit refreshes the file's time."""
    import os

    compute = _Counting()
    cache = _cache(tmp_path)
    cache.get_or_compute(image, compute)
    path = tmp_path / f"{cache.key(image)}.npy"
    os.utime(path, (1000, 1000))
    _cache(tmp_path).get_or_compute(image, compute)
    assert compute.calls == 1 and path.stat().st_mtime > 1000


def test_folder_is_capped_least_recently_used_first(tmp_path: Path, image: np.ndarray) -> None:
    import os

    compute = _Counting()
    one_map = image.shape[0] * image.shape[1] * 4 + 128  # float32 pixels plus the .npy header
    cache = _cache(tmp_path, max_bytes=2 * one_map)
    images = [np.clip(image + i / 255, 0, 1).astype(np.float32) for i in range(3)]
    for i, im in enumerate(images[:2]):
        _cache(tmp_path, max_bytes=2 * one_map).get_or_compute(im, compute)  # two earlier runs
        path = tmp_path / f"{cache.key(im)}.npy"
        os.utime(path, (1000 + i, 1000 + i))
    cache.get_or_compute(images[0], compute)  # a hit makes the first map the most recently used
    cache.get_or_compute(images[2], compute)  # over the cap: the second (least recently used) goes
    names = {p.name for p in tmp_path.glob("*.npy")}
    assert names == {f"{cache.key(images[0])}.npy", f"{cache.key(images[2])}.npy"}
    assert compute.calls == 3


def test_a_run_whose_maps_exceed_the_cap_keeps_them_all_for_the_next_run(tmp_path: Path, image: np.ndarray) -> None:
    """Six 12 MP photos need 288 MB of maps against a 256 MB cap: each write evicted the run's own oldest
    map, so the next run found none of the maps it needed and computed every one again (a helper's hunt)."""
    compute = _Counting()
    one_map = image.shape[0] * image.shape[1] * 4 + 128
    images = [np.clip(image + i / 255, 0, 1).astype(np.float32) for i in range(4)]
    for run in range(3):
        cache = _cache(tmp_path, max_bytes=2 * one_map)
        for im in images:
            cache.get_or_compute(im, compute)
        assert compute.calls == 4, run  # computed once, in the first run; the later runs reuse all four
    assert len(list(tmp_path.glob("*.npy"))) == 4
    other = _cache(tmp_path, max_bytes=2 * one_map)  # another group's run: the older maps go, to the cap
    other.get_or_compute(np.clip(image + 9 / 255, 0, 1).astype(np.float32), compute)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path: Path, image: np.ndarray,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store folder should be")
    compute = _Counting()
    with caplog.at_level(logging.WARNING):
        got = _cache(store_cache_folder(blocker)).get_or_compute(image, compute)
    assert compute.calls == 1 and got.shape == image.shape[:2]
    assert "without the cache" in caplog.text


def test_a_killed_runs_half_written_map_goes_on_a_cache_hit(tmp_path: Path, image: np.ndarray) -> None:
    """Dead writers' temporary files were removed only by evictions, which run on a miss."""
    import os
    import time

    cache = _cache(tmp_path)
    cache.get_or_compute(image, lambda im: np.ones(im.shape[:2], np.float32))
    dead = tmp_path / ".0123.npy.999999999.0123456789ab.tmp"
    dead.write_bytes(b"half a map")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(dead, (two_days_ago, two_days_ago))

    def never(im: np.ndarray) -> np.ndarray:
        raise AssertionError("a hit computes nothing")

    assert cache.get_or_compute(image, never).shape == image.shape[:2]
    assert not dead.exists()
