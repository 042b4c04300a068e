"""The server's loaded models: one per camera group of the store, reloaded when the store changes.

:meth:`ModelRegistry.refresh` (run at start and then every ``reload_interval_s`` by the app)
looks at every camera folder with a manifest. For a camera whose manifest or model file changed
since the last look (size, mtime, inode), it reads the export record through
:func:`adassr.runtime.routing.resolve_model` and:

- a new model sha256: verifies the file against the manifest and opens it; on success the new
  model replaces the old one in one assignment (requests already running keep the old backend
  object until they finish; nothing is closed under them); on failure (checksum, load error) the
  previous model keeps serving, the failure is counted (``model_loads_total{result="failed"}``,
  ``errors_total{kind="model_checksum"|"model_load"}``) and shown in ``GET /v1/cameras``;
- the same sha256 but a changed file: re-verified; a file that now fails its checksum (tampered
  with while serving) is reported the same way, and the model loaded in memory keeps serving;
- a camera folder without a manifest any more: the model is dropped.

Routing (:meth:`ModelRegistry.route`) follows :mod:`adassr.runtime.routing`: an explicit camera,
else the image's EXIF Make normalised to a group, else the ``_fallback`` model; but an
explicitly named camera with no loaded model is an error (404), not a silent fallback.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from adassr.runtime.store import FALLBACK_CAMERA, MANIFEST_NAME, CameraStore, scan_store
from adassr.runtime.tiling import TilingOptions

logger = logging.getLogger(__name__)

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
    def key(self) -> tuple[str, str]:
        """Batch identity: tiles of one key may share a model call."""
        return self.camera, self.route.sha256

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/cameras`` shows for this model (no filesystem paths)."""
        manifest = self.route.manifest
        backbone = manifest.get("backbone")
        return {
            "model": self.route.model_name,
            "sha256": self.route.sha256,
            "precision": self.served_precision,
            "scale": self.route.scale,
            "adapted": self.camera != FALLBACK_CAMERA and ("steps" in manifest or bool(manifest.get("images"))),
            "backbone": backbone.get("name") if isinstance(backbone, Mapping) else None,
            "niqe_before": manifest.get("niqe_before"),
            "niqe_after": manifest.get("niqe_after"),
            "kernel": kernel_summary(manifest.get("kernel")),
            "manifest_updated": manifest.get("updated"),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
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


class ModelRegistry:
    """Loaded models by camera group, swapped atomically on reload. Thread-safe.

    ``open_model(route)`` opens a verified model file (default: :func:`open_backend`);
    ``on_load(camera, ok)`` and ``on_error(kind)`` feed the metrics.
    """

    def __init__(
        self,
        store: Path,
        *,
        precision: str = "fp32",
        open_model: Callable[[RouteDecision], Backend],
        on_load: Callable[[str, bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._precision = precision
        self._open_model = open_model
        self._on_load = on_load or (lambda camera, ok: None)
        self._on_error = on_error or (lambda kind: None)
        self._models: Mapping[str, LoadedModel] = MappingProxyType({})
        self._signatures: dict[str, _Signature] = {}
        self._problems: dict[str, str] = {}
        self._tried: dict[str, str] = {}  # camera -> model file of a refused load (its signature includes it)
        self._unreadable: str | None = None  # why the store folder could not be listed at the last poll
        self._refresh_lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------------
    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """An immutable snapshot: camera -> loaded model."""
        return self._models

    @property
    def problems(self) -> Mapping[str, str]:
        """Cameras whose latest model could not be loaded, with the reason (no paths)."""
        return MappingProxyType(dict(self._problems))

    def route(self, camera: str | None, image: LoadedImage) -> Route:
        """The model for an explicit ``camera`` or for the image's EXIF Make (see module docstring)."""
        models = self._models
        if camera is not None:
            name = camera_name(camera)
            model = models.get(name)
            if model is None:
                known = ", ".join(sorted(models)) or "none"
                hint = closest_camera_hint(name, models)
                raise UnknownCamera(
                    f"camera {name!r} has no model on this server (cameras: {known}).{hint} "
                    "Omit 'camera' to route by the image's EXIF Make, or adapt and export that camera"
                )
            return Route(model, name, "explicit")
        try:
            group, make = camera_group_of(image)
        except CameraError:
            group, make = None, None
        if group is not None and group in models:
            return Route(models[group], group, "exif-make")
        fallback = models.get(FALLBACK_CAMERA)
        if fallback is None:
            raise NoModel(
                "this image names no camera with a model here and the server has no fallback model; "
                "pass 'camera' (GET /v1/cameras lists them), or export one with "
                "`adassr export --backbone realesrgan-x4plus`"
            )
        if group is not None:
            reason = f"fallback: no model for {group!r}"
        elif make:
            reason = unusable_make_reason(make)
        else:
            reason = "fallback: no EXIF Make"
        return Route(fallback, group, reason)

    # -- loading ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Look at the store once and load what changed; return True if the served set changed."""
        with self._refresh_lock:
            current = dict(self._models)
            changed = False
            try:
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
            for camera, why in scan.unreadable.items():  # its folder cannot be read: keep what it serves
                keeps = " (the loaded model keeps serving)" if camera in current else ""
                problem = f"its folder cannot be read ({why}){keeps}"
                if self._problems.get(camera) != problem:
                    logger.error("camera %s: %s; retrying at the next poll", camera, problem)
                    self._problems[camera] = problem
                    self._on_error("model_load")
                self._signatures.pop(camera, None)  # loaded again once readable
            seen = set(scan.cameras) | set(scan.unreadable)
            known = set(current) | set(self._problems) | set(self._signatures) | set(self._tried)
            for camera in sorted(known - seen):  # manifest gone: stop serving it, forget its problems
                if camera in current:
                    logger.warning("camera %s has no manifest any more; its model is no longer served", camera)
                    del current[camera]
                    changed = True
                self._signatures.pop(camera, None)
                self._problems.pop(camera, None)
                self._tried.pop(camera, None)
            for camera in scan.cameras:
                try:
                    changed |= self._refresh_camera(camera, current)
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
            if changed:
                self._models = MappingProxyType(current)
            return changed

    def _signature(self, camera: str, model_file: str | None) -> _Signature:
        folder = self._store / camera
        manifest = _stat(folder / MANIFEST_NAME) or (0, 0, 0)
        return manifest, (_stat(folder / model_file) if model_file else None)

    def _refresh_camera(self, camera: str, current: dict[str, LoadedModel]) -> bool:
        old = current.get(camera)
        # the file last tried: a refused new version's (the refusal stored its signature; the served model's
        # file instead made every poll retry, log and count the refusal again)
        sig = self._signature(camera, self._tried.get(camera) or (old.route.onnx_path.name if old else None))
        if self._signatures.get(camera) == sig:  # unchanged since the last load or refusal: nothing to do
            return False
        try:
            decision = resolve_model(self._store, camera=camera, precision=model_precision(self._precision),
                                     verify=False)
        except AdassrError as exc:
            if _has_no_export(self._store, camera):  # adapted, not exported yet (and no fallback): no problem
                self._signatures[camera] = sig
                self._problems.pop(camera, None)
                return False
            self._refused(camera, "model_load", f"cannot read the manifest: {exc}", sig)
            return False
        if decision.model_camera != camera:  # adapted but not exported (yet): keep what serves
            self._signatures[camera] = sig
            self._problems.pop(camera, None)  # e.g. "its folder cannot be read", now that it can be
            return False
        # The manifest's stat taken before it was read: had a commit come in between, the next poll sees the
        # change and loads again (a stat taken now could describe the newer manifest, and its model would
        # then never be picked up).
        sig = (sig[0], _stat(self._store / camera / decision.onnx_path.name))
        self._tried[camera] = decision.onnx_path.name
        if old is not None and old.sha256 == decision.sha256:
            try:
                decision.verify()
            except StoreError as exc:
                self._refused(camera, "model_checksum", str(exc), sig)
                return False
            self._signatures[camera] = sig
            self._problems.pop(camera, None)
            return False
        try:
            decision.verify()
        except StoreError as exc:
            self._refused(camera, "model_checksum", str(exc), sig, load_failed=True)
            return False
        try:
            backend = self._open_model(decision)
        except AdassrError as exc:
            self._refused(camera, "model_load", str(exc), sig, load_failed=True)
            return False
        current[camera] = LoadedModel(camera, decision, backend, time.time(),
                                      engine_precision(self._precision, decision.precision))
        self._signatures[camera] = sig
        self._problems.pop(camera, None)
        self._on_load(camera, True)
        logger.info("serving %s for camera %s", decision.label, camera)
        if decision.precision != model_precision(self._precision):  # e.g. --precision fp16, only an fp32 export
            if self._precision == "bf16":  # the bf16 engine is built from model.onnx, the fp32 export
                logger.warning("camera %s has no model.onnx (its fp32 export) to build a bf16 engine from: serving "
                               "its %s model (run `adassr export --camera %s` to serve bf16)", camera,
                               decision.precision, camera)
            else:
                logger.warning("camera %s has no %s export: serving its %s model (export it again with --precision "
                               "%s to serve %s)", camera, self._precision, decision.precision, self._precision,
                               self._precision)
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
        keeps = " (the previous model keeps serving)" if camera in self._models else ""
        self._problems[camera] = text + keeps
        self._on_error(kind)
        if load_failed:
            self._on_load(camera, False)
        logger.error("camera %s: model refused: %s%s", camera, message, keeps)


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
        return open_backend(
            backend,
            path,
            providers=providers,
            threads=threads,
            input_name=route.input_name,
            output_name=route.output_name,
        )

    return _open


def _has_no_export(store: Path, camera: str) -> bool:
    """Whether ``camera``'s manifest reads fine and records no export (adapted, not exported yet)."""
    try:
        manifest = CameraStore.open(store, camera).read_manifest()
    except AdassrError:
        return False
    return not (manifest.get("exports") or {})
