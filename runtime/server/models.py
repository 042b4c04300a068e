"""The server's loaded models: one per camera group of the store, reloaded when the store changes.

:meth:`ModelRegistry.refresh` (run at start and then every ``reload_interval_s`` by the app)
looks at every camera folder with a manifest. For a camera whose manifest or model file changed
since the last look (size, mtime, inode), it reads the export record through
:func:`adassr.runtime.routing.resolve_model` and:

- a new model sha256: verifies the file against the manifest and opens it; on success the new
  model replaces the old one in one assignment (requests already running keep the old model, which
  closes when the last of them ends); on failure (checksum, load error) the
  previous model keeps serving, the failure is counted (``model_loads_total{result="failed"}``,
  ``errors_total{kind="model_checksum"|"model_load"}``) and shown in ``GET /v1/cameras``;
- the same sha256 but a changed file: re-verified; a file that now fails its checksum (tampered
  with while serving) is reported the same way, and the model loaded in memory keeps serving;
- a camera folder without a manifest any more: the model is dropped.

With ``max_models`` (``serve --max-models``) a camera whose model is not open is *parked* instead:
its model is verified and opened at its first request, and the least recently used open model
closes when more than ``max_models`` are open (see :class:`ModelRegistry`).

Routing (:meth:`ModelRegistry.serving`) follows :mod:`adassr.runtime.routing`: an explicit camera,
else the image's EXIF Make normalised to a group, else the ``_fallback`` model; but an
explicitly named camera with no loaded model is an error (404), not a silent fallback.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adassr.runtime.backends import Backend, open_backend
from adassr.runtime.cameras import camera_name, closest_camera_hint
from adassr.runtime.errors import AdassrError, CameraError, ConfigError, StoreError, unexpected_error
from adassr.runtime.images import LoadedImage
from adassr.runtime.routing import (
    RouteDecision,
    camera_group_of,
    engine_precision,
    model_precision,
    resolve_model,
    unusable_make_reason,
)
from adassr.runtime.store import (
    FALLBACK_CAMERA,
    MANIFEST_NAME,
    CameraStore,
    misnamed_note,
    scan_store,
    store_option,
)
from adassr.runtime.tiling import TilingOptions

logger = logging.getLogger(__name__)

STORE_GONE = "the store folder is not there (moved or deleted?)"
"""Why a running server's store cannot be read when its folder is gone: its loaded models keep serving."""

STORE_EMPTIED = ("the store folder is empty (an unmounted volume? everything in it deleted? restart the server to "
                 "serve an empty store)")
"""Why a running server's store cannot be read when its folder, which held the models it serves, is empty
now: an unmounted volume leaves its mount point so. Its loaded models keep serving."""


