"""Weights from files: official Real-ESRGAN ``.pth`` checkpoints and adapted ``.safetensors``.

``.pth`` files are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling); the
state dict is taken from ``params_ema`` if present, else ``params``, else the file itself.
Adapted weights are written as safetensors with metadata ``format``, ``backbone`` and
``weights_sha256``; reading them checks all three when present.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from adassr.adapt.archs.registry import DEFAULT_BACKBONE, BackboneEntry, BackboneRegistry, default_registry
from adassr.adapt.weights.cache import atomic_write_bytes
from adassr.adapt.weights.delta import DELTA_FORMAT
from adassr.adapt.weights.safetensors_bytes import safetensors_bytes
from adassr.adapt.weights.state import (
    LoadedBackbone,
    assemble,
    check_finite,
    check_state_dict,
    expected_shapes,
    state_dict_sha256,
)
from adassr.runtime.errors import WeightsError

WEIGHTS_FORMAT = "adassr-weights/1"
PTH_KEYS = ("params_ema", "params")


def _entry(arch: str | BackboneEntry, registry: BackboneRegistry | None) -> BackboneEntry:
    return arch if isinstance(arch, BackboneEntry) else (registry or default_registry()).get(arch)


def read_pth_state(path: str | Path) -> Mapping[str, object]:
    """The state dict inside a ``.pth`` file (``params_ema`` > ``params`` > bare dict)."""
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), str(exc)[:200])
        raise WeightsError(
            f"cannot read checkpoint {path} safely: it holds objects other than tensors and plain containers "
            f"({reason}); re-save it as a plain state dict with torch.save(model.state_dict(), path)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - garbage input raises arbitrary types; re-raised typed, chained
        raise WeightsError(
            f"cannot read checkpoint {path}: {exc}; check the path and that it is a torch .pth file") from exc
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    for key in PTH_KEYS:
        if key in loaded:
            inner = loaded[key]
            if not isinstance(inner, Mapping):
                raise WeightsError(f"checkpoint {path}: {key!r} is a {type(inner).__name__}, not a state dict")
            return inner
    return loaded


def load_checkpoint(
    path: str | Path,
    arch: str | BackboneEntry = DEFAULT_BACKBONE,
    *,
    device: str | torch.device = "cpu",
    registry: BackboneRegistry | None = None,
) -> LoadedBackbone:
    """Load an official Real-ESRGAN / BasicSR ``.pth`` into the architecture of ``arch``.

    ``WeightsError`` names the first missing, unexpected or mis-shaped key.
    """
    entry = _entry(arch, registry)
    return assemble(entry, read_pth_state(path), source=f"checkpoint {path}", device=device)


def save_safetensors_weights(
    path: str | Path,
    weights: nn.Module | Mapping[str, Tensor],
    entry: BackboneEntry,
    *,
    metadata: Mapping[str, str] | None = None,
    atomic: bool = True,
) -> str:
    """Write float32 weights as safetensors; return their ``weights_sha256``.

    ``metadata`` adds string fields (it cannot override ``format``, ``backbone``, ``weights_sha256``).
    With ``atomic`` (default) the file is written through a temporary file and renamed; pass
    ``atomic=False`` when ``path`` already is a temporary file (e.g. a store transaction's).
    """
    raw = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # The same check as loading, so a file that could never be loaded as ``entry`` is never written.
    checked = check_state_dict(raw, expected_shapes(entry), origin=f"the weights to save as {entry.name!r}")
    check_finite(checked, origin=f"the weights to save as {entry.name!r}")
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in checked.items()}
    digest = state_dict_sha256(state)
    meta = {**(metadata or {}), "format": WEIGHTS_FORMAT, "backbone": entry.name, "weights_sha256": digest}
    data = safetensors_bytes(state, metadata=meta)
    if atomic:
        atomic_write_bytes(path, data)
    else:
        Path(path).write_bytes(data)
    return digest


def save_delta_weights(
    path: str | Path,
    weights: nn.Module | Mapping[str, Tensor],
    backbone: LoadedBackbone,
    *,
    base_state: Mapping[str, Tensor] | None = None,
    metadata: Mapping[str, str] | None = None,
    atomic: bool = True,
) -> str:
    """Write only the tensors that differ from the backbone (:mod:`adassr.adapt.weights.delta`).

    ``base_state`` is the backbone's weights before adaptation (default: ``backbone.model``'s, which
    must then be untouched). Returns the ``weights_sha256`` of the full weights.
    """
    from adassr.adapt.weights.delta import changed_tensors, delta_metadata

    raw = weights.state_dict() if isinstance(weights, nn.Module) else weights
    check_finite(check_state_dict(raw, expected_shapes(backbone.entry),
                                  origin=f"the weights to save as {backbone.entry.name!r}"),
                 origin=f"the weights to save as {backbone.entry.name!r}")
    base = base_state if base_state is not None else backbone.model.state_dict()
    base_digest = state_dict_sha256(check_state_dict(base, expected_shapes(backbone.entry), origin="the base weights"))
    if base_digest != backbone.weights_sha256:  # e.g. backbone.model trained in place: the delta would be empty
        raise WeightsError(f"the base weights hash to {base_digest[:12]}..., not to the backbone's "
                           f"{backbone.weights_sha256[:12]}...: they were changed (trained in place?); pass the "
                           "backbone's weights from before adaptation as base_state")
    delta = changed_tensors(raw, base)
    meta = {**(metadata or {}), **delta_metadata(raw, delta, backbone.entry.name, backbone.weights_sha256)}
    data = safetensors_bytes(delta, metadata=meta)
    if atomic:
        atomic_write_bytes(path, data)
    else:
        Path(path).write_bytes(data)
    return meta["weights_sha256"]


def load_safetensors_weights(
    path: str | Path,
    entry: str | BackboneEntry = DEFAULT_BACKBONE,
    *,
    device: str | torch.device = "cpu",
    registry: BackboneRegistry | None = None,
    base: LoadedBackbone | None = None,
) -> LoadedBackbone:
    """Load weights written by :func:`save_safetensors_weights` or :func:`save_delta_weights`
    (or any RRDBNet safetensors file).

    A delta file is combined with the backbone (``base``, default: the registry backbone
    ``entry`` loaded now) after checking that it is the backbone the delta was made from.
    ``WeightsError`` if the file is unreadable, was saved for another backbone, is a delta on other
    backbone weights, fails its recorded ``weights_sha256``, or does not match the architecture.
    """
    entry = _entry(entry, registry)
    if Path(path).is_dir():
        raise WeightsError(f"cannot read weights {path}: it is a folder, not a file; give the "
                           ".safetensors file inside it (a store camera's is weights.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except (OSError, SafetensorError) as exc:
        raise WeightsError(
            f"cannot read weights {path}: {exc}; the file is missing, truncated or not safetensors") from exc
    saved_for = meta.get("backbone")
    if saved_for is not None and saved_for != entry.name:
        raise WeightsError(
            f"{path} holds weights for backbone {saved_for!r}, not {entry.name!r} (what asks for it, e.g. a "
            f"camera's manifest, names the other); load it as {saved_for!r}, or adapt the camera again")
    if meta.get("format") == DELTA_FORMAT:
        from adassr.adapt.weights.delta import rebuild_state
        from adassr.adapt.weights.loader import load_backbone

        base = base if base is not None else load_backbone(entry.name, registry=registry)
        state = rebuild_state(state, meta, base.model.state_dict(), base.weights_sha256, origin=str(path))
    loaded = assemble(entry, state, source=f"safetensors {path}", device=device)
    recorded = meta.get("weights_sha256")
    if recorded is not None and recorded != loaded.weights_sha256:
        raise WeightsError(
            f"{path}: tensors hash to {loaded.weights_sha256}, but the file records {recorded}; the file is corrupt"
        )
    return loaded
