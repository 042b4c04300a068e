"""``adassr serve``: the HTTP upscaling server on uvicorn (torch-free; needs the ``serve`` extra).

Binds to 127.0.0.1 unless ``--host`` says otherwise, and takes the port before the models load
(:func:`_bind_listeners`). SIGTERM (or Ctrl-C, or SIGHUP unless ignored) drains: the server stops
accepting connections and upscale requests (503, ``/readyz`` 503), finishes the requests in flight
(up to ``--drain-timeout`` seconds), then exits 0; a second Ctrl-C stops at once (130); a signal
while the models load closes the port and loads no further model. starlette and uvicorn are
imported inside :func:`run_serve` only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, cast

from adassr.runtime.backends import BACKENDS
from adassr.runtime.console import say
from adassr.runtime.cpu_info import intra_op_threads, limit_opencv_threads
from adassr.runtime.errors import ConfigError
from adassr.runtime.fields import named_by_option
from adassr.runtime.routing import SERVING_PRECISIONS
from adassr.runtime.store import (
    DEFAULT_STORE,
    FALLBACK_CAMERA,
    CameraStore,
    list_cameras,
    store_argument,
    store_option,
    warn_misnamed_folders,
)
from adassr.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_PRE_PAD

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048
"""Connections the kernel holds for the server before it accepts them (uvicorn's default ``backlog``)."""

FORCED_STOP_S = 5.0
"""After a second Ctrl-C, the most seconds the app's own shutdown may take (the models' and the upload
folder's clean-up; a request's tile already on a worker ends first)."""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Store, address, backend and precision options."""
    from adassr.runtime.server.config import DEFAULT_HOST, DEFAULT_PORT

    parser.add_argument("--store", type=store_argument, default=DEFAULT_STORE,
                        help=f"model store (default ./{DEFAULT_STORE})")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for all)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="onnxruntime",
                        help="inference backend (default onnxruntime)")
    parser.add_argument(
        "--providers",
        default="cpu",
        help="onnxruntime execution providers in priority order, from tensorrt,cuda,cpu (default cpu)",
    )
    parser.add_argument(
        "--gpu",
        type=int,
        default=None,
        metavar="N",
        help="CUDA device for GPU providers: the N-th device this process may see (CUDA_VISIBLE_DEVICES is narrowed "
        "to it, of an existing mask where one is set)",
    )
    parser.add_argument("--precision", choices=SERVING_PRECISIONS, default="fp32",
                        help="model precision (default fp32); bf16: --backend tensorrt only, an engine built from "
                             "model.onnx with bf16 layers")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per model call")


def _add_scheduling_arguments(parser: argparse.ArgumentParser, d: Any) -> None:
    """Worker, queue and batching options."""
    parser.add_argument(
        "--workers", type=int, default=d.workers, help=f"requests processed at once (default {d.workers})"
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help=f"requests waiting for a worker before new ones get 429 (default {d.max_queue})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help=f"tiles per model call, across requests (default {d.max_batch})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a tile waits for a batch to fill (default {d.max_wait_ms:g} ms)",
    )
    parser.add_argument(
        "--inference-threads",
        type=int,
        default=d.inference_threads,
        help=f"model calls running at once (default {d.inference_threads})",
    )


def _add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """Tiling options."""
    from adassr.runtime.server.config import DEFAULT_TILE

    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, help=f"tile size, input pixels (default {DEFAULT_TILE})"
    )
    parser.add_argument(
        "--tile-overlap", type=int, default=None,
        help=f"overlap between tiles (default {DEFAULT_OVERLAP}, shrunk to less than half a small --tile)"
    )
    parser.add_argument(
        "--pre-pad", type=int, default=DEFAULT_PRE_PAD, help=f"reflect padding (default {DEFAULT_PRE_PAD})"
    )
    parser.add_argument(
        "--pad-to-tile",
        action="store_true",
        help="pad small images to a full tile (static shapes: more batching, more compute)",
    )


def _add_limit_arguments(parser: argparse.ArgumentParser, d: Any, lim: Any) -> None:
    """Authentication, size and time limits, reloading and draining."""
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding a bearer token; then /v1/* and /metrics need 'Authorization: Bearer <token>' (the "
        "file is read again when it changes: replace it to rotate the token)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=lim.max_body_bytes / 2**20,
        help=f"largest request body in MiB (default {lim.max_body_bytes / 2**20:g})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=lim.max_pixels,
        help=f"largest decoded input in pixels (default {lim.max_pixels:,})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=lim.request_timeout_s,
        help=f"deadline per request in seconds, then 504 (default {lim.request_timeout_s:g})",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=lim.header_timeout_s,
        help=f"seconds for request headers to arrive, then the connection closes (default {lim.header_timeout_s:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=lim.body_timeout_s,
        help=f"seconds for the body to arrive, then 408 (default {lim.body_timeout_s:g})",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=lim.send_timeout_s,
        help="seconds a client may take none of its response while some of it waits to be sent, then the "
        f"connection is dropped; slow but steady readers are never dropped (default {lim.send_timeout_s:g})",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=d.reload_interval_s,
        help=f"seconds between checks of the store for changed models and of --token-file for a new token "
        f"(default {d.reload_interval_s:g})",
    )
    parser.add_argument(
        "--max-models",
        type=int,
        default=d.max_models,
        help="keep at most N camera models open; the others are verified and opened at their first request, "
        "closing the least recently used (default 0: every model stays open)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout_s,
        help=f"seconds SIGTERM waits for in-flight requests (default {d.drain_timeout_s:g})",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``adassr serve`` options to ``parser``."""
    from adassr.runtime.server.config import Limits, ServerConfig

    d = ServerConfig(store=DEFAULT_STORE)
    lim = Limits()
    _add_model_arguments(parser)
    _add_scheduling_arguments(parser, d)
    _add_tiling_arguments(parser)
    _add_limit_arguments(parser, d, lim)
    parser.add_argument(
        "--no-exif",
        action="store_true",
        help="send no EXIF (camera, dates, GPS) in any response, whatever a request asks (default: carry the "
        "upload's EXIF unless the request says exif=false)",
    )
    from adassr.runtime.server.log_format import LOG_FORMATS

    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines (stderr) as text, or json: one object per line with time, level, logger, message and "
        "the request_id of the request a line is about, for log collectors (default text)",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ServerConfig` for parsed ``serve`` arguments (ConfigError on bad values)."""
    if not (args.max_body_mb > 0 and math.isfinite(args.max_body_mb)) or int(args.max_body_mb * 2**20) < 1:
        raise ConfigError(f"--max-body-mb must be a finite number of MiB above 0 (at least one byte), got "
                          f"{args.max_body_mb}")
    try:
        return _config(args)
    except ConfigError as exc:  # the dataclasses name their fields: say the options the user typed
        raise ConfigError(named_by_option(str(exc), _FLAGS)) from None


_FLAGS = {
    "max_pixels": "--max-pixels", "request_timeout_s": "--request-timeout", "body_timeout_s": "--body-timeout",
    "send_timeout_s": "--send-timeout",
    "header_timeout_s": "--header-timeout", "workers": "--workers", "max_queue": "--max-queue",
    "max_batch": "--max-batch", "max_wait_ms": "--max-wait-ms", "inference_threads": "--inference-threads",
    "reload_interval_s": "--reload-interval", "drain_timeout_s": "--drain-timeout", "threads": "--threads",
    "max_models": "--max-models",
    "port": "--port", "tile": "--tile", "overlap": "--tile-overlap", "pre_pad": "--pre-pad",
    "tile overlap": "--tile-overlap",  # TilingOptions's wording of ``overlap``
}
"""Configuration fields (and the checks' wordings of them) and the ``serve`` options that set them."""


def _config(args: argparse.Namespace) -> Any:
    from adassr.runtime.server.config import Limits, ServerConfig, read_token_file

    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_pixels=args.max_pixels,
        request_timeout_s=args.request_timeout,
        body_timeout_s=args.body_timeout,
        send_timeout_s=args.send_timeout,
        header_timeout_s=args.header_timeout,
    )
    return ServerConfig(
        store=args.store,
        host=args.host,
        port=args.port,
        backend=args.backend,
        providers=tuple(args.providers.split(",")),
        precision=args.precision,
        threads=args.threads,
        workers=args.workers,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        inference_threads=args.inference_threads,
        tile=args.tile,
        overlap=(args.tile_overlap if args.tile_overlap is not None  # the default shrinks to fit a small tile
                 else min(DEFAULT_OVERLAP, (args.tile - 1) // 2) if args.tile > 0 else DEFAULT_OVERLAP),
        pre_pad=args.pre_pad,
        pad_to_tile=args.pad_to_tile,
        reload_interval_s=args.reload_interval,
        max_models=args.max_models,
        drain_timeout_s=args.drain_timeout,
        exif=not args.no_exif,
        token=read_token_file(args.token_file) if args.token_file is not None else None,
        token_file=Path(args.token_file).expanduser() if args.token_file is not None else None,
        limits=limits,
    )


def visible_device(index: int, visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` that leaves only the ``index``-th device this process may see: of an
    existing mask (a Slurm or Kubernetes allocation) as torch and onnxruntime number them, as ``--gpu``
    means in the other commands; ``serve --gpu 1`` under ``CUDA_VISIBLE_DEVICES=2,3`` ran on physical
    GPU 1, outside the allocation, instead of GPU 3."""
    if isinstance(index, bool) or index < 0:
        raise ConfigError(f"--gpu must be a device index >= 0, got {index}")
    if visible is None:
        return str(index)
    devices = []  # as CUDA reads the mask: indices or UUIDs, up to the first entry that is neither
    for entry in (e.strip() for e in visible.split(",")):
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break  # "-1", "NoDevFiles", "": hides the rest
        devices.append(entry)
    if index >= len(devices):
        shown = f"{len(devices)} device{'s' if len(devices) != 1 else ''} visible" + (
            f" (--gpu 0 to {len(devices) - 1})" if devices else "")
        raise ConfigError(f"--gpu {index}: CUDA_VISIBLE_DEVICES={visible!r} makes {shown}")
    return devices[index]


def _checked_config(args: argparse.Namespace) -> Any:
    """The server configuration, after checking the serve extra, ``--gpu`` and that the store has a model."""
    missing = [
        m for m in ("starlette", "uvicorn", "prometheus_client", "multipart") if importlib.util.find_spec(m) is None
    ]
    if missing:
        from adassr.runtime.install import install_hint

        raise ConfigError(f"adassr serve needs {', '.join(missing)}: {install_hint('serve')}")
    import os

    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(args.gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
    config = config_from_args(args)
    if config.backend == "tensorrt":  # without TensorRT no model could ever open: refuse now, not per model
        from adassr.runtime.engines.trt import load_tensorrt

        load_tensorrt()
    # a bad ADASSR_THREADS fails here, not in every model load; OpenCV's pool (decoding, resizing) gets
    # one thread per usable core, as in the other commands (its default counts every CPU of the host)
    limit_opencv_threads(intra_op_threads())
    from adassr.runtime.server.codec import UploadFolder

    UploadFolder().close()  # no writable temporary folder: one line now, not a traceback at start-up (exit 3)
    CameraStore.open(config.store, FALLBACK_CAMERA)  # a missing store fails here, with its message
    cameras = list_cameras(config.store)  # folders it leaves out are named by the models' first refresh
    if not cameras:
        warn_misnamed_folders(config.store)
        raise ConfigError(
            f"the store {config.store} has no camera with a manifest; export a model first "
            f"(`adassr export --backbone realesrgan-x4plus{store_option(config.store)}` for the fallback)"
        )
    if not any(_exported(config.store, camera) for camera in cameras):  # /readyz would say 503 for good
        raise ConfigError(
            f"no camera of the store {config.store} has an exported model ({', '.join(cameras)}: adapted, not "
            f"exported); run `adassr export --camera NAME{store_option(config.store)}`, or `adassr export "
            f"--backbone realesrgan-x4plus{store_option(config.store)}` for the fallback"
        )
    return config


def _exported(store: Path, camera: str) -> bool:
    """Whether ``camera`` has an export in its manifest (a damaged manifest counts: serve reports it)."""
    from adassr.runtime.errors import AdassrError

    try:
        return bool(CameraStore.open(store, camera).read_manifest().get("exports"))
    except AdassrError:
        return True


def _bind_listeners(host: str, port: int) -> list[socket.socket] | None:
    """Sockets listening on every address ``host:port`` resolves to, before the banner and the models (None
    for ``--port 0``: the system chooses a free port as uvicorn binds). The port is the server's from now on:
    with a probe that let it go, a process taking it while the models loaded (minutes with TensorRT) made
    uvicorn print its own error and exit 3, and a second server on the port loaded all its models first.
    (Bound alone, it is not: Linux lets two sockets with SO_REUSEADDR bind one port until one listens.)
    A connection made while the models load waits in the backlog and is answered once they are loaded.
    ConfigError when an address cannot be used (in use, no permission, not this machine's, unknown host)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host") from None
    # The server binds every address the host resolves to (asyncio's create_server does, e.g. ::1 and
    # 127.0.0.1 for localhost); one that cannot be bound is enough to fail the start.
    bound: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            _close_all(bound)
            raise ConfigError(f"cannot listen on {host}:{port} ({address[0]}: {exc.strerror or exc}); "
                              "check --host") from None
        bound.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            _close_all(bound)
            raise ConfigError(f"cannot listen on {host}:{port} ({address[0]}: {exc.strerror or exc}); "
                              f"{_bind_advice(exc, port)}") from None
    return bound


def _bind_advice(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's: check --host (0.0.0.0 listens on all of them)"
    if exc.errno == errno.EACCES and port < 1024:
        return "ports below 1024 need privileges: choose --port 1024 or above, or run behind a proxy"
    return "another process may use the port: choose another --port, or stop that process"


def _close_all(sockets: list[socket.socket] | None) -> None:
    for sock in sockets or ():
        sock.close()


def _uvicorn_server(app: Any, config: Any, on_listening: Callable[[int], None] | None = None,
                    listeners: list[socket.socket] | None = None, *, json_logs: bool = False) -> Any:
    """A uvicorn server for ``app`` that marks the app draining as soon as a stop signal arrives and calls
    ``on_listening(port)`` once its sockets are bound (the port the system chose for ``--port 0``).
    ``listeners``: the sockets its ``run`` is given; a stop signal before the models are loaded closes
    them at once (the clients waiting in their backlog are refused, not kept until the load ends) and
    empties the list, so that no server is started on them. ``json_logs``: uvicorn configures no handlers
    of its own, so its lines (errors, access) reach the root logger's JSON handler."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from adassr.runtime.server.http_protocol import header_timeout_protocol
    from adassr.runtime.server.log_limits import limit_client_noise

    server_state = app.state.server

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, which marks the app draining as soon as a stop signal arrives."""

        _loop: asyncio.AbstractEventLoop | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            server_state.start_draining()  # also: no further model is loaded
            forcing = self.should_exit and sig == signal.SIGINT and not self.force_exit
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after shutting down; a clean drain exits with 0 instead.
            self._captured_signals.clear()
            if not self.started and listeners:  # still loading: nobody is answered before the exit
                _close_all(listeners)
                listeners.clear()
                logger.warning("stopping before the models were loaded: the model being loaded finishes first")
            if forcing:  # uvicorn's force quit: the requests in flight are cancelled (answered 503)
                server_state.forced = True
                logger.warning("a second Ctrl-C: stopping now, without waiting for the requests in flight")
                if self._loop is not None:  # now: uvicorn's shutdown may wait for their connections first
                    self._loop.call_soon_threadsafe(self._cancel_requests)

        def _cancel_requests(self) -> list[asyncio.Task[Any]]:
            tasks = list(self.server_state.tasks)
            for task in tasks:
                task.cancel()
            return tasks

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """uvicorn's handlers for SIGINT and SIGTERM, and SIGHUP (a closed terminal or SSH session)
            drains the same way: its default ended the process at once, the requests in flight reset and
            the uploads' folder left behind. Left alone where it is ignored (under ``nohup``)."""
            hangup = getattr(signal, "SIGHUP", None)
            if (hangup is None or threading.current_thread() is not threading.main_thread()
                    or signal.getsignal(hangup) is signal.SIG_IGN):
                with super().capture_signals():
                    yield
                return
            previous = signal.signal(hangup, self.handle_exit)
            try:
                with super().capture_signals():
                    yield
            finally:
                signal.signal(hangup, previous)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            bound = [sock.getsockname()[1] for server in self.servers for sock in (server.sockets or ())]
            if on_listening is not None and bound and not self.should_exit:
                on_listening(int(bound[0]))

        async def shutdown(self, sockets: Any = None) -> None:
            # Once the drain timeout is up uvicorn cancels the requests one task after the other; from
            # then on no queued request may start on a worker that one of them freed (see
            # Server.stopping). Set from here too, so a shutdown without a signal is covered.
            timeout = self.config.timeout_graceful_shutdown
            marker = None if timeout is None else asyncio.get_running_loop().call_later(
                timeout, setattr, server_state, "stopping", True)
            try:
                await super().shutdown(sockets)
                if self.force_exit:
                    await self._forced_stop()
            finally:
                if marker is not None:
                    marker.cancel()

        async def _forced_stop(self) -> None:
            """After a second Ctrl-C uvicorn neither waits for the requests nor runs the app's shutdown: the
            loop's end cancelled both, the app's mid-way (a traceback). Here the requests are cancelled
            first, each answered 503 and its queued tiles withdrawn, then the app stops (its models closed,
            its temporary uploads removed), each within :data:`FORCED_STOP_S`."""
            tasks = self._cancel_requests()
            if tasks:
                await asyncio.wait(tasks, timeout=FORCED_STOP_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FORCED_STOP_S):
                    await self.lifespan.shutdown()

    level = logging.getLogger().getEffectiveLevel()
    uv_config = uvicorn.Config(
        app,
        http=header_timeout_protocol(config.limits.header_timeout_s, config.limits.send_timeout_s,
                                     on_send_failed=server_state.count_send_failure),
        host=config.host,
        port=config.port,
        lifespan="on",
        # uvicorn annotates an int but waits with asyncio's timeouts, which take any number of seconds: 0.2
        # or 2.5 as given (rounding made them 1 and 2)
        timeout_graceful_shutdown=cast(int, float(config.drain_timeout_s)),
        timeout_keep_alive=5,
        log_level=logging.getLevelName(level).lower() if level < logging.WARNING else "warning",
        log_config=None if json_logs else LOGGING_CONFIG,
        access_log=level <= logging.INFO,
        server_header=False,
        # uvicorn asks the streams whether they are terminals (for colours): a closed one (`>&-`) is None
        use_colors=False if sys.stdout is None or sys.stderr is None else None,
    )
    limit_client_noise()  # after uvicorn.Config, which configures uvicorn's loggers
    return DrainingServer(uv_config)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM / SIGINT; 0 after a clean drain."""
    json_logs = getattr(args, "log_format", "text") == "json"
    if json_logs:  # before the checks, whose warnings (a token file others can read) are log lines too
        from adassr.runtime.server.log_format import use_json_logs

        use_json_logs()
    config = _checked_config(args)

    from adassr.runtime.server.app import create_app

    def banner(port: int) -> None:  # once bound: the real port, also for --port 0
        host = f"[{config.host}]" if ":" in config.host else config.host
        cap = f", at most {config.max_models} models open" if config.max_models else ""
        say(f"adassr serve: http://{host}:{port} (store {config.store}, {config.workers} workers, batch "
            f"{config.max_batch}{cap}); SIGTERM drains", sys.stdout)

    listeners = _bind_listeners(config.host, config.port)
    app = create_app(config)
    try:
        server = _uvicorn_server(app, config, on_listening=banner, listeners=listeners, json_logs=json_logs)
        server.run(sockets=listeners)
    finally:
        _close_all(listeners)
    if server.force_exit:
        print("adassr serve: stopped by a second Ctrl-C without waiting for the requests in flight", flush=True)
        _exit_without_waiting(app.state.server, 130)
    print("adassr serve: stopped", flush=True)
    return 0


def _exit_without_waiting(server_state: Any, code: int) -> NoReturn:
    """End the process now: a model call still running on a worker (half a minute for a large tile on a
    CPU) would otherwise hold the interpreter's exit, which joins every worker thread. The uploads' folder
    is removed first (the app's forced stop did it already, unless the stop came while models loaded)."""
    uploads = getattr(server_state, "uploads", None)
    if uploads is not None:
        uploads.close()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(code)