def _empty_folder(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None

_Signature = tuple[tuple[int, int, int], tuple[int, int, int] | None]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """An open model and the manifest record it came from."""

    camera: str
    route: RouteDecision
    backend: Backend
    loaded_at: float  # time.time()
    precision: str = ""  # what computes: the model file's precision, or bf16 for a bf16 TensorRT engine

    @property
    def served_precision(self) -> str:
        return self.precision or self.route.precision

    @property
    def sha256(self) -> str:
        return self.route.sha256

    @property
    def key(self) -> tuple[str, str, int]:
        """Batch identity: tiles of one key may share a model call. The open model's identity is part of
        it: a model opened again (``--max-models``) is another object, and a batch never runs tiles on
        a model that the requests of other tiles may let close (see :meth:`ModelRegistry.serving`)."""
        return self.camera, self.route.sha256, id(self)

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/cameras`` shows for this model (no filesystem paths)."""
        return model_summary(self.camera, self.route, self.served_precision, self.loaded_at)


def model_summary(camera: str, route: RouteDecision, precision: str, loaded_at: float | None) -> dict[str, Any]:
    """What ``GET /v1/cameras`` shows for a camera's model, loaded (``loaded_at``, time.time()) or
    parked until its first request (``loaded_at`` None, with ``--max-models``)."""
    manifest = route.manifest
    backbone = manifest.get("backbone")
    return {
        "model": route.model_name,
        "sha256": route.sha256,
        "precision": precision,
        "scale": route.scale,
        "adapted": camera != FALLBACK_CAMERA and ("steps" in manifest or bool(manifest.get("images"))),
        "backbone": backbone.get("name") if isinstance(backbone, Mapping) else None,
        "niqe_before": manifest.get("niqe_before"),
        "niqe_after": manifest.get("niqe_after"),
        "kernel": kernel_summary(manifest.get("kernel")),
        "manifest_updated": manifest.get("updated"),
        "loaded": loaded_at is not None,
        "loaded_at": None if loaded_at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded_at)),
    }


_KERNEL_NUMBERS = ("sigma_x", "sigma_y", "theta_deg", "confidence")


def kernel_summary(entry: object) -> dict[str, Any] | None:
    """The blur kernel the camera's model was adapted with, from the manifest's ``kernel`` entry:
    ``method``, ``sigma_x``, ``sigma_y`` (HR px), ``theta_deg``, ``confidence`` and
    ``direction_agreement`` (None where absent or not a number) with ``direction_check``, what it
    compared: ``"images"`` (a group's photos), ``"parts"`` (one photo's tiles or quadrants, warned
    below a higher bar) or None (not measured, or a manifest from before the single-image check).
    None when there is no entry (a model exported without adaptation) or it is not a mapping."""
    if not isinstance(entry, Mapping):
        return None
    diagnostics = entry.get("diagnostics")
    method = entry.get("method")
    out: dict[str, Any] = {"method": method if isinstance(method, str) else None}
    out.update({name: _finite(entry.get(name)) for name in _KERNEL_NUMBERS})
    if not isinstance(diagnostics, Mapping):
        diagnostics = {}
    out["direction_agreement"] = _finite(diagnostics.get("direction_agreement"))
    check = diagnostics.get("direction_check")
    out["direction_check"] = check if check in ("images", "parts") and out["direction_agreement"] is not None else None
    return out


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Route:
    """Which loaded model serves a request, and why."""

    model: LoadedModel
    group: str | None
    reason: str


class UnknownCamera(CameraError):
    """A request named a camera that has no loaded model."""


class NoModel(StoreError):
    """No loaded model can serve a request (no camera model and no fallback)."""


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


ARRIVING_S = 120.0
"""A model file shorter than its manifest records, or missing, that changed within this many seconds may still
be being copied into the store: its checksum failure is reported only once it stops changing."""


def _folder_files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the files in ``folder``, by name; empty when it cannot be listed."""
    found = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                found.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


ON_DEMAND_RETRY_S = 10.0
"""After a model failed to load at a request (``--max-models``), requests for it get 503 for this
long before the next request tries again (a failed load costs as much as a good one)."""


class ModelUnavailable(StoreError):
    """A camera's model is in the store but could not be loaded at this request (``--max-models``)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Failure:
    sha256: str
    at: float  # time.monotonic()
    message: str


class _Superseded(Exception):
    """A parked model could not be opened because a newer version replaced it meanwhile."""


@dataclass
class _Changes:
    """What one refresh decided, applied at its end to the models current then (requests may have
    loaded or evicted models meanwhile)."""

    gone: set[str] = field(default_factory=set)  # no manifest any more
    loaded: dict[str, LoadedModel] = field(default_factory=dict)  # opened: serve these
    parked: dict[str, RouteDecision] = field(default_factory=dict)  # verified and opened at a request


class ModelRegistry:
    """Loaded models by camera group, swapped atomically on reload. Thread-safe.

    ``open_model(route)`` opens a verified model file (default: :func:`open_backend`);
    ``on_load(camera, ok)``, ``on_error(kind)`` and ``on_evict(camera)`` feed the metrics.

    ``max_models`` 0 verifies and opens every camera's model at each refresh. Above 0, a refresh
    opens only new versions of the ones loaded; the others are *parked* (their manifests read, their
    files not even hashed: a store of hundreds of cameras starts at once) and verified and opened at
    their first request (:meth:`serving`), the least recently used one closing when more than
    ``max_models`` are open. A model replaced, removed or evicted while requests use it is
    closed when the last of them ends.
    """

    def __init__(
        self,
        store: Path,
        *,
        precision: str = "fp32",
        open_model: Callable[[RouteDecision], Backend],
        max_models: int = 0,
        on_load: Callable[[str, bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 0:
            raise ConfigError(f"max_models must be an integer >= 0 (0: no limit), got {max_models!r}")
        self._store = store
        self._precision = precision
        self._open_model = open_model
        self._max_models = max_models
        self._on_load = on_load or (lambda camera, ok: None)
        self._on_error = on_error or (lambda kind: None)
        self._on_evict = on_evict or (lambda camera: None)
        self._models: Mapping[str, LoadedModel] = MappingProxyType({})
        self._parked: Mapping[str, RouteDecision] = MappingProxyType({})
        self._signatures: dict[str, _Signature] = {}
        self._problems: dict[str, str] = {}
        self._tried: dict[str, str] = {}  # camera -> model file of a refused load (its signature includes it)
        self._arriving: dict[str, tuple[tuple[str, int, int], ...]] = {}  # camera -> its folder at the last poll
        self._misnamed: dict[str, str] = {}  # store folder with a manifest but no group name -> why
        self._unexported: set[str] = set()  # cameras adapted but not exported (no model of their own yet)
        self._unreadable: str | None = None  # why the store folder could not be listed at the last poll
        self._stop_loading = threading.Event()  # set when the server stops: a refresh loads no further model
        self._refresh_lock = threading.Lock()
        # Under _lock: the snapshots' swaps, leases, retired models, last use, loads in progress, failures.
        self._lock = threading.Lock()
        self._leases: dict[LoadedModel, int] = {}
        self._retired: set[LoadedModel] = set()  # no longer served, still in use: closed at the last release
        self._used: dict[str, int] = {}
        self._ticks = itertools.count()
        self._loading: dict[str, threading.Event] = {}
        self._failures: dict[str, _Failure] = {}
        self._previous: dict[str, RouteDecision] = {}  # a parked camera's version before its new one

    # -- reading ----------------------------------------------------------------------------
    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """An immutable snapshot: camera -> loaded model."""
        return self._models

    @property
    def parked(self) -> Mapping[str, RouteDecision]:
        """An immutable snapshot: camera -> model not open, verified and opened at its first request
        (``max_models``; else empty)."""
        return self._parked

    @property
    def max_models(self) -> int:
        return self._max_models

    def servable(self) -> set[str]:
        """The cameras whose model serves: loaded, or parked until a request needs it."""
        models, parked = self._snapshots()
        return set(models) | set(parked)

    def _snapshots(self) -> tuple[Mapping[str, LoadedModel], Mapping[str, RouteDecision]]:
        """The loaded and the parked models, read together (a request installing a model changes both)."""
        with self._lock:
            return self._models, self._parked

    def ready(self) -> bool:
        """Whether a model serves: one is open, or one is parked that did not fail to open at its
        current version (with every parked model failing, e.g. a GPU that opens nothing, the server
        is not ready; :meth:`retry_failed` tries again)."""
        with self._lock:
            return bool(self._models) or any(
                (failure := self._failures.get(name)) is None or failure.sha256 != decision.sha256
                for name, decision in self._parked.items())

    def retry_failed(self) -> bool:
        """When nothing is open and every parked model failed to open: open one again whose retry time
        has passed (the fallback first), so that readiness comes back without a request (a server that
        is not ready gets none). True if one opened."""
        if self.ready():
            return False
        now = time.monotonic()
        with self._lock:
            due = [name for name, decision in self._parked.items()
                   if (failure := self._failures.get(name)) is not None and failure.sha256 == decision.sha256
                   and now - failure.at >= ON_DEMAND_RETRY_S]
        for name in sorted(due, key=lambda n: (n != FALLBACK_CAMERA, n)):
            try:
                model = self._lease(name)
            except (ModelUnavailable, UnknownCamera):
                continue
            self._release(model)
            return True
        return False

    @property
    def problems(self) -> Mapping[str, str]:
        """Cameras whose latest model could not be loaded, with the reason (no paths)."""
        return MappingProxyType(dict(self._problems))

    def stop_loading(self) -> None:
        """The server stops: refreshes load no further model (one being loaded finishes)."""
        self._stop_loading.set()

    @property
    def store_problem(self) -> str | None:
        """Why the store folder could not be listed at the last poll (no path), None when it could."""
        return self._unreadable

    @property
    def misnamed(self) -> Mapping[str, str]:
        """Store folders with a manifest that are not used, their names being no camera group names, with why."""
        return MappingProxyType(dict(self._misnamed))

    def listing(self) -> dict[str, dict[str, Any]]:
        """``GET /v1/cameras``'s summary of every camera that serves, loaded or parked, by name."""
        models, parked = self._snapshots()
        out = {name: model.summary() for name, model in models.items()}
        for name, decision in parked.items():
            if name not in out:
                out[name] = model_summary(name, decision, engine_precision(self._precision, decision.precision), None)
        for name in set(out) & set(self._unexported):  # a copy: the refresh thread may change the set
            out[name] = {**out[name], "stale": "the camera was adapted again and its new weights are not exported: "
                         f"this model serves until `adassr export --camera {name}{store_option(self._store)}` runs"}
        return dict(sorted(out.items()))

    # -- serving ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self, camera: str | None, image: LoadedImage) -> Iterator[Route]:
        """The route for an explicit ``camera`` or the image's EXIF Make (see the module docstring),
        its model loaded if parked and kept open until the block ends."""
        route = self._acquire(camera, image)
        try:
            yield route
        finally:
            self._release(route.model)

    def _acquire(self, camera: str | None, image: LoadedImage) -> Route:
        if camera is not None:
            name = camera_name(camera)
            return Route(self._lease(name), name, "explicit")
        try:
            group, make = camera_group_of(image)
        except CameraError:
            group, make = None, None
        unavailable: ModelUnavailable | None = None
        with self._lock:  # both snapshots at once (a request installing a model changes both); no set of them all
            has_group = group is not None and (group in self._models or group in self._parked)
            has_fallback = FALLBACK_CAMERA in self._models or FALLBACK_CAMERA in self._parked
        if group is not None and has_group:
            try:
                return Route(self._lease(group), group, "exif-make")
            except UnknownCamera:  # its manifest removed this moment
                pass
            except ModelUnavailable as exc:  # the fallback serves it meanwhile, when there is one
                unavailable = exc
        try:
            if not has_fallback:
                raise UnknownCamera(FALLBACK_CAMERA)
            fallback = self._lease(FALLBACK_CAMERA)
        except UnknownCamera:
            if unavailable is not None:
                raise unavailable from None
            raise NoModel(
                "this image names no camera with a model here and the server has no fallback model; "
                "pass 'camera' (GET /v1/cameras lists them), or export one with "
                f"`adassr export --backbone realesrgan-x4plus{store_option(self._store)}`"
            ) from None
        if unavailable is not None:
            reason = f"fallback: the model for {group!r} could not be loaded"
        elif group is not None:
            reason = f"fallback: no model for {group!r}"
        elif make:
            reason = unusable_make_reason(make)
        else:
            reason = "fallback: no EXIF Make"
        return Route(fallback, group, reason)

    def _unknown(self, camera: str) -> UnknownCamera:
        """Under ``_lock``: the error for a camera without a model, listing those with one."""
        servable = set(self._models) | set(self._parked)
        if camera != FALLBACK_CAMERA:
            servable.discard(FALLBACK_CAMERA)
        known = ", ".join(sorted(servable)) or "none"
        problem = self._problems.get(camera)
        if problem:
            why = f" Its model was refused: {problem}."
        elif camera in self._unexported and camera not in servable:
            why = (f" It is adapted but not exported yet: run `adassr export --camera {camera}"
                   f"{store_option(self._store)}` (this server loads it at its next look at the store).")
        else:
            why = closest_camera_hint(camera, servable)
        return UnknownCamera(
            f"camera {camera!r} has no model on this server (cameras: {known}).{why} "
            "Omit 'camera' to route by the image's EXIF Make, or adapt and export that camera"
        )

    def _lease(self, camera: str) -> LoadedModel:
        """``camera``'s loaded model, leased (opened first when parked); UnknownCamera when it has no
        model, ModelUnavailable when it could not be opened."""
        while True:
            with self._lock:
                model = self._models.get(camera)
                if model is not None:
                    self._leases[model] = self._leases.get(model, 0) + 1
                    self._used[camera] = next(self._ticks)
                    return model
                decision = self._parked.get(camera)
                if decision is None:
                    raise self._unknown(camera)
                failure = self._failures.get(camera)
                if failure is not None and failure.sha256 == decision.sha256:
                    wait = failure.at + ON_DEMAND_RETRY_S - time.monotonic()
                    if wait > 0:
                        raise ModelUnavailable(failure.message, wait)
                loading = self._loading.get(camera)
                mine = loading is None
                if loading is None:
                    loading = self._loading[camera] = threading.Event()
            if not mine:  # another request opens it: use that
                loading.wait()
                continue
            opened: LoadedModel | None = None
            try:
                opened = self._open_parked(camera, decision)
            except _Superseded:  # a newer version replaced it (its files removed): load that one
                pass
            finally:  # the model goes in before the waiters wake (they would open it a second time)
                with self._lock:
                    del self._loading[camera]
                    installed, evicted, to_close = (self._install(camera, opened) if opened is not None
                                                    else (False, [], []))
                loading.set()
            if opened is None:
                continue
            if not installed:  # replaced or removed while it loaded: look again
                _close_model(opened)
                continue
            self._closed_evicted(evicted, to_close)
            return opened

    def _install(self, camera: str, opened: LoadedModel) -> tuple[bool, list[str], list[LoadedModel]]:
        """Under ``_lock``: serve a model opened at a request, leased once, if its camera's parked version
        is still the one opened; evict beyond ``max_models``. Returns (installed, evicted cameras,
        models to close now)."""
        now = self._parked.get(camera)
        if now is None or now.sha256 != opened.sha256:
            return False, [], []
        self._models = MappingProxyType({**self._models, camera: opened})
        self._parked = MappingProxyType({k: v for k, v in self._parked.items() if k != camera})
        self._leases[opened] = 1
        self._used[camera] = next(self._ticks)
        return (True, *self._evict(keep=camera))

    def _open_parked(self, camera: str, decision: RouteDecision) -> LoadedModel:
        """Verify and open a parked model; on failure remember it and open the camera's previous
        version instead where its files are still there, else ModelUnavailable."""
        started = time.perf_counter()
        try:
            decision.verify()
            backend = self._open_model(decision)
        except Exception as exc:  # noqa: BLE001 - any failure to open: this camera waits, the others serve
            if self._park_newer(camera, decision):
                raise _Superseded from None
            kind = "model_checksum" if isinstance(exc, StoreError) else "model_load"
            reason = str(exc) if isinstance(exc, AdassrError) else unexpected_error(exc)
            text = _mask_store(reason, {str(self._store), str(self._store.resolve())})
            message = (f"camera {camera!r}'s model could not be loaded ({text}); the next request tries again "
                       f"after {ON_DEMAND_RETRY_S:g} s (GET /v1/cameras shows why)")
            self._on_error(kind)
            self._on_load(camera, False)
            logger.error("camera %s: loading its model at a request failed: %s", camera, reason,
                         exc_info=not isinstance(exc, AdassrError) and logger.isEnabledFor(logging.DEBUG))
            previous = self._open_previous(camera, decision)
            with self._lock:
                self._failures[camera] = _Failure(decision.sha256, time.monotonic(), message)
                if previous is not None:
                    self._problems[camera] = f"its new version could not be loaded: {text} (the previous model " \
                                             "keeps serving)"
                    if self._parked.get(camera) is decision:
                        self._parked = MappingProxyType({**self._parked, camera: previous.route})
                    return previous
                self._problems[camera] = f"could not be loaded at a request: {text}"
            raise ModelUnavailable(message, ON_DEMAND_RETRY_S) from None
        with self._lock:
            failure = self._failures.get(camera)
            if failure is not None and failure.sha256 == decision.sha256:  # not when the previous version opened
                del self._failures[camera]
                self._problems.pop(camera, None)
            if self._previous.get(camera) is not decision:
                self._previous.pop(camera, None)
        self._on_load(camera, True)
        logger.info("serving %s for camera %s (loaded at a request in %.1f s)", decision.label, camera,
                    time.perf_counter() - started)
        return self._loaded(camera, decision, backend)

    def _open_previous(self, camera: str, failed: RouteDecision) -> LoadedModel | None:
        """The version the camera served before ``failed`` was published, opened, when its files are
        still in the store (they stay until the camera's next commit); else None. As without
        ``max_models``, a new version that cannot be opened leaves the previous one serving."""
        with self._lock:
            previous = self._previous.get(camera)
        if previous is None or previous.sha256 == failed.sha256:
            return None
        try:
            previous.verify()
            backend = self._open_model(previous)
        except Exception as exc:  # noqa: BLE001 - no previous version to serve: the request gets the failure
            logger.warning("camera %s: its previous model cannot be loaded either (%s)", camera,
                           str(exc) if isinstance(exc, AdassrError) else unexpected_error(exc))
            return None
        self._on_load(camera, True)
        logger.warning("camera %s: serving its previous model %s", camera, previous.label)
        return self._loaded(camera, previous, backend)

    def _loaded(self, camera: str, decision: RouteDecision, backend: Backend) -> LoadedModel:
        """An open model, opened now, computing in the precision this server serves."""
        precision = engine_precision(self._precision, decision.precision)
        return LoadedModel(camera, decision, backend, time.time(), precision)

    def _park_newer(self, camera: str, decision: RouteDecision) -> bool:
        """Whether a newer version of ``camera``'s model was published since ``decision`` was parked
        (a re-export removes the old files: no failure of the camera); it is parked in its place,
        verified when it opens."""
        try:
            newer = resolve_model(self._store, camera=camera, precision=model_precision(self._precision),
                                  verify=False)
        except (AdassrError, OSError):
            return False
        if newer.model_camera != camera or newer.sha256 == decision.sha256:
            return False
        with self._lock:
            if self._parked.get(camera) is decision:
                self._parked = MappingProxyType({**self._parked, camera: newer})
        logger.info("camera %s: a newer version was published while its model was being loaded; loading that one",
                    camera)
        return True

    def _evict(self, *, keep: str | None = None) -> tuple[list[str], list[LoadedModel]]:
        """Under ``_lock``: park the least recently used models beyond ``max_models`` (never ``keep``);
        return their cameras and the models to close now (the others close at their last release)."""
        if not self._max_models or len(self._models) <= self._max_models:
            return [], []
        models, parked = dict(self._models), dict(self._parked)
        victims: list[LoadedModel] = []
        while len(models) > self._max_models:
            candidates = [name for name in models if name != keep]
            if not candidates:
                break
            name = min(candidates, key=lambda n: self._used.get(n, -1))
            victim = models.pop(name)
            parked[name] = victim.route
            victims.append(victim)
        self._models, self._parked = MappingProxyType(models), MappingProxyType(parked)
        return [v.camera for v in victims], self._retire(victims)

    def _retire(self, models: list[LoadedModel]) -> list[LoadedModel]:
        """Under ``_lock``: of models no longer served, those to close now (the leased ones wait)."""
        now = []
        for model in models:
            if self._leases.get(model):
                self._retired.add(model)
            else:
                now.append(model)
        return now

    def _closed_evicted(self, cameras: list[str], to_close: list[LoadedModel]) -> None:
        for camera in cameras:
            logger.info("camera %s: its model is closed to keep at most %d loaded (--max-models); the next "
                        "request for it loads it again", camera, self._max_models)
            self._on_evict(camera)
        for model in to_close:
            _close_model(model)

    def _release(self, model: LoadedModel) -> None:
        with self._lock:
            left = self._leases[model] - 1
            if left:
                self._leases[model] = left
                return
            del self._leases[model]
            if model not in self._retired:
                return
            self._retired.discard(model)
        _close_model(model)

    # -- loading ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Look at the store once and load what changed; return True if the served set changed."""
        with self._refresh_lock:
            loaded, parked = self._snapshots()
            servable = set(loaded) | set(parked)
            changes = _Changes()
            try:
                if not self._store.is_dir():  # a moved or deleted folder: not an empty store
                    raise FileNotFoundError(errno.ENOENT, STORE_GONE)
                if servable and _empty_folder(self._store):  # an unmounted volume leaves its empty mount point
                    raise FileNotFoundError(errno.ENOENT, STORE_EMPTIED)
                scan = scan_store(self._store)
            except OSError as exc:  # cannot be listed (permissions, I/O): not an empty store
                why = exc.strerror or str(exc)
                if self._unreadable != why:  # once per change
                    logger.error("the model store cannot be read (%s); the loaded models keep serving and the "
                                 "store is read again at the next poll", why)
                    self._on_error("model_load")
                self._unreadable = why
                return False
            if self._unreadable is not None:
                logger.warning("the model store can be read again")
                self._unreadable = None
            for folder, why in scan.misnamed.items():  # once per folder (and reason), at start-up or when it comes
                if self._misnamed.get(folder) != why:
                    logger.warning("the store folder %s %s", self._store / folder, misnamed_note(why))
            self._misnamed = dict(scan.misnamed)
            for camera, why in scan.unreadable.items():  # its folder cannot be read: keep what it serves
                keeps = " (the loaded model keeps serving)" if camera in servable else ""
                problem = f"its folder cannot be read ({why}){keeps}"
                if self._problems.get(camera) != problem:
                    logger.error("camera %s: %s; retrying at the next poll", camera, problem)
                    self._problems[camera] = problem
                    self._on_error("model_load")
                self._signatures.pop(camera, None)  # loaded again once readable
            seen = set(scan.cameras) | set(scan.unreadable)
            known = servable | set(self._problems) | set(self._signatures) | set(self._tried)
            for camera in sorted(known - seen):  # manifest gone: stop serving it, forget its problems
                if camera in servable:
                    renamed = [folder for folder in scan.misnamed if folder.lower() == camera]
                    if renamed:  # `mv nokia Nokia`: the folder is there, under a name no camera has
                        logger.warning("camera %s: its folder is now named %s, which is no camera group name; its "
                                       "model is no longer served (rename the folder back to %s)", camera,
                                       renamed[0], camera)
                    else:
                        logger.warning("camera %s has no manifest any more; its model is no longer served", camera)
                    changes.gone.add(camera)
                self._signatures.pop(camera, None)
                self._problems.pop(camera, None)
                self._tried.pop(camera, None)
                self._unexported.discard(camera)
                self._arriving.pop(camera, None)
            for camera in scan.cameras:
                if self._stop_loading.is_set():  # a start-up stopped by a signal ends after the model it loads
                    break
                try:
                    self._refresh_camera(camera, loaded.get(camera), parked.get(camera), changes)
                except OSError as exc:  # a file gone between two reads: this camera waits for the next poll
                    logger.warning("camera %s: model refresh failed (%s); retrying at the next poll", camera, exc)
                    self._signatures.pop(camera, None)
                    self._problems[camera] = f"the model could not be read ({exc.strerror or exc}); retrying"
                    self._on_error("model_load")
                except Exception as exc:  # noqa: BLE001 - one camera's surprise must not stop the others' reloads
                    reason = unexpected_error(exc)
                    logger.error("camera %s: model refresh failed (%s); the other cameras go on", camera, reason,
                                 exc_info=logger.isEnabledFor(logging.DEBUG))
                    self._signatures[camera] = self._signature(camera, self._tried.get(camera))  # once per change
                    self._problems[camera] = f"the model could not be loaded ({reason})"
                    self._on_error("model_load")
            return self._commit(changes)

    def _commit(self, changes: _Changes) -> bool:
        """Apply a refresh's decisions to the models current now; True if what serves changed."""
        if not (changes.gone or changes.loaded or changes.parked):
            return False
        with self._lock:
            models, parked = dict(self._models), dict(self._parked)
            retired: list[LoadedModel] = []
            for camera in changes.gone:
                parked.pop(camera, None)
                self._previous.pop(camera, None)
                if (old := models.pop(camera, None)) is not None:
                    retired.append(old)
            for camera, model in changes.loaded.items():
                parked.pop(camera, None)
                if (old := models.get(camera)) is not None:
                    retired.append(old)
                models[camera] = model
                self._used.setdefault(camera, next(self._ticks))
            for camera, decision in changes.parked.items():
                old = models.get(camera)
                if old is not None and old.sha256 == decision.sha256:  # loaded at a request meanwhile
                    continue
                if old is not None:  # an older version, loaded at a request meanwhile
                    retired.append(models.pop(camera))
                    self._previous[camera] = old.route
                elif (before := parked.get(camera)) is not None and before.sha256 != decision.sha256:
                    self._previous[camera] = before
                parked[camera] = decision
            self._models, self._parked = MappingProxyType(models), MappingProxyType(parked)
            to_close = self._retire(retired)
            evicted, evicted_now = self._evict()
        self._closed_evicted(evicted, to_close + evicted_now)
        return True

    def _signature(self, camera: str, model_file: str | None) -> _Signature:
        folder = self._store / camera
        manifest = _stat(folder / MANIFEST_NAME) or (0, 0, 0)
        return manifest, (_stat(folder / model_file) if model_file else None)

    def _refresh_camera(self, camera: str, old: LoadedModel | None, parked: RouteDecision | None,
                        changes: _Changes) -> None:
        # the file last tried: a refused new version's (the refusal stored its signature; the served model's
        # file instead made every poll retry, log and count the refusal again)
        served = old.route if old is not None else parked
        sig = self._signature(camera, self._tried.get(camera) or (served.onnx_path.name if served else None))
        if self._signatures.get(camera) == sig:  # unchanged since the last load or refusal: nothing to do
            return
        try:
            decision = resolve_model(self._store, camera=camera, precision=model_precision(self._precision),
                                     verify=False)
        except AdassrError as exc:
            if _has_no_export(self._store, camera):  # adapted, not exported yet (and no fallback): no problem
                self._signatures[camera] = sig
                self._problems.pop(camera, None)
                self._mark_unexported(camera, served)
                return
            self._refused(camera, "model_load", f"cannot read the manifest: {exc}", sig)
            return
        if decision.model_camera != camera:  # adapted but not exported (yet): keep what serves
            self._signatures[camera] = sig
            self._problems.pop(camera, None)  # e.g. "its folder cannot be read", now that it can be
            self._mark_unexported(camera, served)
            return
        self._unexported.discard(camera)
        # The manifest's stat taken before it was read: had a commit come in between, the next poll sees the
        # change and loads again (a stat taken now could describe the newer manifest, and its model would
        # then never be picked up).
        sig = (sig[0], _stat(self._store / camera / decision.onnx_path.name))
        self._tried[camera] = decision.onnx_path.name
        same = served is not None and served.sha256 == decision.sha256
        if self._max_models and old is None:  # parked: verified when it opens, at its first request
            self._signatures[camera] = sig
            if not same:
                self._problems.pop(camera, None)
                logger.info("camera %s: %s found; it is verified and loaded at its first request (--max-models "
                            "%d)", camera, decision.label, self._max_models)
            changes.parked[camera] = decision
            return
        if self._still_arriving(camera, decision, sig[1]):  # not hashed again at every poll while it grows
            return
        try:
            decision.verify()
        except StoreError as exc:
            self._refused(camera, "model_checksum", str(exc), sig, load_failed=not same)
            return
        self._arriving.pop(camera, None)
        self._signatures[camera] = sig
        self._problems.pop(camera, None)
        if same and old is not None:  # the loaded model's file, unchanged
            return
        try:
            backend = self._open_model(decision)
        except AdassrError as exc:
            self._refused(camera, "model_load", str(exc), sig, load_failed=True)
            return
        changes.loaded[camera] = self._loaded(camera, decision, backend)
        self._on_load(camera, True)
        logger.info("serving %s for camera %s", decision.label, camera)
        if decision.precision != model_precision(self._precision):  # e.g. --precision fp16, only an fp32 export
            if self._precision == "bf16":  # the bf16 engine is built from model.onnx, the fp32 export
                logger.warning("camera %s has no model.onnx (its fp32 export) to build a bf16 engine from: serving "
                               "its %s model (run `adassr export --camera %s%s` to serve bf16)", camera,
                               decision.precision, camera, store_option(self._store))
            else:
                logger.warning("camera %s has no %s export: serving its %s model (export it again with --precision "
                               "%s to serve %s)", camera, self._precision, decision.precision, self._precision,
                               self._precision)

    def _mark_unexported(self, camera: str, served: RouteDecision | None) -> None:
        """Note that ``camera``'s manifest has no export of its weights (adapted, or adapted again, and not
        exported since): a model it served keeps serving, and the log says so once."""
        if camera not in self._unexported and served is not None:
            logger.warning("camera %s was adapted again and has no export of its new weights: its previous model "
                           "(%s) keeps serving until `adassr export --camera %s%s` runs", camera, served.label,
                           camera, store_option(self._store))
        self._unexported.add(camera)

    def _still_arriving(self, camera: str, decision: RouteDecision, found: tuple[int, int, int] | None) -> bool:
        """Whether the camera's model file (``found``: its stat, None when missing) looks like a copy in
        progress (``cp -r nikon nikon-b`` into a live store writes the manifest first, then the other files in
        any order): missing or shorter than the manifest records, in a folder whose files changed since the
        last poll and within the last :data:`ARRIVING_S` seconds. Then no failure is counted or logged as an
        error (one was at every poll while the file grew), the camera's problem says so, and the next poll
        looks again; once the folder stays as it is from one poll to the next, the failure is reported, once."""
        record = (decision.manifest.get("artifacts") or {}).get(decision.artifact)
        expected = record.get("bytes") if isinstance(record, Mapping) else None
        if not isinstance(expected, int) or (found is not None and found[0] >= expected):
            return False  # as long as recorded (or no length recorded): the content is what is wrong
        files = _folder_files(self._store / camera)
        newest = max((mtime for _, _, mtime in files), default=0)
        if time.time_ns() - newest > ARRIVING_S * 1e9:
            return False  # nothing written lately: an old short file is damage, not a copy
        last = self._arriving.get(camera)
        self._arriving[camera] = files
        if last == files:  # unchanged since the last poll: no copy is going on
            return False
        have = "missing" if found is None else f"{found[0]:,} of {expected:,} bytes"
        keeps = " (the previous model keeps serving)" if camera in self.servable() else ""
        self._problems[camera] = (f"its model file is not complete yet ({have}) and its folder is changing: it may "
                                  f"still be being copied; the next poll looks again{keeps}")
        logger.info("camera %s: %s", camera, self._problems[camera])
        return True

    def _superseded(self, camera: str, sig: _Signature) -> bool:
        """Whether the camera's manifest changed since ``sig`` was taken: a newer version was published
        while this one was read (its files may be gone), so the failure is no fault of it and the next
        poll loads the newer one (a routine republish was logged and counted as a checksum failure)."""
        now = _stat(self._store / camera / MANIFEST_NAME)
        if (now or (0, 0, 0)) == sig[0]:
            return False
        logger.info("camera %s: %s while its model was being loaded; the next poll looks again", camera,
                    "the manifest disappeared" if now is None else "a newer version was published")
        self._signatures.pop(camera, None)
        return True

    def _refused(self, camera: str, kind: str, message: str, sig: _Signature, *, load_failed: bool = False) -> None:
        """Report a failure of the version ``sig`` describes, once: unless a newer one superseded it."""
        if self._superseded(camera, sig):
            return
        self._signatures[camera] = sig  # report a broken state once, not at every poll
        text = _mask_store(message, {str(self._store), str(self._store.resolve())})
        keeps = " (the previous model keeps serving)" if camera in self.servable() else ""
        self._problems[camera] = text + keeps
        self._on_error(kind)
        if load_failed:
            self._on_load(camera, False)
        logger.error("camera %s: model refused: %s%s", camera, message, keeps)


def _close_model(model: LoadedModel) -> None:
    """Close a model no longer served; a failure is logged (the request that asked for another model is fine)."""
    try:
        model.backend.close()
    except Exception as exc:  # noqa: BLE001 - any backend's close error; logged with the model named
        logger.warning("camera %s: closing its previous model failed (%s); its memory may stay in use until the "
                       "process ends", model.camera, unexpected_error(exc))


def _mask_store(text: str, paths: set[str]) -> str:
    """``text`` with the store's path shown as ``<store>`` where it is a path: before a ``/`` (files in
    it) and after ``--store`` (suggested commands); never inside a word (a store named ``m`` once made
    "model" read "<store>odel")."""
    for path in sorted(paths, key=len, reverse=True):
        shell = shlex.quote(path.rstrip("/") or "/")
        if shell != (path.rstrip("/") or "/"):  # as a suggested command quotes it (`--store 'my store'`)
            text = re.sub(rf"(?<![\w.~/-]){re.escape(shell)}(?![\w./-])", "<store>", text)
            if shell.endswith("'"):  # a quoted file in it: 'it'"'"'s/canon/manifest.json'
                text = re.sub(rf"(?<![\w.~/-]){re.escape(shell[:-1])}(?=/)", "'<store>", text)
        quoted = re.escape(path.rstrip("/") or "/")
        if os.path.isabs(path):  # an absolute path is no word: masked wherever it stands whole
            text = re.sub(rf"(?<![\w.~/-]){quoted}(?![\w.~-])", "<store>", text)
            continue
        text = re.sub(rf"(?<![\w.~/-]){quoted}(?=/)", "<store>", text)
        text = re.sub(rf"(--store[ =]){quoted}(?![\w./-])", r"\1<store>", text)
    return text


def default_opener(
    backend: str, *, providers: tuple[str, ...], threads: int | None, tiling: TilingOptions | None = None,
    precision: str = "fp32",
) -> Callable[[RouteDecision], Backend]:
    """Open a verified route's model with :func:`open_backend`: its ONNX file, or for ``tensorrt`` the
    engine for this GPU (stored, else refitted or built now, logged) whose profiles take the batches
    of ``tiling`` the batcher sends."""
    if backend == "tensorrt" and tiling is None:
        raise ConfigError("the tensorrt backend needs the tiling plan (its engines have fixed profiles)")

    def _open(route: RouteDecision) -> Backend:
        path = route.onnx_path
        if backend == "tensorrt":
            from adassr.runtime.pipeline import RuntimeOptions, engine_for_route

            assert tiling is not None
            # CUDA device 0: ``serve --gpu N`` selects the GPU through CUDA_VISIBLE_DEVICES.
            path = engine_for_route(route, RuntimeOptions(route.store.root, backend=backend, precision=precision,
                                                          tiling=tiling))
        from adassr.runtime.pipeline import checked_against_route

        return checked_against_route(open_backend(
            backend,
            path,
            providers=providers,
            threads=threads,
            input_name=route.input_name,
            output_name=route.output_name,
        ), route)

    return _open


def _has_no_export(store: Path, camera: str) -> bool:
    """Whether ``camera``'s manifest reads fine and records no export (adapted, not exported yet)."""
    try:
        manifest = CameraStore.open(store, camera).read_manifest()
    except AdassrError:
        return False
    return not (manifest.get("exports") or {})
