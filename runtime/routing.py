"""Camera routing: which exported model in the store serves an image.

The camera group comes from the request (an explicit name) or from the image by the rules the
adapt stage groups images by (:func:`route_by_image`): its folder, its EXIF Make normalised with
:func:`adassr.runtime.cameras.normalise_camera_name`, or a RealSR-style file-name prefix, a folder or
prefix only when that camera is in the store. A group with no exported model, an explicit name
with no folder, and an image that names no camera are all served by ``<store>/_fallback`` (an
unadapted backbone); the decision's ``reason`` says which case applied. A damaged manifest or a file that fails its
sha256 is an error, never a silent fallback.

Export records are read from ``manifest["exports"]``: ``"onnx"`` (fp32) and ``"onnx_fp16"``, each
``{"file", "scale", "precision", "input_name", "output_name", ...}``. When a camera lacks the
precision asked for, its other export serves (fp32 for an fp16 request, fp16 for an fp32 one: an
adapted model is worth more than the precision); the decision's ``precision`` says which serves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adassr.runtime.cameras import (
    camera_from_filename,
    camera_name,
    normalise_camera_name,
    same_brand_names,
    validate_group_name,
)
from adassr.runtime.errors import CameraError, ConfigError, StoreError
from adassr.runtime.images import LoadedImage, read_camera_exif
from adassr.runtime.store import (
    EXPORT_KEYS,
    FALLBACK_BACKBONE,
    FALLBACK_CAMERA,
    MODEL_PRECISIONS,
    PHOTO_FOLDER,
    CameraStore,
    export_arguments,
    list_cameras,
    store_option,
)

PRECISIONS = MODEL_PRECISIONS  # what a route can serve
SERVING_PRECISIONS: tuple[str, ...] = (*MODEL_PRECISIONS, "bf16")
"""What ``upscale`` / ``serve --precision`` take: the model files' precisions, and bf16 for the TensorRT
backend (an engine built from ``model.onnx`` with bf16 layers; no model file is bf16)."""


def check_serving_precision(precision: str, backend: str) -> None:
    """ConfigError for a ``--precision`` this backend cannot serve."""
    if precision not in SERVING_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(SERVING_PRECISIONS)}")
    if precision == "bf16" and backend != "tensorrt":
        raise ConfigError(f"--precision bf16 is served by --backend tensorrt only (an engine built from model.onnx "
                          f"with bf16 layers; {backend} has no bf16 model): add --backend tensorrt, or use fp16")


def model_precision(precision: str) -> str:
    """The model file a serving precision routes to: ``model.onnx`` (fp32) for a bf16 engine."""
    return "fp32" if precision == "bf16" else precision


def engine_precision(requested: str, served: str) -> str:
    """The engine precision for a route: bf16 when asked for and the route serves ``model.onnx`` (a camera
    with only an fp16 export is served by its fp16 engine), else the served model's precision."""
    return "bf16" if requested == "bf16" and served == "fp32" else served
