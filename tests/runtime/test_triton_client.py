"""The Triton client against a real tritonserver (opt-in) and its config reading (always).

The integration test needs a Python 3.12 environment with ``nvidia-pytriton`` and ``onnxruntime``
(PyTriton's bundled tritonserver runs its Python-backend stub under 3.12 only; about 370 MB):
set ``ADASSR_PYTRITON_PYTHON`` to that interpreter, and ``ADASSR_PYTRITON_LIBDIR`` to the folder
holding its ``libpython3.12.so.1.0`` if the loader cannot find it (pyenv: ``<prefix>/lib``).
Without them it is skipped: too heavy for the default test run.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adassr.export.triton_repo import TritonRepoOptions, write_repository
from adassr.runtime.errors import BackendError
from adassr.runtime.images import read_image
from adassr.runtime.server.triton_client import TritonUpscaler, parse_model_config
from adassr.runtime.store import FALLBACK_CAMERA

from ._models import publish_camera
from ._server import SAMPLES, cli_output, decode, free_ports, small_jpeg_with_exif

PYTRITON_PYTHON = os.environ.get("ADASSR_PYTRITON_PYTHON")


def _model_config(tile: int) -> dict[str, Any]:
    """A model config as ``--triton-repo`` writes it (x4, batches of up to 8), for a ``tile`` px tile."""
    return {
        "name": "adassr_canon",
        "max_batch_size": 8,
        "input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": ["3", str(tile), str(tile)]}],
        "output": [{"name": "sr", "data_type": "TYPE_FP32", "dims": ["3", str(4 * tile), str(4 * tile)]}],
        "parameters": {"adassr_scale": {"string_value": "4"}},
    }


def test_parse_model_config_rejects_foreign_configs() -> None:
    good = _model_config(64)
    info = parse_model_config(good)
    assert (info.tile, info.scale, info.max_batch_size, info.datatype) == (64, 4, 8, "FP32")
    from adassr.runtime.errors import BackendError

    with pytest.raises(BackendError, match="input dims"):
        parse_model_config({**good, "input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": [3, 64, 32]}]})
    with pytest.raises(BackendError, match="output dims"):
        parse_model_config({**good, "output": [{"name": "sr", "data_type": "TYPE_FP32", "dims": [3, 128, 128]}]})
    with pytest.raises(BackendError, match="not one adassr wrote"):
        parse_model_config({"name": "x"})


@pytest.mark.skipif(not PYTRITON_PYTHON, reason="set ADASSR_PYTRITON_PYTHON to a Python 3.12 with nvidia-pytriton")
def test_client_tiles_through_a_real_tritonserver(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    repo = tmp_path / "repo"
    write_repository(repo, store, options=TritonRepoOptions(tile=32, instance_kind="KIND_CPU"))
    http, grpc, metrics = free_ports(3)
    env = dict(os.environ)
    if os.environ.get("ADASSR_PYTRITON_LIBDIR"):
        env["LD_LIBRARY_PATH"] = os.environ["ADASSR_PYTRITON_LIBDIR"] + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    script = Path(__file__).with_name("_pytriton_server.py")
    log = (tmp_path / "triton.log").open("w")
    proc = subprocess.Popen(
        [str(PYTRITON_PYTHON), str(script), str(repo), "adassr_canon", str(http), str(grpc), str(metrics)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        data = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48)
        (tmp_path / "in.jpg").write_bytes(data)
        image = read_image(tmp_path / "in.jpg")
        deadline = time.monotonic() + 120
        with TritonUpscaler(f"127.0.0.1:{http}", overlap=8) as client:
            while True:
                try:
                    if client._client.is_model_ready("adassr_canon"):
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "tritonserver did not load the model in time"
                time.sleep(0.5)
            pixels, alpha, name = client.upscale(image)  # routed by the EXIF Make to adassr_canon
        assert name == "adassr_canon" and alpha is None and pixels.shape == (192, 192, 3)
        ref = decode(cli_output(store, data, tmp_path, name="ref.jpg", tile=32, overlap=8, camera="canon"))
        assert int(np.abs(pixels.astype(np.int32) - ref.astype(np.int32)).max()) <= 1
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_route_follows_adapts_rules_against_the_models_triton_has(tmp_path: Path) -> None:
    """Folder, then EXIF Make, then a RealSR-style file-name prefix; a name counts only when Triton has it."""
    import shutil

    pytest.importorskip("tritonclient.http")
    ready = {"adassr_canon", "adassr_nikon", "adassr_sony"}

    class Models:
        def is_model_ready(self, name: str) -> bool:
            if name == "adassr_broken":
                raise ConnectionError("unreachable")
            return name in ready

        def get_model_repository_index(self) -> list[dict[str, str]]:
            return [{"name": n, "state": "READY"} for n in sorted(ready)] + [
                {"name": "adassr_loading", "state": "UNAVAILABLE", "reason": "loading"}]

    client = TritonUpscaler("127.0.0.1:9")  # nothing is sent: routing asks only is_model_ready
    client._client = Models()
    no_exif = Path(__file__).parents[1] / "data" / "hr" / "coffee.png"
    files = {"sony/iptc.jpg": SAMPLES / "nokia" / "iptc.jpg", "photos/flower.jpg": SAMPLES / "canon" / "flower.jpg",
             "photos/Nikon_006_LR4.png": no_exif, "photos/iptc.jpg": SAMPLES / "nokia" / "iptc.jpg",
             "broken/x.png": no_exif}
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / rel)
    assert client.route(read_image(tmp_path / "sony/iptc.jpg")) == ("adassr_sony", "folder")
    assert client.route(read_image(tmp_path / "photos/flower.jpg")) == ("adassr_canon", "exif-make")
    assert client.route(read_image(tmp_path / "photos/Nikon_006_LR4.png")) == ("adassr_nikon", "filename-prefix")
    assert client.route(read_image(tmp_path / "photos/iptc.jpg")) == ("adassr__fallback", "fallback")  # no nokia
    with pytest.raises(BackendError, match="cannot ask the Triton server .* whether model 'adassr_broken' is ready"):
        client.route(read_image(tmp_path / "broken/x.png"))  # was sent to the fallback, unnoticed
    (tmp_path / "loading").mkdir()
    shutil.copy(no_exif, tmp_path / "loading" / "y.png")
    with pytest.raises(BackendError, match="'adassr_loading' is in the repository but not ready .UNAVAILABLE: loading"):
        client.route(read_image(tmp_path / "loading/y.png"))
    assert client.route(read_image(tmp_path / "photos/iptc.jpg"), "canon") == ("adassr_canon", "explicit")


def test_the_client_takes_an_http_url_and_names_an_unreachable_server(tmp_path: Path) -> None:
    """The class takes what the CLI takes (``http://`` dropped, https refused with one line), and a
    model lookup on a server that does not answer says so instead of 'no usable model'."""
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.images import LoadedImage

    pytest.importorskip("tritonclient.http")
    port = free_ports(1)[0]
    client = TritonUpscaler(f"http://127.0.0.1:{port}/", connect_timeout_s=2.0, timeout_s=2.0)
    with pytest.raises(ConfigError, match="https is not supported"):
        TritonUpscaler("https://127.0.0.1:8000")
    image = LoadedImage(np.zeros((8, 8, 3), np.uint8), None, 8, None, None, None)
    with pytest.raises(ConfigError, match=f"cannot reach a Triton server at 127.0.0.1:{port}"):
        client.upscale(image, camera="canon")


def test_a_server_that_accepts_and_never_answers_is_reported_within_the_connect_timeout() -> None:
    """The liveness check ran under the 120 s network timeout: 121 s before "cannot reach"."""
    import socket
    import threading

    from adassr.runtime.errors import ConfigError

    pytest.importorskip("tritonclient.http")
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    client = TritonUpscaler(f"127.0.0.1:{listener.getsockname()[1]}", connect_timeout_s=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="cannot reach a Triton server"):
            client.check_live()
        assert time.monotonic() - start < 30
    finally:
        for conn in held:
            conn.close()
        listener.close()


def test_ctrl_c_during_a_triton_request_says_only_interrupted(tmp_path: Path) -> None:
    """Ctrl-C while a request waited on the server: the gevent hub under tritonclient.http printed the
    KeyboardInterrupt and a timestamp on stderr before the CLI's own "interrupted" (a helper's hunt)."""
    import signal
    import socket
    import sys

    pytest.importorskip("tritonclient.http")
    (tmp_path / "a.png").write_bytes(_small_png_bytes())
    with socket.socket() as hung:  # accepts the connection and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        hung.settimeout(120)
        port = hung.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "adassr.cli", "upscale", "-i", str(tmp_path / "a.png"), "-o",
                                 str(tmp_path / "o.png"), "--triton", f"127.0.0.1:{port}", "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = hung.accept()  # the client is inside its first request
            with conn:
                time.sleep(1.0)  # waiting for the answer, in gevent's loop
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130 and err == "interrupted\n", err
    assert not (tmp_path / "o.png").exists()


def _small_png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


_GOOD_CONFIG = _model_config(128)


def test_the_config_s_multiple_wire_type_batch_and_default_overlap_are_used() -> None:
    """What mutation testing changed unnoticed: the repository's size multiple, an fp16 repository's wire type
    (a real Triton refuses FP32 data for it), a batch of at least 1, and the default overlap (32, not the
    most a 128 px tile fits)."""
    info = parse_model_config({**_GOOD_CONFIG, "parameters": {"adassr_scale": {"string_value": "4"},
                                                                "adassr_multiple_of": {"string_value": "8"}}})
    assert info.multiple_of == 8
    half = [{**_GOOD_CONFIG["input"][0], "data_type": "TYPE_FP16"}]  # type: ignore[index]
    assert parse_model_config({**_GOOD_CONFIG, "input": half}).datatype == "FP16"
    assert parse_model_config({**_GOOD_CONFIG, "max_batch_size": 0}).max_batch_size == 1
    client = TritonUpscaler("localhost:1")  # no request made
    tiling = client.tiling_for(parse_model_config(_GOOD_CONFIG))
    assert (tiling.tile, tiling.overlap, tiling.batch_size, tiling.pad_to_tile) == (128, 32, 8, True)


@pytest.mark.parametrize(("change", "match"), [
    ({"input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": ["3", "x", "x"]}]}, "not one adassr wrote"),
    ({"input": [_GOOD_CONFIG["input"][0]] * 2}, "not one adassr wrote"),  # type: ignore[index]
    ({"input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": [3, 64]}]}, "input dims"),
    ({"input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": [3, 64, 64, 1]}]}, "input dims"),
    ({"input": [{"name": "lr", "data_type": "TYPE_FP32", "dims": [3, 0, 0]}], "parameters": {}}, "input dims"),
    ({"output": [{"name": "sr", "data_type": "TYPE_FP32", "dims": [1, 512, 512]}]}, "output dims"),
])
def test_configs_adassr_did_not_write_are_backend_errors(change: dict[str, object], match: str) -> None:
    with pytest.raises(BackendError, match=match):
        parse_model_config({**_GOOD_CONFIG, **change})


def test_triton_urls() -> None:
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.server.triton_client import triton_url

    assert triton_url("http://h:1/") == "h:1" and triton_url("HTTP://h:1") == "h:1"
    assert triton_url(" localhost:8000/v2 ") == "localhost:8000/v2"
    for bad in ("ftp://h:1", "https://h:1", ":8000", "/x", "", "h:0", "h:abc", "h:99999"):
        with pytest.raises(ConfigError, match="Triton URL"):
            triton_url(bad)


def test_a_camera_is_spelt_and_checked_through_the_python_api(tmp_path: Path) -> None:
    from adassr.runtime.errors import CameraError

    image = read_image(_write_png(tmp_path))
    client = TritonUpscaler("localhost:1", prefix="fleet_")
    assert client.route(image, "Canon") == ("fleet_canon", "explicit")
    with pytest.raises(CameraError):
        client.route(image, "../x")


def _write_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    path.write_bytes(_small_png_bytes())
    return path


def test_an_inference_the_server_never_answers_fails_within_the_network_timeout(tmp_path: Path) -> None:
    """``timeout_s`` bounds each request, apart from the connect timeout (mutation testing swapped them
    unnoticed): a server that takes the tiles and never answers fails the image after ``timeout_s``."""
    from adassr.export.triton_repo import TritonRepoOptions, write_repository
    from adassr.runtime.images import LoadedImage

    from ._fake_triton import fake_triton
    from ._models import fallback_and_canon

    pytest.importorskip("tritonclient.grpc")  # the stand-in reads config.pbtxt with Triton's protobuf schema
    repo = tmp_path / "repo"
    write_repository(repo, fallback_and_canon(tmp_path / "store"),
                     options=TritonRepoOptions(tile=32, max_batch_size=2, preferred_batch_sizes=(2,),
                                               instance_kind="KIND_CPU"))
    image = LoadedImage(np.full((24, 24, 3), 128, np.uint8), None, 8, None, None, None)
    with fake_triton(repo, fault="hang") as triton, \
            TritonUpscaler(triton.url, timeout_s=1.0, connect_timeout_s=60.0) as client:
        start = time.monotonic()
        with pytest.raises(BackendError, match="Triton failed on model 'adassr_canon'"):
            client.upscale(image, camera="canon")
        assert time.monotonic() - start < 30
