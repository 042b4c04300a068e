"""Loss-weight maps kept between runs, so re-adapting a camera on the same photos does not recompute them.

A self-similarity map costs a full trunk forward pass of its image (the most expensive part of an
adaptation's set-up on a CPU). Cameras are re-adapted as new photos arrive, and most photos of the
group are the same as last time, so each map is stored under a key of everything it depends on:

- the image's pixels (float32 bytes and shape),
- the digest of the backbone weights the features come from,
- the attention configuration (every field),
- the compute precision and the device type (bf16 and fp32 maps differ in the last bits; fp32
  maps of a CPU from onnxruntime or PyTorch agree to float rounding and share a key, see
  :mod:`adassr.adapt.feature_trunk`).

Files are ``<folder>/<key>.npy`` (the adaptation uses ``<store>/_cache/weight_maps``), written
atomically. A file that cannot be read, or holds the wrong shape or non-finite values, is ignored
(with a log line) and replaced by a fresh map. The folder is capped at :data:`MAX_CACHE_BYTES`:
after a write the least recently used files are removed, never the maps of the run writing (a group
of large photos whose maps exceed the cap evicted its own first maps as it wrote the last ones, so a
re-run computed every map again); such a run leaves the folder above the cap until later runs' writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np

from adassr.adapt.config import AttentionConfig
from adassr.runtime.errors import StoreError
from adassr.runtime.lru_folder import evict_least_recent, remove_dead_writes
from adassr.runtime.store import CACHE_FOLDER, atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FORMAT = "adassr-weight-map/1"
MAX_CACHE_BYTES = 256 * 1024 * 1024
STORE_FOLDER = (CACHE_FOLDER, "weight_maps")  # under the store root


def store_cache_folder(store_root: Path) -> Path:
    """Where adaptation keeps the weight maps of a store: ``<store>/_cache/weight_maps``."""
    return store_root.joinpath(*STORE_FOLDER)


@dataclass(frozen=True)
class WeightMapCache:
    """Maps for one backbone and setting: :meth:`get_or_compute` returns the stored map or computes and stores it."""

    folder: Path
    backbone_sha256: str
    attention: AttentionConfig
    precision: str
    device_type: str
    max_bytes: int = MAX_CACHE_BYTES
    used: set[str] = field(default_factory=set, compare=False, repr=False)  # this run's map files: never evicted

    def key(self, image: np.ndarray) -> str:
        """Hex sha256 of the image's pixels and shape together with this cache's settings."""
        pixels = np.ascontiguousarray(image, dtype=np.float32)
        settings = {"format": CACHE_FORMAT, "backbone": self.backbone_sha256, "attention": asdict(self.attention),
                    "precision": self.precision, "device": self.device_type, "shape": list(pixels.shape)}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        digest.update(pixels.data)
        return digest.hexdigest()

    def get_or_compute(self, image: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The weight map of ``image`` (``H x W`` float32): from the cache, else ``compute(image)``, then stored."""
        path = self.folder / f"{self.key(image)}.npy"
        self.used.add(path.name)
        remove_dead_writes(self.folder)
        cached = self._load(path, image.shape[:2])
        if cached is not None:
            return cached
        weight = np.asarray(compute(image), dtype=np.float32)
        self._store(path, weight)
        return weight

    def _load(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            # mapped, not read: a damaged header claiming a huge shape must not allocate it (a 10^6 x 10^6
            # header stopped the run with MemoryError); the shape and dtype are checked before the copy
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.shape != shape or mapped.dtype != np.float32:
                log.warning("ignoring the cached weight map %s (shape %s, dtype %s, expected %s float32); "
                            "recomputing it", path, mapped.shape, mapped.dtype, shape)
                return None
            weight = np.array(mapped)
            del mapped
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, MemoryError) as exc:
            log.warning("ignoring the unreadable cached weight map %s (%s); recomputing it", path, exc)
            return None
        if not np.isfinite(weight).all():
            log.warning("ignoring the cached weight map %s (it holds values that are not finite); recomputing it",
                        path)
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves its maps
            os.utime(path)  # least recently used goes first when the folder is over its cap
        return weight

    def _store(self, path: Path, weight: np.ndarray) -> None:
        buffer = BytesIO()
        np.save(buffer, weight, allow_pickle=False)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())
            self._evict()
        except (OSError, StoreError) as exc:  # the cache only saves time: a full disk must not fail the run
            log.warning("could not store the weight map in %s (%s); the run goes on without the cache",
                        self.folder, exc)

    def _evict(self) -> None:
        evict_least_recent(self.folder, "*.npy", self.max_bytes, keep=self.used)
