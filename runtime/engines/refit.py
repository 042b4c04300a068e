"""How a camera's engine is refitted: only the weights that differ from the backbone, or all of them.

Two refit modes (chosen by :func:`plan_refit`, carried out by
:func:`adassr.runtime.engines.manage.ensure_camera_engine`):

- **partial**: the camera was adapted from the backbone whose export is the store's fallback
  model (``<store>/_fallback``: same backbone weights digest, same network structure for the
  precision). The base engine is a refittable engine *with* weights, built from the backbone's
  own ONNX (keyed by that file's sha256); the camera's engine is that base with only the
  initializers whose values differ between the camera's ONNX and the backbone's ONNX set
  (:func:`adassr.runtime.engines.trt.refit_engine_partial`). Tail training changes a few dozen of
  the network's tensors, so the refit copies and uploads only those.
- **full**: otherwise (no fallback export, another backbone, another structure, no ``onnx``
  package, or a partial refit TensorRT refused): a weight-stripped base engine per network
  structure, refitted with every weight of the camera's ONNX.

:class:`RefitInfo` is what the camera's engine record stores about the refit (mode, summary such
as ``partial: 12 of 703 weights``, the changed names, the backbone ONNX used, or why the refit
was full).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adassr.runtime.engines.onnx_weights import WeightDiff, diff_onnx_files, onnx_available
from adassr.runtime.errors import BackendError, ConfigError, StoreError, WeightsError
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

log = logging.getLogger(__name__)

REFIT_MODES = ("partial", "full")


class PartialRefitError(BackendError):
    """TensorRT cannot refit the base engine with only the changed weights (the caller refits fully)."""


@dataclass(frozen=True)
class RefitReport:
    """What a refit did."""

    seconds: float
    weights_set: int  # weights handed to TensorRT (changed ones, plus any TensorRT required with them)
    refittable: int | None = None  # refittable weights of the engine, when known


@dataclass(frozen=True)
class BackboneOnnx:
    """The backbone's own ONNX export that a partial refit's base engine is built from."""

    path: Path
    file: str  # relative to the store root, e.g. ``_fallback/model.<digest>.onnx``
    sha256: str


@dataclass(frozen=True)
class RefitPlan:
    """How to refit one camera: ``partial`` (``backbone`` set) or ``full`` (``reason`` says why).

    The weights that differ are found only when a refit is actually needed
    (:meth:`changed_weights`): a stored engine that fits costs no comparison.
    """

    mode: str
    reason: str = ""
    backbone: BackboneOnnx | None = None

    def __post_init__(self) -> None:
        if self.mode not in REFIT_MODES:
            raise ConfigError(f"refit mode must be one of {', '.join(REFIT_MODES)}, got {self.mode!r}")
        if self.mode == "partial" and self.backbone is None:
            raise ConfigError("a partial refit needs the backbone's ONNX export")

    def changed_weights(self, camera_onnx: Path) -> WeightDiff:
        """The initializers of ``camera_onnx`` that differ from the backbone's; PartialRefitError if
        the two cannot be compared (then the camera is refitted fully)."""
        if self.backbone is None:
            raise ConfigError("a full refit plan has no backbone to compare with")
        try:
            return diff_onnx_files(camera_onnx, self.backbone.path)
        except (WeightsError, BackendError) as exc:
            raise PartialRefitError(f"the backbone's export cannot be compared with the camera's ({exc})") from exc


@dataclass(frozen=True)
class RefitInfo:
    """The refit part of a camera engine's record (JSON under ``"refit"``)."""

    mode: str
    summary: str  # ``partial: N of M weights`` or ``full``
    changed: tuple[str, ...] = ()  # the initializers set (partial)
    total: int | None = None  # initializers of the camera's ONNX (partial)
    weights_set: int | None = None  # weights handed to TensorRT
    backbone_onnx: str | None = None
    backbone_onnx_sha256: str | None = None
    reason: str | None = None  # why the refit was full
    partial_failed_base: str | None = field(default=None)  # the partial base key digest TensorRT refused

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "summary": self.summary, "changed_weights": list(self.changed),
            "changed_count": len(self.changed), "total_weights": self.total, "weights_set": self.weights_set,
            "backbone_onnx": self.backbone_onnx, "backbone_onnx_sha256": self.backbone_onnx_sha256,
            "reason": self.reason, "partial_failed_base": self.partial_failed_base,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RefitInfo:
        try:
            def text(key: str) -> str | None:
                return None if data.get(key) is None else str(data[key])

            def number(key: str) -> int | None:
                return None if data.get(key) is None else int(data[key])

            return cls(mode=str(data["mode"]), summary=str(data["summary"]),
                       changed=tuple(str(n) for n in data.get("changed_weights") or ()), total=number("total_weights"),
                       weights_set=number("weights_set"), backbone_onnx=text("backbone_onnx"),
                       backbone_onnx_sha256=text("backbone_onnx_sha256"), reason=text("reason"),
                       partial_failed_base=text("partial_failed_base"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed refit record: {exc!r}") from exc

    @classmethod
    def partial(cls, backbone: BackboneOnnx, diff: WeightDiff, report: RefitReport) -> RefitInfo:
        return cls("partial", diff.summary, diff.changed, diff.total, report.weights_set, backbone.file,
                   backbone.sha256)

    @classmethod
    def full(cls, reason: str, report: RefitReport | None = None, *,
             partial_failed_base: str | None = None) -> RefitInfo:
        return cls("full", "full", weights_set=None if report is None else report.weights_set, reason=reason,
                   partial_failed_base=partial_failed_base)


def _full(reason: str) -> RefitPlan:
    return RefitPlan("full", reason)


def plan_refit(store_root: str | Path, manifest: Mapping[str, Any], export_key: str,
               camera_export: Mapping[str, Any]) -> RefitPlan:
    """Partial when the store's fallback export is the backbone this camera was adapted from (see module docstring).

    ``manifest`` is the camera's manifest, ``export_key`` the ``manifest["exports"]`` key of the
    ONNX the engine is made from (``onnx`` or ``onnx_fp16``) and ``camera_export`` its export
    record. Reads manifests and checks the backbone file's sha256, nothing more. Never raises for
    a missing or unsuitable backbone export: the plan is then ``full`` with the reason.
    """
    backbone = manifest.get("backbone")
    digest = backbone.get("weights_sha256") if isinstance(backbone, Mapping) else None
    name = backbone.get("name") if isinstance(backbone, Mapping) else None
    if not isinstance(digest, str):
        return _full("the camera's manifest names no backbone weights digest")
    how = f"`adassr export --backbone {name or 'NAME'}{' --precision fp16' if export_key == 'onnx_fp16' else ''}`"
    store = CameraStore.open(store_root, FALLBACK_CAMERA)
    if not store.exists():
        return _full(f"no backbone export in the store to refit from; {how} exports it")
    try:
        fallback = store.read_manifest()
    except StoreError as exc:
        return _full(f"the backbone export is unreadable ({exc})")
    record = (fallback.get("exports") or {}).get(export_key)
    if not isinstance(record, Mapping) or not isinstance(record.get("file"), str):
        return _full(f"the store's backbone export has no {export_key} file; {how} exports it")
    if record.get("weights_sha256") != digest:
        return _full(f"the store's backbone export holds weights {str(record.get('weights_sha256'))[:12]}..., the "
                     f"camera was adapted from {digest[:12]}...; {how} exports the camera's backbone")
    if record.get("structure_sha256") != camera_export.get("structure_sha256"):
        return _full("the backbone export and the camera's export have different network structures (exported by "
                     f"different adassr versions?); {how} re-exports the backbone")
    if not onnx_available():
        from adassr.runtime.install import pip_command

        return _full(f"comparing the camera's weights with the backbone's needs the onnx package ({pip_command()} "
                     "install onnx)")
    try:
        path = store.verified_path(str(record["file"]), fallback)
    except StoreError as exc:
        return _full(f"the backbone export is damaged ({exc})")
    sha = str(fallback["artifacts"][str(record["file"])]["sha256"])
    return RefitPlan("partial", backbone=BackboneOnnx(path, f"{FALLBACK_CAMERA}/{path.name}", sha))
