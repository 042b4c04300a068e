"""The server's configuration: one frozen, validated dataclass built by the CLI (or by tests).

Every limit the server enforces is here, with its default; :func:`adassr.runtime.server.app.create_app`
takes nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

from adassr.runtime.backends import BACKENDS
from adassr.runtime.backends.onnxruntime import resolve_providers
from adassr.runtime.cpu_info import MAX_THREADS
from adassr.runtime.errors import ConfigError
from adassr.runtime.routing import check_serving_precision
from adassr.runtime.store import shell_path
from adassr.runtime.tiling import DEFAULT_OVERLAP, DEFAULT_PRE_PAD, MAX_TILE, TilingOptions

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TILE = 256
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "png": (".png", "image/png"),
    "jpeg": (".jpg", "image/jpeg"),
    "jpg": (".jpg", "image/jpeg"),
    "webp": (".webp", "image/webp"),
}
"""``format`` request values -> (writer suffix, media type)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; over a limit the server answers 413 (sizes) or 422 (values)."""

    max_body_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 16_000_000  # decoded input pixels (checked from the header before decoding)
    max_output_pixels: int = 256_000_000
    max_outscale: float = 8.0
    header_timeout_s: float = 10.0  # request headers must arrive within this time (else the connection closes)
    body_timeout_s: float = 30.0  # the whole body must arrive within this time (else 408)
    send_timeout_s: float = 30.0  # a client that reads nothing of a response for this long is dropped
    request_timeout_s: float = 120.0  # deadline from arrival to response (else 504)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_output_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_outscale", "header_timeout_s", "body_timeout_s", "send_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s", "send_timeout_s", "request_timeout_s"):
            if getattr(self, name) > MAX_TIMEOUT_S:  # 1e10 "for no deadline" overflowed the thread waits: 500s
                raise ConfigError(f"{name} must be at most {MAX_TIMEOUT_S:g} s (a week), got {getattr(self, name)!r}")


MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest timeout or interval (a week): thread waits beyond ``threading.TIMEOUT_MAX`` overflow."""
MAX_WAIT_MS = 60_000.0
"""The longest a batch waits to fill (a minute; a tile's request has a deadline of its own)."""
MAX_BATCH = 1024
"""The most tiles in one model call (the batch histogram has a bucket per size)."""
MAX_INFERENCE_THREADS = 64


