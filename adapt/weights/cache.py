"""On-disk cache of converted backbones (safetensors).

Files are written with :func:`adassr.runtime.store.atomic_write_bytes` (re-exported here as
``atomic_write_bytes``, with ``file_sha256`` = :func:`adassr.runtime.store.sha256_file`).

Location: ``$ADASSR_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/adassr`` (absolute paths only, per
the XDG spec), else ``~/.cache/adassr``; a backbone lives in ``backbones/<name>.safetensors``.

The safetensors metadata records ``format``, ``backbone``, ``weights_sha256`` (the tensor digest of
:func:`adassr.adapt.weights.state.state_dict_sha256`) and the sha256 of the source ``.param`` / ``.bin``.
A cache file is used only when it reads cleanly, its metadata matches the current source files,
its keys and shapes match the architecture and its tensors hash to the recorded digest; otherwise
a warning is logged and the caller rebuilds it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from adassr.adapt.weights.safetensors_bytes import safetensors_bytes
from adassr.adapt.weights.state import check_state_dict, state_dict_sha256
from adassr.runtime.errors import WeightsError
from adassr.runtime.store import atomic_write_bytes
from adassr.runtime.store import sha256_file as file_sha256

__all__ = [
    "CACHE_ENV",
    "CACHE_FORMAT",
    "atomic_write_bytes",
    "backbone_cache_path",
    "default_cache_dir",
    "file_sha256",
    "read_cached_state",
    "write_cached_state",
]

log = logging.getLogger(__name__)

CACHE_ENV = "ADASSR_CACHE_DIR"
CACHE_FORMAT = "adassr-backbone-cache/1"


def default_cache_dir() -> Path:
    """The user cache root (see the module docstring); not created here."""
    from adassr.runtime.errors import ConfigError

    override = os.environ.get(CACHE_ENV)
    if override:
        try:
            return Path(override).expanduser()
        except RuntimeError:  # "~user/..." of a user this system does not know
            raise ConfigError(f"{CACHE_ENV}={override!r} names the home folder of a user this system does not "
                              f"know; set {CACHE_ENV} to an absolute path") from None
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "adassr"
    try:
        return Path.home() / ".cache" / "adassr"
    except RuntimeError:  # no HOME and no passwd entry (a container run with a bare --user)
        raise ConfigError(f"there is no home folder to keep the cache in (HOME is not set); set {CACHE_ENV} to a "
                          "writable folder") from None


def backbone_cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Cache file of backbone ``name`` under ``cache_dir`` (default: :func:`default_cache_dir`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "backbones" / f"{name}.safetensors"


def write_cached_state(path: str | Path, state: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """Store ``state`` with ``metadata`` plus ``format`` and ``weights_sha256``; return the digest.

    Raises ``OSError`` if its folder cannot be made, ``StoreError`` if the write itself fails (a full disk).
    """
    digest = state_dict_sha256(state)
    meta = {**metadata, "format": CACHE_FORMAT, "weights_sha256": digest}
    atomic_write_bytes(path, safetensors_bytes(dict(state), metadata=meta))
    return digest


def read_cached_state(
    path: str | Path, metadata: Mapping[str, str], shapes: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], str] | None:
    """Return ``(state, weights_sha256)`` from a valid cache file, else ``None``.

    ``None`` without a warning when the file does not exist; with a warning (and the reason) when
    it is unreadable, truncated, stale (``metadata`` differs), mis-shaped or fails its checksum.
    """
    path = Path(path)
    if not path.exists():
        log.debug("no backbone cache at %s", path)
        return None
    try:
        return _read_valid(path, metadata, shapes)
    except (OSError, SafetensorError, WeightsError) as exc:
        log.warning("backbone cache %s is unusable (%s); rebuilding it from the ncnn files", path, exc)
        return None


def _read_valid(
    path: Path, metadata: Mapping[str, str], shapes: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], str]:
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata() or {}
        wanted = {**metadata, "format": CACHE_FORMAT}
        stale = sorted(key for key, value in wanted.items() if stored.get(key) != value)
        if stale:
            raise WeightsError(f"metadata {', '.join(stale)} does not match the current source (stale or foreign)")
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    state = check_state_dict(state, shapes, origin=str(path))
    digest = state_dict_sha256(state)
    if digest != stored.get("weights_sha256"):
        recorded = stored.get("weights_sha256", "(none)")
        raise WeightsError(f"checksum mismatch: tensors hash to {digest[:12]}..., recorded {recorded[:12]}...")
    return state, digest
