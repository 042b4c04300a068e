"""Get the engine a camera needs on this machine: stored, refitted from a shared base, or built.

:func:`ensure_camera_engine` is the one entry point used by ``adassr export --engine tensorrt``
and by the runtime (which builds on demand when no stored engine fits). For a camera and a
precision it

1. picks the camera's ONNX file for that precision from its manifest (``model_fp16.onnx`` for
   fp16, ``model.onnx`` for fp32 and bf16; sha256-verified);
2. computes the key this machine needs (ONNX sha256, TensorRT version, GPU name and compute
   capability, precision, profiles, optimisation level);
3. with ``refit`` and a known network structure hash (recorded by export as
   ``structure_sha256`` on the ONNX export record), refits a shared base engine from
   ``<store>/_engines`` (built once for the whole fleet) into the camera's engine, in one of two
   modes (:mod:`adassr.runtime.engines.refit`):

   - *partial*, when the store's fallback export is the backbone the camera was adapted from:
     the base is a refittable engine with weights built from the backbone's own ONNX (keyed by
     its sha256), and the refit sets only the initializers whose values differ between the
     camera's ONNX and the backbone's;
   - *full* otherwise, or when TensorRT refuses the partial refit: the base is a weight-stripped
     engine per network structure, refitted with every weight of the camera's ONNX.

   The camera's record names its base and holds the refit mode, the changed weights and, for a
   full refit, why. Without ``refit`` (or no structure hash) the camera engine is built from its
   ONNX directly.

For serving (``any_stored_settings``: the runtime's requests) a stored camera engine of the same
model, precision, profiles, GPU and TensorRT serves whatever optimisation level or refit mode it
was built with, so an engine ``adassr export --engine tensorrt --opt-level 5`` (or ``--no-refit``)
made is the one ``upscale`` and ``serve`` load, not one they build again beside it.

The TensorRT work goes through an :class:`EngineToolkit` (the real one is
:class:`TensorRTToolkit`), so this bookkeeping is testable without TensorRT. The camera's lock
is held throughout (adaptation cannot replace the ONNX mid-build); the shared folder's lock is
taken inside it (base engines and the timing cache live there), always in that order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adassr.runtime.engines.cache import BuildOutput, EngineCache, EngineRecord
from adassr.runtime.engines.key import EngineKey, GpuIdentity, ProfileShape
from adassr.runtime.engines.refit import PartialRefitError, RefitInfo, RefitPlan, RefitReport, plan_refit
from adassr.runtime.errors import ConfigError, StoreError
from adassr.runtime.store import CameraStore

log = logging.getLogger(__name__)

ONNX_EXPORT_FOR: Mapping[str, str] = {"fp32": "onnx", "fp16": "onnx_fp16", "bf16": "onnx"}
"""Engine precision -> the ``manifest["exports"]`` record whose ONNX file the engine is built from."""


class EngineToolkit(Protocol):
    """The TensorRT operations the engine bookkeeping needs."""

    def tensorrt_version(self) -> str: ...

    def gpu(self, device: int) -> GpuIdentity: ...

    def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path, target: Path) -> float:
        """Build the engine described by ``key`` from ``onnx_path`` into ``target``; return seconds."""
        ...

    def refit(self, base_engine: Path, onnx_path: Path, target: Path) -> float:
        """Refit ``base_engine`` with every weight of ``onnx_path`` into ``target``; return seconds."""
        ...

    def refit_partial(self, base_engine: Path, onnx_path: Path, names: Sequence[str], target: Path) -> RefitReport:
        """Refit ``base_engine`` (which holds the backbone's weights) with only the weights ``names`` of
        ``onnx_path`` into ``target``; raise PartialRefitError if TensorRT cannot."""
        ...


class TensorRTToolkit:
    """:class:`EngineToolkit` over the real TensorRT and cuda-python."""

    def tensorrt_version(self) -> str:
        from adassr.runtime.engines.trt import tensorrt_version

        return tensorrt_version()

    def gpu(self, device: int) -> GpuIdentity:
        from adassr.runtime.gpu import device_identity, set_device

        set_device(device)
        return device_identity(device)

    def build(self, onnx_path: Path, key: EngineKey, *, input_name: str, timing_cache: Path, target: Path) -> float:
        from adassr.runtime.engines.trt import BuildSpec, build_engine

        spec = BuildSpec(onnx_path, key.precision, key.profiles, input_name=input_name,
                         optimization_level=key.optimization_level, refittable=key.refittable,
                         weight_stripped=key.weight_stripped)
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        data, report = build_engine(spec, timing_cache)
        target.write_bytes(data)
        return report.seconds

    def refit(self, base_engine: Path, onnx_path: Path, target: Path) -> float:
        from adassr.runtime.engines.trt import refit_engine

        data, seconds = refit_engine(base_engine.read_bytes(), onnx_path)
        target.write_bytes(data)
        return seconds

    def refit_partial(self, base_engine: Path, onnx_path: Path, names: Sequence[str], target: Path) -> RefitReport:
        from adassr.runtime.engines.trt import refit_engine_partial

        data, report = refit_engine_partial(base_engine.read_bytes(), onnx_path, names)
        target.write_bytes(data)
        return report


@dataclass(frozen=True)
class EngineRequest:
    """Which engine a caller wants."""

    store_root: Path
    camera: str
    precision: str
    profiles: tuple[ProfileShape, ...]
    device: int = 0
    optimization_level: int = 3
    refit: bool = True
    weight_stripped: bool = True  # the full-refit base engine (partial refits need a base with weights)
    partial_refit: bool = True  # refit only the weights that differ from the backbone, when possible
    any_stored_settings: bool = False  # serving: a stored engine of any optimisation level / refit mode will do


@dataclass(frozen=True)
class EngineResult:
    """The engine to load, and what happened to get it."""

    path: Path
    record: EngineRecord
    built: bool  # the camera engine was built or refitted now
    base: EngineRecord | None  # the shared base engine used (refit mode)
    base_built: bool
    scale: int


def _onnx_for(store: CameraStore, manifest: Mapping[str, Any], precision: str) -> tuple[Path, str, Mapping[str, Any]]:
    """The verified ONNX path for ``precision``, its artifact name and its export record."""
    key = ONNX_EXPORT_FOR.get(precision)
    record = (manifest.get("exports") or {}).get(key) if key else None
    if not isinstance(record, Mapping) or not isinstance(record.get("file"), str):
        what = "--precision fp16" if precision == "fp16" else "--precision fp32"
        raise StoreError(
            f"camera {store.camera!r} has no {key} export for a {precision} engine; run "
            f"`adassr export --camera {store.camera} {what}` first"
        )
    name = str(record["file"])
    return store.verified_path(name, manifest), name, record


@dataclass(frozen=True)
class _Refit:
    """One camera's refit: the parts both modes share."""

    request: EngineRequest
    toolkit: EngineToolkit
    cameras: EngineCache
    shared: EngineCache
    onnx_path: Path
    onnx_name: str
    input_name: str
    camera_key: EngineKey
    common: Mapping[str, Any]

    def partial_base_key(self, plan: RefitPlan) -> EngineKey:
        """The key of the refittable base engine with the backbone's weights (``plan`` is partial)."""
        assert plan.backbone is not None
        return EngineKey(kind="base", source_sha256=plan.backbone.sha256, refittable=True, weight_stripped=False,
                         **self.common)

    def partial(self, plan: RefitPlan) -> tuple[EngineRecord, bool, EngineRecord, bool]:
        """Base with the backbone's weights, then only the changed weights; PartialRefitError if refused."""
        assert plan.backbone is not None
        backbone = plan.backbone
        base_key = self.partial_base_key(plan)

        def build_base(tmp: Path) -> BuildOutput:
            return BuildOutput(self.toolkit.build(backbone.path, base_key, input_name=self.input_name,
                                                  timing_cache=self.shared.timing_cache_path(base_key), target=tmp),
                               source_file=backbone.file)

        base, base_built = self.shared.ensure(base_key, build_base, locked=True)
        base_path = self.shared.path_of(base)

        def refit(tmp: Path) -> BuildOutput:
            start = time.perf_counter()
            diff = plan.changed_weights(self.onnx_path)
            compared = time.perf_counter() - start
            report = self.toolkit.refit_partial(base_path, self.onnx_path, diff.changed, tmp)
            log.info("camera %r: %s differ from the backbone (compared in %.2f s), refitted in %.2f s",
                     self.request.camera, diff.summary.removeprefix("partial: "), compared, report.seconds)
            return BuildOutput(report.seconds, base=base_key.digest, base_file=base.file, refit_s=report.seconds,
                               source_file=self.onnx_name, refit=RefitInfo.partial(backbone, diff, report))

        record, built = self.cameras.ensure(self.camera_key, refit, base=base_key.digest, locked=True)
        return record, built, base, base_built

    def full(self, structure: str, reason: str, partial_failed_base: str | None = None
             ) -> tuple[EngineRecord, bool, EngineRecord, bool]:
        """Weight-stripped base per structure, then every weight of the camera's ONNX."""
        base_key = EngineKey(kind="base", source_sha256=structure, refittable=True,
                             weight_stripped=self.request.weight_stripped, **self.common)

        def build_base(tmp: Path) -> BuildOutput:
            return BuildOutput(self.toolkit.build(self.onnx_path, base_key, input_name=self.input_name,
                                                  timing_cache=self.shared.timing_cache_path(base_key), target=tmp),
                               source_file=f"{self.request.camera}/{self.onnx_name}")

        base, base_built = self.shared.ensure(base_key, build_base, locked=True)
        base_path = self.shared.path_of(base)

        def refit(tmp: Path) -> BuildOutput:
            seconds = self.toolkit.refit(base_path, self.onnx_path, tmp)
            info = RefitInfo.full(reason, partial_failed_base=partial_failed_base)
            return BuildOutput(seconds, base=base_key.digest, base_file=base.file, refit_s=seconds,
                               source_file=self.onnx_name, refit=info)

        record, built = self.cameras.ensure(self.camera_key, refit, base=base_key.digest, locked=True)
        return record, built, base, base_built

    def refused_before(self, plan: RefitPlan) -> str | None:
        """The partial base digest when the stored engine records that TensorRT refused a partial refit from it."""
        if plan.mode != "partial":
            return None
        digest = self.partial_base_key(plan).digest
        stored = self.cameras.records().get(self.camera_key.digest)
        if stored is None:
            return None
        try:
            info = EngineRecord.from_json(stored).refit
        except ConfigError:
            return None
        return digest if info is not None and info.partial_failed_base == digest else None


def ensure_camera_engine(request: EngineRequest, toolkit: EngineToolkit, *,
                         lock_timeout_s: float = 1800.0) -> EngineResult:
    """The camera's engine for this machine (see the module docstring)."""
    store = CameraStore.open(request.store_root, request.camera)
    version = toolkit.tensorrt_version()
    gpu = toolkit.gpu(request.device)
    cameras = EngineCache.for_camera(store)
    with cameras.lock(lock_timeout_s):
        assert cameras.transaction is not None
        manifest = cameras.transaction.manifest
        if not manifest.get("exports"):
            raise StoreError(f"camera {store.camera!r} has no exported model; run `adassr export --camera "
                             f"{store.camera}` first")
        onnx_path, onnx_name, export = _onnx_for(store, manifest, request.precision)
        onnx_sha = str(manifest["artifacts"][onnx_name]["sha256"])
        input_name = str(export.get("input_name") or "lr")
        scale = int(export.get("scale") or manifest.get("scale") or 4)
        structure = export.get("structure_sha256")
        shared = EngineCache.shared(request.store_root)
        common: dict[str, Any] = dict(tensorrt_version=version, gpu=gpu, precision=request.precision,
                                      profiles=request.profiles, optimization_level=request.optimization_level)
        if request.any_stored_settings:
            stored = cameras.find_serving(EngineKey(kind="camera", source_sha256=onnx_sha, **common))
            if stored is not None:
                log.info("using stored TensorRT engine %s for camera %r (optimisation level %d%s)", stored.file,
                         store.camera, stored.key.optimization_level, ", refitted" if stored.base else "")
                return EngineResult(cameras.path_of(stored), stored, False, None, False, scale)
        if request.refit and isinstance(structure, str):
            camera_key = EngineKey(kind="camera", source_sha256=onnx_sha, refittable=True, weight_stripped=False,
                                   **common)
            job = _Refit(request, toolkit, cameras, shared, onnx_path, onnx_name, input_name, camera_key, common)
            if request.partial_refit:
                plan = plan_refit(request.store_root, manifest, ONNX_EXPORT_FOR[request.precision], export)
            else:
                plan = RefitPlan("full", "partial refits were turned off")
            refused = job.refused_before(plan)
            if refused is not None:
                plan = RefitPlan("full", "TensorRT refused a partial refit from this base engine before")
            with shared.lock(lock_timeout_s):
                if plan.mode == "partial":
                    try:
                        record, built, base, base_built = job.partial(plan)
                        return EngineResult(cameras.path_of(record), record, built, base, base_built, scale)
                    except PartialRefitError as exc:
                        failed = job.partial_base_key(plan).digest
                        log.warning("camera %r: partial refit refused (%s); refitting every weight instead",
                                    store.camera, exc)
                        record, built, base, base_built = job.full(structure, f"partial refit refused: {exc}",
                                                                   partial_failed_base=failed)
                else:
                    log.info("camera %r: refitting every weight (%s)", store.camera, plan.reason)
                    record, built, base, base_built = job.full(structure, plan.reason, refused)
            return EngineResult(cameras.path_of(record), record, built, base, base_built, scale)
        if request.refit:
            log.info("camera %r: no structure hash recorded for %s, building its own engine (no refit)",
                     store.camera, onnx_name)
        camera_key = EngineKey(kind="camera", source_sha256=onnx_sha, **common)

        def build(tmp: Path) -> BuildOutput:
            return BuildOutput(toolkit.build(onnx_path, camera_key, input_name=input_name,
                                             timing_cache=shared.timing_cache_path(camera_key), target=tmp),
                               source_file=onnx_name)

        with shared.lock(lock_timeout_s):  # the timing cache is shared by every build on this machine
            record, built = cameras.ensure(camera_key, build, locked=True)
        return EngineResult(cameras.path_of(record), record, built, None, False, scale)
