"""Whole-run problems of ``adassr upscale`` are reported once, before the first image, with exit 2;
problems of one image stay per image (exit 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.runtime.images import write_image
from adassr.runtime.store import CameraStore

from ._models import publish_camera


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        write_image(folder / f"p{k}.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return folder


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    publish_camera(root, "_fallback")
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["upscale", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _once(err: str, text: str) -> None:
    assert err.count(text) == 1, err
    assert "(skipped)" not in err and "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/sys").is_dir(), reason="needs Linux /proc/sys (a folder nobody can write)")
def test_unwritable_output_folder(capsys: pytest.CaptureFixture[str], photos: Path, store: Path) -> None:
    code, out, err = _run(capsys, "-i", str(photos), "-o", "/proc/sys", "--store", str(store))
    assert code == 2 and out == ""
    _once(err, "is not writable")


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_invalid_threads(capsys: pytest.CaptureFixture[str], photos: Path, store: Path, tmp_path: Path,
                         threads: str) -> None:
    code, out, err = _run(capsys, "-i", str(photos), "-o", str(tmp_path / "out"), "--store", str(store),
                          "--threads", threads)
    assert code == 2 and out == ""
    _once(err, "--threads must be an integer from 1")
    assert not (tmp_path / "out").exists()


def test_required_provider_unavailable(capsys: pytest.CaptureFixture[str], photos: Path, store: Path,
                                       tmp_path: Path) -> None:
    code, out, err = _run(capsys, "-i", str(photos), "-o", str(tmp_path / "out"), "--store", str(store),
                          "--providers", "cuda,cpu", "--require-providers")
    assert code == 2 and out == ""
    _once(err, "CUDAExecutionProvider not available")


def test_store_whose_model_cannot_be_opened(capsys: pytest.CaptureFixture[str], photos: Path, store: Path,
                                            tmp_path: Path) -> None:
    model = CameraStore.open(store, "_fallback").artifact_path("model.onnx")
    model.write_bytes(model.read_bytes()[:100])
    code, out, err = _run(capsys, "-i", str(photos), "-o", str(tmp_path / "out"), "--store", str(store))
    assert code == 2 and out == ""
    _once(err, "fails its checksum")
    assert not list((tmp_path / "out").glob("*.png"))


def test_empty_store_without_the_first_run_export(photos: Path, tmp_path: Path) -> None:
    import argparse

    from adassr.runtime.errors import StoreError
    from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale

    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    (tmp_path / "empty").mkdir()
    args = parser.parse_args(["-i", str(photos), "-o", str(tmp_path / "out"), "--store", str(tmp_path / "empty")])
    with pytest.raises(StoreError, match="holds no exported model"):
        run_upscale(args)


def test_torch_backend_with_a_missing_store(capsys: pytest.CaptureFixture[str], photos: Path,
                                            tmp_path: Path) -> None:
    pytest.importorskip("torch")
    code, out, err = _run(capsys, "-i", str(photos), "-o", str(tmp_path / "out"), "--backend", "torch",
                          "--store", str(tmp_path / "no-such-store"))
    assert code == 2 and out == ""
    _once(err, "no-such-store does not exist")


@pytest.mark.parametrize("name", ["result.gif", "x.bmp", "y.heic"])
def test_unwritable_output_suffix_is_an_error_not_a_folder(capsys: pytest.CaptureFixture[str], photos: Path,
                                                           store: Path, tmp_path: Path, name: str) -> None:
    for source in (photos / "p0.png", photos):
        code, out, err = _run(capsys, "-i", str(source), "-o", str(tmp_path / name), "--store", str(store))
        assert code == 2 and out == ""
        _once(err, "is not a writable format")
        assert not (tmp_path / name).exists()


def test_per_image_problems_stay_per_image(capsys: pytest.CaptureFixture[str], photos: Path, store: Path,
                                           tmp_path: Path) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = _run(capsys, "-i", str(photos), "-o", str(tmp_path / "out"), "--store", str(store))
    assert code == 1
    assert err.count("(skipped)") == 1 and "broken.png" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png", "p2.png"]