@dataclass(frozen=True)
class ServerConfig:
    """How ``adassr serve`` runs. Frozen: the app never changes its configuration.

    - ``workers``: requests processed at once (decode, tiling, encode run in that many threads);
      ``max_queue``: admitted requests waiting for a worker. A request beyond
      ``workers + max_queue`` gets 429 with Retry-After at once.
    - ``max_batch`` / ``max_wait_ms``: the dynamic batcher runs up to ``max_batch`` tiles of the
      same model and shape together, waiting at most ``max_wait_ms`` for a batch to fill.
      ``inference_threads`` model calls run at once.
    - ``tile``/``overlap``/``pre_pad``: the tiling plan (see :mod:`adassr.runtime.tiling`);
      ``pad_to_tile`` gives every tile the same shape (static-shape engines, more batching) at
      the cost of padding small images up to a tile.
    - ``reload_interval_s``: how often the store's manifests and model files are checked.
    - ``max_models``: 0 keeps every camera's model open; above 0, at most that many stay open, the
      others are verified and opened at their first request, the least recently used closing.
    - ``token``: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>``;
      ``token_file``: the file it was read from, read again when it changes (every
      ``reload_interval_s``): a rotated token takes effect without a restart.
    - ``exif``: responses carry the upload's EXIF (camera, dates, GPS) unless a request says
      ``exif=false``; False (``--no-exif``): no response carries any, whatever the request asks.
    """

    store: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    backend: str = "onnxruntime"
    providers: tuple[str, ...] = ("cpu",)
    precision: str = "fp32"
    threads: int | None = None
    workers: int = 4
    max_queue: int = 16
    max_batch: int = 4
    max_wait_ms: float = 5.0
    inference_threads: int = 1
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    pre_pad: int = DEFAULT_PRE_PAD
    pad_to_tile: bool = False
    reload_interval_s: float = 2.0
    max_models: int = 0
    drain_timeout_s: float = 30.0
    exif: bool = True
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(self.store).expanduser())
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid backends are {', '.join(BACKENDS)}")
        object.__setattr__(self, "providers", resolve_providers(self.providers))
        check_serving_precision(self.precision, self.backend)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        for name in ("workers", "max_batch", "inference_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.max_models, bool) or not isinstance(self.max_models, int) or self.max_models < 0:
            raise ConfigError(f"max_models must be an integer >= 0 (0: every model stays loaded), got "
                              f"{self.max_models!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ConfigError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise ConfigError(f"threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}")
        if self.max_batch > MAX_BATCH or self.inference_threads > MAX_INFERENCE_THREADS:
            raise ConfigError(f"max_batch must be at most {MAX_BATCH} and inference_threads at most "
                              f"{MAX_INFERENCE_THREADS}, got {self.max_batch} and {self.inference_threads}")
        for name in ("max_wait_ms",):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_MS:  # a huge wait killed the batcher thread
                raise ConfigError(f"{name} must be from 0 to {MAX_WAIT_MS:g} ms, got {value!r}")
        for name in ("reload_interval_s", "drain_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
                raise ConfigError(f"{name} must be > 0 and at most {MAX_TIMEOUT_S:g} s, got {value!r}")
        if self.token is not None and not self.token:
            raise ConfigError("the token is empty; put a non-empty secret in the token file")
        if self.token_file is not None and self.token is None:
            raise ConfigError("token_file is given without the token read from it (read_token_file)")
        if isinstance(self.tile, int) and self.tile > MAX_TILE:  # with pad_to_tile every request allocated it
            raise ConfigError(f"tile must be from 0 (untiled) to {MAX_TILE} input pixels, got {self.tile}")
        self.tiling  # validates tile / overlap / pre_pad  # noqa: B018
        if self.backend == "tensorrt" and self.tile == 0:
            raise ConfigError("the tensorrt backend needs tiles (its engines have fixed profiles): pass --tile N, "
                              "for example --tile 256")

    @property
    def tiling(self) -> TilingOptions:
        """The tiling plan's options; ``batch_size`` is the batcher's maximum batch."""
        return TilingOptions(
            tile=self.tile,
            overlap=self.overlap,
            pre_pad=self.pre_pad,
            batch_size=self.max_batch,
            pad_to_tile=self.pad_to_tile,
        )

    @property
    def max_admitted(self) -> int:
        """Requests admitted at once (processing plus waiting); one more gets 429."""
        return self.workers + self.max_queue


def read_token_file(path: str | Path) -> str:
    """The bearer token stored in ``path`` (surrounding whitespace stripped); ConfigError if unusable. A file
    that users other than its owner may read or write is warned about. The server reads it again when the
    file changes (:class:`TokenWatch`)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {p} does not exist; create it with a secret on one line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {p}: {exc}") from exc
    token = text.strip()
    if not token or any(ch.isspace() for ch in token) or not token.isascii() or not token.isprintable():
        raise ConfigError(
            f"token file {p} must hold one non-empty secret of printable ASCII characters without spaces "
            f"(an HTTP header carries no other characters reliably; e.g. `openssl rand -hex 32 > {shell_path(p)}`)"
        )
    with contextlib.suppress(OSError):
        mode = p.stat().st_mode
        if mode & 0o077:
            logger.warning("the token file %s can be read by other users (mode %03o): `chmod 600 %s`", p,
                           stat.S_IMODE(mode), shell_path(p))
    return token


def _file_state(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class TokenWatch:
    """The token file, read again when it changes (its inode, size or times; the first look reads it, so a
    rotation between the start-up's read and this watch is not missed): :meth:`changed` returns a token other
    than the one in use, or None when the file is unchanged, holds the same token, or its new content is
    unusable (missing, empty, not a token): then the token in use stays, and the log says why once per change
    (a rotation must neither lock every client out nor switch the check off). A file written in place can
    be read half written, which is a valid-looking token: rotate by renaming a complete file into place."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self._token = token
        self._state: tuple[int, int, int, int] | None | str = "not looked at yet"

    def changed(self) -> str | None:
        state = _file_state(self.path)  # None: missing (said once, until the file changes again)
        if state == self._state:
            return None
        self._state = state
        try:
            token = read_token_file(self.path)
        except ConfigError as exc:
            logger.error("the token file changed but cannot be used (%s); the previous token stays in use", exc)
            return None
        if token == self._token:
            return None
        self._token = token
        logger.warning("the token file %s changed: its new token is in use", self.path)
        return token
