"""``adassr upscale --triton URL``: argument checks and an unreachable server (always), and a folder
upscaled through a real tritonserver (opt-in, as in test_triton_client.py: set
``ADASSR_PYTRITON_PYTHON`` to a Python 3.12 with ``nvidia-pytriton`` and ``onnxruntime``, and
``ADASSR_PYTRITON_LIBDIR`` to the folder of its ``libpython3.12.so.1.0`` if the loader needs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.export.triton_repo import TritonRepoOptions, write_repository
from adassr.runtime.images import read_image
from adassr.runtime.store import FALLBACK_CAMERA

from ._models import publish_camera
from ._server import SAMPLES, free_ports, small_jpeg_with_exif, upscale_cli

ROOT = Path(__file__).resolve().parents[2]
PYTRITON_PYTHON = os.environ.get("ADASSR_PYTRITON_PYTHON")


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "in.jpg"
    path.write_bytes(small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--triton-model", "adassr_canon"], "need --triton URL"),
        (["--triton-prefix", "fleet_"], "need --triton URL"),
        (["--triton", "localhost:8000", "--triton-model", "adassr_canon", "--camera", "canon"], "give one of them"),
        (["--triton", "https://localhost:8000"], "https is not supported"),
        (["--triton", ":8000"], "host:port"),
        (["--triton", "localhost:abc"], "Port could not be cast"),  # these three used to end in a traceback
        (["--triton", "localhost:99999"], "out of range"),
        (["--triton", "http://[::1"], "Invalid IPv6 URL"),
        (["--triton", "localhost:8000", "--camera", "../x"], "camera"),
        (["--triton", "localhost:8000", "--outscale", "0"], "outscale"),
    ],
)
def test_bad_triton_arguments_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code = main(["upscale", "-i", str(_image(tmp_path)), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_unreachable_server_is_one_line_exit_2_without_torch(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    out = tmp_path / "out"
    code = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _Block())
from adassr.cli import main
rc = main(['upscale', '-i', {str(_image(tmp_path))!r}, '-o', {str(out)!r}, '--triton', 'http://127.0.0.1:{port}'])
assert 'torch' not in sys.modules
sys.exit(rc)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: cannot reach a Triton server at 127.0.0.1:{port} ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_missing_tritonclient_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # import tritonclient raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    code = main(["upscale", "-i", str(_image(tmp_path)), "-o", str(tmp_path / "out"), "--triton", "localhost:8000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install -e '" in err and "[serve]'" in err, err


# -- through a real tritonserver (opt-in) ----------------------------------------------------------
@contextmanager
def _pytriton(repo: Path, models: list[str], tmp_path: Path) -> Iterator[str]:
    """A tritonserver (PyTriton) serving ``models`` of ``repo``; yields its HTTP ``host:port`` once all are ready."""
    import tritonclient.http as httpclient

    http, grpc, metrics = free_ports(3)
    env = dict(os.environ)
    if os.environ.get("ADASSR_PYTRITON_LIBDIR"):
        env["LD_LIBRARY_PATH"] = os.environ["ADASSR_PYTRITON_LIBDIR"] + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    script = Path(__file__).with_name("_pytriton_server.py")
    log_path = tmp_path / "triton.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(PYTRITON_PYTHON), str(script), str(repo), ",".join(models), str(http), str(grpc), str(metrics)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        try:
            url = f"127.0.0.1:{http}"
            client = httpclient.InferenceServerClient(url)
            deadline = time.monotonic() + 180
            while True:
                try:
                    if all(client.is_model_ready(m) for m in models):
                        break
                except Exception:  # noqa: BLE001, S110 - not up yet
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "tritonserver did not load the models in time"
                time.sleep(0.5)
            client.close()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _max_diff(a: Path, b: Path) -> int:
    return int(np.abs(read_image(a).pixels.astype(np.int32) - read_image(b).pixels.astype(np.int32)).max())


@pytest.mark.skipif(not PYTRITON_PYTHON, reason="set ADASSR_PYTRITON_PYTHON to a Python 3.12 with nvidia-pytriton")
def test_upscale_folder_through_a_real_tritonserver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    repo = tmp_path / "repo"
    write_repository(repo, store, options=TritonRepoOptions(tile=32, instance_kind="KIND_CPU"))
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_canon.jpg").write_bytes(small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48))
    (src / "b_nokia.jpg").write_bytes(small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", 40))
    (src / "c_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    tiling = ("--tile", "32", "--tile-overlap", "8", "--ext", "png", "--no-progress")
    local = tmp_path / "local"
    assert upscale_cli("-i", str(src), "-o", str(local), "--store", str(store), *tiling)[0] == 1

    with _pytriton(repo, ["adassr_canon", f"adassr_{FALLBACK_CAMERA}"], tmp_path) as url:
        out = tmp_path / "out"
        code, stdout, stderr = upscale_cli("-i", str(src), "-o", str(out), "--triton", url, *tiling)
        assert code == 1, stderr
        assert "a_canon.png  [model adassr_canon on Triton, exif-make]" in stdout
        assert "b_nokia.png  [model adassr__fallback on Triton, fallback]" in stdout
        assert "c_bad.jpg" in stderr and "(skipped)" in stderr
        assert "2 ok, 1 failed" in stdout and "adassr_canon on Triton" in stdout.splitlines()[-1]
        assert "adassr__fallback on Triton" in stdout.splitlines()[-1] and "failed: " + str(src / "c_bad.jpg") in stdout
        assert sorted(p.name for p in out.iterdir()) == ["a_canon.png", "b_nokia.png"]
        for name in ("a_canon.png", "b_nokia.png"):  # same models and tiling as the local run
            assert read_image(out / name).pixels.shape == read_image(local / name).pixels.shape
            assert _max_diff(out / name, local / name) <= 1

        # --camera and --triton-model choose one model for every image.
        one = src / "b_nokia.jpg"
        code, stdout, _ = upscale_cli("-i", str(one), "-o", str(tmp_path / "cam.png"), "--triton", url,
                                   "--camera", "canon", *tiling)
        assert code == 0 and "[model adassr_canon on Triton, explicit]" in stdout
        ref = tmp_path / "cam_local.png"
        assert upscale_cli("-i", str(one), "-o", str(ref), "--store", str(store), "--camera", "canon", *tiling)[0] == 0
        assert _max_diff(tmp_path / "cam.png", ref) <= 1
        code, stdout, _ = upscale_cli("-i", str(one), "-o", str(tmp_path / "m.png"), "--triton", url,
                                   "--triton-model", "adassr_canon", *tiling)
        assert code == 0 and "[model adassr_canon on Triton, --triton-model]" in stdout

        # A model the server does not have is a whole-run error before any image.
        capsys.readouterr()
        code = main(["upscale", "-i", str(src), "-o", str(tmp_path / "none"), "--triton", url, "--camera", "sony"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "adassr_sony" in err, err
        assert not (tmp_path / "none").exists()
