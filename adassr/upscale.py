"""``adassr upscale`` as the full install composes it: the runtime's command with every layer's upscaler.

The runtime (:mod:`adassr.runtime.upscale_cli`) knows only its own ``onnxruntime`` upscaler. Here
the umbrella CLI adds

- the ``torch`` upscaler of the adapt layer (:class:`adassr.adapt.infer.TorchUpscaler`), imported when
  a run asks for it, so ``--help`` and onnxruntime runs never load torch;
- the first-use exports: when ``--camera`` names a camera that is adapted but not exported yet and
  torch is installed, its adapted weights are exported (fp32) before the run, with a note on
  stderr; when the store cannot serve an image (no store yet, or no fallback model) and torch is
  installed, the fallback backbone is exported into ``<store>/_fallback`` once, with a note;
  without torch, a one-line error says the exact command to run (an adapted camera without torch
  is served by the fallback model, and the output line says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from adassr.runtime.errors import AdassrError, ConfigError, StoreError
from adassr.runtime.install import install_hint
from adassr.runtime.pipeline import RuntimeOptions
from adassr.runtime.routing import adapted_but_not_exported, can_serve, model_precision
from adassr.runtime.store import DEFAULT_STORE, FALLBACK_CAMERA, shell_path
from adassr.runtime.upscale_cli import add_upscale_arguments as _add_runtime_arguments
from adassr.runtime.upscale_cli import run_upscale as _run_runtime
from adassr.runtime.upscalers import ImageUpscaler, UpscalerEntry, UpscalerRegistry, runtime_upscalers

ADAPT_EXTRA_GPU = "on a GPU box: a CUDA build of torch first, then the 'adapt' and 'gpu' extras"


def adapt_extra() -> str:
    """The pip command adding the adapt extra with the CPU torch and onnxruntime, which export validates with
    (the README main job's extras; a GPU box installs a CUDA torch first, :data:`ADAPT_EXTRA_GPU`)."""
    return install_hint("adapt,cpu,cpu-torch")


def _torch_upscaler(options: RuntimeOptions) -> ImageUpscaler:
    try:
        from adassr.adapt.infer import TorchUpscaler
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"--backend torch needs PyTorch ({exc.name} is not installed): {adapt_extra()} "
            f"({ADAPT_EXTRA_GPU}), or use --backend onnxruntime"
        ) from exc
    return TorchUpscaler(options)


def export_on_first_use(options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path]) -> None:
    """Export what this run needs and the store lacks: the requested camera's adapted weights
    (:func:`export_camera_on_first_use`), then the fallback (:func:`export_fallback_on_first_use`)."""
    _check_backbone(options)
    export_camera_on_first_use(options, camera=camera, samples=samples)
    export_fallback_on_first_use(options, camera=camera, samples=samples)


def _check_backbone(options: RuntimeOptions) -> None:
    """``--backbone`` names what a first-use export makes: an unknown name is a ConfigError (with torch, which
    knows the registry), and a store whose fallback is another backbone gets a warning (its model serves)."""
    from adassr.runtime.store import FALLBACK_BACKBONE, CameraStore

    if options.backbone == FALLBACK_BACKBONE:
        return
    if importlib.util.find_spec("torch") is not None:
        from adassr.adapt.archs.registry import default_registry

        default_registry().get(options.backbone)  # ConfigError listing the backbones for a typo
    try:
        backbone = CameraStore.open(options.store, FALLBACK_CAMERA).read_manifest().get("backbone") or {}
    except AdassrError:
        return  # no fallback yet: a first-use export makes --backbone's
    exported = backbone.get("name") if isinstance(backbone, dict) else None
    if isinstance(exported, str) and exported != options.backbone:
        print(f"warning: the store's fallback model is {exported}, not --backbone {options.backbone}: --backbone "
              f"only chooses what a first-use export makes; run `adassr export --backbone {options.backbone} --store "
              f"{shell_path(options.store)}` to serve it", file=sys.stderr, flush=True)


MAX_SAMPLES_TRIED = 20
"""Input images a first-use export tries, in order, for a photo to validate on (each is decoded whole)."""


def _validation_sample(samples: Sequence[Path]) -> Path | None:
    """The first of the run's inputs that decodes and is large enough to validate an export on."""
    from adassr.export.crops import usable_photo

    return next((path for path in list(samples)[:MAX_SAMPLES_TRIED] if usable_photo(path)), None)


def _no_validation_photo(command: str) -> StoreError:
    return StoreError(
        "no photo to validate the first-use export on: the bundled sample photos are not installed and none of "
        f"this run's first {MAX_SAMPLES_TRIED} input images can be read whole at 29 px a side or more; run "
        f"`{command} --validation-image PHOTO` first (any photo of that size), then upscale again"
    )


def export_camera_on_first_use(options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path] = ()) -> None:
    """Export ``camera``'s adapted weights to ONNX (fp32) when it is adapted but not exported yet.

    Nothing happens without an explicit camera, for a camera with an export, or without torch (the
    fallback model then serves it and the output line says "adapted but not exported"). The export is
    validated on the camera's own photos, else the bundled sample, else the first readable input.
    """
    if camera is None or importlib.util.find_spec("torch") is None:
        return
    store = Path(options.store)
    if not adapted_but_not_exported(store, camera, precision=model_precision(options.precision)):
        return
    from adassr.export.onnx import export_camera

    print(
        f"camera {camera!r} is adapted but not exported yet: exporting it to {store / camera} "
        f"(first use only; same as `adassr export --camera {camera} --store {shell_path(store)}`)...",
        file=sys.stderr, flush=True,
    )
    from adassr.export.crops import find_validation_photo
    from adassr.export.errors import ExportError
    from adassr.runtime.store import CameraStore

    validation = None
    try:
        find_validation_photo(CameraStore.open(store, camera).read_manifest().get("images") or ())
    except ExportError:  # the camera's photos moved away and no sample photo is installed: an input serves
        validation = _validation_sample(samples)
        if validation is None:
            raise _no_validation_photo(f"adassr export --camera {camera} --store {shell_path(store)}") from None
    # another process's first use may be exporting it now: wait for it, and take its export when it is done
    export_camera(store, camera, precision="fp32", validation_image=validation, lock_timeout_s=FIRST_USE_WAIT_S,
                  if_missing=True)