@dataclass(frozen=True)
class RouteDecision:
    """Which model serves an image, and why."""

    camera_requested: str | None  # the explicit --camera name, None when routed by EXIF
    camera_group: str | None  # group asked for (explicit or from EXIF Make); None if unknown
    model_camera: str  # store folder whose model serves it (the group, or "_fallback")
    reason: str  # "explicit", "folder", "exif-make", "filename-prefix", or "fallback: ..."
    onnx_path: Path  # the file on disk (content-addressed name)
    artifact: str  # the artifact's logical name in the manifest, e.g. "model.onnx"
    export_key: str  # "onnx" or "onnx_fp16"
    precision: str  # precision actually served
    sha256: str  # expected checksum from the manifest
    scale: int
    input_name: str | None
    output_name: str | None
    multiple_of: int
    store: CameraStore = field(repr=False)
    manifest: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def is_fallback(self) -> bool:
        return self.model_camera == FALLBACK_CAMERA

    @property
    def label(self) -> str:
        """Short human label: ``canon/model.onnx (fp32, sha256 0123456789ab)``."""
        return f"{self.model_camera}/{self.artifact} ({self.precision}, sha256 {self.sha256[:12]})"

    @property
    def model_name(self) -> str:
        """``<camera folder>/<artifact name>``, e.g. ``canon/model.onnx``."""
        return f"{self.model_camera}/{self.artifact}"

    def verify(self) -> Path:
        """Check the model file against the manifest's sha256 (StoreError if it fails); return it."""
        return self.store.verified_path(self.artifact, self.manifest)

    def check_model_metadata(self, metadata: Mapping[str, str]) -> None:
        """StoreError when the opened model file's own metadata (``adassr export`` records its scale
        there) contradicts the manifest's scale, which sizes every output: a hand-edited manifest then
        fails when the model is opened, not as a server that says it is ready and answers every image
        with an error. A file without that record (made by other tools) is not checked."""
        recorded = metadata.get("scale")
        if recorded is None or recorded == str(self.scale):
            return
        raise StoreError(
            f"{self.store.manifest_path} says camera {self.model_camera!r} upscales x{self.scale}, but its model "
            f"file {self.onnx_path.name} records x{recorded}: the manifest was edited or damaged; set its 'scale' "
            f"(and the exports' 'scale') back to {recorded}, or export the camera again (`adassr export "
            f"{'--backbone NAME' if self.is_fallback else f'--camera {self.model_camera}'}"
            f"{store_option(self.store.root)}`)"
        )


@dataclass(frozen=True)
class _Found:
    store: CameraStore
    manifest: Mapping[str, Any]
    key: str
    record: Mapping[str, Any]


def _find_export(root: Path, camera: str, precision: str) -> tuple[_Found | None, str]:
    """The camera's export record for ``precision`` (else its other precision), or None and why there is none."""
    store = CameraStore.open(root, camera)
    if not store.exists():
        return None, "no manifest"
    manifest = store.read_manifest()
    exports = manifest.get("exports") or {}
    if not isinstance(exports, Mapping):
        raise StoreError(f"{store.manifest_path}: 'exports' is not an object; rerun `adassr export "
                         f"{export_arguments(store.camera, manifest)}{store_option(store.root)}`")
    for key in dict.fromkeys((EXPORT_KEYS[precision], EXPORT_KEYS["fp32"], EXPORT_KEYS["fp16"])):
        record = exports.get(key)
        if record is None:
            continue
        if not isinstance(record, Mapping) or not isinstance(record.get("file"), str):
            raise StoreError(
                f"{store.manifest_path}: exports[{key!r}] has no 'file'; rerun `adassr export "
                f"{export_arguments(store.camera, manifest)}{store_option(store.root)}`"
            )
        return _Found(store, manifest, key, record), ""
    return None, "adapted but not exported" if manifest.get("weights_sha256") else "no exported model"


def _served(export_key: str) -> str:
    """The precision of the export stored under ``export_key``."""
    return next(precision for precision, key in EXPORT_KEYS.items() if key == export_key)


def _decision(found: _Found, *, requested: str | None, group: str | None, reason: str) -> RouteDecision:
    store, manifest, key, record = found.store, found.manifest, found.key, found.record
    name = str(record["file"])
    artifact = (manifest.get("artifacts") or {}).get(name)
    if not isinstance(artifact, Mapping) or not artifact.get("sha256"):
        raise StoreError(
            f"{store.manifest_path}: {name} is exported but has no sha256 artifact record; "
            f"rerun `adassr export {export_arguments(store.camera, manifest)}{store_option(store.root)}`"
        )
    scale = record.get("scale", manifest.get("scale"))
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise StoreError(f"{store.manifest_path}: exports[{key!r}] has no valid integer 'scale' (got {scale!r})")
    multiple = record.get("multiple_of", 1)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise StoreError(f"{store.manifest_path}: exports[{key!r}]['multiple_of'] must be a positive integer")
    precision = "fp16" if key == EXPORT_KEYS["fp16"] else "fp32"
    return RouteDecision(
        camera_requested=requested,
        camera_group=group,
        model_camera=store.camera,
        reason=reason,
        onnx_path=store.artifact_path(name, manifest),
        artifact=name,
        export_key=key,
        precision=precision,
        sha256=str(artifact["sha256"]),
        scale=scale,
        input_name=record.get("input_name"),
        output_name=record.get("output_name"),
        multiple_of=multiple,
        store=store,
        manifest=manifest,
    )


