"""Run the HTTP server on a loopback port inside the test process (uvicorn in a thread)."""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

from adassr.runtime.backends import Backend
from adassr.runtime.routing import RouteDecision
from adassr.runtime.server.app import Server, create_app
from adassr.runtime.server.config import ServerConfig
from adassr.runtime.server.http_protocol import header_timeout_protocol
from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "cameras"


@dataclass
class LiveServer:
    url: str
    server: Server
    uvicorn: uvicorn.Server


@contextmanager
def running_server(
    config: ServerConfig, *, open_model: Callable[[RouteDecision], Backend] | None = None
) -> Iterator[LiveServer]:
    app = create_app(config, open_model=open_model)
    uv = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=10,
            http=header_timeout_protocol(config.limits.header_timeout_s, config.limits.send_timeout_s,
                                         on_send_failed=app.state.server.count_send_failure),
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app.state.server, uv)
    finally:
        uv.should_exit = True
        thread.join(30)


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports that were free a moment ago (for servers the tests start)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def small_jpeg_with_exif(src: Path, size: int = 40, *, offset: int = 100) -> bytes:
    """A small crop of a real camera JPEG that keeps its EXIF Make (orientation reset)."""
    with Image.open(src) as im:
        exif = im.getexif()
        exif[0x0112] = 1
        buf = io.BytesIO()
        im.convert("RGB").crop((offset, offset, offset + size, offset + size)).save(
            buf, format="JPEG", quality=92, exif=exif.tobytes()
        )
    return buf.getvalue()


def small_png(height: int, width: int, *, seed: int = 0, channels: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if channels == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def upscale_cli(*argv: str) -> tuple[int, str, str]:
    """``adassr upscale ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run_upscale(parser.parse_args(list(argv)), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def cli_output(
    store: Path,
    data: bytes,
    tmp: Path,
    *,
    name: str,
    tile: int,
    overlap: int,
    camera: str | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    """What ``adassr upscale`` writes (PNG) for the same input bytes and tiling."""
    src = tmp / name
    src.write_bytes(data)
    dst = tmp / (src.stem + "_cli.png")
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    argv = [
        "-i",
        str(src),
        "-o",
        str(dst),
        "--store",
        str(store),
        "--tile",
        str(tile),
        "--tile-overlap",
        str(overlap),
        "--no-progress",
        *extra,
    ]
    if camera:
        argv += ["--camera", camera]
    code = run_upscale(parser.parse_args(argv), stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0
    return dst.read_bytes()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def max_diff(a: bytes, b: bytes) -> int:
    x, y = decode(a), decode(b)
    assert x.shape == y.shape, (x.shape, y.shape)
    return int(np.abs(x.astype(np.int32) - y.astype(np.int32)).max())
