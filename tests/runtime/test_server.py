"""``adassr serve``: endpoints, status codes, batching, limits, auth, reload and faults (loopback).

Every test runs a real uvicorn server on a 127.0.0.1 port with tiny ONNX models and compares the
images it returns with what ``adassr upscale`` writes for the same input.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from adassr.runtime.backends import Backend
from adassr.runtime.errors import ConfigError
from adassr.runtime.routing import RouteDecision, resolve_model
from adassr.runtime.server.config import Limits, ServerConfig, read_token_file
from adassr.runtime.server.models import default_opener
from adassr.runtime.store import FALLBACK_CAMERA

from ._models import fallback_and_canon, publish_camera
from ._server import (
    SAMPLES,
    LiveServer,
    cli_output,
    decode,
    max_diff,
    running_server,
    small_jpeg_with_exif,
    small_png,
    upscale_cli,
)

TILE, OVERLAP = 32, 8


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fallback_and_canon(tmp_path / "store")


def _config(store: Path, **kw: object) -> ServerConfig:
    base: dict[str, object] = {"store": store, "tile": TILE, "overlap": OVERLAP, "threads": 1}
    base.update(kw)
    return ServerConfig(**base)  # type: ignore[arg-type]


class GatedBackend(Backend):
    """A real onnxruntime model whose calls wait for ``gate`` (and optionally sleep): holds work in flight."""

    def __init__(self, inner: Backend, gate: threading.Event, delay: float = 0.0,
                 entered: threading.Event | None = None) -> None:
        super().__init__(inner.model_path)
        self.inner, self.gate, self.delay, self.entered = inner, gate, delay, entered
        self.calls: list[int] = []

    @property
    def name(self) -> str:
        return "gated"

    def _open(self) -> None:
        self.inner.open()

    def _infer(self, batch):  # type: ignore[no-untyped-def]
        if self.entered is not None:  # a model call has begun (tests wait on this, not on a sleep)
            self.entered.set()
        self.gate.wait(60)
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(batch.shape[0])
        return self.inner.infer(batch)

    def _close(self) -> None:
        self.inner.close()


def gated_opener(gate: threading.Event, delay: float = 0.0,
                 entered: threading.Event | None = None) -> Callable[[RouteDecision], Backend]:
    real = default_opener("onnxruntime", providers=("CPUExecutionProvider",), threads=1)
    return lambda route: GatedBackend(real(route), gate, delay, entered).open()


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    return sum(float(m.group(m.lastindex or 1)) for m in re.finditer(pattern, text))


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _assert_json_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] == kind
    assert isinstance(body["message"], str) and len(body["message"]) > 20
    return str(body["message"])


# --------------------------------------------------------------------------------- endpoints


def test_endpoints_and_responses_match_the_cli(store: Path, tmp_path: Path) -> None:
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48)
    nokia = small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", 40)
    grey = small_png(30, 45, seed=3, channels=1)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        assert client.get("/readyz").status_code == 200
        cams = client.get("/v1/cameras").json()
        assert set(cams["cameras"]) == {"_fallback", "canon"} and cams["fallback"] is True
        assert cams["cameras"]["canon"]["scale"] == 4 and len(cams["cameras"]["canon"]["sha256"]) == 64
        assert cams["cameras"]["_fallback"]["adapted"] is False and cams["refused"] == {}
        assert cams["cameras"]["canon"]["kernel"] is None  # exported without adaptation: no kernel entry
        assert str(store) not in client.get("/v1/cameras").text  # no filesystem paths leak

        # Raw body, routed by EXIF Make: byte-identical to the CLI's PNG.
        r = client.post("/v1/upscale", content=canon)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-adassr-model"] == "canon/model.onnx"
        assert r.headers["x-adassr-model-sha256"] == cams["cameras"]["canon"]["sha256"]
        assert r.headers["x-adassr-route"] == "exif-make" and float(r.headers["x-adassr-latency-ms"]) > 0
        ref = cli_output(store, canon, tmp_path, name="canon.jpg", tile=TILE, overlap=OVERLAP)
        assert decode(r.content).shape == (192, 192, 3)
        assert r.content == ref

        # A camera without a model goes to the fallback, as in the CLI.
        r = client.post("/v1/upscale", content=nokia)
        assert r.headers["x-adassr-model"] == "_fallback/model.onnx"
        assert "no model for 'nokia'" in r.headers["x-adassr-route"]
        assert (
            max_diff(r.content, cli_output(store, nokia, tmp_path, name="nokia.jpg", tile=TILE, overlap=OVERLAP)) <= 1
        )

        # Multipart with options; explicit camera; outscale 2; grey stays grey.
        r = client.post("/v1/upscale", files={"image": ("g.png", grey)}, data={"camera": "canon", "outscale": "2"})
        assert r.status_code == 200 and r.headers["x-adassr-route"] == "explicit"
        ref = cli_output(
            store,
            grey,
            tmp_path,
            name="grey.png",
            tile=TILE,
            overlap=OVERLAP,
            camera="canon",
            extra=("--outscale", "2"),
        )
        assert decode(r.content).shape == (60, 90) and max_diff(r.content, ref) <= 1

        for fmt, media in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
            r = client.post("/v1/upscale", params={"format": fmt, "quality": "90"}, content=canon)
            assert r.status_code == 200 and r.headers["content-type"] == media
            assert decode(r.content).shape == (192, 192, 3)
        # Without format, Accept picks it (it was ignored: PNG whatever the client asked for); format wins.
        for accept, media in (("image/jpeg", "image/jpeg"), ("image/webp, image/png;q=0.5", "image/webp"),
                              ("application/json", "image/png"), ("*/*", "image/png")):
            r = client.post("/v1/upscale", headers={"Accept": accept}, content=canon)
            assert r.status_code == 200 and r.headers["content-type"] == media and r.headers["vary"] == "Accept"
            assert decode(r.content).shape == (192, 192, 3)
        r = client.post("/v1/upscale", params={"format": "png"}, headers={"Accept": "image/jpeg"}, content=canon)
        assert r.headers["content-type"] == "image/png"

        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert _metric(text, "adassr_request_duration_seconds_count", 'camera="canon",status="200"') >= 4
        assert _metric(text, "adassr_model_loads_total", 'camera="canon",result="ok"') == 1
        for name in ("adassr_queue_depth", "adassr_inflight_requests", "adassr_batch_tiles_count"):
            assert name in text


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, "png"), ("", "png"), ("*/*", "png"), ("image/*", "png"), ("image/jpeg", "jpeg"),
    ("image/png;q=0, image/*", "jpeg"),  # PNG refused, any other image accepted: the next in line
    ("image/*;q=0.2, image/webp", "webp"),  # the most specific range decides a type's q
    ("image/jpeg;q=abc, image/webp;q=0.1", "webp"),  # a malformed range is left out
    ("IMAGE/JPEG; Q=0.9 ,image/png;q=0.8", "jpeg"),
    ("application/json", "png"), ("image/png;q=0,image/jpeg;q=0,image/webp;q=0", "png"),  # disregarded
    ("image/webp;q=5, image/png", "png"),  # q above 1 is malformed: that range is left out
])
def test_the_accept_header_picks_the_output_format(accept: str | None, chosen: str) -> None:
    from adassr.runtime.server.requests import negotiated_format, parse_params

    assert negotiated_format(accept) == chosen
    assert parse_params({"format": "webp"}, 8.0, accept).media_type == "image/webp"  # format wins


def test_a_long_exif_make_does_not_make_the_response_unreadable(store: Path) -> None:
    """A 60,000-character Make went whole into X-Adassr-Route: curl and httpx refused the response."""
    import io

    import numpy as np
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Q" * 60_000  # Make
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buffer, format="JPEG", exif=exif.tobytes())
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        r = client.post("/v1/upscale", content=buffer.getvalue())
        assert r.status_code == 200 and r.headers["x-adassr-model"] == "_fallback/model.onnx"
        assert r.headers["x-adassr-route"] == f"fallback: EXIF Make '{'Q' * 40}...' names no valid camera group"
    from adassr.runtime.server.app import MAX_HEADER_VALUE, _header_safe

    assert len(_header_safe("x" * 5000)) == MAX_HEADER_VALUE and _header_safe("a\r\nb") == "a  b"
    assert _header_safe("RG\x00\x00 é\x7f\x1b[31m") == "RG?? ???[31m"


def test_an_upload_whose_profile_names_control_characters_gets_a_clean_note(store: Path) -> None:
    """A 32x32 PNG whose ICC header names the colour space "RG\\0\\0" got no response at all (h11 refused
    the NUL in X-Adassr-Note and dropped the connection, which the metrics counted as a 200); with
    bytes such as 0x01 and 0x7f the response carried control characters that proxies reject."""
    import io

    import numpy as np
    from PIL import Image

    for space in (b"RG\x00\x00", b"A\x01\x7fB", b"\x1b[2J"):
        profile = bytearray(200)
        profile[16:16 + len(space)] = space
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buffer, format="PNG", icc_profile=bytes(profile))
        with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as client:
            r = client.post("/v1/upscale", content=buffer.getvalue())
            assert r.status_code == 200, r.text
            note = r.headers["x-adassr-note"]
            assert "colour profile does not describe its RGB pixels" in note
            assert all(" " <= c <= "~" for c in note), note


def test_outputs_too_large_for_the_limit_or_the_format_are_413_before_any_model_call(store: Path) -> None:
    """The model's x4 output over --max-output-pixels (with outscale 1) was a 415 unsupported_image; a
    format=webp output wider than 16383 px failed in the encoder after the whole upscale, also as 415."""
    gate = threading.Event()
    gate.set()
    backends: list[GatedBackend] = []
    real = gated_opener(gate)

    def opener(route: RouteDecision) -> Backend:
        backend = real(route)
        assert isinstance(backend, GatedBackend)
        backends.append(backend)
        return backend

    limits = Limits(max_output_pixels=140_000, max_outscale=8.0)
    with running_server(_config(store, limits=limits), open_model=opener) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c:
        message = _assert_json_error(c.post("/v1/upscale", params={"outscale": "1", "camera": "canon"},
                                            content=small_png(200, 200)), 413, "too_large")
        assert "640,000 output pixels" in message and "smaller outscale cannot help" in message
        assert "--outscale" not in message
        wide = small_png(2, 4096)
        message = _assert_json_error(c.post("/v1/upscale", params={"format": "webp", "camera": "canon"},
                                            content=wide), 413, "too_large")
        assert message.startswith("cannot send the output as webp: a 16384x8 image is larger than WEBP can hold "
                                  "(16,383 pixels a side)")  # was "the output would be a ... image is larger"
        assert "format=png" in message and "image.webp" not in message
        assert sum(len(b.calls) for b in backends) == 0  # refused before the upscale
        r = c.post("/v1/upscale", params={"format": "png", "camera": "canon"}, content=wide)
        assert r.status_code == 200 and sum(len(b.calls) for b in backends) > 0


def test_status_codes_and_error_bodies(store: Path) -> None:
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48)
    limits = Limits(max_body_bytes=200_000, max_pixels=70 * 70)
    with running_server(_config(store, limits=limits)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        _assert_json_error(c.post("/v1/upscale", content=b"not an image at all"), 415, "unsupported_image")
        _assert_json_error(c.post("/v1/upscale/", content=canon), 404, "not_found")  # no bodiless 307 redirect
        truncated = canon[: len(canon) // 2]
        _assert_json_error(c.post("/v1/upscale", content=truncated), 415, "unsupported_image")
        sos = canon.index(b"\xff\xda")
        scan = sos + 2 + int.from_bytes(canon[sos + 2 : sos + 4], "big")
        grey_filled = canon[: (scan + len(canon)) // 2] + b"\xff\xd9"  # cut, end marker kept: Pillow decodes part grey
        message = _assert_json_error(c.post("/v1/upscale", content=grey_filled), 415, "unsupported_image")
        assert "damaged" in message and "grey or garbled" in message and "upload-" not in message
        _assert_json_error(c.post("/v1/upscale", content=b""), 415, "unsupported_image")
        message = _assert_json_error(c.post("/v1/upscale", content=b"\0" * 300_000), 413, "too_large")
        assert "200,000" in message
        big = small_png(80, 80)
        message = _assert_json_error(c.post("/v1/upscale", content=big), 413, "too_large")
        assert "6,400" in message and "/dev/shm" not in message and "upload-" not in message
        assert "--max-pixels" in message and "read_image" not in message
        for params in (
            {"outscale": "0"},
            {"outscale": "nan"},
            {"outscale": "9"},
            {"format": "gif"},
            {"quality": "0"},
            {"quality": "high"},
            {"quality": "\u00b2"},  # a digit to str.isdigit, not to int(): once a 500
            {"colour": "red"},
            {"camera": "../etc"},
        ):
            _assert_json_error(c.post("/v1/upscale", params=params, content=canon), 422, "invalid_parameter")
        # an impossible camera name is refused before the body is decoded (it was a 415 here, after the decode)
        _assert_json_error(c.post("/v1/upscale", params={"camera": "../etc"}, content=b"no image"), 422,
                           "invalid_parameter")
        message = _assert_json_error(  # the last value used to win, silently
            c.post("/v1/upscale", params=[("camera", "canon"), ("camera", "nikon")], content=canon), 422,
            "invalid_parameter",
        )
        assert "'camera' given twice in the query" in message
        message = _assert_json_error(
            c.post("/v1/upscale", params={"camera": "nikon"}, content=canon), 404, "unknown_camera"
        )
        assert "canon" in message and "Did you mean" not in message
        message = _assert_json_error(
            c.post("/v1/upscale", params={"camera": "cannon"}, content=canon), 404, "unknown_camera"
        )
        assert "Did you mean 'canon'?" in message
        _assert_json_error(c.get("/v2/nothing"), 404, "not_found")
        _assert_json_error(c.get("/v1/upscale"), 405, "method_not_allowed")
        bad_multipart = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc'
        r = c.post("/v1/upscale", content=bad_multipart, headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code in (400, 415)  # cut-off multipart: either malformed or an unreadable image part
        r = c.post("/v1/upscale", content=b"--", headers={"content-type": "multipart/form-data"})
        _assert_json_error(r, 400, "bad_request")
        r = c.post("/v1/upscale", files={"photo": ("a.jpg", canon)})
        _assert_json_error(r, 422, "invalid_parameter")
        r = c.post("/v1/upscale", data={"camera": "canon"}, files={})
        assert r.status_code in (400, 415)
        # After all that, the server still serves.
        assert c.post("/v1/upscale", content=canon).status_code == 200
        text = c.get("/metrics").text
        assert _metric(text, "adassr_errors_total", 'kind="unsupported_image"') >= 3
        assert _metric(text, "adassr_errors_total", 'kind="too_large"') >= 2
        # From mutation testing: a value given in the query and the form, or twice in the form, is refused
        # (one silently won); the limits are inclusive; an upload sent without a length is held to the limit.
        message = _assert_json_error(c.post("/v1/upscale", params={"camera": "canon"}, data={"camera": "nikon"},
                                            files={"image": ("a.jpg", canon)}), 422, "invalid_parameter")
        assert "given twice" in message
        message = _assert_json_error(c.post("/v1/upscale", data={"format": ["png", "jpeg"]},
                                            files={"image": ("a.jpg", canon)}), 422, "invalid_parameter")
        assert "'format' given twice" in message
        assert c.post("/v1/upscale", params={"outscale": "8"}, content=canon).status_code == 200  # the maximum
        jpegs = {q: c.post("/v1/upscale", params={"format": "jpeg", **({"quality": q} if q else {})},
                           content=canon).content for q in ("", "95", "90")}
        assert jpegs[""] == jpegs["95"] != jpegs["90"]  # the documented default quality, as the CLI's
        _assert_json_error(c.post("/v1/upscale", content=b"\0" * 200_000), 415, "unsupported_image")  # at the limit
        _assert_json_error(c.post("/v1/upscale", content=iter([b"\0" * 200_001])), 413, "too_large")  # chunked
        # Every upload, answered or refused, is removed from the server's folder, which others cannot read.
        uploads = live.server.uploads
        assert uploads is not None and stat.S_IMODE(os.stat(uploads.path).st_mode) == 0o700
        assert list(Path(uploads.path).iterdir()) == []


def test_token_auth(store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o644)
    with caplog.at_level("WARNING"):
        token = read_token_file(token_file)
    assert f"the token file {token_file} can be read by other users (mode 644): `chmod 600" in caplog.text
    caplog.clear()
    token_file.chmod(0o640)  # readable by the group is readable by other users too
    with caplog.at_level("WARNING"):
        read_token_file(token_file)
    assert "can be read by other users (mode 640)" in caplog.text
    caplog.clear()
    token_file.chmod(0o600)
    assert read_token_file(token_file) == token and "token" not in caplog.text
    spaced = tmp_path / "my token"  # the hints are quoted: `chmod 600 /x/my token` failed as pasted (a helper's hunt)
    spaced.write_text("s3cret-token\n")
    spaced.chmod(0o644)
    with caplog.at_level("WARNING"):
        read_token_file(spaced)
    assert f"`chmod 600 '{spaced}'`" in caplog.text
    spaced.write_text("two words\n")
    with pytest.raises(ConfigError, match=re.escape(f"`openssl rand -hex 32 > '{spaced}'`")):
        read_token_file(spaced)
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    with running_server(_config(store, token=token)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        r = c.post("/v1/upscale", content=canon)
        _assert_json_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        _assert_json_error(
            c.post("/v1/upscale", content=canon, headers={"authorization": "Bearer s3cret-tokeX"}), 401, "unauthorized"
        )
        _assert_json_error(
            c.post("/v1/upscale", content=canon, headers={"authorization": "Basic s3cret-token"}), 401, "unauthorized"
        )
        for near in ("s", "s3cret-toke", "s3cret-token2", "s3cret-token s3cret-token"):  # no prefix or extension
            _assert_json_error(c.post("/v1/upscale", content=canon, headers={"authorization": f"Bearer {near}"}),
                               401, "unauthorized")
        _assert_json_error(c.get("/metrics"), 401, "unauthorized")
        _assert_json_error(c.get("/v1/cameras"), 401, "unauthorized")
        ok = {"authorization": "Bearer s3cret-token"}
        assert c.post("/v1/upscale", content=canon, headers=ok).status_code == 200
        assert c.get("/metrics", headers=ok).status_code == 200
        text = c.get("/metrics", headers=ok).text  # refusals before admission are in the latency histogram too
        assert _metric(text, "adassr_request_duration_seconds_count", 'camera="none",status="401"') == 7
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match="non-empty"):
        read_token_file(token_file)
    with pytest.raises(ConfigError, match="does not exist"):
        read_token_file(tmp_path / "missing")
    token_file.write_text("sekrit\u00e9\n", encoding="utf-8")  # curl sends UTF-8, urllib latin-1: never matchable
    with pytest.raises(ConfigError, match="printable ASCII"):
        read_token_file(token_file)


def test_a_rotated_token_takes_effect_without_a_restart(store: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The token file was read once: rotating a leaked token meant restarting every server. It is read
    again when it changes; a change that leaves it unusable (empty) keeps the token in use."""
    import logging
    import os
    import time

    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    token_file.chmod(0o600)
    config = _config(store, token=read_token_file(token_file), token_file=token_file, reload_interval_s=0.1)

    def status(client: httpx.Client, token: str) -> int:
        return client.get("/v1/cameras", headers={"authorization": f"Bearer {token}"}).status_code

    def until(check: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return False

    with caplog.at_level(logging.INFO, logger="adassr.runtime.server.config"), running_server(config) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c:
        assert status(c, "first-token") == 200 and status(c, "second-token") == 401
        fresh = tmp_path / "token.new"
        fresh.write_text("second-token\n")
        fresh.chmod(0o600)
        os.replace(fresh, token_file)  # as a rotation writes it
        assert until(lambda: status(c, "second-token") == 200)
        assert status(c, "first-token") == 401
        token_file.write_text("")  # a rotation caught half way: the token in use stays
        assert until(lambda: "cannot be used" in caplog.text)
        assert status(c, "second-token") == 200 and status(c, "x") == 401
    assert "the previous token stays in use" in caplog.text and "second-token" not in caplog.text
    with pytest.raises(ConfigError, match="token_file is given without the token"):
        _config(store, token_file=token_file)
    from adassr.runtime.server.config import TokenWatch

    token_file.write_text("third-token\n")
    watch = TokenWatch(token_file, "second-token")  # the file was rotated between the read and the watch
    assert watch.changed() == "third-token" and watch.changed() is None
    token_file.chmod(0o600)  # a change that leaves the token as it was: nothing to swap
    assert watch.changed() is None


def test_serve_refuses_a_bad_thread_override_at_start(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """It used to start, never become ready and log the error for every model, forever."""
    from adassr.cli import main

    monkeypatch.setenv("ADASSR_THREADS", "abc")
    assert main(["serve", "--store", str(store), "--port", "0"]) == 2
    assert "ADASSR_THREADS must be an integer from 1 to 1024" in capsys.readouterr().err


def test_every_request_limit_is_checked_by_its_name() -> None:
    """Only max_pixels was tried: the other limits' checks could go unnoticed (mutation testing), and a NaN or
    zero timeout let `serve` start with a limit that never fires or always does."""
    import math

    for name in ("max_body_bytes", "max_pixels", "max_output_pixels"):
        for bad in (0, -1, 1.5, True, "10"):
            with pytest.raises(ConfigError, match=f"{name} must be a positive integer"):
                Limits(**{name: bad})  # type: ignore[arg-type]
        assert getattr(Limits(**{name: 1}), name) == 1
    for name in ("max_outscale", "header_timeout_s", "body_timeout_s", "send_timeout_s", "request_timeout_s"):
        for bad in (0, -1.0, math.nan, math.inf, "1"):
            with pytest.raises(ConfigError, match=f"{name} must be a positive number"):
                Limits(**{name: bad})  # type: ignore[arg-type]
        assert getattr(Limits(**{name: 0.5}), name) == 0.5
    for name in ("header_timeout_s", "body_timeout_s", "send_timeout_s", "request_timeout_s"):
        with pytest.raises(ConfigError, match=f"{name} must be at most 604800 s"):
            Limits(**{name: 7 * 24 * 3600.0 + 1})
        assert getattr(Limits(**{name: 7 * 24 * 3600.0}), name) == 7 * 24 * 3600.0


def test_the_first_request_id_header_names_the_request_and_the_response_carries_one() -> None:
    """Two X-Request-ID headers (a proxy that adds its own): the first names the request; the response has
    exactly one, which replaces any the app set (mutation testing)."""
    import asyncio

    from adassr.runtime.server import request_ids

    seen: list[str | None] = []
    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(request_ids.current.get())
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"x-request-id", b"app-set"), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def record(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    scope = {"type": "http", "headers": [(b"X-Request-ID", b"first"), (b"x-request-id", b"second")]}
    async def one_request() -> str | None:
        await request_ids.RequestIdMiddleware(app)(scope, receive, record)  # type: ignore[arg-type]
        return request_ids.current.get()  # after the request, in the same task: no ID left behind

    assert asyncio.run(one_request()) is None and seen == ["first"]
    headers = sent[0]["headers"]
    assert [v for k, v in headers if k == b"x-request-id"] == [b"first"]  # type: ignore[attr-defined]
    assert (b"content-type", b"text/plain") in headers  # type: ignore[operator]


def test_config_validation(store: Path) -> None:
    with pytest.raises(ConfigError, match="workers"):
        ServerConfig(store=store, workers=0)
    with pytest.raises(ConfigError, match="backend"):
        ServerConfig(store=store, backend="tflite")
    with pytest.raises(ConfigError, match="overlap"):
        ServerConfig(store=store, tile=32, overlap=16)
    with pytest.raises(ConfigError, match="max_pixels"):
        Limits(max_pixels=0)
    for threads in (0, 1025, 99999):
        with pytest.raises(ConfigError, match="threads must be an integer from 1 to 1024"):
            ServerConfig(store=store, threads=threads)
    with pytest.raises(ConfigError, match="pre_pad must be from 0 to 128"):
        ServerConfig(store=store, pre_pad=100000)
    with pytest.raises(ConfigError, match="the token is empty"):  # compare_digest(b"", b"") would let all in
        ServerConfig(store=store, token="")
    for name in ("reload_interval_s", "drain_timeout_s"):  # 0: a store re-scan in a busy loop
        with pytest.raises(ConfigError, match=f"{name} must be > 0"):
            ServerConfig(store=store, **{name: 0.0})  # type: ignore[arg-type]
    assert ServerConfig(store=store).host == "127.0.0.1"


def test_serve_options_are_refused_by_their_names(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--max-body-mb inf` crashed with OverflowError; other refusals named the fields (max_body_bytes,
    request_timeout_s) instead of the options."""
    from adassr.cli import main

    for extra, message in ((["--max-body-mb", "inf"], "--max-body-mb must be a finite number of MiB"),
                           (["--max-body-mb", "1e-9"], "--max-body-mb must be a finite number of MiB"),
                           (["--request-timeout", "0"], "--request-timeout must be a positive number"),
                           (["--body-timeout", "nan"], "--body-timeout must be a positive number"),
                           (["--send-timeout", "-1"], "--send-timeout must be a positive number"),
                           (["--send-timeout", "1e9"], "--send-timeout must be at most 604800 s"),
                           (["--tile", "32", "--tile-overlap", "16"], "--tile-overlap 16 is too large for tile 32"),
                           (["--max-queue", "-1"], "--max-queue must be an integer >= 0")):
        # a store that does not exist: were a refusal lost, the run ends on the store (exit 2, another
        # message) instead of serving forever
        assert main(["serve", "--store", str(store / "absent"), "--port", "0", *extra]) == 2, extra
        assert f"error: {message}" in capsys.readouterr().err, extra
    import argparse

    from adassr.runtime.serve_cli import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    for extra, overlap in ((["--tile", "64"], 31), ([], 32), (["--tile", "0"], 32)):  # `--tile 64` alone: 2 before
        assert config_from_args(parser.parse_args(["--store", str(store), *extra])).overlap == overlap, extra


def test_every_serve_option_reaches_the_server_configuration(store: Path, tmp_path: Path) -> None:
    """Each limit and setting typed on the command line is the one the server runs with: an option parsed
    but not passed on (or scaled wrongly) would leave the default in force without a word."""
    import argparse

    from adassr.runtime.serve_cli import add_serve_arguments, config_from_args

    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    token.chmod(0o600)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args([
        "--store", str(store), "--host", "127.0.0.2", "--port", "8123", "--providers", "cuda,cpu",
        "--precision", "fp16", "--threads", "3", "--workers", "5", "--max-queue", "7", "--max-batch", "6",
        "--max-wait-ms", "2.5", "--inference-threads", "2", "--tile", "96", "--tile-overlap", "8",
        "--pre-pad", "4", "--pad-to-tile", "--token-file", str(token), "--max-body-mb", "2",
        "--max-pixels", "1234567", "--request-timeout", "61", "--body-timeout", "11", "--send-timeout", "12",
        "--header-timeout", "3", "--reload-interval", "0.5", "--max-models", "2", "--drain-timeout", "4.5",
        "--no-exif",
    ]))
    assert (config.host, config.port, config.precision) == ("127.0.0.2", 8123, "fp16")
    assert config.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (config.threads, config.workers, config.max_queue, config.max_batch, config.max_wait_ms,
            config.inference_threads) == (3, 5, 7, 6, 2.5, 2)
    assert (config.tile, config.overlap, config.pre_pad, config.pad_to_tile) == (96, 8, 4, True)
    assert (config.reload_interval_s, config.max_models, config.drain_timeout_s, config.exif) == (0.5, 2, 4.5, False)
    assert config.token == "s3cret-token-value" and config.token_file == token
    limits = config.limits
    assert limits.max_body_bytes == 2 * 2**20 and limits.max_pixels == 1234567
    assert (limits.request_timeout_s, limits.body_timeout_s, limits.send_timeout_s,
            limits.header_timeout_s) == (61, 11, 12, 3)



def test_tensorrt_serving_opens_the_engine_whose_profiles_take_the_batcher_s_tiles(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --backend tensorrt` used to hand the ONNX file to the TensorRT backend, which refuses
    it, so every model failed to open. No TensorRT here: the engine lookup and the backend are
    stood in for, and what they are asked for is checked."""
    import adassr.runtime.pipeline as pipeline
    import adassr.runtime.server.models as models

    with pytest.raises(ConfigError, match="the tensorrt backend needs tiles"):
        ServerConfig(store=store, backend="tensorrt", tile=0)
    config = ServerConfig(store=store, backend="tensorrt", tile=96, overlap=8, max_batch=3, precision="fp16",
                          pad_to_tile=True)
    asked: list[tuple[RouteDecision, pipeline.RuntimeOptions]] = []
    opened: list[Path] = []
    engine = tmp_path / "camera.engine"

    def engine_for_route(route: RouteDecision, opts: pipeline.RuntimeOptions) -> Path:
        asked.append((route, opts))
        return engine

    def open_backend(kind: str, path: Path, **kwargs: object) -> Backend:
        assert kind == "tensorrt"
        opened.append(path)
        raise RuntimeError("stand-in: no TensorRT on this machine")

    monkeypatch.setattr(pipeline, "engine_for_route", engine_for_route)
    monkeypatch.setattr(models, "open_backend", open_backend)
    opener = default_opener(config.backend, providers=config.providers, threads=None, tiling=config.tiling,
                            precision=config.precision)
    route = resolve_model(store, camera="canon")
    with pytest.raises(RuntimeError, match="stand-in"):
        opener(route)
    assert opened == [engine]
    ((seen, opts),) = asked
    assert seen is route and opts.store == store and opts.precision == "fp16" and opts.gpu == 0
    assert opts.tiling == config.tiling and opts.tiling.batch_size == 3 and opts.tiling.tile == 96

# --------------------------------------------------------------------------------- scheduling


def test_tiles_from_concurrent_requests_share_batches(store: Path, tmp_path: Path) -> None:
    gate = threading.Event()
    images = [small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40, offset=60 + 20 * k) for k in range(4)]
    config = _config(store, workers=4, max_batch=8, max_wait_ms=200.0)
    with (
        running_server(config, open_model=gated_opener(gate)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
    ):
        with cf.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.post, "/v1/upscale", content=data) for data in images]
            _wait_for(lambda: live.server.batcher is not None and live.server.batcher.depth >= 4)
            gate.set()
            responses = [f.result() for f in futures]
        assert all(r.status_code == 200 for r in responses)
        batches = list(live.server.batches)
        assert max(b.requests for b in batches) >= 2, batches  # one model call served several requests
        assert max(b.tiles for b in batches) >= 4
        text = c.get("/metrics").text
        count = _metric(text, "adassr_batch_tiles_count")
        total = _metric(text, "adassr_batch_tiles_sum")
        assert count == len(batches) and total / count > 1.0
        for k, (data, r) in enumerate(zip(images, responses, strict=True)):
            ref = cli_output(store, data, tmp_path, name=f"b{k}.jpg", tile=TILE, overlap=OVERLAP)
            assert max_diff(r.content, ref) <= 1


def test_overload_answers_429_with_retry_after(store: Path) -> None:
    gate = threading.Event()
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    config = _config(store, workers=1, max_queue=1)
    with (
        running_server(config, open_model=gated_opener(gate)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
    ):
        with cf.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(c.post, "/v1/upscale", content=canon) for _ in range(2)]
            _wait_for(lambda: live.server.admitted == 2)
            r = c.post("/v1/upscale", content=canon)
            _assert_json_error(r, 429, "overloaded")
            assert int(r.headers["retry-after"]) >= 1
            assert "queue" in c.get("/metrics").text
            gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert c.post("/v1/upscale", content=canon).status_code == 200


def test_deadline_answers_504_and_cancels_queued_tiles(store: Path) -> None:
    gate = threading.Event()
    image = small_png(100, 100, seed=1)  # 16 tiles of 32 px
    limits = Limits(request_timeout_s=2.0)  # decoding and routing finish well before it, even on a busy runner
    config = _config(store, limits=limits, max_batch=1)
    with (
        running_server(config, open_model=gated_opener(gate)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
    ):
        started = time.monotonic()
        message = _assert_json_error(c.post("/v1/upscale", content=image), 504, "deadline")
        assert time.monotonic() - started < 8 and "2 s" in message
        gate.set()
        _wait_for(lambda: live.server.batcher is not None and live.server.batcher.depth == 0)
        text = c.get("/metrics").text
        assert _metric(text, "adassr_errors_total", 'kind="deadline"') == 1
        # routed before the deadline passed: labelled with its camera ("none" is for refusals before routing)
        assert _metric(text, "adassr_request_duration_seconds_count", 'camera="_fallback",status="504"') == 1
        assert _metric(text, "adassr_request_duration_seconds_count", 'camera="none",status="504"') == 0
        small = small_png(20, 20, seed=2)
        assert c.post("/v1/upscale", content=small).status_code == 200


def _raw_request(url: str, body: bytes, *, send_body: int | None = None, path: str = "/v1/upscale") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) if send_body is None else send_body])
    return sock


def test_client_disconnect_cancels_queued_tiles(store: Path) -> None:
    gate, entered = threading.Event(), threading.Event()
    image = small_png(100, 100, seed=4)
    config = _config(store, max_batch=2)
    with (
        running_server(config, open_model=gated_opener(gate, entered=entered)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
    ):
        pool = cf.ThreadPoolExecutor(1)
        entered.clear()
        first = pool.submit(c.post, "/v1/upscale", content=small_png(20, 20, seed=5))  # holds the model call
        assert entered.wait(20)  # its tile is inside the (held) model call, not still being decoded
        _wait_for(
            lambda: (
                live.server.admitted == 1
                and live.server.batcher is not None
                and live.server.batcher.depth == 0
                and live.server.waiting == 0
            )
        )
        # Mid-response: the whole request is sent, then the client goes away while its tiles wait.
        sock = _raw_request(live.url, image)
        _wait_for(lambda: live.server.batcher is not None and live.server.batcher.depth >= 1)
        sock.close()
        _wait_for(lambda: _metric(c.get("/metrics").text, "adassr_tiles_cancelled_total") >= 1)
        assert live.server.batcher is not None and live.server.batcher.depth == 0
        # Mid-upload: the client sends half the body and disconnects.
        sock = _raw_request(live.url, image, send_body=len(image) // 2)
        time.sleep(0.2)
        sock.close()
        _wait_for(lambda: _metric(c.get("/metrics").text, "adassr_errors_total", 'kind="client_disconnect"') >= 2)
        gate.set()
        assert first.result().status_code == 200  # the other request was not disturbed
        pool.shutdown()
        _wait_for(lambda: live.server.admitted == 0)
        assert c.post("/v1/upscale", content=small_png(20, 20)).status_code == 200


def test_slow_body_gets_408(store: Path) -> None:
    image = small_png(40, 40)
    config = _config(store, limits=Limits(body_timeout_s=0.5))
    with running_server(config) as live:
        sock = _raw_request(live.url, image, send_body=100)
        reply = _reply(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in reply


def _reply(sock: socket.socket) -> bytes:
    """The server's whole reply to a raw request (headers and a JSON body)."""
    sock.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def test_slow_uploads_hold_no_admission_slot_and_uploads_have_a_memory_budget(store: Path) -> None:
    """A client still uploading held an admission slot for the whole body timeout: 20 connections that
    sent one byte each locked every other client out (429) for as long as they kept reconnecting."""
    image = small_png(20, 20, seed=3)
    limits = Limits(max_body_bytes=100_000)
    with running_server(_config(store, workers=1, max_queue=0, limits=limits)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c:
        assert live.server.upload_budget == 100_000  # one full body per admission slot
        trickles = [_raw_request(live.url, bytes(50_000), send_body=10_000) for _ in range(5)]
        _wait_for(lambda: live.server.receiving == 50_000)
        assert _metric(c.get("/metrics").text, "adassr_upload_bytes") == 50_000
        assert c.post("/v1/upscale", content=image).status_code == 200  # was 429: the slot was theirs
        # Bytes still arriving are bounded: a body that would pass the budget is refused, not buffered.
        big = _raw_request(live.url, bytes(60_000))
        reply = _reply(big)
        assert reply.startswith(b"HTTP/1.1 429") and b"receiving too many uploads" in reply
        big.close()
        for sock in trickles:
            sock.close()
        _wait_for(lambda: live.server.receiving == 0 and live.server.admitted == 0)
        assert c.post("/v1/upscale", content=image).status_code == 200


def test_a_request_whose_upload_ends_when_the_slots_are_full_gets_429(store: Path) -> None:
    """Admission is checked again once the body is in; a client gone mid-upload frees its bytes."""
    gate = threading.Event()
    image = small_png(20, 20, seed=3)
    with running_server(_config(store, workers=1, max_queue=0), open_model=gated_opener(gate)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as c, cf.ThreadPoolExecutor(1) as pool:
        uploading = _raw_request(live.url, image, send_body=10)
        _wait_for(lambda: live.server.receiving == 10)
        held = pool.submit(c.post, "/v1/upscale", content=image)  # takes the only slot, waits on the gate
        _wait_for(lambda: live.server.admitted == 1)
        uploading.sendall(image[10:])
        reply = _reply(uploading)
        assert reply.startswith(b"HTTP/1.1 429") and b"the server is busy" in reply
        uploading.close()
        gate.set()
        assert held.result().status_code == 200
        _wait_for(lambda: live.server.admitted == 0)
        gone = _raw_request(live.url, image, send_body=len(image) // 2)
        _wait_for(lambda: live.server.receiving == len(image) // 2)
        gone.close()
        _wait_for(lambda: live.server.receiving == 0)


def test_an_upload_the_server_cannot_store_is_503_not_500(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full /dev/shm (64 MB in a default Docker container) gave 500 "internal" and a traceback."""
    import tempfile

    image = small_png(20, 20, seed=3)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        real = tempfile.mkstemp

        def full(*args: object, **kwargs: object) -> tuple[int, str]:
            fd, name = real(*args, **kwargs)  # type: ignore[call-overload]
            os.close(fd)
            return os.open("/dev/full", os.O_WRONLY), name  # every write: ENOSPC

        monkeypatch.setattr(tempfile, "mkstemp", full)
        r = c.post("/v1/upscale", content=image)
        message = _assert_json_error(r, 503, "overloaded")
        assert "out of space for uploads" in message and int(r.headers["retry-after"]) >= 1
        monkeypatch.undo()
        assert c.post("/v1/upscale", content=image).status_code == 200

        def no_file(*args: object, **kwargs: object) -> tuple[int, str]:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tempfile, "mkstemp", no_file)  # not even the empty file can be made
        message = _assert_json_error(c.post("/v1/upscale", content=image), 503, "overloaded")
        assert "cannot store the upload for decoding (No space left on device)" in message
        monkeypatch.undo()


def test_a_large_multipart_upload_stays_in_memory_and_extra_fields_are_named(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file part over 1 MiB was spooled by Starlette to $TMPDIR, outside the private upload folder, and
    a full $TMPDIR answered 500; a fifth text field was a 400 "malformed multipart" instead of a 422."""
    import io
    import tempfile

    import numpy as np
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * (1_300_000))  # 1.3 MB of metadata around a 20 x 20 image
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(buf, format="PNG", pnginfo=info)
    assert len(buf.getvalue()) > 1024 * 1024

    def no_temp_files(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        monkeypatch.setattr(tempfile, "TemporaryFile", no_temp_files)  # what a spool rolls over into
        r = c.post("/v1/upscale", files={"image": ("big.png", buf.getvalue())}, data={"camera": "canon"})
        monkeypatch.undo()
        assert r.status_code == 200, r.text
        fields = {"camera": "canon", "format": "png", "quality": "90", "outscale": "2", "colour": "red"}
        message = _assert_json_error(c.post("/v1/upscale", files={"image": ("a.png", small_png(8, 8))}, data=fields),
                                     422, "invalid_parameter")
        assert "unknown parameter(s) 'colour'" in message
        many = [("image", ("a.png", small_png(8, 8), "image/png"))] + [(f"f{k}", (None, "1")) for k in range(40)]
        _assert_json_error(c.post("/v1/upscale", files=many), 400, "bad_request")  # still bounded


class _HalfSize(GatedBackend):
    """A model file wrong for its manifest: an x2 output where the manifest says x4."""

    def _infer(self, batch):  # type: ignore[no-untyped-def]
        out = self.inner.infer(batch)
        return out[:, :, ::2, ::2].copy()


def test_a_model_wrong_for_its_manifest_is_a_500_inference_not_the_client_s_422(store: Path) -> None:
    """A wrong output shape (ShapeError) answered 422 invalid_parameter: clients blamed themselves and
    no inference alert fired."""
    real = default_opener("onnxruntime", providers=("CPUExecutionProvider",), threads=1)
    gate = threading.Event()
    gate.set()
    opener = lambda route: _HalfSize(real(route), gate).open()  # noqa: E731
    with running_server(_config(store), open_model=opener) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        message = _assert_json_error(c.post("/v1/upscale", content=small_png(20, 20, seed=3)), 500, "inference")
        assert "model output" in message
        assert _metric(c.get("/metrics").text, "adassr_errors_total", 'kind="inference"') == 1


def test_every_response_names_its_request_and_the_log_lines_about_it_do_too(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator finds a client's failed request in the server log by its X-Request-ID: the client's
    own usable value is kept, anything else replaced by a new random one; error bodies carry it."""
    import adassr.runtime.server.app as app_module
    from adassr.runtime.errors import ImageError

    real = default_opener("onnxruntime", providers=("CPUExecutionProvider",), threads=1)
    gate = threading.Event()
    gate.set()
    half = lambda route: _HalfSize(real(route), gate).open()  # noqa: E731
    image = small_png(20, 20, seed=3)
    generated = re.compile(r"[0-9a-f]{32}")
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        first, second = c.post("/v1/upscale", content=image), c.get("/healthz")
        assert first.status_code == 200 and second.status_code == 200
        ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
        assert all(generated.fullmatch(i) for i in ids) and ids[0] != ids[1]
        sent = "lb-7f3a:42/trace=1.2"
        ok = c.post("/v1/upscale", content=image, headers={"X-Request-ID": sent})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == sent
        refused = c.post("/v1/upscale", content=b"not an image", headers={"X-Request-ID": sent})
        _assert_json_error(refused, 415, "unsupported_image")
        assert refused.headers["x-request-id"] == sent and refused.json()["request_id"] == sent
        lost = c.get("/v2/nothing", headers={"X-Request-ID": "abc"})  # Starlette's own 404
        assert lost.headers["x-request-id"] == "abc" and lost.json()["request_id"] == "abc"
        for usable in ("x" * 128, "req_abc~1", "dHJhY2U+/w=="):  # the longest; `_`, `~`; base64 with `+`
            assert c.get("/healthz", headers={"X-Request-ID": usable}).headers["x-request-id"] == usable
        for unusable in ("has space", "x" * 129, "tab\tinside", "", "a,b", "semi;colon"):
            r = c.get("/healthz", headers={"X-Request-ID": unusable})
            assert generated.fullmatch(r.headers["x-request-id"]), unusable
        r = c.get("/healthz", headers=[("X-Request-ID", "caf\u00e9".encode())])
        assert generated.fullmatch(r.headers["x-request-id"])
        assert len(r.headers.get_list("x-request-id")) == 1
        # a failure logged on the worker thread (the output could not be encoded) names the request
        def no_encoder(*args: object, **kwargs: object) -> None:
            raise ImageError("no encoder here")
        monkeypatch.setattr(app_module, "encode", no_encoder)
        with caplog.at_level(logging.ERROR, logger="adassr.runtime.server.app"):
            failed = c.post("/v1/upscale", content=image, headers={"X-Request-ID": "enc-1"})
        assert failed.status_code == 500 and failed.json()["request_id"] == "enc-1"
        assert any(rec.getMessage().startswith("request enc-1: encoding the output failed")
                   for rec in caplog.records), [rec.getMessage() for rec in caplog.records]
    caplog.clear()
    with running_server(_config(store), open_model=half) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        with caplog.at_level(logging.ERROR, logger="adassr.runtime.server.app"):
            broken = c.post("/v1/upscale", content=image)
        _assert_json_error(broken, 500, "inference")
        rid = broken.headers["x-request-id"]
        assert broken.json()["request_id"] == rid
        assert any(rec.getMessage().startswith(f"request {rid}: inference failed") for rec in caplog.records)


# --------------------------------------------------------------------------------- lifecycle


def test_manifest_change_reloads_and_swaps_without_failing_in_flight(store: Path, tmp_path: Path) -> None:
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    config = _config(store, reload_interval_s=0.1)
    with (
        running_server(config, open_model=gated_opener(gate, entered=entered)) as live,
        httpx.Client(base_url=live.url, timeout=60) as c,
    ):
        old_sha = c.get("/v1/cameras").json()["cameras"]["canon"]["sha256"]
        gate.clear()
        entered.clear()
        with cf.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(c.post, "/v1/upscale", content=canon)
            assert entered.wait(20)  # routed, and its first tiles are inside the (held) model call
            publish_camera(store, "canon", seed=7)  # re-exported: a new model file and manifest
            _wait_for(lambda: c.get("/v1/cameras").json()["cameras"]["canon"]["sha256"] != old_sha)
            gate.set()
            r = in_flight.result()
        assert r.status_code == 200 and r.headers["x-adassr-model-sha256"] == old_sha
        new = c.post("/v1/upscale", content=canon)
        new_sha = c.get("/v1/cameras").json()["cameras"]["canon"]["sha256"]
        assert new.headers["x-adassr-model-sha256"] == new_sha != old_sha
        ref = cli_output(store, canon, tmp_path, name="new.jpg", tile=TILE, overlap=OVERLAP)
        assert new.content == ref
        assert _metric(c.get("/metrics").text, "adassr_model_loads_total", 'camera="canon",result="ok"') == 2


def test_tampered_model_is_refused_and_the_previous_keeps_serving(store: Path) -> None:
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    config = _config(store, reload_interval_s=3600.0)  # the test triggers each refresh itself
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        before = c.post("/v1/upscale", content=canon)
        sha = before.headers["x-adassr-model-sha256"]
        registry = live.server.registry

        def tamper(path: Path) -> None:
            data = bytearray(path.read_bytes())
            data[-10] ^= 0xFF
            path.write_bytes(bytes(data))

        # 1. The served file is modified in place: refused, the loaded model keeps serving.
        tamper(registry.models["canon"].route.onnx_path)
        assert registry.refresh() is False
        refused = c.get("/v1/cameras").json()["refused"]["canon"]
        assert "checksum" in refused and "keeps serving" in refused and str(store) not in refused
        after = c.post("/v1/upscale", content=canon)
        assert after.status_code == 200 and after.headers["x-adassr-model-sha256"] == sha
        assert after.content == before.content
        assert _metric(c.get("/metrics").text, "adassr_errors_total", 'kind="model_checksum"') == 1
        # 2. A new export whose file fails its checksum: not loaded, counted as a failed load.
        publish_camera(store, "canon", seed=9)
        tamper(resolve_model(store, camera="canon", verify=False).onnx_path)
        assert registry.refresh() is False
        text = c.get("/metrics").text
        assert _metric(text, "adassr_model_loads_total", 'camera="canon",result="failed"') == 1
        assert _metric(text, "adassr_errors_total", 'kind="model_checksum"') == 2
        assert c.get("/v1/cameras").json()["cameras"]["canon"]["sha256"] == sha
        still = c.post("/v1/upscale", content=canon)
        assert still.status_code == 200 and still.content == before.content
        assert c.get("/readyz").status_code == 200


def test_a_manifest_scale_that_contradicts_the_model_file_is_refused_at_load(tmp_path: Path) -> None:
    """A hand-edited manifest "scale" (2 for a x4 model) was served: /readyz said ready and then every
    image of the camera failed with a 500 "model output has shape ...". The model file's own record
    of its scale (`adassr export` writes it) is now checked when the model is opened."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0, metadata={"scale": "4"})
    canon = publish_camera(store, "canon", seed=1, metadata={"scale": "4"})

    def edit(manifest: dict) -> None:
        manifest["scale"] = 2
        for record in manifest["exports"].values():
            record["scale"] = 2

    canon.update_manifest(edit)
    image = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        cameras = c.get("/v1/cameras").json()
        assert "canon" not in cameras["cameras"]
        refused = cameras["refused"]["canon"]
        assert "says camera 'canon' upscales x2, but its model file" in refused and "records x4" in refused
        assert "--camera canon" in refused
        reply = c.post("/v1/upscale", content=image)  # served as any camera without a usable model is
        assert reply.status_code == 200 and reply.headers["x-adassr-model"] == "_fallback/model.onnx"
        assert reply.headers["x-adassr-route"] == "fallback: no model for 'canon'"
        assert "canon" not in live.server.registry.models



def test_a_camera_folder_copied_into_a_live_store_is_loaded_without_false_alarms(
        store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`cp -r canon canon-b` into a served store writes the manifest first, then the model file: while the file
    grew, every poll counted a checksum failure and logged "model refused ... rerun the stage that made it"
    (a helper's hunt). A file still arriving is looked at again; one that stops short is reported once."""
    import shutil

    from adassr.runtime.server.models import ModelRegistry

    errors: list[str] = []
    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1),
                             on_error=errors.append)
    registry.refresh()
    source = store / "canon"
    (model,) = [p for p in source.iterdir() if p.suffix == ".onnx"]
    data = model.read_bytes()
    for copy, stop_at in (("canon-b", len(data)), ("canon-c", len(data) // 2)):
        folder = store / copy
        folder.mkdir()
        shutil.copy(source / "manifest.json", folder / "manifest.json")  # first, as `cp -r` may list it
        with caplog.at_level(logging.INFO, logger="adassr.runtime.server.models"):
            registry.refresh()  # the model file not there yet
            assert "not complete yet (missing)" in registry.problems[copy]
            for end in range(0, stop_at, max(1, len(data) // 4)):
                with open(folder / model.name, "ab") as fh:
                    fh.write(data[end:min(end + len(data) // 4, stop_at)])
                registry.refresh()
                if (folder / model.name).stat().st_size < len(data):
                    assert "not complete yet" in registry.problems[copy] and copy not in registry.models
            assert errors == [] and "model refused" not in caplog.text
        if stop_at == len(data):
            assert registry.models[copy].sha256 == registry.models["canon"].sha256 and copy not in registry.problems
            continue
        registry.refresh()  # the file stopped short and stayed so for a poll: damage, reported once
        registry.refresh()
        assert errors == ["model_checksum"] and "checksum" in registry.problems[copy]
        assert copy not in registry.servable()


def test_a_folder_renamed_to_no_camera_name_while_serving_says_why(store: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The misnamed-folder warning was given at start-up only: a served camera's folder renamed to `Canon`, or a
    folder `Nikon_D750` copied in, vanished without a word, and the log said the manifest was gone (a helper's
    hunt). The refresh names such folders once each, and /v1/cameras lists them under `refused`."""
    import shutil

    config = _config(store, reload_interval_s=3600.0)  # the test triggers each refresh itself
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        registry = live.server.registry
        with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.models"):
            (store / "canon").rename(store / "Canon")
            shutil.copytree(store / "Canon", store / "Nikon_D750")
            registry.refresh()
            registry.refresh()  # nothing new: nothing said again
        lines = [r.getMessage() for r in caplog.records]
        assert [line for line in lines if "canon" in line.lower() and "no longer served" in line] == [
            "camera canon: its folder is now named Canon, which is no camera group name; its model is no longer "
            "served (rename the folder back to canon)"]
        assert sum("the store folder" in line and "Nikon_D750" in line and "is not used" in line for line in lines) == 1
        assert sum("the store folder" in line and "Canon" in line for line in lines) == 1
        listed = c.get("/v1/cameras").json()
        assert "canon" not in listed["cameras"] and set(listed["refused"]) == {"Canon", "Nikon_D750"}
        assert "lower case, so it would be opened as 'canon'" in listed["refused"]["Canon"]
        assert str(store) not in str(listed["refused"])
        (store / "Canon").rename(store / "canon")
        shutil.rmtree(store / "Nikon_D750")
        registry.refresh()
        listed = c.get("/v1/cameras").json()
        assert "canon" in listed["cameras"] and listed["refused"] == {}


def test_a_store_folder_gone_while_serving_keeps_the_models_and_says_why(store: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A store folder unmounted, moved or deleted under a running server counted as an empty store: every
    model was dropped, /readyz went 503, and nothing said the store was gone (a helper's hunt of serve under
    supervision). It is now a store that cannot be read: the loaded models keep serving, one error line,
    /v1/cameras says why, and the store is read again when it is back."""
    config = _config(store, reload_interval_s=3600.0)  # the test triggers each refresh itself
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        registry = live.server.registry
        served = set(registry.servable())
        assert c.get("/v1/cameras").json()["store_problem"] is None
        with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.models"):
            store.rename(tmp_path / "away")
            for _ in range(2):
                assert registry.refresh() is False
            assert set(registry.servable()) == served and c.get("/readyz").status_code == 200
            r = c.post("/v1/upscale", content=canon)
            assert r.status_code == 200 and r.headers["X-Adassr-Model"].startswith("canon/")
            listed = c.get("/v1/cameras").json()
            assert "not there" in listed["store_problem"] and set(listed["cameras"]) == served
            (tmp_path / "away").rename(store)
            registry.refresh()
            assert c.get("/v1/cameras").json()["store_problem"] is None
            # an unmounted volume leaves its mount point, empty (a helper's review: the folder's presence let
            # that pass for an empty store, and every model was dropped)
            store.rename(tmp_path / "volume")
            store.mkdir()
            assert registry.refresh() is False
            assert set(registry.servable()) == served and c.get("/readyz").status_code == 200
            assert "the store folder is empty" in c.get("/v1/cameras").json()["store_problem"]
            store.rmdir()
            (tmp_path / "volume").rename(store)
            registry.refresh()
        assert c.get("/v1/cameras").json()["store_problem"] is None
    lines = [r.getMessage() for r in caplog.records]
    assert sum("the model store cannot be read (the store folder is not there" in line for line in lines) == 1
    assert sum("the model store cannot be read (the store folder is empty" in line for line in lines) == 1
    assert lines.count("the model store can be read again") == 2 and not any("no manifest any more" in x for x in lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_process(store: Path, extra: Sequence[str] = (), *,
                   ignore_hangup: bool = False) -> tuple[subprocess.Popen[str], str]:
    """A real `adassr serve` process on a free port. The port is free when chosen but another process may
    take it before the server binds it; the server then exits at once saying so, and another port is tried.
    ``ignore_hangup``: started with SIGHUP ignored, as ``nohup`` does."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "adassr.cli", "serve", "--store", str(store), "--port", str(port),
             "--tile", "32", "--tile-overlap", "8", "--max-batch", "1", "--threads", "1", "--drain-timeout", "60",
             *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # SIGHUP as a terminal's session has it: the test run itself may be under nohup (ignored, inherited)
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hangup else signal.SIG_DFL),
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=10) as c:

                def ready(c: httpx.Client = c, proc: subprocess.Popen[str] = proc) -> bool:
                    try:
                        return c.get("/readyz").status_code == 200
                    except httpx.TransportError:
                        return proc.poll() is not None  # stops the wait: it exited

                _wait_for(ready, timeout=60)
        except BaseException:
            proc.kill()  # never ready in time: no server left running after the test
            proc.wait(10)
            raise
        if proc.poll() is None:
            return proc, url
        output = proc.stdout.read() if proc.stdout else ""
        assert "cannot listen on" in output, output  # any other early exit is a failure
    raise AssertionError("three free ports were taken before the server could bind them")


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc`` killed at the block's end if it is still running (a failed test leaves no server behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _drain(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and the server's clean exit after its drain."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _signal_with_uploads_in_flight(proc: subprocess.Popen[str], url: str, uploads: int,
                                   signals: Sequence[signal.Signals]) -> list[httpx.Response]:
    """Send ``uploads`` requests (about 250 tiles each: long enough to be in flight), wait until all are, send
    ``signals`` half a second apart, and return the responses."""
    image = small_png(400, 400, seed=6)
    with httpx.Client(base_url=url, timeout=120) as c, cf.ThreadPoolExecutor(uploads) as pool:
        clients = [httpx.Client(base_url=url, timeout=120) for _ in range(uploads)]
        in_flight = [pool.submit(k.post, "/v1/upscale", content=image) for k in clients]
        _wait_for(lambda: _metric(c.get("/metrics").text, "adassr_inflight_requests") == uploads)
        for k, sig in enumerate(signals):
            if k:
                time.sleep(0.5)
            proc.send_signal(sig)
        responses = [f.result() for f in in_flight]
        for k in clients:
            k.close()
    return responses


def test_json_logs_are_one_object_a_line_and_name_the_request(store: Path) -> None:
    """`serve --log-format json`: every log line (the server's, uvicorn's start-up and access lines) is one
    JSON object; a line about a request carries its request_id, the one its response named."""
    import json

    token = store.parent / "token"
    token.write_text("json-logs-token\n")
    token.chmod(0o644)  # its warning comes while the options are checked, before the server starts
    proc, url = _serve_process(store, ["--log-format", "json", "-v", "--token-file", str(token)])
    with _reaped(proc):
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": "Bearer json-logs-token"}) as c:
            ok = c.post("/v1/upscale", content=small_png(20, 20, seed=2), headers={"X-Request-ID": "json-ok"})
            refused = c.post("/v1/upscale", content=b"not\nan image")
        assert ok.status_code == 200 and refused.status_code == 415
        _drain(proc)
    output = proc.stdout.read() if proc.stdout else ""
    lines = output.splitlines()
    text = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith("adassr serve: ") for line in text), text  # stdout's banner and last line only
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    assert any(e["logger"].startswith("uvicorn") and "startup complete" in e["message"] for e in entries)
    assert any("can be read by other users" in e["message"] for e in entries)
    access = {e.get("request_id"): e["message"] for e in entries if e["logger"] == "uvicorn.access"}
    assert '"POST /v1/upscale HTTP/1.1" 200' in access["json-ok"]
    assert '"POST /v1/upscale HTTP/1.1" 415' in access[refused.headers["x-request-id"]]


def _uploads_folders(pid: int) -> list[Path]:
    """The uploads' folders of the server process ``pid`` (``adassr-serve-<pid>-*``: not another test run's)."""
    import tempfile

    from adassr.runtime.server.codec import uploads_base

    return list((uploads_base() or Path(tempfile.gettempdir())).glob(f"adassr-serve-{pid}-*"))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_drains_in_flight_requests(store: Path, stop: signal.Signals) -> None:
    """A real `adassr serve` process: SIGTERM while requests run; they complete, then the process exits 0.
    SIGHUP (a closed terminal) ended it at once, resetting the requests and leaving the uploads' folder
    (a known limit until now): it drains the same way."""
    proc, url = _serve_process(store)
    assert len(_uploads_folders(proc.pid)) == 1
    try:
        responses = _signal_with_uploads_in_flight(proc, url, 3, [stop])
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(decode(r.content).shape == (1600, 1600, 3) for r in responses)
        assert len({r.content for r in responses}) == 1
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):  # nothing listens any more
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = proc.stdout.read() if proc.stdout else ""
    assert "stopped" in output
    assert not _uploads_folders(proc.pid)  # the uploads' folder went


def test_a_server_removes_the_uploads_folders_that_killed_servers_left(store: Path, tmp_path: Path) -> None:
    """A server killed by SIGKILL (the OOM killer) left its uploads' folder in /dev/shm, holding memory (and the
    uploads in flight) until the machine restarted. The next server removes those of processes that are gone,
    and leaves a live server's and any other folder alone."""
    from adassr.runtime.server.codec import remove_stale_upload_folders

    proc, _ = _serve_process(store)
    (folder,) = _uploads_folders(proc.pid)
    (folder / "upload-abc").write_bytes(b"x" * 1000)  # an upload in flight when it was killed
    proc.kill()
    proc.wait(10)
    assert folder.exists()
    live, _ = _serve_process(store)
    try:
        assert not folder.exists()  # removed by the next server as it started
        assert len(_uploads_folders(live.pid)) == 1
    finally:
        live.terminate()
        live.wait(60)
    base = tmp_path / "shm"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    kept = [base / "adassr-serve-xyz", base / "other-folder", base / ".adassr-serve-starting-abc"]
    for path in [*kept, base / f"adassr-serve-{dead.pid}-abc"]:
        path.mkdir()
    (base / f"adassr-serve-{dead.pid}-def").write_text("a file, not a server's folder")
    assert remove_stale_upload_folders(base) == [base / f"adassr-serve-{dead.pid}-abc"]
    assert sorted(base.iterdir()) == sorted([*kept, base / f"adassr-serve-{dead.pid}-def"])
    assert remove_stale_upload_folders(tmp_path / "missing") == []


def test_a_running_servers_folder_is_known_by_its_lock_not_its_pid(tmp_path: Path) -> None:
    """The cleaning judged a folder by the pid in its name (a review helper): a server in another pid namespace
    that shares /dev/shm (a container of the same pod) lost its live folder to the next server (every upload
    then a 503), and a restarted container's server, which gets its killed predecessor's pid, never removed
    the predecessor's. A running server holds a lock on its folder: that decides."""
    import fcntl

    from adassr.runtime.server.codec import UploadFolder, remove_stale_upload_folders

    base = tmp_path / "shm"
    base.mkdir()
    other_namespace = base / "adassr-serve-403-live"  # pid 403 in its own namespace: no such process here
    other_namespace.mkdir()
    (other_namespace / "upload-in-flight").write_bytes(b"x")
    predecessor = base / f"adassr-serve-{os.getpid()}-killed"  # the same pid as this (restarted) server
    predecessor.mkdir()
    held = os.open(other_namespace, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_stale_upload_folders(base) == [predecessor]
        assert (other_namespace / "upload-in-flight").exists()
    finally:
        os.close(held)
    assert remove_stale_upload_folders(base) == [other_namespace]  # once its server is gone
    folder = UploadFolder()  # a real one, in the process's temporary folder
    try:
        probe = os.open(folder.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while it runs
        finally:
            os.close(probe)
        assert folder.path in [p for p in folder.path.parent.iterdir()]
        assert remove_stale_upload_folders(folder.path.parent).count(folder.path) == 0
    finally:
        folder.close()
        folder.close()  # twice is harmless
    assert not folder.path.exists()


def test_sighup_is_left_ignored_under_nohup(store: Path) -> None:
    """Under ``nohup`` SIGHUP is ignored on purpose: the server must keep serving, not drain."""
    proc, url = _serve_process(store, ignore_hangup=True)
    with _reaped(proc):
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/upscale", content=small_png(20, 20, seed=2)).status_code == 200
        assert proc.poll() is None
        _drain(proc)


def test_a_second_ctrl_c_stops_at_once_answering_503_and_exits_130(tmp_path: Path) -> None:
    """uvicorn's force quit (a second Ctrl-C while draining) said the requests passed the drain timeout
    (1 s of 60), printed a traceback of the app's cancelled shutdown and exited 0 (a helper's hunt of
    serve under supervision): now the requests are answered 503 naming the second Ctrl-C, exit 130.
    The model is a slow one, so the uploads are still running at the second Ctrl-C: with the small test
    model a fast CPU (an AMD EPYC Zen 4) finished one during the half second after the first."""
    slow = tmp_path / "slow"
    publish_camera(slow, FALLBACK_CAMERA, channels=256)
    proc, url = _serve_process(slow)
    try:
        responses = _signal_with_uploads_in_flight(proc, url, 2, [signal.SIGINT, signal.SIGINT])
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for r in responses:
        _assert_json_error(r, 503, "not_ready")
        assert "stopped at once (a second Ctrl-C)" in r.json()["message"]
    output = proc.stdout.read() if proc.stdout else ""
    assert "stopped by a second Ctrl-C" in output and "Traceback" not in output, output


def test_a_second_ctrl_c_does_not_wait_for_a_long_model_call(tmp_path: Path) -> None:
    """A model call on a large tile takes half a minute on a CPU: the second Ctrl-C waited for it (the
    interpreter's exit joins the worker threads), then printed a traceback of the app's cancelled shutdown
    and left the uploads' folder behind (a helper's hunt). Now it ends at once, the folder removed."""
    slow = tmp_path / "slow"
    publish_camera(slow, FALLBACK_CAMERA, channels=256)  # about 9 s a call on a 448-px tile (AMD EPYC, 1 thread)
    proc, url = _serve_process(slow, ["--tile", "448", "--tile-overlap", "16"])
    assert len(_uploads_folders(proc.pid)) == 1
    try:
        with httpx.Client(base_url=url, timeout=120) as c, cf.ThreadPoolExecutor(1) as pool:
            request = pool.submit(c.post, "/v1/upscale", content=small_png(460, 460, seed=6))
            with httpx.Client(base_url=url, timeout=30) as probe:
                _wait_for(lambda: _metric(probe.get("/metrics").text, "adassr_inflight_requests") == 1)
            time.sleep(1.0)  # its first model call runs
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            second = time.monotonic()
            assert proc.wait(timeout=120) == 130
            took = time.monotonic() - second
            response = request.result()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    _assert_json_error(response, 503, "not_ready")
    assert took < 4.0, f"the exit waited {took:.1f} s for the model call"
    output = proc.stdout.read() if proc.stdout else ""
    assert "stopped by a second Ctrl-C" in output and "Traceback" not in output, output
    assert not _uploads_folders(proc.pid)  # the uploads' folder went


def test_a_second_server_on_the_port_fails_at_once(store: Path) -> None:
    """The port is listened on before the models load: a second server on it fails with one line and exit 2
    at once (it had loaded every model before uvicorn's own error and exit 3, when it came while the first
    was still loading)."""
    proc, url = _serve_process(store)
    port = url.rsplit(":", 1)[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    try:
        second = subprocess.run([sys.executable, "-m", "adassr.cli", "serve", "--store", str(store), "--port", port],
                                env=env, capture_output=True, text=True, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert second.returncode == 2, second.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr and "another process may use the port" in second.stderr
    assert "adassr serve: http" not in second.stdout


_SLOW_LOADS = """
import sys, time
from adassr.runtime.server import models
real = models.ModelRegistry._refresh_camera
def slow(self, *args, **kwargs):
    print("loading", flush=True, file=sys.stderr)
    time.sleep(4)  # a model load as slow as a TensorRT engine build, for each camera
    return real(self, *args, **kwargs)
models.ModelRegistry._refresh_camera = slow
from adassr.cli import console_main
sys.argv = ["adassr", "serve", *sys.argv[1:]]
sys.exit(console_main())
"""


def test_a_stop_signal_while_the_models_load_refuses_the_waiting_clients_and_loads_no_more(
        store: Path, tmp_path: Path) -> None:
    """The port is listened on before the models load: a SIGTERM then kept the socket, and the clients in its
    backlog, until every model had loaded (minutes with TensorRT), and they were reset at the end (a helper's
    review). The listeners now close at the signal and no further model is loaded."""
    publish_camera(store, "sony", seed=2)  # three cameras: 12 s of loading
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LOADS, "--store", str(store), "--port", str(port),
                             "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == "loading"  # the port is listened on by now
        waiting = socket.create_connection(("127.0.0.1", port), timeout=30)  # held in the backlog
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            answer = waiting.recv(100)  # refused now (reset or closed), not answered after the loads
        except ConnectionResetError:
            answer = b""
        refused_after = time.monotonic() - started
        waiting.close()
        assert answer == b""
        assert proc.wait(timeout=60) == 0
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert refused_after < 3.5, refused_after  # (12 s before: after every load)
    assert took < 10.0, took  # the model being loaded finishes (4 s), the other two are not loaded (12 s)
    err = proc.stderr.read() if proc.stderr else ""
    assert "stopping before the models were loaded" in err and "loading" not in err.splitlines(), err  # one load
    assert "adassr serve: http" not in (proc.stdout.read() if proc.stdout else "")


def test_server_modules_import_without_torch() -> None:
    import subprocess
    import sys

    from .._no_torch import BLOCK_TORCH

    code = (
        BLOCK_TORCH +
        "import adassr.runtime.server.app, adassr.runtime.serve_cli, adassr.runtime.server.triton_client\n"
        "from adassr.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--store', 'x'])\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_draining_answers_503(store: Path) -> None:
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.post("/v1/upscale", content=canon).status_code == 200
        live.server.start_draining()
        r = c.post("/v1/upscale", content=canon)
        _assert_json_error(r, 503, "not_ready")
        assert r.headers["retry-after"] == "5"
        assert c.get("/readyz").json() == {"status": "draining"} and c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_slow_headers_close_the_connection(store: Path) -> None:
    config = _config(store, limits=Limits(header_timeout_s=0.5))
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\n")  # the head never completes
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5
        sock.close()
        # A keep-alive connection that starts a second request head and stalls is closed too.
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"alive" not in first:
            chunk = sock.recv(4096)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert sock.recv(4096) == b""
        sock.close()
        # A normal client is not affected.
        assert c.get("/healthz").status_code == 200


def _noise_png(side: int) -> bytes:
    """A PNG of random pixels: its x4 output does not compress, so the response is large."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype("uint8")).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_refusal_before_the_body_reaches_a_client_that_closes(store: Path) -> None:
    """A 413 sent before the body, to a client sending `Connection: close` (urllib), arrived as
    BrokenPipeError / ConnectionResetError: the server closed with the upload unread, and the kernel
    answered it with a reset. The connection now half-closes and discards the rest (lingering close)."""
    import urllib.error
    import urllib.request

    config = _config(store, limits=Limits(max_body_bytes=2**20))
    with running_server(config) as live:
        request = urllib.request.Request(f"{live.url}/v1/upscale", data=bytes(24 * 2**20))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        assert _connections_close(live)  # the lingering close ends when the client closes


def _connections_close(live: LiveServer, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while live.uvicorn.server_state.connections:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_client_that_reads_nothing_of_its_response_is_dropped(store: Path) -> None:
    """A client that never read its response kept the connection, and the whole encoded response in
    the server's memory, for ever (a close waits for the buffer to flush), and held every drain for
    the whole drain timeout. --send-timeout drops it; the header timeout, which closes the connection
    after the response, must not stop that."""
    body = _noise_png(400)  # its 1600 x 1600 output PNG: ~6 MB, more than the socket buffers hold
    config = _config(store, limits=Limits(send_timeout_s=0.5, header_timeout_s=0.2))
    with running_server(config) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        try:
            sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert sock.recv(12) == b"HTTP/1.1 200"  # the response is under way; the rest is never read
            assert _connections_close(live, within_s=60.0)
        finally:
            sock.close()
        metrics = httpx.get(f"{live.url}/metrics", timeout=30).text  # the 200 counted is known not delivered
        assert _metric(metrics, "adassr_errors_total", 'kind="send_failed"') == 1
        with httpx.Client(base_url=live.url, timeout=60) as c:  # a client that reads is served
            r = c.post("/v1/upscale", content=body, headers={"content-type": "image/png"})
            assert r.status_code == 200 and len(r.content) > 5 * 2**20


def test_a_client_that_resets_mid_download_is_counted_as_a_failed_send(store: Path) -> None:
    """The latency histogram counts a response as its status when the app hands it over: a client gone
    mid-download was a plain 200 in the metrics. `adassr_errors_total{kind="send_failed"}` now counts it;
    a client that read its whole response is not counted."""
    import struct

    body = _noise_png(400)  # ~6 MB response, more than the socket buffers hold
    with running_server(_config(store)) as live:
        host, port = live.url.removeprefix("http://").split(":")
        with httpx.Client(base_url=live.url, timeout=60) as c:
            assert c.post("/v1/upscale", content=body, headers={"content-type": "image/png"}).status_code == 200
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert sock.recv(12) == b"HTTP/1.1 200"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        sock.close()
        _wait_for(lambda: _metric(httpx.get(f"{live.url}/metrics", timeout=30).text, "adassr_errors_total",
                                  'kind="send_failed"') == 1)
        time.sleep(0.5)
        assert _metric(httpx.get(f"{live.url}/metrics", timeout=30).text, "adassr_errors_total",
                       'kind="send_failed"') == 1  # once, and not for the client that read it all


def test_a_client_reading_slowly_but_steadily_gets_its_whole_response(store: Path) -> None:
    """The send timeout ran from the write buffer's last high-water pause, and the buffer only moves in
    bursts of a third of the kernel's send buffer: a client reading all the time, at ~1.5 MB/s, was
    cut off mid-body with a 0.5 s timeout (~110 KB/s with the default 30 s). Progress now counts what
    the client acknowledged."""
    body = _noise_png(400)
    config = _config(store, limits=Limits(send_timeout_s=0.5))
    with running_server(config) as live:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while chunk := sock.recv(32768):
                answer += chunk
                time.sleep(0.02)  # ~1.5 MB/s, never a pause
        head, _, png = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        assert head.startswith(b"HTTP/1.1 200") and length > 5 * 2**20
        assert len(png) == length  # the whole body, not a cut one


def test_alpha_and_16_bit_images_match_the_cli(store: Path, tmp_path: Path) -> None:
    import io

    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, (36, 44, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 44, dtype=np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    ok, png16 = cv2.imencode(".png", rng.integers(0, 65536, (30, 34, 3), dtype=np.uint16))
    assert ok
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        for name, data in (("rgba.png", buf.getvalue()), ("deep.png", png16.tobytes())):
            r = c.post("/v1/upscale", params={"camera": "canon"}, content=data)
            assert r.status_code == 200, r.text
            ref = cli_output(store, data, tmp_path, name=name, tile=TILE, overlap=OVERLAP, camera="canon")
            assert r.content == ref
        out = decode(c.post("/v1/upscale", params={"camera": "canon"}, content=buf.getvalue()).content)
        assert out.shape == (144, 176, 4)
        r = c.post("/v1/upscale", params={"camera": "canon", "format": "jpeg"}, content=buf.getvalue())
        assert r.status_code == 200 and "alpha" in r.headers["x-adassr-note"].lower()
        deep = c.post("/v1/upscale", content=png16.tobytes()).content
        decoded = cv2.imdecode(np.frombuffer(deep, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == np.uint16 and decoded.shape == (120, 136, 3)  # 16 bits in, 16 bits out
        # a 12-bit camera's 16-bit file asked for as JPEG: as bright as its 8-bit version, not 1/16 of it
        photo = rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)
        ok, png12 = cv2.imencode(".png", np.round(photo * (4095 / 255)).astype(np.uint16))
        ok8, png8 = cv2.imencode(".png", photo)
        assert ok and ok8
        jpegs = [cv2.imdecode(np.frombuffer(c.post("/v1/upscale", params={"format": "jpeg"}, content=data.tobytes())
                                            .content, np.uint8), cv2.IMREAD_UNCHANGED).astype(int)
                 for data in (png12, png8)]
        assert jpegs[1].mean() > 60 and np.abs(jpegs[0] - jpegs[1]).mean() < 1.0


def test_a_12_bit_upload_with_16_bit_alpha_keeps_its_brightness_in_webp(store: Path) -> None:
    """The upload's pixels' sample range stands for white whether or not it has alpha (a 16-bit alpha,
    opaque at 65535, converts at 16 bits)."""
    import numpy as np

    from adassr.runtime.images import encode_image

    px = np.full((16, 16, 3), 3000, np.uint16)
    alpha = np.zeros((16, 16), np.uint16)
    alpha[4:12, 4:12] = 65535
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/upscale", params={"format": "webp"}, content=encode_image(".png", px, alpha=alpha))
        assert r.status_code == 200, r.text
    out = decode(r.content)
    assert out.shape == (64, 64, 4) and out[32, 32, 3] == 255 and out[2, 2, 3] == 0
    assert abs(int(out[32, 32, :3].mean()) - 187) <= 6  # 3000 of 4095, not 12 of 255


def test_sample_bits_tells_a_dark_16_bit_upload_from_a_14_bit_cameras(store: Path) -> None:
    """``sample_bits=16``: a 16-bit photo darker than a quarter of full range comes back as dark as it is (auto takes
    it for 14-bit samples and brightens its JPEG 4x); a range its values exceed, or no number of bits, is a 422."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(3)
    photo = rng.integers(60, 256, (30, 34, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", (photo.astype(np.uint16) * 257) // 4)  # at most 16383
    assert ok
    means = {}
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        for bits in ("auto", "16", ""):
            r = c.post("/v1/upscale", params={"format": "jpeg", "sample_bits": bits}, content=png.tobytes())
            assert r.status_code == 200, r.text
            means[bits] = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED).mean()
        for bits, message in (("12", "sample_bits=12: the upload's values reach"), ("8", "sample_bits must be auto"),
                              ("x", "sample_bits must be auto")):
            r = c.post("/v1/upscale", params={"sample_bits": bits}, content=png.tobytes())
            assert r.status_code == 422 and message in r.text, (bits, r.text)
    assert means["auto"] == means[""] and abs(means["auto"] - photo.mean()) < 0.1 * photo.mean(), means
    assert abs(means["16"] - photo.mean() / 4) < 0.1 * photo.mean() / 4, means


def test_sample_bits_serves_an_upload_as_upscale_does_and_leaves_8_bit_uploads_alone(store: Path,
                                                                                      tmp_path: Path) -> None:
    """``sample_bits=16``: the model sees the upload at full range, as ``upscale --sample-bits 16`` serves the file
    (not only its JPEG: a PNG response too); an 8-bit upload with ``sample_bits`` is served as without it."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(5)
    photo = rng.integers(60, 256, (30, 34, 3), dtype=np.uint8)
    ok, png16 = cv2.imencode(".png", (photo.astype(np.uint16) * 257) // 4)  # at most 16383: auto takes 14 bits
    ok8, png8 = cv2.imencode(".png", photo)
    assert ok and ok8

    def pixels(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

    full = pixels(cli_output(store, png16.tobytes(), tmp_path, name="full.png", tile=TILE, overlap=OVERLAP,
                             extra=("--sample-bits", "16")))
    auto = pixels(cli_output(store, png16.tobytes(), tmp_path, name="auto.png", tile=TILE, overlap=OVERLAP))
    assert full.dtype == np.uint16 and not np.array_equal(full, auto)  # the model's input differs
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/upscale", params={"format": "png", "sample_bits": "16"}, content=png16.tobytes())
        assert r.status_code == 200, r.text
        assert np.array_equal(pixels(r.content), full)
        eight = [c.post("/v1/upscale", params={"format": "png", **extra}, content=png8.tobytes())
                 for extra in ({"sample_bits": "12"}, {})]
    assert [e.status_code for e in eight] == [200, 200], eight[0].text
    assert np.array_equal(pixels(eight[0].content), pixels(eight[1].content))


def test_uploads_folders_of_dead_servers_are_all_removed_and_others_kept(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Every dead server's folder goes (not only the first); a name no process can have (beyond a pid_t) is a dead
    server's, not an error at start-up; a link named like one, and another user's folders, stay."""
    from adassr.runtime.server import codec

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    base = tmp_path / "shm"
    stale = [base / f"adassr-serve-{dead.pid}-abc", base / f"adassr-serve-{dead.pid}-def",
             base / "adassr-serve-9999999999-xyz"]
    for path in stale:
        path.mkdir(parents=True)
        (path / "upload-x").write_bytes(b"x")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not a server's")
    link = base / f"adassr-serve-{dead.pid}-link"
    link.symlink_to(target, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.codec"):
        assert sorted(codec.remove_stale_upload_folders(base)) == sorted(stale)
    assert list(base.iterdir()) == [link] and (target / "keep.txt").exists()
    assert caplog.text == ""  # a link named like a folder is no folder: left alone, not a failed removal
    link.unlink()
    for path in stale:
        path.mkdir()
    uid = os.getuid()
    monkeypatch.setattr(codec.os, "getuid", lambda: uid + 1)  # as another user sees them
    assert codec.remove_stale_upload_folders(base) == []
    assert sorted(base.iterdir()) == sorted(stale)


def test_uploads_folders_that_cannot_be_removed_are_logged_and_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A stale folder that cannot be removed (a file in it another user made read-only, as root cannot be made to
    fail here) is a warning, not a server that fails to start; the next one is still removed."""
    import shutil

    from adassr.runtime.server import codec

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    base = tmp_path / "shm"
    locked, free = base / f"adassr-serve-{dead.pid}-aaa", base / f"adassr-serve-{dead.pid}-bbb"
    locked.mkdir(parents=True)
    free.mkdir()
    rmtree = shutil.rmtree

    def refuse(path: str, *args: object, **kwargs: object) -> None:
        if path == str(locked):
            raise PermissionError(13, "Permission denied", path)
        rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codec.shutil, "rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.codec"):
        assert codec.remove_stale_upload_folders(base) == [free]
    assert locked.exists() and not free.exists()
    assert f"could not remove {locked}" in caplog.text and "Permission denied" in caplog.text


def test_uploads_folders_in_the_temporary_folder_are_cleaned_without_dev_shm(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a writable /dev/shm the folders go in $TMPDIR: a killed server's left there is removed too, and the
    new one is named by this process's pid. A live process's own folder and another user's process count as alive."""
    import errno
    import tempfile

    from adassr.runtime import tempfiles
    from adassr.runtime.server import codec

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    monkeypatch.setattr(codec, "uploads_base", lambda: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"adassr-serve-{dead.pid}-abc"
    stale.mkdir()
    folder = codec.UploadFolder()
    try:
        assert not stale.exists()
        assert folder.path.parent == tmp_path and folder.path.name.startswith(f"adassr-serve-{os.getpid()}-")
    finally:
        folder.close()

    def not_permitted(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(tempfiles.os, "kill", not_permitted)  # a process of another user
    assert tempfiles.pid_alive(dead.pid)


def test_servers_starting_together_neither_fail_nor_warn_over_each_others_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A review helper's finds: the folder was made under a starting name and renamed to a predictable one,
    which another local user could take first (the server then refused to start); and of two servers starting
    together, the second to lock a stale folder found it gone and warned. Now the folder is made under its own
    unique name and locked at once, made again when a starting server took it for a stale one meanwhile."""
    import fcntl
    import shutil
    import tempfile

    from adassr.runtime.server import codec

    monkeypatch.setattr(codec, "uploads_base", lambda: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real_flock = fcntl.flock
    calls: list[int] = []

    def busy_once(fd: int, op: int) -> None:
        calls.append(op)
        if len(calls) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")  # a starting server holds it
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", busy_once)
    folder = codec.UploadFolder()
    try:
        assert len(calls) == 2 and folder.path.exists()
    finally:
        folder.close()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    gone = tmp_path / f"adassr-serve-{dead.pid}-gone"
    gone.mkdir()
    rmtree = shutil.rmtree

    def removed_first(path: str, *args: object, **kwargs: object) -> None:
        rmtree(path, *args, **kwargs)  # type: ignore[arg-type]
        raise FileNotFoundError(2, "No such file or directory", path)  # as when another server removed it first

    monkeypatch.setattr(codec.shutil, "rmtree", removed_first)
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.codec"):
        assert codec.remove_stale_upload_folders(tmp_path) == []
    assert caplog.text == "" and not gone.exists()
    monkeypatch.setattr(codec.shutil, "rmtree", rmtree)
    replaced = tmp_path / f"adassr-serve-{dead.pid}-new"
    replaced.mkdir()
    monkeypatch.setattr(codec, "_same_folder", lambda fd, path: False)  # removed and made again meanwhile
    assert codec.remove_stale_upload_folders(tmp_path) == [] and replaced.exists()


def test_serve_refuses_a_port_in_use_before_starting(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn used to print the banner, then its own error, and exit 3."""
    import socket

    from adassr.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--store", str(store), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in captured.err and "adassr serve: http" not in captured.out


def test_serve_without_a_writable_temporary_folder_is_one_line_before_starting(
        store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only root file system without a writable /dev/shm or $TMPDIR the upload folder failed inside
    uvicorn's start-up: a 31-line traceback and exit 3 (a helper's hunt)."""
    import tempfile

    from adassr.cli import main

    def no_temp(*args: object, **kwargs: object) -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(tempfile, "mkdtemp", no_temp)
    assert main(["serve", "--store", str(store), "--port", str(_free_port())]) == 2
    captured = capsys.readouterr()
    assert "error: the server has no writable temporary folder to decode uploads in" in captured.err
    assert "set TMPDIR to a writable folder" in captured.err and "Traceback" not in captured.err
    assert "adassr serve: http" not in captured.out


def test_the_servers_own_file_trouble_is_a_503_not_a_damaged_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors, the server could not reopen its own copy of an upload and answered 415 "the
    file is damaged or unreadable" for a good image: a client is told not to retry (a helper's hunt)."""
    import errno

    from adassr.runtime.errors import ImageError
    from adassr.runtime.server import codec

    image = small_png(16, 12, seed=2)
    uploads = codec.UploadFolder()
    try:
        def no_descriptors(path: object, **kwargs: object) -> object:
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as exc:
                raise ImageError(f"{path}: cannot read the file ({exc.strerror})") from exc

        monkeypatch.setattr(codec, "read_image", no_descriptors)
        with pytest.raises(codec.UploadSpaceError, match=r"could not read the upload back .*Too many open files.*"
                                                         r"retry later"):
            uploads.decode(image, max_pixels=10_000)

        def damaged(path: object, **kwargs: object) -> object:
            raise ImageError(f"{path}: cannot read the image header; the file is damaged or unreadable")

        monkeypatch.setattr(codec, "read_image", damaged)
        with pytest.raises(ImageError, match="the uploaded image: cannot read the image header") as err:
            uploads.decode(image, max_pixels=10_000)
        assert not isinstance(err.value, codec.UploadSpaceError)
    finally:
        uploads.close()


def test_serve_probes_every_address_the_host_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host such as localhost resolves to several addresses and the server binds them all; the probe
    used to try only the first, so a port taken on the second passed the check and uvicorn failed later."""
    import socket

    from adassr.runtime.errors import ConfigError
    from adassr.runtime.serve_cli import _bind_listeners

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        free_first = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                      (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: free_first)
        with pytest.raises(ConfigError, match=rf"cannot listen on twohomed:{port} \(127\.0\.0\.1: .*another "
                                              "process may use the port"):
            _bind_listeners("twohomed", port)
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: free_first[:1])
        listeners = _bind_listeners("twohomed", port)  # 127.0.0.2 alone is free
        assert listeners is not None and [s.getsockname() for s in listeners] == [("127.0.0.2", port)]
        for sock in listeners:
            sock.close()


def test_serve_refuses_an_unknown_host_before_starting() -> None:
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.serve_cli import _bind_listeners

    with pytest.raises(ConfigError, match="check --host"):
        _bind_listeners("no-such-host.invalid", 8080)
    with pytest.raises(ConfigError, match=r"not one of this machine's: check --host"):  # was "choose another --port"
        _bind_listeners("192.0.2.1", 8080)  # TEST-NET-1: documentation only, on no machine


def test_a_model_that_fails_to_open_is_reported_once_until_its_files_change(store: Path) -> None:
    """A load failure used to be retried and logged at every reload poll (every 2 s) for a camera
    that had no model yet."""
    from adassr.runtime.errors import BackendError
    from adassr.runtime.server.models import ModelRegistry

    attempts: list[str] = []
    errors: list[str] = []

    def failing(route: RouteDecision) -> Backend:
        attempts.append(route.model_camera)
        raise BackendError("this backend cannot start here")

    registry = ModelRegistry(store, open_model=failing, on_error=errors.append)
    for _ in range(3):
        registry.refresh()
    assert sorted(attempts) == ["_fallback", "canon"] and errors == ["model_load", "model_load"]
    assert "cannot start" in registry.problems["canon"]
    publish_camera(store, "canon", seed=7)  # a new export: tried again
    registry.refresh()
    assert sorted(attempts) == ["_fallback", "canon", "canon"]


def test_serve_with_tensorrt_but_without_it_exits_2_at_start(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It used to start, answer 503 forever and log a refusal every 2 s."""
    from adassr.cli import main
    from adassr.runtime.engines.trt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    assert main(["serve", "--store", str(store), "--backend", "tensorrt", "--port", str(_free_port())]) == 2
    captured = capsys.readouterr()
    # "not installed", or "type stubs only?" where tensorrt-stubs is installed (as CI's type check does)
    assert re.search(r"TensorRT is not installed|type stubs only", captured.err), captured.err
    assert "[tensorrt]'" in captured.err and "adassr serve: http" not in captured.out


def test_refusals_never_show_the_store_path(store: Path) -> None:
    """The damaged-manifest advice names the store in its commands (`--store <path>`); that was shown."""
    from adassr.runtime.server.models import ModelRegistry, default_opener

    (store / "canon" / "manifest.json").write_text("{broken")
    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    registry.refresh()
    problem = registry.problems["canon"]
    assert "--store <store>" in problem and "<store>/canon/manifest.json" in problem
    assert str(store) not in problem and str(store.resolve()) not in problem


def test_a_short_relative_store_name_is_masked_only_where_it_is_a_path(store: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --store m`: a refusal read '<store>/nokia/<store>odel...onnx fails its checksu<store>'."""
    import shutil

    from adassr.runtime.server.models import ModelRegistry, default_opener

    shutil.copytree(store, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    model = next((tmp_path / "m" / "canon").glob("model.*.onnx"))
    with open(model, "ab") as fh:
        fh.write(b"x")
    registry = ModelRegistry(Path("m"), open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    registry.refresh()
    problem = registry.problems["canon"]
    assert f"<store>/canon/{model.name}" in problem and "checksum" in problem and "modified" in problem, problem
    assert "<store>odel" not in problem and "checksu<store>" not in problem


def test_an_export_committed_while_the_registry_reads_it_is_picked_up(store: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit between reading the manifest and taking its stat stored the newer manifest's signature
    with the older decision: the new model was never loaded (and the old file, deleted, was refused as
    missing), until something else changed the manifest."""
    import adassr.runtime.server.models as models
    from adassr.runtime.server.models import ModelRegistry, default_opener
    from adassr.runtime.store import CameraStore

    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    registry.refresh()
    first = registry.models["canon"].sha256
    real = models.resolve_model
    raced: list[bool] = []

    def read_then_commit(*args: object, **kwargs: object) -> RouteDecision:
        decision = real(*args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("camera") == "canon" and not raced:
            raced.append(True)
            publish_camera(store, "canon", seed=21)  # another process's export lands now
        return decision

    publish_camera(store, "canon", seed=20)
    second = CameraStore.open(store, "canon").read_manifest()["artifacts"]["model.onnx"]["sha256"]
    monkeypatch.setattr(models, "resolve_model", read_then_commit)
    registry.refresh()  # the model of the manifest it read, or (its file gone: this helper commits twice) the first
    assert raced and registry.models["canon"].sha256 in (first, second)
    registry.refresh()  # the newer manifest is seen and loaded (it was never picked up)
    third = CameraStore.open(store, "canon").read_manifest()["artifacts"]["model.onnx"]["sha256"]
    assert registry.models["canon"].sha256 == third != second and "canon" not in registry.problems


def test_a_precision_the_store_lacks_is_logged_once_per_model(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`serve --precision fp16` on fp32-only exports served fp32 without a word."""
    import logging

    from adassr.runtime.server.models import ModelRegistry, default_opener

    registry = ModelRegistry(store, precision="fp16",
                             open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.models"):
        registry.refresh()
        registry.refresh()
    notes = sorted(r.getMessage() for r in caplog.records if "has no fp16 export" in r.getMessage())
    assert notes == [f"camera {camera} has no fp16 export: serving its fp32 model (export it again with "
                     "--precision fp16 to serve fp16)" for camera in ("_fallback", "canon")]  # once each


@pytest.mark.parametrize("signalled", [True, False])
def test_drain_timeout_bounds_the_shutdown_and_queued_work_never_starts(store: Path, signalled: bool) -> None:
    """Past --drain-timeout the HTTP server cancels the requests; their work used to go on (queued work
    started after its client had gone), the shutdown waited for all of it, and they were counted as 200.
    Also without the signal handler's draining mark (a shutdown uvicorn starts itself)."""
    from adassr.runtime.serve_cli import _uvicorn_server
    from adassr.runtime.server.app import create_app

    gate = threading.Event()
    gate.set()
    config = _config(store, workers=1, max_queue=4, max_batch=1, port=0, drain_timeout_s=1.0,
                     limits=Limits(request_timeout_s=60))
    app = create_app(config, open_model=gated_opener(gate, delay=0.25))
    server = _uvicorn_server(app, config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: bool(server.started))
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    state = app.state.server
    starts: list[float] = []
    process = state.process

    def counted(*args: object) -> object:
        starts.append(time.monotonic())
        return process(*args)

    state.process = counted

    crashes: list[str] = []

    class SlowLog(logging.Handler):
        """Each cancelled request is logged on the event loop, one after the other; a slow log (a busy
        machine) once let the worker freed by the first cancel start the next queued request. uvicorn
        logged each as a crash with a traceback ("Exception in ASGI application")."""

        def emit(self, record: logging.LogRecord) -> None:
            if "Exception in ASGI application" in record.getMessage():
                crashes.append(record.getMessage())
            if "past its drain timeout" in record.getMessage():
                time.sleep(0.3)

    slow = SlowLog()
    logging.getLogger("uvicorn.error").addHandler(slow)
    logging.getLogger("adassr.runtime.server.app").addHandler(slow)
    image = small_png(64, 64, seed=1)  # 9 tiles of 32 px at 0.25 s each: about 2 s of work a request
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            posts = [pool.submit(httpx.post, url + "/v1/upscale", params={"camera": "canon"}, content=image,
                                 timeout=60) for _ in range(3)]
            _wait_for(lambda: state.admitted == 3 and len(starts) == 1)
            stopped = time.monotonic()
            if signalled:
                state.start_draining()
            server.should_exit = True  # what the SIGTERM handler does (after marking the app draining)
            thread.join(30)
            took = time.monotonic() - stopped
            answers = []
            for post in posts:
                with contextlib.suppress(httpx.HTTPError):
                    answers.append(post.result().status_code)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(slow)
        logging.getLogger("adassr.runtime.server.app").removeHandler(slow)
    assert not crashes and set(answers) == {503}, (crashes, answers)  # was uvicorn's 500 and a traceback each
    assert _metric(state.metrics.render().decode(), "adassr_errors_total", 'kind="not_ready"') == 3
    assert not thread.is_alive() and took < 6  # about the drain timeout plus one model call, not all the work
    assert len(starts) == 1  # the two queued requests never started
    text = state.metrics.render().decode()
    # the started one was routed to canon; the two that never started were not routed
    assert _metric(text, "adassr_request_duration_seconds_count", 'camera="canon",status="503"') == 1
    assert _metric(text, "adassr_request_duration_seconds_count", 'camera="none",status="503"') == 2
    assert 'status="200"' not in text


def test_a_deleted_refused_camera_and_an_unexported_one_are_no_problems(store: Path, tmp_path: Path) -> None:
    """A refused camera whose folder was deleted stayed in /v1/cameras' `refused` for good; a camera
    adapted but not exported, in a store without a fallback, was reported as an unreadable manifest."""
    import shutil

    from adassr.runtime.server.models import ModelRegistry, default_opener
    from adassr.runtime.store import CameraStore

    opener = default_opener("onnxruntime", providers=("cpu",), threads=1)
    (store / "canon" / "manifest.json").write_text("[]")
    registry = ModelRegistry(store, open_model=opener)
    registry.refresh()
    assert "canon" in registry.problems
    shutil.rmtree(store / "canon")
    registry.refresh()
    assert "canon" not in registry.problems
    bare = tmp_path / "bare"
    publish_camera(bare, "nokia", seed=3)
    CameraStore.open(bare, "nokia").update_manifest(lambda m: m.pop("exports"))
    lonely = ModelRegistry(bare, open_model=opener)
    lonely.refresh()
    assert dict(lonely.problems) == {} and dict(lonely.models) == {}
    # asked for by name: told to export it, not "Did you mean" another camera (a helper's hunt)
    from adassr.runtime.server.models import UnknownCamera

    unexported = r"'nokia' has no model on this server \(cameras: none\)\. It is adapted but not exported yet: run " \
                 r"`adassr export --camera nokia --store \S+`"  # the server's store (a helper's hunt: it was left out)
    with pytest.raises(UnknownCamera, match=unexported), lonely.serving("nokia", None):  # type: ignore[arg-type]
        pass


def test_a_served_camera_adapted_again_keeps_serving_and_says_it_is_stale(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Re-adapting drops the camera's exports (made from the old weights): a running server kept serving the
    old model without a word, while /v1/cameras and the docs said a re-adapted camera is swapped in (a
    helper's first journey with a camera of their own)."""
    import logging

    from adassr.runtime.server.models import ModelRegistry, default_opener
    from adassr.runtime.store import CameraStore

    publish_camera(tmp_path, "nokia", seed=3)
    registry = ModelRegistry(tmp_path, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    registry.refresh()
    served = registry.listing()["nokia"]
    assert "stale" not in served
    CameraStore.open(tmp_path, "nokia").update_manifest(lambda m: m.pop("exports"))  # as adapt's commit does
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.models"):
        registry.refresh()
        registry.refresh()
    listed = registry.listing()["nokia"]
    assert listed["sha256"] == served["sha256"] and dict(registry.problems) == {}
    assert f"`adassr export --camera nokia --store {tmp_path}` runs" in listed["stale"]
    warned = [r.getMessage() for r in caplog.records if "adapted again" in r.getMessage()]
    assert len(warned) == 1 and f"`adassr export --camera nokia --store {tmp_path}` runs" in warned[0]
    publish_camera(tmp_path, "nokia", seed=4)  # exported again: swapped in, no longer stale
    registry.refresh()
    listed = registry.listing()["nokia"]
    assert "stale" not in listed and listed["sha256"] != served["sha256"]
    for model in list(registry.models.values()):
        model.backend.close()


def test_limits_that_would_overflow_the_waits_are_refused(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--max-wait-ms 1e13 killed the batcher thread (every request 504, /readyz 200); --request-timeout
    1e10 made every upscale a 500."""
    from adassr.cli import main

    for extra, message in ((["--max-wait-ms", "1e13"], "--max-wait-ms must be from 0 to 60000 ms"),
                           (["--request-timeout", "1e10"], "--request-timeout must be at most 604800 s"),
                           (["--max-batch", "200000"], "--max-batch must be at most 1024"),
                           # with --pad-to-tile every request allocated the tile (27.9 GiB): 500s, a helper's hunt
                           (["--tile", "100000", "--pad-to-tile"], "--tile must be from 0 (untiled) to 8192 input "
                                                                   "pixels, got 100000")):
        assert main(["serve", "--store", str(store), "--port", "0", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_serve_refuses_a_store_whose_cameras_are_all_unexported(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main
    from adassr.runtime.store import CameraStore

    publish_camera(tmp_path, "nokia", seed=3)
    CameraStore.open(tmp_path, "nokia").update_manifest(lambda m: m.pop("exports"))
    assert main(["serve", "--store", str(tmp_path), "--port", "0"]) == 2
    assert "no camera of the store" in capsys.readouterr().err


def test_the_banner_names_the_bound_port_and_the_drain_timeout_keeps_its_fraction(store: Path) -> None:
    """`--port 0` printed http://127.0.0.1:0 (the real port was never shown); --drain-timeout 0.2 became 1 s
    and 2.5 became 2 s."""
    from adassr.runtime.serve_cli import _uvicorn_server
    from adassr.runtime.server.app import create_app

    config = _config(store, port=0, drain_timeout_s=0.2)
    seen: list[int] = []
    server = _uvicorn_server(create_app(config), config, on_listening=seen.append)
    assert server.config.timeout_graceful_shutdown == 0.2
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: bool(server.started))
        port = server.servers[0].sockets[0].getsockname()[1]
        assert seen == [port] and port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_fallback_camera_is_named_in_any_case(store: Path, tmp_path: Path) -> None:
    """`camera=_FALLBACK` was a 422 whose hint ('use fallback') led to a 404; other names fold case."""
    from adassr.runtime.cameras import camera_name

    assert camera_name(" _FALLBACK ") == FALLBACK_CAMERA and camera_name("Canon") == "canon"
    image = small_png(16, 16, seed=4)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/upscale", params={"camera": "_FALLBACK"}, content=image)
        assert r.status_code == 200, r.text
        assert r.headers["X-Adassr-Model"].startswith(FALLBACK_CAMERA) and r.headers["X-Adassr-Route"] == "explicit"
    (tmp_path / "in.png").write_bytes(image)
    code, out, err = upscale_cli("-i", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--store",
                                 str(store), "--camera", "_Fallback", "--no-progress")
    assert code == 0, err
    assert "_fallback/model.onnx" in out


def test_a_refused_new_version_is_reported_once_while_the_old_one_serves(store: Path) -> None:
    """The change signature was taken from the served model's file, the refusal's from the new one: they
    never matched, so a damaged new export was re-hashed, logged and counted at every poll, for ever."""
    from adassr.runtime.server.models import ModelRegistry, default_opener
    from adassr.runtime.store import CameraStore

    errors: list[str] = []
    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1),
                             on_error=errors.append)
    registry.refresh()
    served = registry.models["canon"].sha256
    publish_camera(store, "canon", seed=5)
    record = CameraStore.open(store, "canon").read_manifest()["artifacts"]["model.onnx"]
    (store / "canon" / record["file"]).write_bytes(b"damaged" * 100)
    for _ in range(4):
        registry.refresh()
    assert errors == ["model_checksum"] and registry.models["canon"].sha256 == served
    assert "keeps serving" in registry.problems["canon"]
    publish_camera(store, "canon", seed=6)  # a good export: loaded
    registry.refresh()
    assert registry.models["canon"].sha256 != served and "canon" not in registry.problems


def test_a_folder_that_cannot_be_read_is_not_a_deleted_camera(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera folder (or the store) that could not be read was taken for one without a manifest: the
    server dropped its models ("has no manifest any more"), sending the camera's photos to the fallback
    (or every request to 503), and loaded everything again once it could read them."""
    import pathlib

    import adassr.runtime.store as store_module
    from adassr.runtime.server.models import ModelRegistry, default_opener

    errors: list[str] = []
    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1),
                             on_error=errors.append)
    registry.refresh()
    loaded = dict(registry.models)
    real_lstat, real_listdir = store_module.os.lstat, store_module.os.listdir

    def denied_lstat(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith(str(store / "canon")):
            raise PermissionError(13, "Permission denied")
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "lstat", denied_lstat)
    for _ in range(2):
        registry.refresh()
    assert dict(registry.models) == loaded and errors == ["model_load"]
    assert "its folder cannot be read (Permission denied)" in registry.problems["canon"]
    monkeypatch.setattr(store_module.os, "lstat", real_lstat)
    registry.refresh()
    assert dict(registry.models) == loaded and "canon" not in registry.problems  # nothing loaded again

    def denied_listdir(path: object) -> object:
        if Path(str(path)) == store:
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "listdir", denied_listdir)
    for _ in range(2):
        assert registry.refresh() is False
    assert dict(registry.models) == loaded and errors == ["model_load", "model_load"]
    monkeypatch.setattr(store_module.os, "listdir", real_listdir)

    # one entry that cannot even be looked at (a link into a closed folder) stopped every reload of the store
    real_is_dir = pathlib.Path.is_dir

    def denied_is_dir(self: pathlib.Path) -> bool:
        if self == store / "canon":
            raise PermissionError(13, "Permission denied")
        return real_is_dir(self)

    monkeypatch.setattr(pathlib.Path, "is_dir", denied_is_dir)
    publish_camera(store, "sony", seed=3)
    registry.refresh()
    assert "sony" in registry.models and registry.models["canon"] is loaded["canon"]
    assert "its folder cannot be read" in registry.problems["canon"]


def test_a_version_replaced_while_it_loads_is_no_failure(store: Path) -> None:
    """A republish that removed the file being loaded was logged as a checksum failure or a failed
    load (tamper alerts); the next poll loads the newer version, so it is only a retry."""
    from adassr.runtime.errors import BackendError
    from adassr.runtime.server.models import ModelRegistry, default_opener

    real = default_opener("onnxruntime", providers=("cpu",), threads=1)
    raced: list[bool] = []

    def replaced_while_opening(route: RouteDecision) -> Backend:
        if route.model_camera == "canon" and not raced:
            raced.append(True)
            publish_camera(store, "canon", seed=9)  # another process commits, and its cleanup removes this file
            raise BackendError("onnxruntime cannot load the model: NO_SUCHFILE")
        return real(route)

    errors: list[str] = []
    loads: list[bool] = []
    registry = ModelRegistry(store, open_model=replaced_while_opening, on_error=errors.append,
                             on_load=lambda camera, ok: loads.append(ok))
    registry.refresh()
    assert raced and errors == [] and False not in loads and "canon" not in registry.problems
    registry.refresh()
    assert "canon" in registry.models and errors == []


def test_serve_gpu_indexes_the_devices_the_process_may_see() -> None:
    """`serve --gpu 1` under CUDA_VISIBLE_DEVICES=2,3 (a Slurm or Kubernetes allocation) overwrote the
    mask with 1: physical GPU 1, outside the allocation, where the other commands use GPU 3."""
    from adassr.runtime.serve_cli import visible_device

    assert visible_device(1, None) == "1"
    assert visible_device(1, "2,3") == "3" and visible_device(0, "GPU-5b1c, GPU-77aa") == "GPU-5b1c"
    with pytest.raises(ConfigError, match=r"--gpu 2: CUDA_VISIBLE_DEVICES='2,3' makes 2 devices visible \(--gpu 0 "):
        visible_device(2, "2,3")
    # as CUDA reads the mask: it stops at the first entry that is no device, and "" or -1 hide every GPU
    assert visible_device(0, "0,-1,2") == "0"
    for hidden, index in (("0,-1,2", 1), ("", 0), ("-1", 0), ("NoDevFiles", 0)):
        with pytest.raises(ConfigError, match="makes [01] devices? visible"):
            visible_device(index, hidden)
    with pytest.raises(ConfigError, match="--gpu must be a device index >= 0"):
        visible_device(-1, None)


def test_an_unreadable_moment_of_an_adapted_camera_leaves_no_lasting_problem(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera adapted but not exported (served by the fallback) kept "its folder cannot be read" under
    `refused` for good once its folder had been unreadable for one poll."""
    import adassr.runtime.store as store_module
    from adassr.runtime.server.models import ModelRegistry, default_opener
    from adassr.runtime.store import CameraStore

    CameraStore.open(store, "nikon", create=True).update_manifest(lambda m: m.update(scale=4))  # no exports
    registry = ModelRegistry(store, open_model=default_opener("onnxruntime", providers=("cpu",), threads=1))
    registry.refresh()
    assert "nikon" not in registry.problems
    real_lstat = store_module.os.lstat

    def denied(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith(str(store / "nikon")):
            raise PermissionError(13, "Permission denied")
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "lstat", denied)
    registry.refresh()
    assert "cannot be read" in registry.problems["nikon"]
    monkeypatch.setattr(store_module.os, "lstat", real_lstat)
    registry.refresh()
    assert "nikon" not in registry.problems


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_serve_starts_with_a_closed_output_stream(store: Path, monkeypatch: pytest.MonkeyPatch, closed: str) -> None:
    """`adassr serve ... >&-` died before binding its port: uvicorn asked the closed (None) stdout whether it
    was a terminal (AttributeError, then "Unable to configure formatter 'default'")."""
    from adassr.runtime.serve_cli import _uvicorn_server
    from adassr.runtime.server.app import create_app

    app = create_app(ServerConfig(store=store))
    monkeypatch.setattr(sys, closed, None)
    server = _uvicorn_server(app, ServerConfig(store=store))
    assert server.config.use_colors is False
    monkeypatch.undo()
    assert _uvicorn_server(app, ServerConfig(store=store)).config.use_colors is None  # a terminal still decides


def test_an_upload_that_ends_frees_its_budget_before_other_uploads_are_checked(store: Path) -> None:
    """Three uploads whose tails arrived together: two got 429 although refusing one left the rest under the
    budget, because an ended upload's bytes were released a loop step after it ended (a helper's review)."""
    import asyncio

    from adassr.runtime.server.app import create_app
    from adassr.runtime.server.requests import HttpError

    server = create_app(_config(store, workers=1, max_queue=0, limits=Limits(max_body_bytes=100_000))).state.server
    assert server.upload_budget == 100_000
    first_ended = asyncio.Event()

    class Upload:
        def __init__(self, size: int, after: asyncio.Event | None, ended: asyncio.Event | None) -> None:
            self.size, self.after, self.ended = size, after, ended

        async def stream(self):  # type: ignore[no-untyped-def]
            if self.after is not None:
                await self.after.wait()
            yield bytes(self.size)
            if self.ended is not None:
                self.ended.set()  # the next upload's bytes arrive as this one ends

    async def both() -> list[object]:
        return await asyncio.gather(server._read_body(Upload(60_000, None, first_ended)),
                                    server._read_body(Upload(60_000, first_ended, None)), return_exceptions=True)

    results = asyncio.run(both())
    assert [len(r) if isinstance(r, bytes) else r for r in results] == [60_000, 60_000]
    assert not any(isinstance(r, HttpError) for r in results) and server.receiving == 0


def test_multipart_parts_and_content_codings_get_errors_that_say_what_was_sent(store: Path) -> None:
    """An 'image' part without a filename was "no file part named 'image'" (or, over 64 KiB, "malformed"); a
    stray file part beside it "Too many files"; a gzip body "not a readable image"; an empty parameter name
    "unknown parameter(s) ;" (a helper's review)."""
    import gzip

    image = small_png(8, 8)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        no_name = c.post("/v1/upscale", files={"image": (None, b"not really a PNG")})
        assert "the part 'image' has no filename" in _assert_json_error(no_name, 400, "bad_request")
        big_no_name = c.post("/v1/upscale", files={"image": (None, bytes(100_000))})
        message = _assert_json_error(big_no_name, 400, "bad_request")
        assert "over 64 KiB; is the image sent without a filename?" in message
        stray = c.post("/v1/upscale", files=[("image", ("a.png", image, "image/png")),
                                             ("photo", ("b.png", image, "image/png"))])
        assert "the file part is named 'photo'; name it 'image'" in _assert_json_error(stray, 422,
                                                                                       "invalid_parameter")
        twice = c.post("/v1/upscale", files=[("image", ("a.png", image, "image/png")),
                                             ("image", ("b.png", image, "image/png"))])
        assert "two file parts named 'image'" in _assert_json_error(twice, 422, "invalid_parameter")
        zipped = c.post("/v1/upscale", content=gzip.compress(image), headers={"Content-Encoding": "gzip"})
        assert "Content-Encoding: gzip, which this server does not decode" in _assert_json_error(
            zipped, 415, "unsupported_image")
        assert zipped.headers["accept-encoding"] == "identity"
        assert c.post("/v1/upscale", content=image, headers={"Content-Encoding": "identity"}).status_code == 200
        empty_name = c.post("/v1/upscale?=1", content=image)
        assert "unknown parameter(s) ''; valid:" in _assert_json_error(empty_name, 422, "invalid_parameter")


def test_serve_limits_what_clients_make_uvicorn_log(store: Path) -> None:
    """`adassr serve` puts the limit of client-caused log lines on uvicorn's logger (see
    tests/runtime/test_server_log_limits.py for the limit itself)."""
    import logging

    from adassr.runtime.serve_cli import _uvicorn_server
    from adassr.runtime.server.app import create_app
    from adassr.runtime.server.log_limits import ClientNoiseLimit

    config = _config(store)
    _uvicorn_server(create_app(config), config)
    assert any(isinstance(f, ClientNoiseLimit) for f in logging.getLogger("uvicorn.error").filters)


def test_a_multipart_body_cut_before_its_closing_boundary_says_so() -> None:
    """A multipart upload cut short (its image part never ended) was answered "no file part named 'image'",
    which sent the client looking for a naming mistake (a helper's hunt)."""
    import asyncio

    from starlette.datastructures import Headers

    from adassr.runtime.server.requests import HttpError, parse_multipart

    image = small_png(8, 8)
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--XyZ--\r\n")
    for boundary in ("XyZ", '"XyZ"'):
        headers = Headers({"content-type": f"multipart/form-data; charset=utf-8; boundary={boundary}"})
        assert asyncio.run(parse_multipart(headers, body))[0] == image
        for cut in (body[:-9], body[:len(body) // 2]):
            with pytest.raises(HttpError, match="ends before its closing boundary '--XyZ--'") as info:
                asyncio.run(parse_multipart(headers, cut))
            assert info.value.status == 400
    no_image = b'--XyZ\r\nContent-Disposition: form-data; name="camera"\r\n\r\nnikon\r\n--XyZ--\r\n'
    with pytest.raises(HttpError, match="no file part named 'image'"):
        asyncio.run(parse_multipart(Headers({"content-type": "multipart/form-data; boundary=XyZ"}), no_image))


def test_a_colour_declaration_without_a_profile_gets_the_same_note_as_from_the_cli(store: Path) -> None:
    """The server rebuilt the decoded upload without its untagged colour declaration, so a PNG with gAMA 1
    got no X-Adassr-Note, although `adassr upscale` notes it (a helper's review)."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    gama = struct.pack(">I", 4) + b"gAMA" + struct.pack(">I", 100000)
    gama += struct.pack(">I", zlib.crc32(b"gAMA" + struct.pack(">I", 100000)))
    linear = data[:33] + gama + data[33:]  # after IHDR (8 + 25 bytes)
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/upscale", content=linear)
        assert r.status_code == 200, r.text
        assert "a PNG gAMA of 1" in r.headers["x-adassr-note"]
        assert "x-adassr-note" not in c.post("/v1/upscale", content=data).headers


def test_an_upload_with_more_pages_says_that_only_the_first_was_upscaled(store: Path) -> None:
    """The server dropped the reader's notes (with process-wide warnings filters that concurrent requests
    share): a client that sent a multi-page TIFF got its first page back without a word."""
    import io

    import numpy as np
    from PIL import Image

    pages = [Image.fromarray(np.full((12, 16, 3), v, np.uint8)) for v in (40, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    single = io.BytesIO()
    pages[0].save(single, format="TIFF")
    with running_server(_config(store)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/upscale", content=buf.getvalue())
        assert r.status_code == 200, r.text
        assert r.headers["x-adassr-note"] == ("the uploaded image: holds more than one page (a multi-page file); "
                                              "only the first is read")
        assert "x-adassr-note" not in c.post("/v1/upscale", content=single.getvalue()).headers


def test_a_quoted_store_path_in_a_suggested_command_is_masked(tmp_path: Path) -> None:
    """Hints quote a store path with a space (`--store 'my store'`), which the mask of /v1/cameras' "refused"
    texts did not match: the server's store path reached HTTP clients (a helper's review)."""
    from adassr.runtime.server.models import _mask_store
    from adassr.runtime.store import damaged_manifest_advice

    for root in ("my store", str(tmp_path / "my store"), "it's"):
        text = damaged_manifest_advice(Path(root) / "canon" / "manifest.json")
        masked = _mask_store(text, {root})
        assert root not in masked.replace("<store>", "") and "'it'" not in masked, masked
        assert "--store <store>`" in masked and "`mv '<store>/canon/manifest.json' " in masked
