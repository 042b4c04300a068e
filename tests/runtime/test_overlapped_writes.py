"""A folder run writes each image's file in the background while the next image is upscaled (models on a
GPU or a server): same files, same report in input order, failures and interrupts handled per file."""

from __future__ import annotations

import argparse
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from adassr.runtime import upscale_cli
from adassr.runtime.images import LoadedImage, PreparedWrite, read_image, write_image
from adassr.runtime.pipeline import RuntimeOptions, UpscaleResult
from adassr.runtime.upscale_cli import overlap_fits, run_batch

HR = Path(__file__).resolve().parents[1] / "data" / "hr"


def _photos(folder: Path, count: int) -> list[Path]:
    """``count`` different crops of a real photo (PNG)."""
    folder.mkdir()
    photo = read_image(HR / "coffee.png").pixels
    paths = []
    for k in range(count):
        path = folder / f"img{k}.png"
        write_image(path, np.ascontiguousarray(photo[10 * k : 10 * k + 40, 20 * k : 20 * k + 56]))
        paths.append(path)
    return paths


def _serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
    return UpscaleResult(pixels=np.repeat(np.repeat(image.pixels, 2, 0), 2, 1), alpha=None, bit_depth=8,
                         scale=2, outscale=2.0, model_name="x2")


def _pairs(sources: list[Path], out: Path, suffix: str = ".png") -> list[tuple[Path, Path]]:
    return [(s, out / (s.stem + suffix)) for s in sources]