def camera_group_of(image: LoadedImage | str | os.PathLike[str] | None) -> tuple[str | None, str | None]:
    """``(group, exif_make)`` of an image from its EXIF Make; group None when there is no usable Make."""
    if image is None:
        return None, None
    make = image.exif_make if isinstance(image, LoadedImage) else read_camera_exif(image)[0]
    if not make:
        return None, None
    group = normalise_camera_name(make)
    if not group:
        return None, make
    try:
        return validate_group_name(group), make
    except CameraError:  # e.g. longer than the name limit: no group, so the fallback serves it
        return None, make


def _image_path(image: LoadedImage | str | os.PathLike[str] | None) -> Path | None:
    if image is None:
        return None
    path = image.path if isinstance(image, LoadedImage) else image
    # absolute, so that a bare "x.png" (upscale -i . inside the camera's folder) still has its folder,
    # as adapt sees it; abspath keeps link names (adapt names folders by the link, not its target)
    return None if path is None else Path(os.path.abspath(path))


def _valid_group(name: str) -> str | None:
    try:
        return validate_group_name(name)
    except CameraError:
        return None


def route_by_image(image: LoadedImage | str | os.PathLike[str] | None,
                   has_camera: Callable[[str], bool]) -> tuple[str | None, str, str | None]:
    """``(group, source, exif_make)`` for an image without an explicit camera, in ``adapt``'s order:

    1. ``folder``: the folder the file is in (``photos/nikon/x.jpg`` -> ``nikon``);
    2. ``exif-make``: its EXIF Make's group;
    3. ``filename-prefix``: a RealSR-style file-name prefix (``Nikon_006_LR4.png`` -> ``nikon``).

    A folder or file name counts only when ``has_camera`` says that camera is there (the store, or
    the Triton server): most folders and names are not camera names. The EXIF Make's group counts
    whenever there is one (without a model for it the fallback serves, saying why), and so does a Make
    that gives no valid group name (the fallback serves it: ``adapt`` leaves such an image out of every
    group, so no prefix's camera was trained on it). ``group`` is None when nothing applies.
    """
    path = _image_path(image)
    folder = _valid_group(path.parent.name) if path is not None and path.parent.name else None
    if folder is not None and has_camera(folder):
        return folder, "folder", None
    group, make = camera_group_of(image)
    if group is not None:
        return group, "exif-make", make
    if make and normalise_camera_name(make):  # a Make that names no valid group (too long, "con"): adapt leaves
        return None, "exif-make", make  # such an image out, so the fallback serves it, not a file-name prefix
    by_name = camera_from_filename(path.name) if path is not None else None
    if by_name is not None and has_camera(by_name):
        return by_name, "filename-prefix", make
    return None, "exif-make", make


def can_serve(store_root: str | os.PathLike[str], *, camera: str | None = None, precision: str = "fp32") -> bool:
    """Whether the store holds an exported model for the explicit ``camera`` or a fallback model.

    Reads manifests only (no checksums); ``StoreError`` if one is damaged.
    """
    root = Path(store_root).expanduser()
    if not root.is_dir():
        return False
    if camera is not None and camera_name(camera) != FALLBACK_CAMERA:
        found, _ = _find_export(root, camera_name(camera), precision)
        if found is not None:
            return True
    return _find_export(root, FALLBACK_CAMERA, precision)[0] is not None


def adapted_but_not_exported(store_root: str | os.PathLike[str], camera: str, *, precision: str = "fp32") -> bool:
    """Whether ``camera`` has adapted weights in the store but no ONNX export for ``precision`` (or fp32).

    Reads the manifest only; ``StoreError`` if it is damaged.
    """
    root = Path(store_root).expanduser()
    if camera == FALLBACK_CAMERA or not root.is_dir():
        return False
    found, why = _find_export(root, validate_group_name(camera), precision)
    return found is None and why == "adapted but not exported"


