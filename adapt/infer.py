"""``adassr upscale --backend torch``: PyTorch eager inference with the same tiling, I/O and
batch handling as the runtime; only the model differs. :class:`TorchUpscaler` is an upscaler of
:mod:`adassr.runtime.upscalers` (the umbrella CLI registers it) and serves through
:class:`TorchBackend`, a runtime :class:`~adassr.runtime.backends.base.Backend`.

Which weights serve an image: the camera's ``adapted.safetensors`` (checked against the sha256
in its manifest) when the camera (``--camera``, else the image's EXIF Make) has been adapted,
otherwise the ``--backbone`` registry backbone.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from adassr.adapt.gpu_infer import TorchRunner, TorchRunOptions
from adassr.runtime.backends.base import Backend
from adassr.runtime.errors import AdassrError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import OutputCheck, RuntimeOptions, UpscaleResult, upscale_image
from adassr.runtime.store import ADAPTED_WEIGHTS, CameraStore

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
            name = (manifest.get("backbone") or {}).get("name", backbone)
            loaded = load_safetensors_weights(path, name, device=str(device))
            return TorchModelChoice(f"{store.camera}/{WEIGHTS_FILE} (adapted {name})", loaded.model, loaded.scale)
    loaded = load_backbone(backbone, device=str(device))
    return TorchModelChoice(f"backbone {backbone}", loaded.model, loaded.scale)


def _camera_of(image: LoadedImage, explicit: str | None, store_root: Path) -> str | None:
    """``explicit``, else the camera :func:`~adassr.runtime.routing.route_by_image` finds: the image's
    folder when that camera is in the store, else its EXIF Make's group, else its file-name prefix when
    that camera is in the store."""
    if explicit:
        return explicit
    from adassr.runtime.routing import route_by_image

    def in_store(name: str) -> bool:
        return store_root.is_dir() and CameraStore.open(store_root, name).exists()

    return route_by_image(image, in_store)[0]


class TorchUpscaler:
    """The ``torch`` upscaler of ``adassr upscale``: the runtime's tiling and image handling with a
    PyTorch model (see the module docstring for which weights serve an image).

    Uses ``options.store``, ``options.backbone``, ``options.device``, ``options.gpu``,
    ``options.precision`` and ``options.cuda_graph`` (on a GPU: channels_last, the requested
    precision, optionally CUDA graphs of the fixed tile shape), ``options.tiling`` and
    ``options.outscale``. Keeps one loaded model and runner per camera until closed.
    """

    def __init__(self, options: RuntimeOptions) -> None:
        from adassr.adapt.precision import resolve_device, select_gpu

        if options.device != "cpu" and torch.cuda.is_available():
            select_gpu(options.gpu)
        from adassr.adapt.archs.registry import default_registry

        default_registry().get(options.backbone)  # an unknown --backbone fails the run once, before any image
        self.options = options
        self.device = resolve_device(options.device)
        on_gpu = self.device.type == "cuda"
        if not on_gpu:  # --threads / $ADASSR_THREADS, as onnxruntime takes them (they were ignored here)
            from adassr.adapt.cpu_setup import configure_cpu_threads

            configure_cpu_threads(options.threads)
        asked = [flag for flag, on in ((f"--precision {options.precision}", options.precision != "fp32"),
                                       ("--cuda-graph", options.cuda_graph)) if on]
        if asked and not on_gpu:
            print(f"note: {' and '.join(asked)} need a CUDA GPU; the torch backend runs fp32 on the CPU",
                  file=sys.stderr)
        self.run_options = TorchRunOptions(str(self.device), precision=options.precision if on_gpu else "fp32",
                                           channels_last=on_gpu, cuda_graph=on_gpu and options.cuda_graph)
        # CUDA graphs replay one shape: every tile is padded to the full tile size then.
        self.tiling = replace(options.tiling, pad_to_tile=self.run_options.cuda_graph)
        self._choices: dict[str | None, TorchModelChoice] = {}
        self._backends: dict[str | None, TorchBackend] = {}
        self._failures: dict[str | None, AdassrError] = {}

    def upscale(
        self, image: LoadedImage, *, camera: str | None = None, progress: Callable[[int, int], None] | None = None,
        check_output: OutputCheck | None = None,
    ) -> UpscaleResult:
        """Upscale ``image`` with the weights of ``camera`` (None: from its EXIF Make)."""
        chosen = _camera_of(image, camera, Path(self.options.store))
        choice = self._choice(chosen)
        start = time.perf_counter()
        if progress is None and image.height * image.width > 256 * 256:
            from adassr.runtime.console import one_line

            print(f"upscaling {one_line(str(image.path))} ({image.width}x{image.height}) on {self.device}...",
                  file=sys.stderr)
        if chosen not in self._backends:  # one runner per model: CUDA graphs are captured once
            backend = TorchBackend(choice.model, self.device, choice.label, self.run_options)
            backend.open()
            self._backends[chosen] = backend
        result = upscale_image(image, self._backends[chosen], scale=choice.scale, tiling=self.tiling,
                               outscale=self.options.outscale, progress=progress, check_output=check_output)
        log.info("%s took %.1f s", image.path, time.perf_counter() - start)
        return replace(result, model_name=choice.label)

    def check_ready(self, *, camera: str | None = None) -> None:
        """Load (and verify) the weights of an explicit ``camera`` before any image: damaged adapted
        weights are then one whole-run error, not one per image. Without a camera each image is
        routed on its own, so nothing is loaded yet."""
        if camera is not None:
            self._choice(camera)

    def computes_on_cpu(self, route: object = None) -> bool:
        """Whether the models compute on this machine's CPU (``--device auto`` without CUDA too)."""
        return bool(self.device.type == "cpu")

    def _choice(self, camera: str | None) -> TorchModelChoice:
        """The weights that serve ``camera``, loaded once; a camera whose weights failed to load fails
        again at once with the same error (its checksum is not recomputed for every image)."""
        if camera in self._failures:
            raise self._failures[camera]
        if camera not in self._choices:
            try:
                self._choices[camera] = choose_weights(self.options.store, camera, self.options.backbone, self.device)
            except AdassrError as exc:
                self._failures[camera] = exc
                raise
        return self._choices[camera]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        self._choices.clear()
        self._failures.clear()
