"""Upscale with a Triton Inference Server that serves the repository ``adassr export --triton-repo`` wrote.

Tiling runs on the client with the runtime's own code (:func:`adassr.runtime.pipeline.upscale_pixels`):
every tile is padded to the model's fixed tile shape (read from the model's config on the server)
and sent to Triton in batches of up to ``max_batch_size`` tiles over HTTP (binary tensors), so
the output equals ``adassr upscale`` with the same tile size and ``pad_to_tile``. Triton's
dynamic batcher then merges tiles from all its clients.

Example::

    from adassr.runtime.images import read_image, write_image
    from adassr.runtime.server.triton_client import TritonUpscaler

    with TritonUpscaler("localhost:8000") as triton:
        image = read_image("photo.jpg")
        pixels, alpha, model = triton.upscale(image)          # routed by the photo's camera (folder, EXIF Make)
        write_image("photo_x4.png", pixels, alpha=alpha, icc_profile=image.icc_profile, exif=image.exif)

Needs ``tritonclient[http]`` (in the ``serve`` extra); it is imported when a client is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from adassr.runtime.cameras import camera_name
from adassr.runtime.errors import BackendError, ConfigError, ShapeError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import NonFiniteOutputError, OutputCheck, upscale_pixels
from adassr.runtime.routing import route_by_image
from adassr.runtime.store import FALLBACK_CAMERA
from adassr.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_PRE_PAD, TilingOptions

DEFAULT_PREFIX = "adassr_"
_NUMPY_TYPES = {"TYPE_FP32": ("FP32", np.float32), "TYPE_FP16": ("FP16", np.float16)}


class TritonInferError(BackendError):
    """Triton refused or failed an inference request (the message has its answer)."""


def camera_model_name(prefix: str, camera: str) -> str:
    """Triton's name of ``camera``'s model, as ``--triton-repo`` writes it: the store's spelling of the
    camera (``Canon`` -> ``<prefix>canon``; Triton's model names are case-sensitive); CameraError for a
    name no camera can have."""
    return f"{prefix}{camera_name(camera)}"


@dataclass(frozen=True)
class TritonModelInfo:
    """What the client needs from a model's Triton config."""

    name: str
    input_name: str
    output_name: str
    datatype: str  # Triton wire type, "FP32" or "FP16"
    tile: int
    scale: int
    multiple_of: int
    max_batch_size: int


def parse_model_config(config: Mapping[str, Any]) -> TritonModelInfo:
    """Read a model config (the JSON form ``get_model_config`` returns) written by ``--triton-repo``."""
    try:
        name = str(config["name"])
        (inp,) = config["input"]
        (out,) = config["output"]
        dims = [int(d) for d in inp["dims"]]
        out_dims = [int(d) for d in out["dims"]]
        params = {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items()}
        wire, _ = _NUMPY_TYPES[str(inp["data_type"])]
    except (KeyError, ValueError, TypeError) as exc:
        raise BackendError(f"the Triton model config is not one adassr wrote ({exc!r}); rerun --triton-repo") from exc
    if len(dims) != 3 or dims[0] != 3 or dims[1] != dims[2] or dims[1] < 1:
        raise BackendError(f"model {name!r} input dims {dims}: expected [3, tile, tile]")
    scale = int(params.get("adassr_scale") or out_dims[1] // dims[1])
    if out_dims != [3, scale * dims[1], scale * dims[2]]:
        raise BackendError(f"model {name!r} output dims {out_dims} do not match x{scale} of {dims}")
    return TritonModelInfo(
        name=name,
        input_name=str(inp["name"]),
        output_name=str(out["name"]),
        datatype=wire,
        tile=dims[1],
        scale=scale,
        multiple_of=int(params.get("adassr_multiple_of") or 1),
        max_batch_size=max(1, int(config.get("max_batch_size", 1))),
    )


def triton_url(url: str) -> str:
    """The ``host:port[/path]`` tritonclient wants; ``http://`` is accepted and dropped."""
    text = url.strip().rstrip("/")
    if text.lower().startswith("http://"):
        text = text[len("http://"):]
    if text.lower().startswith("https://") or "://" in text:
        raise ConfigError(f"Triton URL {url!r}: give the server's HTTP endpoint as host:port (https is not supported)")
    if not text or text.startswith(("/", ":")):
        raise ConfigError(f"Triton URL {url!r}: give the server's HTTP endpoint as host:port, e.g. localhost:8000")
    from urllib.parse import urlsplit

    try:  # the port as tritonclient will parse it: "localhost:abc" or port 99999 would fail there with a traceback
        port = urlsplit(f"http://{text}").port
    except ValueError as exc:
        raise ConfigError(f"Triton URL {url!r}: {exc}; give the server's HTTP endpoint as host:port, e.g. "
                          "localhost:8000") from None
    if port == 0:
        raise ConfigError(f"Triton URL {url!r}: port 0 is not a server's port; give host:port, e.g. localhost:8000")
    return text



def _quiet_interrupts() -> None:
    """Ctrl-C during a request: the gevent hub under ``tritonclient.http`` printed the KeyboardInterrupt and a
    timestamp on stderr before passing it on (the CLI then says "interrupted" itself). Adding it to this
    thread's hub's ``NOT_ERROR`` (gevent's documented setting) stops only the printing; it still propagates."""
    try:
        import gevent
    except ImportError:  # a tritonclient without gevent: nothing prints it
        return
    hub = gevent.get_hub()
    if not issubclass(KeyboardInterrupt, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


class TritonUpscaler:
    """A tritonclient HTTP client plus the model configs it has read (cached per model name)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        overlap: int | None = None,
        pre_pad: int = DEFAULT_PRE_PAD,
        timeout_s: float = 120.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError as exc:
            from adassr.runtime.install import install_hint

            raise ConfigError(f"the Triton client needs tritonclient[http] ({exc}); {install_hint('serve')}") from exc
        self._http = httpclient
        _quiet_interrupts()
        connect = timeout_s if connect_timeout_s is None else connect_timeout_s
        self._url = url = triton_url(url)
        try:
            self._client = httpclient.InferenceServerClient(url, connection_timeout=connect, network_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - ValueError or tritonclient's own, for a URL it cannot take
            raise ConfigError(f"Triton URL {url!r}: {exc}; give the server's HTTP endpoint as host:port") from None
        self._connect_s = connect
        self._prefix = prefix
        self._overlap = overlap
        self._pre_pad = pre_pad
        self._models: dict[str, TritonModelInfo] = {}

    def check_live(self) -> None:
        """``ConfigError`` (one line, what to check) unless the server answers that it is live."""
        try:  # within the connect timeout: a server that accepts and never answers took the 120 s network one
            probe = self._http.InferenceServerClient(self._url, connection_timeout=self._connect_s,
                                                     network_timeout=self._connect_s)
            try:
                live = bool(probe.is_server_live())
            finally:
                probe.close()
        except Exception as exc:  # noqa: BLE001 - connection errors come from tritonclient's HTTP library
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(
                f"cannot reach a Triton server at {self._url} ({reason}); start tritonserver with the "
                "repository of `adassr export --triton-repo`, or fix the URL (host:port of its HTTP endpoint)"
            ) from exc
        if not live:
            raise ConfigError(f"the Triton server at {self._url} says it is not live; check its log")

    def model_info(self, name: str) -> TritonModelInfo:
        if name not in self._models:
            try:
                config = self._client.get_model_config(name)
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
                self.check_live()  # an unreachable server says so, rather than "no usable model"
                reason = " ".join(str(exc).split())  # one line: a proxy's HTML page held several
                raise BackendError(f"Triton has no usable model {name!r}: {reason}") from exc
            self._models[name] = parse_model_config(config)
        return self._models[name]

    def _fresh_model_info(self, name: str) -> TritonModelInfo | None:
        """``name``'s config read again (and cached); None when it cannot be read now."""
        try:
            fresh = parse_model_config(self._client.get_model_config(name))
        except Exception:  # noqa: BLE001 - tritonclient's own types; the first error is the one reported
            return None
        self._models[name] = fresh
        return fresh

    def model_for(self, image: LoadedImage, camera: str | None = None) -> str:
        """``<prefix><camera>``; without ``camera`` see :meth:`route`."""
        return self.route(image, camera)[0]

    def route(self, image: LoadedImage, camera: str | None = None) -> tuple[str, str]:
        """``(model name, reason)``: ``<prefix><camera>`` (``explicit``); without ``camera`` the group
        :func:`route_by_image` finds (its folder, EXIF Make or file-name prefix: the reason) if Triton
        has that model ready, else the fallback (``fallback``)."""
        if camera is not None:
            return camera_model_name(self._prefix, camera), "explicit"
        group, source, _ = route_by_image(image, self._ready)
        if group is not None and self._ready(group):
            return f"{self._prefix}{group}", source
        return f"{self._prefix}{FALLBACK_CAMERA}", "fallback"

    def _ready(self, group: str) -> bool:
        """Whether Triton has the model of camera ``group`` ready: False when its repository has no such
        model (the fallback then serves). A model it has that is not ready (loading, failed to load) and
        a server that does not answer are a BackendError for the image: sending a camera's photos to the
        unadapted fallback because of a passing 503 or a dropped connection would go unnoticed."""
        name = f"{self._prefix}{group}"
        try:
            if self._client.is_model_ready(name):
                return True
            index = self._client.get_model_repository_index()
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendError(f"cannot ask the Triton server at {self._url} whether model {name!r} is ready "
                               f"({reason}); retry") from exc
        entry = next((m for m in index or () if isinstance(m, dict) and m.get("name") == name), None)
        if entry is None:
            return False
        state = " ".join(str(entry.get("state") or "not ready").split())
        why = " ".join(str(entry.get("reason") or "").split())
        detail = f"{state}: {why}" if why else state
        raise BackendError(f"Triton model {name!r} is in the repository but not ready ({detail}); retry when it has "
                           "loaded, or check the server's log")

    def tiling_for(self, info: TritonModelInfo) -> TilingOptions:
        """The tiling of ``info``'s model: its fixed tile and batch, this client's overlap and pre-pad.

        The repository chooses the tile, so the default overlap (``overlap=None``) shrinks to fit a small
        one (at most half the tile); an overlap given explicitly that does not fit, even one equal to
        the default, is a ConfigError."""
        fits = (info.tile - 1) // 2
        if self._overlap is not None and self._overlap > fits:
            raise ConfigError(f"--tile-overlap {self._overlap} is too large for Triton model {info.name!r}, whose "
                              f"tile is {info.tile}: use --tile-overlap <= {fits}")
        overlap = min(DEFAULT_OVERLAP, fits) if self._overlap is None else self._overlap
        return TilingOptions(tile=info.tile, overlap=overlap, pre_pad=self._pre_pad,
                             batch_size=info.max_batch_size, pad_to_tile=True)

    def infer_fn(self, info: TritonModelInfo) -> Any:
        """An ``InferFn`` sending ``N x 3 x tile x tile`` batches to ``info``'s model."""
        http = self._http
        dtype = _NUMPY_TYPES["TYPE_FP16" if info.datatype == "FP16" else "TYPE_FP32"][1]

        def infer(batch: np.ndarray) -> np.ndarray:
            data = np.ascontiguousarray(batch, dtype=dtype)
            inp = http.InferInput(info.input_name, list(data.shape), info.datatype)
            inp.set_data_from_numpy(data, binary_data=True)
            out = http.InferRequestedOutput(info.output_name, binary_data=True)
            try:
                result = self._client.infer(info.name, [inp], outputs=[out])
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception types
                reason = " ".join(str(exc).split())  # one line: a proxy's HTML page held several
                raise TritonInferError(
                    f"Triton failed on model {info.name!r} with input {data.shape}: {reason}") from exc
            array = result.as_numpy(info.output_name)
            if array is None:
                raise BackendError(f"Triton returned no {info.output_name!r} for model {info.name!r}")
            return np.asarray(array, dtype=np.float32)

        return infer

    def upscale(
        self,
        image: LoadedImage,
        *,
        camera: str | None = None,
        model: str | None = None,
        outscale: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        check_output: OutputCheck | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """``(pixels, alpha, model name)``: the image upscaled by its camera's model on Triton.

        ``progress(done, total)`` is called with 0 before the first batch of tiles and after each batch.
        """
        name = model or self.model_for(image, camera)
        info = self.model_info(name)

        def run(info: TritonModelInfo) -> tuple[np.ndarray, np.ndarray | None]:
            return upscale_pixels(image.pixels, self.infer_fn(info), scale=info.scale, tiling=self.tiling_for(info),
                                  alpha=image.alpha, outscale=outscale, multiple_of=info.multiple_of,
                                  progress=progress, check_output=check_output, peak=image.sample_peak)

        try:
            try:
                pixels, alpha = run(info)
            except (TritonInferError, ShapeError):
                # the repository may have been rewritten with another tile or batch since the config
                # was read (a long-lived client, Triton in poll mode): read it again, and retry once
                fresh = self._fresh_model_info(name)
                if fresh is None or fresh == info:
                    raise
                pixels, alpha = run(fresh)
        except NonFiniteOutputError:
            precision = "an fp16 overflow?" if info.datatype == "FP16" else "a damaged model?"
            raise NonFiniteOutputError(
                f"Triton model {name!r} produced NaN or Inf values ({precision}); publish the camera's fp32 export "
                "to the repository again (`adassr export --triton-repo DIR --camera NAME`) or re-export the camera"
            ) from None
        return pixels, alpha, name

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonUpscaler:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
