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
from pathlib import Path

from adassr.runtime.errors import ConfigError, StoreError
from adassr.runtime.pipeline import RuntimeOptions
from adassr.runtime.routing import adapted_but_not_exported, can_serve, model_precision
from adassr.runtime.store import DEFAULT_STORE, FALLBACK_CAMERA
from adassr.runtime.upscale_cli import add_upscale_arguments as _add_runtime_arguments
from adassr.runtime.upscale_cli import run_upscale as _run_runtime
from adassr.runtime.upscalers import ImageUpscaler, UpscalerEntry, UpscalerRegistry, runtime_upscalers

# CPU torch; a GPU box installs a CUDA torch first
ADAPT_EXTRA = "pip install -e '.[adapt,cpu-torch]' (in the adassr checkout)"
ADAPT_EXTRA_GPU = "on a GPU box, a CUDA torch then '.[adapt]'"


def _torch_upscaler(options: RuntimeOptions) -> ImageUpscaler:
    try:
        from adassr.adapt.infer import TorchUpscaler
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"--backend torch needs PyTorch ({exc.name} is not installed): {ADAPT_EXTRA} "
            f"({ADAPT_EXTRA_GPU}), or use --backend onnxruntime"
        ) from exc
    return TorchUpscaler(options)


def export_on_first_use(options: RuntimeOptions, *, camera: str | None, sample: Path | None) -> None:
    """Export what this run needs and the store lacks: the requested camera's adapted weights
    (:func:`export_camera_on_first_use`), then the fallback (:func:`export_fallback_on_first_use`)."""
    export_camera_on_first_use(options, camera=camera)
    export_fallback_on_first_use(options, camera=camera, sample=sample)


def export_camera_on_first_use(options: RuntimeOptions, *, camera: str | None) -> None:
    """Export ``camera``'s adapted weights to ONNX (fp32) when it is adapted but not exported yet.

    Nothing happens without an explicit camera, for a camera with an export, or without torch (the
    fallback model then serves it and the output line says "adapted but not exported").
    """
    if camera is None or importlib.util.find_spec("torch") is None:
        return
    store = Path(options.store)
    if not adapted_but_not_exported(store, camera, precision=model_precision(options.precision)):
        return
    from adassr.export.onnx import export_camera

    print(
        f"camera {camera!r} is adapted but not exported yet: exporting it to {store / camera} "
        f"(first use only; same as `adassr export --camera {camera} --store {store}`)...",
        file=sys.stderr, flush=True,
    )
    # another process's first use may be exporting it now: wait for it, and take its export when it is done
    export_camera(store, camera, precision="fp32", lock_timeout_s=FIRST_USE_WAIT_S, if_missing=True)


FIRST_USE_WAIT_S = 900.0
"""How long a first-use export waits for another process exporting the same model (the full backbone
exports in 13-60 s on 2 CPU cores; a slow disk or a busy machine takes longer)."""


def export_fallback_on_first_use(options: RuntimeOptions, *, camera: str | None, sample: Path | None) -> None:
    """Make sure the store can serve: export ``options.backbone`` as the fallback model when needed.

    Nothing happens when the store already has the requested camera's model or a fallback model.
    Raises ``StoreError`` with the command to run when torch is not installed.
    """
    store = Path(options.store)
    if can_serve(store, camera=camera, precision=model_precision(options.precision)):
        return
    command = f"adassr export --backbone {options.backbone} --store {store}"
    if importlib.util.find_spec("torch") is None:
        raise StoreError(
            f"no model in {store} to serve this yet and PyTorch is not installed to export one; "
            f"run: {ADAPT_EXTRA} && {command} ({ADAPT_EXTRA_GPU})"
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
    validation = None if bundled_photos() else sample
    export_fallback(store, options.backbone, precision="fp32", validation_image=validation,
                    lock_timeout_s=FIRST_USE_WAIT_S, if_missing=True)  # another first use may be exporting it


def require_named_store(options: RuntimeOptions, *, camera: str | None, sample: Path | None) -> None:
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
    """Run ``adassr upscale`` with the upscalers of :func:`upscalers`."""
    return _run_runtime(args, upscalers=upscalers())