def _same_brand_note(root: Path, group: str) -> str:
    """``"; the store has 'fuji': ..."`` when a store camera's name and ``group`` abbreviate one another
    (a folder ``fuji`` adapted, photos whose EXIF Make says ``FUJIFILM``), else ``""``: the fallback
    still serves (a shorter name may be another maker), but the split is named."""
    cameras = list_cameras(root, among=lambda name: bool(same_brand_names(group, [name])))
    related = [c for c in same_brand_names(group, cameras) if c != FALLBACK_CAMERA]
    if not related:
        return ""
    return f"; the store has {related[0]!r}: if that is this camera, ask for camera {related[0]!r} explicitly"


MAX_SHOWN_MAKE = 40
"""Longest EXIF Make quoted in a route's reason (the rest is cut: a Make can be any length)."""


def unusable_make_reason(make: str) -> str:
    """The fallback reason for an EXIF Make that names no valid camera group (a long Make cut short)."""
    shown = make if len(make) <= MAX_SHOWN_MAKE else make[:MAX_SHOWN_MAKE] + "..."
    return f"fallback: EXIF Make {shown!r} names no valid camera group"


def _no_group_reason(make: str | None, image: object) -> str:
    if make:
        return unusable_make_reason(make)
    return "fallback: no EXIF Make" if image is not None else "fallback: no camera given"


def resolve_model(
    store_root: str | os.PathLike[str],
    *,
    camera: str | None = None,
    image: LoadedImage | str | os.PathLike[str] | None = None,
    precision: str = "fp32",
    verify: bool = True,
) -> RouteDecision:
    """Pick the model for an explicit ``camera`` or, without one, by the image's folder, EXIF Make or
    RealSR-style file-name prefix, the rules ``adapt`` groups images by (:func:`route_by_image`).

    ``camera="_fallback"`` asks for the unadapted fallback model explicitly.

    With ``verify`` the model file's sha256 is checked against the manifest (StoreError on a
    mismatch); without it the caller must call :meth:`RouteDecision.verify` before opening it.
    Raises StoreError if the store is missing or no model (not even the fallback) can serve.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    root = Path(store_root).expanduser()
    CameraStore.open(root, FALLBACK_CAMERA)  # StoreError with a clear message if the store is missing
    if camera is not None:
        group: str | None = camera_name(camera)
        requested: str | None = camera
        source = "explicit"
        make = None
    else:
        requested = None
        group, source, make = route_by_image(image, lambda name: CameraStore.open(root, name).exists())

    if group is not None:
        found, why = _find_export(root, group, precision)
        if found is not None:
            reason = source
            if found.key != EXPORT_KEYS[precision]:
                reason += f"; no {precision} export for {group!r}, serving {_served(found.key)}"
            decision = _decision(found, requested=requested, group=group, reason=reason)
            if verify:
                decision.verify()
            return decision
        explicit = "explicitly requested camera " if camera is not None else ""
        camera_why = f"{why}{_same_brand_note(root, group)}"
        if why == "adapted but not exported":  # the command that gives its photos their own model
            camera_why += f": run `adassr export --camera {group}{store_option(root)}`"
        reason = f"fallback: no model for {explicit}{group!r} ({camera_why})"
    else:
        reason = _no_group_reason(make, image)

    fallback, fallback_why = _find_export(root, FALLBACK_CAMERA, precision)
    if fallback is None:
        wanted = f"camera {group!r} ({camera_why})" if group else "this image (no camera group)"
        raise StoreError(
            f"no model for {wanted} in {root} and no fallback model in {root / FALLBACK_CAMERA} "
            f"({fallback_why}); export one with `adassr export --backbone {FALLBACK_BACKBONE}{store_option(root)}`, "
            f"or adapt and export the camera with `adassr adapt --camera NAME --images {PHOTO_FOLDER}"
            f"{store_option(root)}` then `adassr export --camera NAME{store_option(root)}`"
        )
    if fallback.key != EXPORT_KEYS[precision]:
        reason += f"; no {precision} fallback export, serving {_served(fallback.key)}"
    decision = _decision(fallback, requested=requested, group=group, reason=reason)
    if verify:
        decision.verify()
    return decision
