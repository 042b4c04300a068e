"""The HTTP API of ``adassr serve``: a Starlette app built from a frozen :class:`ServerConfig`.

Endpoints:

- ``POST /v1/upscale``: the body is the image file's bytes (any ``Content-Type`` but
  multipart), or ``multipart/form-data`` with the image in a file part named ``image``. Options
  as query parameters (or multipart fields): ``camera`` (a camera group; default: the image's
  EXIF Make, else the fallback model), ``outscale`` (final factor, default the model's scale),
  ``format`` (``png``, ``jpeg``, ``webp``; default ``png``), ``quality`` (1-100, JPEG/WebP,
  default 95). The response is the image, with headers ``X-Adassr-Model`` (camera folder and
  file), ``X-Adassr-Model-Sha256``, ``X-Adassr-Camera-Group``, ``X-Adassr-Route`` (why this
  model), ``X-Adassr-Latency-Ms`` (server-side), ``Server-Timing`` and, when the reader or the
  encoder tolerated something (only a first page read, alpha dropped by JPEG), ``X-Adassr-Note``.
- ``GET /v1/cameras``: the models that serve (loaded, or with ``--max-models`` parked until a
  request needs them) with their manifest summaries, and refused models.
- ``GET /healthz``: the process answers. ``GET /readyz``: 200 when a model serves and the
  server is not draining, else 503.
- ``GET /metrics``: Prometheus text format (see :mod:`adassr.runtime.server.metrics`).

Status codes: 400 malformed request (bad multipart, bad Content-Length), 401 missing or wrong
bearer token, 404 unknown camera or no model for the image, 405/404 wrong method or path,
408 body not received within the body timeout, 413 body, pixel count or output over a limit, or an
output larger than the requested format holds, 415 not a supported image, 422 invalid parameter,
429 overloaded (with ``Retry-After``), 500 model failure (``inference``) or an output that could not
be encoded (``encode``), 503 not ready or draining, or (``model_unavailable``) a parked model that
failed to load at this request (with ``Retry-After``), 504 deadline exceeded.
Every error body is ``{"error": <kind>, "status": <code>, "message": <what to do>}``.

Request processing: the body is read under its size and time limits (uploads still arriving hold no
admission slot; together they may hold ``(workers + max_queue) x max_body_bytes``), then the request
is admitted (429 beyond ``workers + max_queue``, checked on arrival too), decoded, routed and tiled
in a worker thread; tiles go through
the dynamic batcher (:mod:`adassr.runtime.server.scheduler`). A client that disconnects or a
request whose deadline passes cancels its queued tiles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import dataclasses
import hmac
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from adassr.runtime.backends import Backend
from adassr.runtime.errors import (
    AdassrError,
    BackendError,
    CameraError,
    ImageError,
    ImageTooLargeError,
)
from adassr.runtime.images import LoadedImage, size_problem
from adassr.runtime.pipeline import output_size, upscale_pixels
from adassr.runtime.routing import RouteDecision
from adassr.runtime.server.codec import UPLOAD_NAME, UploadFolder, UploadSpaceError, encode, without_path
from adassr.runtime.server.config import ServerConfig, TokenWatch
from adassr.runtime.server.metrics import ServerMetrics
from adassr.runtime.server.models import (
    ModelRegistry,
    ModelUnavailable,
    NoModel,
    UnknownCamera,
    default_opener,
)
from adassr.runtime.server.request_ids import RequestIdMiddleware, log_prefix
from adassr.runtime.server.requests import HttpError, UpscaleParams, parse_multipart, parse_params
from adassr.runtime.server.scheduler import (
    BatchRecord,
    DeadlineExceeded,
    RequestCancelled,
    Ticket,
    TileBatcher,
)
from adassr.runtime.store import FALLBACK_CAMERA, misnamed_note

logger = logging.getLogger(__name__)

CLIENT_GONE = 499  # recorded in metrics only: nobody reads the response


@dataclass(frozen=True)
class UpscaleOutput:
    data: bytes
    media_type: str
    headers: dict[str, str]
    camera: str


MAX_HEADER_VALUE = 1024
"""Longest value of an ``X-Adassr-*`` response header: clients and proxies refuse long headers (curl and
httpx failed on a 60 KB one; nginx's default buffer is 4-8 KB for all of them)."""


def _with_sample_bits(image: LoadedImage, bits: int) -> LoadedImage:
    """``image`` with the ``sample_bits`` of its request; 422 when its values exceed that range's top level."""
    peak = (1 << bits) - 1
    top = int(image.pixels.max()) if image.pixels.size else 0
    if top > peak:
        raise HttpError(422, "invalid_parameter", f"sample_bits={bits}: the upload's values reach {top}, above "
                        f"{peak}, the top level of {bits}-bit samples; send a wider sample_bits, or auto")
    return dataclasses.replace(image, sample_peak=peak)


def _header_safe(text: str) -> str:
    """``text`` as one header line of printable ASCII (anything else, control characters and NUL from an
    upload's bytes included, becomes ``?``; RFC 9110 forbids them, and h11 refused to send the response)
    of at most :data:`MAX_HEADER_VALUE` characters."""
    safe = "".join(c if " " <= c <= "~" else " " if c in "\r\n\t" else "?" for c in text)
    return safe if len(safe) <= MAX_HEADER_VALUE else safe[: MAX_HEADER_VALUE - 3] + "..."


class Server:
    """Everything one app instance holds: config, models, batcher, workers, metrics, state."""

    def __init__(self, config: ServerConfig, *, open_model: Callable[[RouteDecision], Backend] | None = None) -> None:
        self.config = config
        self.metrics = ServerMetrics(config.max_batch)
        self.registry = ModelRegistry(
            config.store,
            precision=config.precision,
            open_model=open_model or default_opener(config.backend, providers=config.providers, threads=config.threads,
                                                    tiling=config.tiling, precision=config.precision),
            on_load=lambda camera, ok: self.metrics.model_loads.labels(camera, "ok" if ok else "failed").inc(),
            on_error=lambda kind: self.metrics.errors.labels(kind).inc(),
            on_evict=lambda camera: self.metrics.model_evictions.labels(camera).inc(),
            max_models=config.max_models,
        )
        self.metrics.models_loaded.set_function(lambda: len(self.registry.models))
        self.batches: list[BatchRecord] = []  # the last model calls (bounded), for tests and debugging
        self.batcher: TileBatcher | None = None
        self.workers: cf.ThreadPoolExecutor | None = None
        self.uploads: UploadFolder | None = None
        self.ready = False
        self.draining = False
        self.stopping = False  # set when the drain timeout is up (serve_cli) or a request is cancelled at
        # shutdown: queued work never starts after that
        self.forced = False  # set by a second Ctrl-C (serve_cli): the requests in flight are cancelled at once
        self.admitted = 0  # requests whose body is in, processing or waiting for a worker
        self.receiving = 0  # bytes of the bodies still arriving (they hold no admission slot)
        self.waiting = 0
        self._watcher: asyncio.Task[None] | None = None
        self.metrics.bind_depths(lambda: self.waiting, lambda: self.batcher.depth if self.batcher else 0,
                                 lambda: self.receiving)
        self._lock = threading.Lock()
        self._token = config.token.encode("utf-8") if config.token else None
        self._token_watch = (TokenWatch(config.token_file, config.token)
                             if config.token_file is not None and config.token is not None else None)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.uploads = UploadFolder()
        self.workers = cf.ThreadPoolExecutor(self.config.workers, thread_name_prefix="adassr-worker")
        self.batcher = TileBatcher(
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            threads=self.config.inference_threads,
            on_batch=self._record_batch,
            on_cancelled_tiles=lambda n: self.metrics.tiles_cancelled.inc(n),
        )
        await self.refresh()
        self._watcher = asyncio.create_task(self._watch())

    async def refresh(self) -> None:
        """Reload changed models (in a thread); ready once any model serves."""
        await asyncio.to_thread(self.registry.refresh)
        if not self.registry.ready():  # every parked model failed to open (--max-models): try one again
            await asyncio.to_thread(self.registry.retry_failed)
        self.ready = self.registry.ready()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.refresh()
            except Exception:  # never let the watcher die: log and keep serving
                logger.exception("model refresh failed")
                self.metrics.errors.labels("model_load").inc()
            if self._token_watch is not None:
                token = await asyncio.to_thread(self._token_watch.changed)
                if token is not None:
                    self._token = token.encode("utf-8")  # one assignment: each request sees one token or the other

    def count_send_failure(self) -> None:
        """A response its client did not take whole (the HTTP protocol's ``on_send_failed``)."""
        self.metrics.errors.labels("send_failed").inc()

    async def stop(self) -> None:
        self.draining = True
        self.stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.forced:
            # a second Ctrl-C: nothing waits for the model calls still running (a large tile on a CPU takes
            # half a minute; the process then ends without them, see serve_cli). The uploads' folder goes
            # first: an open upload file stays readable to its worker until the process ends.
            if self.uploads is not None:
                self.uploads.close()
            if self.workers is not None:
                self.workers.shutdown(wait=False, cancel_futures=True)
            if self.batcher is not None:
                self.batcher.close(0.0)
            return
        if self.workers is not None:  # work not yet started is dropped; started work ends at its next model call
            await asyncio.to_thread(self.workers.shutdown, True, cancel_futures=True)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close, 10.0)
        if self.uploads is not None:
            self.uploads.close()

    def _count_waiting(self, delta: int) -> None:
        with self._lock:
            self.waiting += delta

    def start_draining(self) -> None:
        """Stop admitting upscale requests (503) and report not ready; in-flight work continues, and no
        further model is loaded (a start-up stopped while its models load ends after the current one)."""
        self.draining = True
        self.registry.stop_loading()

    def _record_batch(self, record: BatchRecord) -> None:
        self.metrics.batch_tiles.observe(record.tiles)
        self.batches.append(record)
        if len(self.batches) > 1000:
            del self.batches[:500]

    # -- checks -------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        given = value.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self._token):
            raise HttpError(
                401,
                "unauthorized",
                "missing or wrong bearer token; send 'Authorization: Bearer <token>' with the "
                "token from the server's token file",
                {"WWW-Authenticate": 'Bearer realm="adassr"'},
            )

    def check_ready(self) -> None:
        if self.draining:
            raise HttpError(
                503,
                "not_ready",
                "the server is shutting down; retry on another instance",
                {"Retry-After": "5", "Connection": "close"},
            )
        if not self.ready:
            raise HttpError(
                503,
                "not_ready",
                "no model is loaded yet (or none loads); GET /v1/cameras shows why; retry later",
                {"Retry-After": "5"},
            )

    def retry_after(self) -> str:
        """Seconds a rejected client should wait: about one worker round (at least 1)."""
        return str(max(1, math.ceil(self.config.max_wait_ms / 1000.0 + 1)))

    # -- the work of one request (worker thread) ---------------------------------------------
    def process(self, body: bytes, params: UpscaleParams, ticket: Ticket) -> UpscaleOutput:
        ticket.check()
        assert self.uploads is not None and self.batcher is not None
        limits = self.config.limits
        start = time.perf_counter()
        read_notes: list[str] = []
        image = self.uploads.decode(body, max_pixels=limits.max_pixels, notes=read_notes)
        if params.sample_bits is not None and image.bit_depth == 16:
            image = _with_sample_bits(image, params.sample_bits)
        decoded = time.perf_counter()
        with self.registry.serving(params.camera, image) as route:  # the model stays open until the tiles are done
            model = route.model
            ticket.camera = model.camera  # the latency metric's label, should the request fail from here on
            factor = float(model.route.scale if params.outscale is None else params.outscale)
            out_h, out_w = output_size(image.height, image.width, factor)
            if out_h * out_w > limits.max_output_pixels:
                raise ImageTooLargeError(
                    f"the output would be {out_w}x{out_h} = {out_h * out_w:,} pixels, above the limit of "
                    f"{limits.max_output_pixels:,}; send a smaller image or a smaller outscale"
                )

            def check_format(height: int, width: int) -> None:  # before the upscale, not by the encoder after it
                problem = size_problem(params.suffix, height, width)
                if problem is not None:
                    raise ImageTooLargeError(f"cannot send the output as {params.suffix[1:]}: {problem}; ask for "
                                             "format=png, or a smaller outscale")

            infer = self.batcher.infer_fn(model.key, model.backend, ticket)
            with self.batcher.producer():
                pixels, alpha = upscale_pixels(
                    image.pixels,
                    infer,
                    scale=model.route.scale,
                    tiling=self.config.tiling,
                    alpha=image.alpha,
                    outscale=params.outscale,
                    multiple_of=model.route.multiple_of,
                    max_output_pixels=limits.max_output_pixels,
                    check_output=check_format,
                    peak=image.sample_peak,
                )
        inferred = time.perf_counter()
        ticket.check()
        try:
            carried = image.exif if params.exif is not False and self.config.exif else None
            data, notes = encode(pixels, alpha, suffix=params.suffix, quality=params.quality,
                                 icc_profile=image.icc_profile, exif=carried, peak=image.white())
        except ImageError as exc:  # the upload was fine: the output could not be encoded (not a 415)
            logger.error("%sencoding the output failed: %s", log_prefix(), exc)
            raise HttpError(500, "encode", f"the output could not be encoded as {params.suffix[1:]}: "
                            f"{without_path(str(exc))}; ask for format=png") from None
        encoded = time.perf_counter()
        timing = (
            f"decode;dur={1000 * (decoded - start):.1f}, upscale;dur={1000 * (inferred - decoded):.1f}, "
            f"encode;dur={1000 * (encoded - inferred):.1f}"
        )
        headers = {
            "X-Adassr-Model": model.route.model_name,
            "X-Adassr-Model-Sha256": model.sha256,
            "X-Adassr-Camera-Group": route.group or "",
            "X-Adassr-Route": _header_safe(route.reason),
            "Server-Timing": timing,
        }
        notes = read_notes + notes
        if params.exif and image.exif and not self.config.exif:
            notes.append("the EXIF was left out: this server runs with --no-exif")
        profile_note = image.profile_note()
        if profile_note is not None:
            notes.append(f"{UPLOAD_NAME}: {profile_note}")
        if notes:
            headers["X-Adassr-Note"] = _header_safe("; ".join(notes))
        return UpscaleOutput(data, params.media_type, headers, model.camera)

    # -- the HTTP side of one request ---------------------------------------------------------
    def _check_capacity(self) -> None:
        """429 when ``workers + max_queue`` requests are admitted already."""
        if self.admitted >= self.config.max_admitted:
            raise HttpError(
                429,
                "overloaded",
                f"the server is busy ({self.admitted} requests admitted, limit "
                f"{self.config.max_admitted}); retry after the Retry-After seconds",
                {"Retry-After": self.retry_after()},
            )

    @property
    def upload_budget(self) -> int:
        """Bytes that uploads still arriving may hold together: ``workers + max_queue`` full bodies."""
        return self.config.max_admitted * self.config.limits.max_body_bytes

    async def upscale(self, request: Request) -> Response:
        arrived = time.monotonic()
        try:
            self.check_auth(request)
            self.check_ready()
            self._check_capacity()  # a busy server refuses before the upload, not after it
        except HttpError as exc:  # refused before admission: counted in the latency histogram too
            self.metrics.latency.labels("none", str(exc.status)).observe(time.monotonic() - arrived)
            raise
        return await self._handle(request, arrived)

    async def _handle(self, request: Request, arrived: float) -> Response:
        """Read the body (holding no admission slot: a client that uploads slowly blocks nobody), then
        admit the request and process it."""
        limits = self.config.limits
        ticket = Ticket(arrived + limits.request_timeout_s)
        camera_label = "none"
        status = 500  # until an outcome is known (a cancelled task records 503, see below)
        try:
            body, params = await self._read_request(request)
            self._check_capacity()
            self.admitted += 1
            self.metrics.inflight.inc()
            try:
                output = await self._process_unless_abandoned(request, body, params, ticket)
            finally:
                self.admitted -= 1
                self.metrics.inflight.dec()
            if output is None:
                self.metrics.errors.labels("client_disconnect").inc()
                status = CLIENT_GONE
                return Response(status_code=CLIENT_GONE)
            camera_label = output.camera
            elapsed_ms = 1000 * (time.monotonic() - arrived)
            headers = dict(output.headers, **{"X-Adassr-Latency-Ms": f"{elapsed_ms:.1f}", "Vary": "Accept"})
            status = 200
            return Response(output.data, media_type=output.media_type, headers=headers)
        except asyncio.CancelledError:  # the HTTP server cancelled the request (shutdown past the drain timeout)
            # Answered, not re-raised: uvicorn logged each re-raised cancellation as a crash with a full
            # traceback and sent its plain 500. The queued work was withdrawn on the way out.
            status = 503
            self.metrics.errors.labels("not_ready").inc()  # as for the other 503 not_ready answers
            why = "was stopped at once (a second Ctrl-C)" if self.forced else "shut down past its drain timeout"
            logger.warning("%s%s %s cancelled: the server %s", log_prefix(), request.method, request.url.path, why)
            return HttpError(503, "not_ready", f"the request was cancelled when the server {why}; retry on "
                             "another instance", {"Retry-After": "5", "Connection": "close"}).response()
        except HttpError as exc:
            status = exc.status
            raise
        except ClientDisconnect:
            self.metrics.errors.labels("client_disconnect").inc()
            status = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, never a traceback
            error = self._to_http(exc, limits.request_timeout_s)
            status = error.status
            raise error from None
        finally:
            label = camera_label if camera_label != "none" else (ticket.camera or "none")  # routed, then failed
            self.metrics.latency.labels(label, str(status)).observe(time.monotonic() - arrived)

    async def _process_unless_abandoned(
        self, request: Request, body: bytes, params: UpscaleParams, ticket: Ticket
    ) -> UpscaleOutput | None:
        """Run :meth:`process` on a worker thread and wait for it, the client leaving, or the deadline.

        Returns the output, or ``None`` when the client disconnected first; raises
        :class:`DeadlineExceeded` when the deadline passed first. An abandoned request that has not
        started never starts; one that has started runs to its end and its outcome is discarded.
        """
        loop = asyncio.get_running_loop()
        assert self.workers is not None
        self._count_waiting(+1)
        claim = threading.Lock()  # whoever takes it first decides: the worker runs, or the request gave up
        queued = True  # neither started nor abandoned: counted in `waiting`

        def _run() -> UpscaleOutput:
            nonlocal queued
            with claim:
                if queued:
                    queued = False
                    self._count_waiting(-1)
                if ticket.cancelled or self.stopping:
                    # The shutdown cancels every request's task one after the other; a worker freed by the
                    # first must not start the next queued request before its task hears of the cancel.
                    ticket.cancel("server shutting down")
                    raise RequestCancelled("request abandoned before it started")
            return self.process(body, params, ticket)

        context = contextvars.copy_context()  # the request ID (request_ids.current) for its log lines
        work: asyncio.Future[UpscaleOutput] = asyncio.ensure_future(
            loop.run_in_executor(self.workers, context.run, _run))
        gone: asyncio.Future[None] = asyncio.ensure_future(_wait_disconnect(request))
        waiting: list[asyncio.Future[Any]] = [work, gone]
        def abandon(reason: str) -> None:
            """Queued work never starts; started work stops at its next model call (its tiles are dropped)."""
            nonlocal queued
            with claim:
                ticket.cancel(reason)
                if queued:
                    queued = False
                    self._count_waiting(-1)
            work.add_done_callback(_consume)

        try:
            done, _ = await asyncio.wait(
                waiting, timeout=max(0.0, ticket.remaining()), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the HTTP server gave up on this request (drain timeout at shutdown)
            if self.draining:  # it cancels all of them: no queued request may start from now on
                self.stopping = True
            abandon("server shutting down")
            raise
        finally:
            gone.cancel()
        if work in done:
            return work.result()
        abandon("client disconnected" if gone in done else "deadline")
        if gone in done:
            return None
        raise DeadlineExceeded("deadline")

    def _to_http(self, exc: Exception, timeout_s: float) -> HttpError:
        if isinstance(exc, DeadlineExceeded):
            return HttpError(
                504,
                "deadline",
                f"the request did not finish within the server's deadline of {timeout_s:g} s; "
                "send a smaller image, retry later, or raise --request-timeout",
            )
        if isinstance(exc, RequestCancelled):
            return HttpError(503, "not_ready", "the request was cancelled while the server shut down; retry")
        if isinstance(exc, UploadSpaceError):
            logger.error("%s%s", log_prefix(), exc)
            return HttpError(503, "overloaded", str(exc), {"Retry-After": self.retry_after()})
        if isinstance(exc, ImageTooLargeError):
            return HttpError(413, "too_large", str(exc))
        if isinstance(exc, ImageError):
            return HttpError(415, "unsupported_image", str(exc))
        if isinstance(exc, ModelUnavailable):
            return HttpError(503, "model_unavailable", str(exc),
                             {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        if isinstance(exc, UnknownCamera):
            return HttpError(404, "unknown_camera", str(exc))
        if isinstance(exc, NoModel):
            return HttpError(404, "unknown_camera", str(exc))
        if isinstance(exc, CameraError):
            return HttpError(422, "invalid_parameter", str(exc))
        if isinstance(exc, BackendError):
            logger.error("%sinference failed: %s", log_prefix(), exc)
            return HttpError(500, "inference", f"the model failed on this image: {exc}")
        if isinstance(exc, AdassrError):
            return HttpError(422, "invalid_parameter", str(exc))
        logger.exception("%sunexpected error while upscaling", log_prefix())
        return HttpError(500, "internal", "unexpected server error; the server log has the details")

    async def _read_request(self, request: Request) -> tuple[bytes, UpscaleParams]:
        limits = self.config.limits
        query = request.query_params.multi_items()
        values = dict(query)
        twice = [name for name, n in Counter(key for key, _ in query).items() if n > 1]
        if twice:  # the last one would win, silently
            raise HttpError(422, "invalid_parameter", f"parameter {twice[0]!r} given twice in the query; give it once")
        coding = request.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):  # RFC 9110 15.5.16: a content coding the server does not decode
            raise HttpError(
                415,
                "unsupported_image",
                f"the body is sent with Content-Encoding: {coding}, which this server does not decode; send the "
                "image file's bytes as they are (image formats are compressed already)",
                {"Accept-Encoding": "identity", "Connection": "close"},
            )
        length = request.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise HttpError(400, "bad_request", f"invalid Content-Length {length!r}")
            if int(length) > limits.max_body_bytes:
                raise HttpError(
                    413,
                    "too_large",
                    f"the body is {int(length):,} bytes, above the limit of {limits.max_body_bytes:,}; "
                    "send a smaller image",
                    {"Connection": "close"},
                )
        body = await self._read_body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/"):
            body, fields = await parse_multipart(request.headers, body)
            for name, value in fields.items():
                if name in values:
                    raise HttpError(422, "invalid_parameter", f"parameter {name!r} given twice (query and form)")
                values[name] = value
        params = parse_params(values, limits.max_outscale, request.headers.get("accept"))
        return body, params

    async def _read_body(self, request: Request) -> bytes:
        limits = self.config.limits
        chunks: list[bytes] = []
        total = 0

        async def collect() -> None:
            nonlocal total
            try:
                async for chunk in request.stream():
                    if total + len(chunk) > limits.max_body_bytes:
                        raise HttpError(
                            413,
                            "too_large",
                            f"the body is over the limit of {limits.max_body_bytes:,} bytes; send a smaller image",
                            {"Connection": "close"},
                        )
                    if self.receiving + len(chunk) > self.upload_budget:  # memory held by uploads not yet admitted
                        raise HttpError(
                            429,
                            "overloaded",
                            "the server is receiving too many uploads at once; retry after the Retry-After seconds",
                            {"Retry-After": self.retry_after(), "Connection": "close"},
                        )
                    total += len(chunk)
                    self.receiving += len(chunk)
                    chunks.append(chunk)
            finally:
                # Released the moment this upload ends: wait_for runs this in a task of its own, and the code
                # after it resumes a loop step later, when other uploads may already have been refused for
                # bytes that were no longer arriving.
                self.receiving -= total

        try:
            await asyncio.wait_for(collect(), timeout=limits.body_timeout_s)
        except TimeoutError:
            raise HttpError(
                408,
                "body_timeout",
                f"the body did not arrive within {limits.body_timeout_s:g} s; check the connection and resend",
                {"Connection": "close"},
            ) from None
        return b"".join(chunks)


async def _wait_disconnect(request: Request) -> None:
    """Return when the client has gone (called after the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned worker's outcome so that asyncio does not log it."""
    if not future.cancelled():
        future.exception()


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(data, indent=1, sort_keys=True) + "\n", status_code=status, media_type="application/json"
    )


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(server: Server, handler: Handler) -> Handler:
    """``handler`` with :class:`HttpError` and client disconnects turned into counted responses."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except HttpError as exc:
            server.metrics.errors.labels(exc.kind).inc()
            return exc.response()
        except ClientDisconnect:
            server.metrics.errors.labels("client_disconnect").inc()
            return Response(status_code=CLIENT_GONE)

    return endpoint


def _routes(server: Server) -> list[Route]:
    """The endpoints: ``POST /v1/upscale``, ``GET /v1/cameras``, ``/healthz``, ``/readyz``, ``/metrics``."""

    async def upscale(request: Request) -> Response:
        return await server.upscale(request)

    async def cameras(request: Request) -> Response:
        server.check_auth(request)
        registry = server.registry
        return _json(
            {
                "cameras": registry.listing(),
                "refused": dict(sorted({**{folder: f"the store folder {misnamed_note(why)}"
                                           for folder, why in registry.misnamed.items()},
                                        **registry.problems}.items())),
                "store_problem": registry.store_problem,  # why the store cannot be read now (null: it can)
                "fallback": FALLBACK_CAMERA in registry.servable(),
                "max_models": registry.max_models or None,
            }
        )

    async def healthz(request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if server.draining:
            return _json({"status": "draining"}, 503)
        if not server.ready:
            return _json({"status": "not ready", "reason": "no model loaded (GET /v1/cameras shows why)"}, 503)
        return _json({"status": "ready", "models": len(server.registry.servable()),
                      "loaded": len(server.registry.models)})

    async def metrics(request: Request) -> Response:
        server.check_auth(request)
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    return [
        Route("/v1/upscale", _guarded(server, upscale), methods=["POST"]),
        Route("/v1/cameras", _guarded(server, cameras), methods=["GET"]),
        Route("/healthz", _guarded(server, healthz), methods=["GET"]),
        Route("/readyz", _guarded(server, readyz), methods=["GET"]),
        Route("/metrics", _guarded(server, metrics), methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 / 400 as the server's JSON error, naming the endpoints."""
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    hint = " (endpoints: POST /v1/upscale, GET /v1/cameras, /healthz, /readyz, /metrics)"
    return HttpError(exc.status_code, kind, f"{exc.detail}{hint}", exc.headers).response()


def create_app(config: ServerConfig, *, open_model: Callable[[RouteDecision], Backend] | None = None) -> Starlette:
    """The ASGI app; ``app.state.server`` is its :class:`Server`. ``open_model`` replaces model opening (tests)."""
    server = Server(config, open_model=open_model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = Starlette(routes=_routes(server), exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)  # X-Request-ID on every response, request_id in error bodies
    app.router.redirect_slashes = False  # `/v1/upscale/` is an unknown path (JSON 404), not a bodiless 307
    app.state.server = server
    return app