FIRST_USE_WAIT_S = 900.0
"""How long a first-use export waits for another process exporting the same model (the full backbone
exports in 13-60 s on 2 CPU cores; a slow disk or a busy machine takes longer)."""


def export_fallback_on_first_use(options: RuntimeOptions, *, camera: str | None,
                                 samples: Sequence[Path] = ()) -> None:
    """Make sure the store can serve: export ``options.backbone`` as the fallback model when needed.

    Nothing happens when the store already has the requested camera's model or a fallback model, nor
    when every one of ``samples`` (the run's inputs) is routed to a camera the store has a model for.
    Without torch, a store with any camera's export serves the images of those cameras (the others
    fail one by one, naming the export to run); with none, ``StoreError`` names the command to run.
    The export is validated on the bundled sample photos, else on the first input that can be read.
    """
    store = Path(options.store)
    if can_serve(store, camera=camera, precision=model_precision(options.precision)):
        return
    if camera is None and samples and _all_routed_to_cameras(store, samples):
        return  # nothing needs the fallback (it was exported, 67 MB, for photos its cameras serve)
    from adassr.export.crops import SAMPLE_PHOTO, checkout_file

    command = f"adassr export --backbone {options.backbone} --store {shell_path(store)}"
    if checkout_file(SAMPLE_PHOTO) is None:  # an installed package: the export needs a photo to validate on
        command += " --validation-image PHOTO"
    if importlib.util.find_spec("torch") is None:
        if camera is None and _has_export(store):
            return  # as the runtime alone: images are routed to the cameras the store has
        raise StoreError(
            f"no model in {store} to serve this yet and PyTorch is not installed to export one; "
            f"run: {adapt_extra()} && {command} ({ADAPT_EXTRA_GPU})"
        )
    from adassr.export.crops import bundled_photos
    from adassr.export.onnx import export_fallback

    print(
        f"no model in the store {store} serves this yet (no fallback model): exporting the fallback backbone "
        f"{options.backbone} to "
        f"{store / FALLBACK_CAMERA} (first use only; same as `{command}`)...",
        file=sys.stderr, flush=True,
    )
    # fp32 only: it serves fp16 requests too (the router says so); `adassr export` makes fp16.
    validation = None
    if not bundled_photos():
        validation = _validation_sample(samples)
        if validation is None:
            raise _no_validation_photo(command)
    export_fallback(store, options.backbone, precision="fp32", validation_image=validation,
                    lock_timeout_s=FIRST_USE_WAIT_S, if_missing=True)  # another first use may be exporting it


def _all_routed_to_cameras(store: Path, samples: Sequence[Path]) -> bool:
    """Whether each input is routed (folder, EXIF Make, file-name prefix, as the upscale routes it) to a
    camera the store has an export for. Reads headers only; an input that cannot be read needs no model."""
    from adassr.runtime.preflight import exported_cameras
    from adassr.runtime.routing import route_by_image

    try:
        cameras = set(exported_cameras(store, warn=False))  # the run's own check warns about damaged ones
    except AdassrError:
        return False
    cameras.discard(FALLBACK_CAMERA)
    if not cameras:
        return False
    from adassr.runtime.store import CameraStore

    def in_store(name: str) -> bool:  # as resolve_model: any camera with a manifest, exported or not
        return CameraStore.open(store, name).exists()

    for sample in samples:
        try:
            group, _, _ = route_by_image(sample, in_store)
        except (AdassrError, OSError):
            continue  # it fails on its own when it is read
        if group not in cameras:
            return False
    return True


def _has_export(store: Path) -> bool:
    from adassr.runtime.preflight import exported_cameras

    try:
        return bool(exported_cameras(store))
    except AdassrError:
        return False


def require_named_store(options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path]) -> None:
    """The ``torch`` upscaler's check: a ``--store`` other than the default must exist.

    (The default store may be missing: the backbone serves then.) Raises ``StoreError`` naming it.
    """
    store = Path(options.store).expanduser()
    if store != DEFAULT_STORE and not store.is_dir():
        raise StoreError(
            f"the model store {store} does not exist; point --store at an existing store, or drop --store "
            "to serve the backbone"
        )


def upscalers() -> UpscalerRegistry:
    """The upscalers of the full install: onnxruntime (with the first-run export), then torch."""
    registry = runtime_upscalers(prepare=export_on_first_use)
    registry.register(UpscalerEntry("torch", _torch_upscaler, "PyTorch eager, needs the adapt extra",
                                    prepare=require_named_store))
    return registry


def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``adassr upscale`` options, with every upscaler of :func:`upscalers`."""
    _add_runtime_arguments(parser, upscalers())


def run_upscale(args: argparse.Namespace) -> int:
    """Run ``adassr upscale`` with the upscalers of :func:`upscalers`; SIGTERM and SIGHUP stop it as Ctrl-C
    does (no temporary file is left; exit 143 / 129), within seconds (:mod:`adassr.runtime.signals`)."""
    from adassr.runtime.signals import terminate_as_interrupt

    with terminate_as_interrupt():
        return _run_runtime(args, upscalers=upscalers())
