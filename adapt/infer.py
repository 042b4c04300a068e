"""``adassr upscale --backend torch``: PyTorch eager inference with the same tiling, I/O and
batch handling as the runtime (``adassr.runtime.upscale_cli.run_batch``), only the model differs.

Which weights serve an image: the camera's ``adapted.safetensors`` (checked against the sha256
in its manifest) when the camera (``--camera``, else the image's EXIF Make) has been adapted,
otherwise the ``--backbone`` registry backbone.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adassr.adapt.gpu_infer import TorchRunner, TorchRunOptions
from adassr.runtime.backends.base import Backend
from adassr.runtime.cameras import normalise_camera_name
from adassr.runtime.errors import ConfigError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import UpscaleResult, upscale_image
from adassr.runtime.store import ADAPTED_WEIGHTS, CameraStore
from adassr.runtime.tile_shape import tiling_options

log = logging.getLogger(__name__)

WEIGHTS_FILE = ADAPTED_WEIGHTS


class TorchBackend(Backend):
    """A runtime :class:`Backend` over an in-memory PyTorch model (NCHW float32 in [0, 1])."""

    def __init__(self, model: torch.nn.Module, device: torch.device, label: str,
                 options: TorchRunOptions | None = None) -> None:
        super().__init__(Path(label))
        self._device = device
        self._label = label
        self._runner = TorchRunner(model, options or TorchRunOptions(str(device)))

    @property
    def name(self) -> str:
        return "torch"

    @property
    def providers(self) -> tuple[str, ...]:
        return (f"{self._device} ({self._runner.options.label})",)

    def _open(self) -> None:
        return None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._runner(batch)

    def _close(self) -> None:
        return None


@dataclass(frozen=True)
class TorchModelChoice:
    label: str
    model: torch.nn.Module
    scale: int


def choose_weights(store_root: Path, camera: str | None, backbone: str, device: torch.device) -> TorchModelChoice:
    """The camera's adapted weights when present, else the backbone."""
    from adassr.adapt.weights import load_backbone, load_safetensors_weights

    if camera and store_root.is_dir():
        store = CameraStore.open(store_root, camera)
        manifest = store.read_manifest() if store.exists() else {}
        if WEIGHTS_FILE in (manifest.get("artifacts") or {}):
            path = store.verified_path(WEIGHTS_FILE, manifest)
            name = manifest.get("backbone", {}).get("name", backbone)
            loaded = load_safetensors_weights(path, name, device=str(device))
            return TorchModelChoice(f"{store.camera}/{WEIGHTS_FILE} (adapted {name})", loaded.model, loaded.scale)
    loaded = load_backbone(backbone, device=str(device))
    return TorchModelChoice(f"backbone {backbone}", loaded.model, loaded.scale)


def _camera_of(image: LoadedImage, explicit: str | None) -> str | None:
    if explicit:
        return explicit
    name = normalise_camera_name(image.exif_make or "")
    return name or None


def run_torch_upscale(args: argparse.Namespace) -> int:
    """Upscale files or a folder with PyTorch (see the module docstring for model choice)."""
    from adassr.adapt.precision import resolve_device
    from adassr.runtime.upscale_cli import plan_outputs, run_batch

    if not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality must be 1-100, got {args.quality}")
    from adassr.adapt.precision import select_gpu

    if getattr(args, "device", "auto") != "cpu" and torch.cuda.is_available():
        select_gpu(getattr(args, "gpu", None))
    device = resolve_device(getattr(args, "device", "auto") or "auto")
    on_gpu = device.type == "cuda"
    # On a GPU: channels_last, the requested precision, optionally CUDA graphs of the fixed tile shape.
    options = TorchRunOptions(str(device), precision=args.precision if on_gpu else "fp32", channels_last=on_gpu,
                              cuda_graph=on_gpu and bool(getattr(args, "cuda_graph", False)))
    tiling = tiling_options(args.tile, overlap=args.tile_overlap, pre_pad=args.pre_pad,
                            batch_size=args.tile_batch, pad_to_tile=options.cuda_graph)
    pairs = plan_outputs(args.input, args.output, args.ext)
    choices: dict[str | None, TorchModelChoice] = {}
    backends: dict[str | None, TorchBackend] = {}

    def serve(image: LoadedImage, tiles: Callable[[int, int], None] | None) -> UpscaleResult:
        camera = _camera_of(image, args.camera)
        if camera not in choices:
            choices[camera] = choose_weights(args.store, camera, args.backbone, device)
        choice = choices[camera]
        start = time.perf_counter()
        progress = tiles
        if progress is None and image.height * image.width > 256 * 256:
            print(f"upscaling {image.path} ({image.width}x{image.height}) on {device}...", file=sys.stderr)
        if camera not in backends:  # one runner per model: CUDA graphs are captured once
            backend = TorchBackend(choice.model, device, choice.label, options)
            backend.open()
            backends[camera] = backend
        result = upscale_image(image, backends[camera], scale=choice.scale, tiling=tiling, outscale=args.outscale,
                               progress=progress)
        log.info("%s took %.1f s", image.path, time.perf_counter() - start)
        return UpscaleResult(result.pixels, result.alpha, result.bit_depth, result.scale, result.outscale,
                             None, choice.label)

    return run_batch(pairs, serve, quality=args.quality, progress=not args.no_progress)
