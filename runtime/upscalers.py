"""Upscalers: what ``adassr upscale --backend NAME`` runs, found by name in an explicit registry.

An upscaler routes each image to a model and upscales it (:class:`ImageUpscaler`). The runtime
provides one, ``onnxruntime`` (:class:`adassr.runtime.pipeline.Upscaler` over the store's exported
models, opened through the backend registry of :mod:`adassr.runtime.backends`). Other layers add
theirs without the runtime knowing them: whoever composes the application (the umbrella CLI)
builds a registry from :func:`runtime_upscalers` and registers more factories, e.g. the PyTorch
upscaler of ``adassr.adapt``. Nothing registers itself at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adassr.runtime.errors import ConfigError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import OutputCheck, RuntimeOptions, Upscaler, UpscaleResult
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

TileProgress = Callable[[int, int], None]
"""``progress(done, total)``, called with 0 before the first batch of tiles of one image and after each batch."""


class ImageUpscaler(Protocol):
    """Serves images: picks the model for each one and upscales it. Close it (or use ``with``)."""

    def upscale(
        self, image: LoadedImage, *, camera: str | None = None, progress: TileProgress | None = None,
        check_output: OutputCheck | None = None,
    ) -> UpscaleResult:
        """Upscale one image with the model of ``camera`` (None: the image's camera, see ``routing.route_by_image``).

        ``check_output(height, width)`` is called with the final size before any model time is spent
        (see :data:`adassr.runtime.pipeline.OutputCheck`)."""
        ...

    def close(self) -> None:
        """Release every model this upscaler opened; safe to call twice."""
        ...


UpscalerFactory = Callable[[RuntimeOptions], ImageUpscaler]
"""Builds an upscaler for the options; raises :class:`~adassr.runtime.errors.AdassrError` when it cannot."""


class UpscalerPrepare(Protocol):
    """Runs once before a run builds its upscaler: checks (or makes) what the upscaler needs to serve.

    ``camera`` is the explicitly requested camera (None: images are routed by their folder, EXIF Make or name prefix);
    ``samples`` are the run's input images, in order (a first-use export validates on a readable one).
    Raises :class:`~adassr.runtime.errors.AdassrError`
    with what to do when the upscaler cannot serve at all.
    """

    def __call__(self, options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path]) -> None: ...


def require_store(options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path]) -> None:
    """The ``onnxruntime`` upscaler's check: the store exists (``StoreError`` saying what to run)."""
    CameraStore.open(options.store, FALLBACK_CAMERA)


@dataclass(frozen=True)
class UpscalerEntry:
    """One kind of upscaler (a ``--backend`` choice).

    ``any_size``: its models take inputs of any height and width, so a small image runs at
    its own size; ``False`` pads every tile to the full tile size (fixed-shape models).
    """

    name: str
    factory: UpscalerFactory
    help: str
    any_size: bool = True
    prepare: UpscalerPrepare | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ConfigError(f"upscaler name {self.name!r} must be non-empty, lower-case, without spaces")


class UpscalerRegistry:
    """Upscaler name -> :class:`UpscalerEntry`, in registration order (the first is the default)."""

    def __init__(self, entries: Iterable[UpscalerEntry] = ()) -> None:
        self._entries: dict[str, UpscalerEntry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: UpscalerEntry) -> None:
        """Add ``entry``; ``ConfigError`` if its name is taken."""
        if entry.name in self._entries:
            raise ConfigError(f"upscaler {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> UpscalerEntry:
        """The entry called ``name``; ``ConfigError`` naming the valid ones otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown backend {name!r}; valid backends are {', '.join(self._entries)}") from None

    def create(self, options: RuntimeOptions) -> ImageUpscaler:
        """The upscaler ``options.backend`` built for ``options``."""
        return self.get(options.backend).factory(options)

    def describe(self) -> str:
        """One line for ``--help``: ``name (help), ...``."""
        return ", ".join(f"{e.name} ({e.help})" for e in self._entries.values())


def _with_tensorrt(prepare: UpscalerPrepare) -> UpscalerPrepare:
    def check(options: RuntimeOptions, *, camera: str | None, samples: Sequence[Path]) -> None:
        from adassr.runtime.engines.trt import load_tensorrt

        load_tensorrt()  # a missing TensorRT is a whole-run problem, not a per-image one
        prepare(options, camera=camera, samples=samples)

    return check


def runtime_upscalers(prepare: UpscalerPrepare = require_store) -> UpscalerRegistry:
    """A new registry with the runtime's own upscalers: ``onnxruntime`` (the default) and ``tensorrt``.

    Both serve the store's models through :class:`~adassr.runtime.pipeline.Upscaler`; ``tensorrt``
    runs a TensorRT engine per camera (built or refitted from its ONNX model on first use, cached in
    the store) on fixed tile shapes. ``prepare`` runs before a run opens the store; the default only
    checks that the store exists (the umbrella CLI passes one that exports the fallback model on
    first use).
    """
    return UpscalerRegistry([
        UpscalerEntry("onnxruntime", Upscaler, "exported ONNX models from the store", prepare=prepare),
        UpscalerEntry("tensorrt", Upscaler, "a TensorRT engine per camera, built or refitted on first use "
                      "and cached in the store", any_size=False, prepare=_with_tensorrt(prepare)),
    ])
