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
             "text": tmp_path / "notes.jpg", "cut": tmp_path / "cut.png", "grey-filled": tmp_path / "lost.jpg"}
    write_image(paths["good"], np.ascontiguousarray(photo))
    write_image(paths["gray"], np.ascontiguousarray(photo[..., 1:2]))
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("not an image")
    paths["cut"].write_bytes(paths["good"].read_bytes()[:200])
    write_image(paths["grey-filled"], np.ascontiguousarray(photo), quality=90)
    jpeg = paths["grey-filled"].read_bytes()  # its data cut short, its end marker kept: decodes part grey
    paths["grey-filled"].write_bytes(jpeg[: len(jpeg) * 2 // 3] + b"\xff\xd9")
    return paths


def test_all_readable_images_load_as_float_rgb(files: dict[str, Path]) -> None:
    loaded = load_group_images(_group(files["good"], files["gray"]))
    assert loaded.unreadable == () and loaded.group.paths == (files["good"], files["gray"])
    assert [im.shape for im in loaded.images] == [(60, 80, 3), (60, 80, 3)]
    assert all(im.dtype == np.float32 and im.min() >= 0.0 and im.max() <= 1.0 for im in loaded.images)
    assert np.array_equal(loaded.images[1][..., 0], loaded.images[1][..., 2])  # gray replicated


def test_unreadable_images_are_skipped_with_one_warning(files: dict[str, Path], caplog) -> None:
    group = _group(files["empty"], files["good"], files["text"], files["cut"], files["grey-filled"], files["gray"])
    with caplog.at_level(logging.WARNING):
        loaded = load_group_images(group)
    assert loaded.group.paths == (files["good"], files["gray"]) and len(loaded.images) == 2
    assert [Path(p).name for p, _ in loaded.unreadable] == ["empty.png", "notes.jpg", "cut.png", "lost.jpg"]
    assert "empty" in loaded.unreadable[0][1] and "damaged" in loaded.unreadable[3][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 4 unreadable image(s) of 6" in warnings[0]
    assert all(name in warnings[0] for name in ("empty.png", "notes.jpg", "cut.png", "lost.jpg"))


def test_a_group_with_no_readable_image_fails_naming_them(files: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match=r"none of the 3 images tried can be read: .*empty\.png.*notes\.jpg.*cut\.png"):
        load_group_images(_group(files["empty"], files["text"], files["cut"]))


def test_a_one_image_group_keeps_that_images_own_error(files: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match=r"empty\.png: file is empty") as info:
        load_group_images(_group(files["empty"]))
    assert "none of the" not in str(info.value)


def test_an_empty_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no images"):
        load_group_images(CameraGroup("cam", ()))


def test_evenly_spaced_indices_cover_the_range() -> None:
    from adassr.adapt.image_selection import evenly_spaced

    assert evenly_spaced(10, 10) == list(range(10))
    assert evenly_spaced(100, 4) == [12, 37, 62, 87]
    assert evenly_spaced(7, 1) == [3]
    for n in range(1, 40):
        for k in range(1, n + 1):
            chosen = evenly_spaced(n, k)
            assert len(set(chosen)) == k and chosen == sorted(chosen) and chosen[0] >= 0 and chosen[-1] < n
    with pytest.raises(ValueError):
        evenly_spaced(3, 4)
    with pytest.raises(ValueError):
        evenly_spaced(3, 0)


def test_selection_obeys_the_count_and_the_pixel_budget() -> None:
    from adassr.adapt.image_selection import Selection, select_images

    twelve_mp = [12_000_000] * 100
    everything = select_images(twelve_mp[:5], max_images=8, max_megapixels=200)
    assert everything.indices == (0, 1, 2, 3, 4) and everything.limited_by is None
    by_count = select_images(twelve_mp, max_images=8, max_megapixels=1e9)
    assert len(by_count.indices) == 8 and by_count.limited_by == "--max-images 8"
    by_pixels = select_images(twelve_mp, max_images=64, max_megapixels=200)
    assert len(by_pixels.indices) == 16 and by_pixels.limited_by == "--max-megapixels 200"  # 16 x 12 = 192
    assert select_images(twelve_mp, max_images=64, max_megapixels=200) == by_pixels  # deterministic
    mixed = [1_000_000, 50_000_000, 2_000_000]
    assert select_images(mixed, max_images=1, max_megapixels=10).indices == (0,)  # the middle one is too big
    # the fallback takes the smallest image wherever it is, up to the budget itself, and says why
    last_smallest = select_images([20_000_000, 50_000_000, 10_000_000], max_images=1, max_megapixels=10)
    assert last_smallest == Selection((2,), "--max-megapixels 10")
    with pytest.raises(ConfigError, match="--max-images must be >= 1, got 0"):
        select_images([10**6] * 3, max_images=0, max_megapixels=10)
    assert select_images([], max_images=8, max_megapixels=1).indices == ()
    # images of unequal size: as many as the pixel budget holds (one fewer was taken on a rounding)
    assert len(select_images([10**6] * 4 + [10**7], max_images=8, max_megapixels=5).indices) == 2


def test_selection_fails_clearly_when_no_image_fits_the_budget() -> None:
    from adassr.adapt.image_selection import select_images

    with pytest.raises(ConfigError, match=r"larger than --max-megapixels 5 \(the smallest has 12,000,000 pixels, "
                       r"12 MP, where the limit allows 5,000,000\)"):
        select_images([12_000_000, 13_000_000], max_images=8, max_megapixels=5)
    with pytest.raises(ConfigError) as small:  # said "the smallest has 0.0 MP", below the limit it was over
        select_images([96 * 96, 100 * 100], max_images=8, max_megapixels=0.009)
    assert "the smallest has 9,216 pixels, 0.009216 MP, where the limit allows 9,000)" in str(small.value)


def test_a_large_group_is_read_in_part_with_one_warning(tmp_path: Path, caplog) -> None:
    photo = read_image(HR / "coffee.png").pixels[:40, :50]
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"img{i:02d}.png")
        write_image(paths[-1], np.ascontiguousarray(np.roll(photo, i, axis=1)))
    with caplog.at_level(logging.WARNING):
        loaded = load_group_images(_group(*paths), max_images=3)
    assert [p.name for p in loaded.group.paths] == ["img01.png", "img05.png", "img08.png"]
    assert len(loaded.images) == 3 and loaded.readable == 10 and loaded.limited_by == "--max-images 3"
    assert np.allclose(loaded.images[1], read_image(paths[5]).pixels / 255.0, atol=1e-6)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "reading 3 of its 10 images" in warning and "--max-images 3" in warning
    by_pixels = load_group_images(_group(*paths), max_megapixels=40 * 50 * 4 / 1e6)
    assert len(by_pixels.images) == 4 and by_pixels.limited_by == "--max-megapixels 0.008"


def test_an_image_over_the_reader_limit_is_left_out_with_the_right_advice(tmp_path: Path) -> None:
    """A 144 MP image: "raise --max-megapixels" was the advice, and following it met the reader's 100 MP
    limit ("downscale it first")."""
    from tests.runtime.test_images import _png_claiming

    huge = tmp_path / "huge.png"  # the header claims 12000 x 12000; no pixel is decoded
    huge.write_bytes(_png_claiming(12_000, 12_000))
    with pytest.raises(ImageError, match="above the reader's limit of 100,000,000; downscale it first"):
        load_group_images(_group(huge), max_megapixels=200)
    small = tmp_path / "small.png"
    write_image(small, read_image(HR / "coffee.png").pixels[:40, :50].copy())
    loaded = load_group_images(_group(huge, small), max_megapixels=200)
    assert [p.name for p in loaded.group.paths] == ["small.png"] and "downscale it first" in loaded.unreadable[0][1]


def test_the_limits_are_validated() -> None:
    from adassr.adapt.config import AdaptConfig

    with pytest.raises(ConfigError, match="--max-images must be > 0"):
        AdaptConfig(max_images=0)
    with pytest.raises(ConfigError, match="--max-megapixels must be a finite number"):
        AdaptConfig(max_megapixels=float("nan"))


def test_gpu_defaults_are_the_papers_with_bounded_weight_map_inputs() -> None:
    """The paper's settings (§IV-A3) on a GPU; images beyond 1024 LR px get their weight map from a
    resized copy, and the GPU reads more images of a group than the CPU budget."""
    from adassr.adapt.config import AdaptConfig, cpu_demo_defaults, gpu_defaults

    gpu, paper = gpu_defaults(), AdaptConfig()
    settings = (gpu.steps, gpu.lr, gpu.batch, gpu.ema_decay, gpu.prox_mu, gpu.eval_every)
    assert settings == (1500, 1e-4, 4, 0.999, 1e-4, 100)
    assert gpu.attention.max_side == 1024 and paper.attention.max_side is None
    assert gpu.max_images == 64 and cpu_demo_defaults().max_images == 8
    assert gpu.max_megapixels == 200.0 and cpu_demo_defaults().max_megapixels == 100.0


def _truncated(path: Path, good: Path) -> Path:
    """A file whose header reads as the photo's (its size) but whose pixel data stops halfway."""
    data = good.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_a_selected_image_that_does_not_decode_gives_its_place_to_another(tmp_path: Path) -> None:
    """--max-images 1 picked the middle file, truncated behind a good header, and the group failed
    although two other images were fine (a helper's bug hunt)."""
    photo = read_image(HR / "coffee.png").pixels[:60, :80]
    a, c = tmp_path / "a.png", tmp_path / "c.png"
    write_image(a, np.ascontiguousarray(photo))
    write_image(c, np.ascontiguousarray(photo[::-1]))
    b = _truncated(tmp_path / "b.png", a)
    loaded = load_group_images(_group(a, b, c), max_images=1)
    assert len(loaded.images) == 1 and loaded.group.paths[0] in (a, c)
    assert [Path(p).name for p, _ in loaded.unreadable] == ["b.png"]
    loaded = load_group_images(_group(a, b, c), max_images=2)
    assert loaded.group.paths == (a, c)


def _damaged_big_and_small(folder: Path, count: int) -> tuple[Path, list[Path]]:
    """A 300 px photo truncated behind a good header, and ``count`` readable 110 px ones."""
    photo = read_image(HR / "coffee.png").pixels
    big = write_image(folder / "a_big.png", np.ascontiguousarray(np.tile(photo[:100, :100], (3, 3, 1))))
    _truncated(big, big)
    small = [write_image(folder / f"s{k}.png", np.ascontiguousarray(photo[k * 5 : k * 5 + 110, :110]))
             for k in range(count)]
    return big, small


def test_small_images_serve_when_the_only_large_one_does_not_decode(tmp_path: Path, caplog) -> None:
    """A 300 px photo truncated behind a good header made the two usable 110 px ones "too small", and
    then the group failed as unreadable."""
    big, small = _damaged_big_and_small(tmp_path, 2)
    with caplog.at_level(logging.WARNING):
        loaded = load_group_images(_group(big, *small), min_side=121)
    assert loaded.group.paths == tuple(small) and loaded.too_small == ()
    assert any("that were tried failed to decode" in r.getMessage() for r in caplog.records)


def test_the_minimum_size_is_the_bicubic_kernels_not_the_default_estimate_size(caplog) -> None:
    """`--kernel bicubic --patch 8` refused three 64 px images: "each side must be at least 72 LR pixels (...
    with a 21x21 kernel)", the size an estimated kernel may have; the bicubic one needs 62."""
    from adassr.adapt.groups import CameraGroup, GroupMember
    from adassr.adapt.pairs import PairConfig, min_image_size
    from adassr.adapt.run import _usable_images_and_kernel

    config = PairConfig(scale=4, lr_patch=8)
    photo = read_image(HR / "coffee.png").pixels
    images = [np.ascontiguousarray(photo[k * 20 : k * 20 + 64, k * 20 : k * 20 + 64] / 255.0, dtype=np.float32)
              for k in range(3)]
    group = CameraGroup("cam", tuple(GroupMember(Path(f"/x/{k}.png"), "folder") for k in range(3)))
    assert min_image_size(config) > 64 >= min_image_size(config, (16, 16))
    used, kernel, usable = _usable_images_and_kernel(images, group, config, "bicubic")
    assert len(used) == 3 and usable.config.lr_patch == 8 and np.asarray(kernel.kernel).shape == (16, 16)


def test_the_small_image_fallback_keeps_the_image_limits(tmp_path: Path) -> None:
    """When the only large image did not decode, every small one was read, whatever --max-images said."""
    big, small = _damaged_big_and_small(tmp_path, 6)
    loaded = load_group_images(_group(big, *small), min_side=121, max_images=2)
    assert len(loaded.images) == 2 and loaded.limited_by is not None


def test_a_group_image_with_transparent_pixels_is_named_in_a_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """adapt trained on the colours hidden under transparent pixels without saying so (a transparent black
    border pulled the kernel's direction onto its edge) (a helper's review)."""
    import logging

    import numpy as np

    from adassr.adapt.groups import GroupMember
    from adassr.adapt.run import _decode_members
    from adassr.runtime.images import write_image

    pixels = np.full((20, 30, 3), 120, np.uint8)
    alpha = np.full((20, 30), 255, np.uint8)
    alpha[:, :6] = 0  # a fifth of the image
    write_image(tmp_path / "cut.png", pixels, alpha=alpha)
    write_image(tmp_path / "opaque.png", pixels, alpha=np.full((20, 30), 255, np.uint8))
    errors: list = []
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        decoded, images = _decode_members([GroupMember(tmp_path / "cut.png", "folder"),
                                           GroupMember(tmp_path / "opaque.png", "folder")], errors)
    assert len(decoded) == 2 and not errors and images[0].shape == (20, 30, 3)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "cut.png: 20% of its pixels are transparent; adaptation trains on the colours stored under them" in message
    caplog.clear()
    nearly = np.full((20, 30), 254, np.uint8)  # a shade short of opaque everywhere: not see-through
    nearly[0, :2] = 0
    write_image(tmp_path / "nearly.png", pixels, alpha=nearly)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        _decode_members([GroupMember(tmp_path / "nearly.png", "folder")], errors)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "nearly.png: under 1% of its pixels are transparent" in message  # 2 of 600, never "100%"


def test_a_progressive_jpeg_cut_between_scans_is_left_out_of_the_adaptation(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A progressive JPEG cut between two scans reads blurred (its refinement scans are missing): adapt trained
    on it, and its missing detail read as the camera's blur to the kernel estimate. It is left out, named in
    the errors (one warning and the manifest's images_skipped); other notes are still logged."""
    import io
    import logging

    import numpy as np
    from PIL import Image

    from adassr.adapt.groups import GroupMember
    from adassr.adapt.run import _decode_members

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[:data.rindex(b"\xff\xda")] + b"\xff\xd9")
    pages = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (30, 90)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    errors: list = []
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        decoded, _ = _decode_members([GroupMember(tmp_path / name, "folder")
                                      for name in ("whole.jpg", "cut.jpg", "pages.tif")], errors)
    assert [m.path.name for m in decoded] == ["whole.jpg", "pages.tif"]
    ((path, error),) = errors
    assert path == str(tmp_path / "cut.jpg")
    assert "the progressive JPEG's scans stop before its picture is complete" in str(error)
    assert str(error).endswith("left out of the adaptation: its missing detail would read as the camera's blur")
    (logged,) = [r.getMessage() for r in caplog.records]
    assert "pages.tif: holds more than one page" in logged  # the other notes are still logged


def test_copies_of_one_photo_are_left_out_with_one_warning_and_recorded(files: dict[str, Path], tmp_path: Path,
                                                                       caplog) -> None:  # type: ignore[no-untyped-def]
    """Five copies of one photo were a five-image group: it weighed five times in training and in the
    early stop's score, and the only message invited reading more of the copies (a helper's hunt)."""
    import shutil

    copies = [shutil.copyfile(files["good"], tmp_path / f"copy{k}.png") for k in range(3)]
    same_size_other = tmp_path / "other.png"  # the same byte count and pixel size, other bytes: kept
    data = bytearray(files["good"].read_bytes())
    data[-20] ^= 1  # a different file of the same length
    same_size_other.write_bytes(bytes(data))
    group = _group(files["good"], *map(Path, copies), files["gray"], same_size_other)
    with caplog.at_level(logging.WARNING):
        loaded = load_group_images(group, max_images=3)
    assert loaded.group.paths[:2] == (files["good"], files["gray"])
    assert [(Path(p).name, Path(q).name) for p, q in loaded.duplicates] == [
        ("copy0.png", "good.png"), ("copy1.png", "good.png"), ("copy2.png", "good.png")]
    warned = [r.getMessage() for r in caplog.records if "same bytes" in r.getMessage()]
    assert len(warned) == 1 and "left out 3 file(s)" in warned[0] and "copy2.png (= " in warned[0]
    seen = {p.name for p in loaded.group.paths} | {Path(p).name for p, _ in loaded.unreadable}
    assert "other.png" in seen  # decoded (or refused for its damage), never taken for a copy


def test_an_image_exactly_the_minimum_size_is_used_and_a_smaller_one_counted_readable(tmp_path: Path) -> None:
    """``min_side`` is the least side that serves: an image of exactly that side is read, not named too small;
    one under it is left out but counted among the readable headers (the manifest's selection.readable)."""
    photo = read_image(HR / "coffee.png").pixels
    large, exact, small = tmp_path / "a_large.png", tmp_path / "b_exact.png", tmp_path / "c_small.png"
    write_image(large, np.ascontiguousarray(photo[:80, :90]))
    write_image(exact, np.ascontiguousarray(photo[10:60, 5:75]))  # 70 x 50
    write_image(small, np.ascontiguousarray(photo[20:69, :70]))  # 70 x 49
    loaded = load_group_images(_group(large, exact, small), min_side=50)
    assert loaded.group.paths == (large, exact)
    assert loaded.too_small == ((str(small), 70, 49),)
    assert loaded.readable == 3


def test_images_replacing_undecodable_ones_keep_the_pixel_budget(tmp_path: Path) -> None:
    """A chosen file that does not decode gives its place to another only within --max-megapixels."""
    photo = read_image(HR / "coffee.png").pixels
    big, bad, good = tmp_path / "a_big.png", tmp_path / "b_bad.png", tmp_path / "c_good.png"
    write_image(big, np.ascontiguousarray(photo[:100, :80]))  # 8000 px: over the 4500 px budget
    _truncated(bad, write_image(bad, np.ascontiguousarray(photo[:50, :40])))  # 2000 px, header good
    write_image(good, np.ascontiguousarray(photo[50:100, 40:80]))  # 2000 px
    loaded = load_group_images(_group(big, bad, good), max_megapixels=0.0045)
    assert loaded.group.paths == (good,)
    # two chosen files fail: the first replacement counts against the budget of the second
    folder = tmp_path / "two"
    folder.mkdir()
    a, t1, c, t2 = (folder / f"{n}.png" for n in ("a", "t1", "c", "t2"))
    write_image(a, np.ascontiguousarray(photo[:50, :40]))  # 2000 px
    _truncated(t1, write_image(t1, np.ascontiguousarray(photo[50:100, :40])))
    write_image(c, np.ascontiguousarray(photo[:100, 40:80]))  # 4000 px: fits alone, not beside a
    _truncated(t2, write_image(t2, np.ascontiguousarray(photo[100:150, :40])))
    loaded = load_group_images(_group(a, t1, c, t2), max_images=2, max_megapixels=0.0045)
    assert loaded.group.paths == (a,)
    assert sum(im.shape[0] * im.shape[1] for im in loaded.images) <= 4500


def test_replacements_keep_the_groups_name_order(tmp_path: Path) -> None:
    """The image read in place of one that does not decode takes its place in name order."""
    photo = read_image(HR / "coffee.png").pixels
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    _truncated(a, write_image(a, np.ascontiguousarray(photo[:60, :80])))
    write_image(b, np.ascontiguousarray(photo[60:120, :80]))
    write_image(c, np.ascontiguousarray(photo[:60, 80:160]))
    loaded = load_group_images(_group(a, b, c), max_images=2)  # chooses a and c; b takes a's place
    assert loaded.group.paths == (b, c)
    assert np.allclose(loaded.images[0], read_image(b).pixels / 255.0, atol=1e-6)


def test_images_too_small_for_the_estimated_kernel_are_named_and_left_out(caplog) -> None:
    """An image the header check let through but too small for the patch with the kernel's margin is
    left out of the kernel estimate and of training, with one warning naming it; the kernel's
    diagnostics name the images its indices count (a flat one among them)."""
    from adassr.adapt.pairs import PairConfig
    from adassr.adapt.run import _usable_images_and_kernel

    photo = read_image(HR / "coffee.png").pixels
    small = np.ascontiguousarray(photo[:40, :40] / 255.0, dtype=np.float32)
    flat = np.full((150, 150, 3), 0.5, np.float32)
    textured = np.ascontiguousarray(photo[:130, :130] / 255.0, dtype=np.float32)
    names = ("/x/a_small.png", "/x/b_flat.png", "/x/c_textured.png")
    group = CameraGroup("cam", tuple(GroupMember(Path(n), "folder") for n in names))
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"):
        used, kernel, usable = _usable_images_and_kernel([small, flat, textured], group,
                                                          PairConfig(scale=4, lr_patch=12), "estimate")
    assert len(used) == 2 and used[0] is flat and used[1] is textured and usable.indices == (1, 2)
    diag = kernel.diagnostics
    assert diag["image_paths"] == ["/x/b_flat.png", "/x/c_textured.png"]
    assert [diag["image_paths"][i] for i in diag["images_skipped_flat"]] == ["/x/b_flat.png"]
    assert all(0 <= i < 2 for i in diag["images_used"])
    (message,) = [r.getMessage() for r in caplog.records if "a_small.png" in r.getMessage()]
    assert "camera group 'cam': skipped 1 image(s)" in message and "/x/a_small.png (40x40)" in message
    from adassr.adapt.run import _pairs_record

    record = _pairs_record(usable, list(names[1:]), (), requested_lr_patch=12)
    assert record["images_skipped"] == [{"path": "/x/a_small.png", "width": 40, "height": 40,
                                         "reason": f"smaller than {usable.minimum} LR px per side"}]


def test_a_12_bit_camera_image_trains_at_its_sample_range_as_upscale_serves_it(tmp_path: Path) -> None:
    """A 16-bit file of 12-bit samples was divided by 65535 for training while upscale now serves it divided
    by 4095: the adapted model would have learnt a 16 times darker camera than the one it serves."""
    import numpy as np

    from adassr.adapt.groups import GroupMember
    from adassr.adapt.run import _decode_members
    from adassr.runtime.images import write_image

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 4096, (30, 40, 3)).astype(np.uint16)
    pixels[0, 0] = 4095
    write_image(tmp_path / "scope.tif", pixels)
    full = pixels.astype(np.uint16) * 16  # the same at 16 bits' range: served as it is
    write_image(tmp_path / "full.png", full)
    errors: list = []
    _, (twelve, sixteen) = _decode_members([GroupMember(tmp_path / "scope.tif", "folder"),
                                            GroupMember(tmp_path / "full.png", "folder")], errors)
    assert errors == []
    np.testing.assert_allclose(twelve, pixels / 4095.0, atol=1e-6)
    assert twelve.max() == 1.0
    np.testing.assert_allclose(sixteen, full / 65535.0, atol=1e-6)


def test_12_bit_grey_and_transparent_images_train_at_the_range_of_all_their_samples(tmp_path: Path) -> None:
    """Grey images, images with alpha and images whose brightest sample is the last row's blue are all
    divided by their sample range over every pixel and channel (upscale's :func:`used_peak`), and so are
    --external-hr images."""
    import numpy as np

    from adassr.adapt.external import load_external_images
    from adassr.adapt.groups import GroupMember
    from adassr.adapt.run import _decode_members
    from adassr.runtime.images import write_image

    rng = np.random.default_rng(6)
    grey = rng.integers(0, 1024, (30, 40)).astype(np.uint16)
    grey[-1, -1] = 4095
    rgb = rng.integers(0, 1024, (30, 40, 3)).astype(np.uint16)
    rgb[-1, -1, 2] = 4095
    alpha = np.full((30, 40), 65535, np.uint16)
    paths = [write_image(tmp_path / "grey.png", grey), write_image(tmp_path / "rgb.png", rgb),
             write_image(tmp_path / "rgba.png", rgb, alpha=alpha)]
    errors: list = []
    _, images = _decode_members([GroupMember(Path(p), "folder") for p in paths], errors)
    assert errors == [] and len(images) == 3
    np.testing.assert_allclose(images[0], np.repeat(grey[..., None], 3, axis=2) / 4095.0, atol=1e-6)
    for image in images[1:]:
        np.testing.assert_allclose(image, rgb / 4095.0, atol=1e-6)
    external = load_external_images([Path(p) for p in paths[:2]], min_side=8, root=tmp_path)
    np.testing.assert_allclose(external[0], images[0], atol=1e-6)
    np.testing.assert_allclose(external[1], images[1], atol=1e-6)