def test_the_write_of_one_image_overlaps_the_upscale_of_the_next(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _photos(tmp_path / "in", 3)
    second_started = threading.Event()
    seen: dict[str, object] = {}
    real_write = upscale_cli._write_one

    def write(prepared: PreparedWrite) -> None:
        if prepared.path.name == "img0.png":
            seen["thread"] = threading.current_thread().name
            seen["overlapped"] = second_started.wait(timeout=30)  # img1's upscale begins while img0 is written
        real_write(prepared)

    def serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
        if image.path is not None and image.path.name == "img1.png":
            second_started.set()
        return _serve(image, tiles, check)

    monkeypatch.setattr(upscale_cli, "_write_one", write)
    out = io.StringIO()
    assert run_batch(_pairs(sources, tmp_path / "out"), serve, progress=False, stdout=out, stderr=io.StringIO(),
                     overlap_writes=True) == 0
    assert seen == {"thread": seen["thread"], "overlapped": True} and str(seen["thread"]).startswith("adassr-write")
    assert "3 ok, 0 failed" in out.getvalue()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_overlapped_and_plain_runs_write_the_same_files_and_report_alike(tmp_path: Path, suffix: str) -> None:
    sources = _photos(tmp_path / "in", 4)
    reports = {}
    for overlap in (False, True):
        folder = tmp_path / f"out_{overlap}"
        out, err = io.StringIO(), io.StringIO()
        assert run_batch(_pairs(sources, folder, suffix), _serve, progress=False, stdout=out, stderr=err,
                         overlap_writes=overlap) == 0
        lines = out.getvalue().splitlines()
        reports[overlap] = ([line.replace(str(folder), "OUT") for line in lines[:-1]], err.getvalue())
    assert reports[True] == reports[False]
    assert [line.split(" -> ")[0] for line in reports[True][0]] == [str(s) for s in sources]  # input order
    for source in sources:
        name = source.stem + suffix
        assert (tmp_path / "out_True" / name).read_bytes() == (tmp_path / "out_False" / name).read_bytes()


def test_a_background_write_that_fails_is_reported_for_its_file_in_order(tmp_path: Path) -> None:
    sources = _photos(tmp_path / "in", 3)
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    (out_folder / "img1.png").mkdir()  # a folder where img1's output goes: its write fails
    out, err = io.StringIO(), io.StringIO()
    assert run_batch(_pairs(sources, out_folder), _serve, progress=False, stdout=out, stderr=err,
                     overlap_writes=True) == 1
    assert "img1.png" in err.getvalue() and "(skipped)" in err.getvalue()
    done = [line.split(" -> ")[0] for line in out.getvalue().splitlines() if "[model" in line]
    assert done == [str(sources[0]), str(sources[2])]
    assert "2 ok, 1 failed" in out.getvalue().splitlines()[-1]
    assert read_image(out_folder / "img2.png").pixels.shape == (80, 112, 3)


def test_an_interrupt_completes_and_reports_the_write_in_flight(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _photos(tmp_path / "in", 3)
    writing = threading.Event()
    real_write = upscale_cli._write_one

    def write(prepared: PreparedWrite) -> None:
        writing.set()
        real_write(prepared)

    def serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
        if image.path is not None and image.path.name == "img1.png":
            assert writing.wait(timeout=30)  # img0 is being written in the background
            raise KeyboardInterrupt
        return _serve(image, tiles, check)

    monkeypatch.setattr(upscale_cli, "_write_one", write)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_batch(_pairs(sources, tmp_path / "out"), serve, progress=False, stdout=out, stderr=io.StringIO(),
                  overlap_writes=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png"]  # whole, no temporary files
    assert read_image(tmp_path / "out" / "img0.png").pixels.shape == (80, 112, 3)
    assert f"{sources[0]} -> " in out.getvalue()


def test_an_output_too_large_for_the_memory_is_written_in_the_foreground(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _photos(tmp_path / "in", 2)
    threads: list[str] = []
    real_write = upscale_cli._write_one

    def write(prepared: PreparedWrite) -> None:
        threads.append(threading.current_thread().name)
        real_write(prepared)

    monkeypatch.setattr(upscale_cli, "_write_one", write)
    monkeypatch.setattr(upscale_cli, "mem_available_bytes", lambda: 4 * 80 * 112 * 3 - 1)  # one byte short
    assert run_batch(_pairs(sources, tmp_path / "out"), _serve, progress=False, stdout=io.StringIO(),
                     stderr=io.StringIO(), overlap_writes=True) == 0
    assert threads == [threading.current_thread().name] * 2


def test_overlap_fits_the_memory_rule() -> None:
    assert overlap_fits(100, 400) and not overlap_fits(101, 400)
    assert overlap_fits(upscale_cli.OVERLAP_MAX_BYTES_UNKNOWN, None)
    assert not overlap_fits(upscale_cli.OVERLAP_MAX_BYTES_UNKNOWN + 1, None)


@pytest.mark.parametrize(("backend", "providers", "device", "on_cpu"), [
    ("onnxruntime", ("cpu",), "auto", True),
    ("onnxruntime", ("cuda", "cpu"), "auto", False),
    ("onnxruntime", ("tensorrt", "cuda", "cpu"), "auto", False),
    ("tensorrt", ("cpu",), "auto", False),
    ("torch", ("cpu",), "cpu", True),
    ("torch", ("cpu",), "cuda", False),
])
def test_writes_overlap_only_where_the_model_leaves_the_cores_idle(backend: str, providers: tuple[str, ...],
                                                                    device: str, on_cpu: bool) -> None:
    options = RuntimeOptions("models", backend=backend, providers=providers)
    assert upscale_cli._runs_on_cpu(argparse.Namespace(device=device), options) is on_cpu


@pytest.mark.parametrize("overlap", [False, True])
def test_an_output_is_not_held_through_the_next_images_upscale(tmp_path: Path, overlap: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Once written, an output's pixels are released: the next image's upscale does not hold them (before, the
    loop's variable kept the last output alive through the next upscale, written or not)."""
    import gc
    import time
    import weakref

    sources = _photos(tmp_path / "in", 3)
    made: list[weakref.ref[np.ndarray]] = []
    alive_at: dict[str, int] = {}
    written = threading.Semaphore(0)
    real_write = upscale_cli._write_one

    def write(prepared: PreparedWrite) -> None:
        real_write(prepared)
        written.release()

    def serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
        assert image.path is not None
        if made:
            assert written.acquire(timeout=30)  # the previous output is written (in the background or not)
            deadline = time.monotonic() + 5  # the executor drops its work item right after the write returns
            while any(ref() is not None for ref in made) and time.monotonic() < deadline:
                gc.collect()
                time.sleep(0.01)
        alive_at[image.path.name] = sum(ref() is not None for ref in made)
        result = _serve(image, tiles, check)
        made.append(weakref.ref(result.pixels))
        return result

    monkeypatch.setattr(upscale_cli, "_write_one", write)
    assert run_batch(_pairs(sources, tmp_path / "out"), serve, progress=False, stdout=io.StringIO(),
                     stderr=io.StringIO(), overlap_writes=overlap) == 0
    assert alive_at == {"img0.png": 0, "img1.png": 0, "img2.png": 0}


def test_an_interrupt_while_a_result_is_reported_reports_it_once(tmp_path: Path) -> None:
    sources = _photos(tmp_path / "in", 3)

    class Interrupting(io.StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            if " -> " in text:
                raise KeyboardInterrupt
            return written

    out = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        run_batch(_pairs(sources, tmp_path / "out"), _serve, progress=False, stdout=out, stderr=io.StringIO(),
                  overlap_writes=True)
    assert out.getvalue().count(" -> ") == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_a_missing_package_in_the_writer_ends_the_run(tmp_path: Path, overlap: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the background writes: an ImportError is the whole run's problem (its install advice), not a
    failed file."""
    sources = _photos(tmp_path / "in", 3)

    def write(prepared: PreparedWrite) -> None:
        raise ImportError("No module named 'cv2'")

    monkeypatch.setattr(upscale_cli, "_write_one", write)
    with pytest.raises(ImportError, match="cv2"):
        run_batch(_pairs(sources, tmp_path / "out"), _serve, progress=False, stdout=io.StringIO(),
                  stderr=io.StringIO(), overlap_writes=overlap)


@pytest.mark.parametrize("providers", ["cpu", "cuda,cpu"])
def test_the_opened_model_decides_whether_writes_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         providers: str) -> None:
    """A run that asks for CUDA but whose session falls back to the CPU (no CUDA here) keeps its writes in line:
    the cores compute the model."""
    import onnxruntime as ort

    from adassr.runtime.store import FALLBACK_CAMERA
    from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale

    from ._models import publish_camera

    if providers != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: the fallback to the CPU is what is tested")
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    _photos(tmp_path / "in", 2)
    seen: list[bool] = []
    real = upscale_cli.run_batch

    def spy(*args: object, **kwargs: object) -> int:
        seen.append(bool(kwargs.get("overlap_writes")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(upscale_cli, "run_batch", spy)
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    args = parser.parse_args(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--store", str(store),
                              "--providers", providers, "--no-progress"])
    assert run_upscale(args, stdout=io.StringIO(), stderr=io.StringIO()) == 0
    assert seen == [False]  # the model computes on the CPU either way


def test_an_upscale_that_fails_is_reported_after_the_image_before_it(tmp_path: Path) -> None:
    """Reports come in input order on one terminal: img1's error after img0's line, whose write was still
    in flight when img1 failed (mutation testing). The error line names its file."""
    from adassr.runtime.errors import BackendError

    sources = _photos(tmp_path / "in", 3)

    def serve(image: LoadedImage, tiles: object, check: object) -> UpscaleResult:
        if image.path is not None and image.path.name == "img1.png":
            raise BackendError("the model failed")
        return _serve(image, tiles, check)

    both = io.StringIO()  # stdout and stderr on one terminal
    assert run_batch(_pairs(sources, tmp_path / "out"), serve, progress=False, stdout=both, stderr=both,
                     overlap_writes=True) == 1
    lines = [line for line in both.getvalue().splitlines() if "[model" in line or line.startswith("error:")]
    assert [line.split(" -> ")[0] for line in lines] == [str(sources[0]), f"error: {sources[1]}: the model failed "
                                                         "(skipped)", str(sources[2])]
