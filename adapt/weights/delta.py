"""Per-camera weights as a delta on the backbone: only the tensors adaptation changed.

A camera adapted from a backbone shares most of its 16.7 M parameters with it (tail training
changes the last RRDB blocks and the upsampler only), so its weights file stores the tensors that
differ from the backbone plus the backbone's identity, not a full copy of the network.

File format (safetensors, float32 tensors), metadata:

- ``format`` = :data:`DELTA_FORMAT`
- ``backbone``: the registry name; ``backbone_weights_sha256``: the digest
  (:func:`~adassr.adapt.weights.state.state_dict_sha256`) of the backbone weights the delta applies to
- ``weights_sha256``: the digest of the full rebuilt weights (what the manifest records, as for a
  full file); ``delta_tensors`` / ``total_tensors``: counts.

:func:`rebuild_state` refuses a delta whose backbone digest does not match the backbone given
(another version of the backbone package, another backbone), and checks the rebuilt digest.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from adassr.adapt.weights.state import state_dict_sha256
from adassr.runtime.errors import WeightsError

DELTA_FORMAT = "adassr-delta/1"


def changed_tensors(state: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Float32 CPU copies of the tensors of ``state`` that differ from ``base`` (bit for bit).

    Raises WeightsError if the two do not have the same keys and shapes.
    """
    if set(state) != set(base):
        extra, missing = sorted(set(state) - set(base)), sorted(set(base) - set(state))
        raise WeightsError(f"weights and backbone have different tensors (extra {extra[:3]}, missing {missing[:3]})")
    out = {}
    for key, value in state.items():
        mine = value.detach().to("cpu", torch.float32)
        theirs = base[key].detach().to("cpu", torch.float32)
        if mine.shape != theirs.shape:
            raise WeightsError(f"tensor {key!r} has shape {tuple(mine.shape)}, the backbone {tuple(theirs.shape)}")
        # bit for bit, as the weights' digest hashes them: torch.equal takes -0.0 for 0.0 (and the EMA's
        # lerp turns one into the other), which left a changed tensor out of the delta
        if not torch.equal(mine.contiguous().view(torch.int32), theirs.contiguous().view(torch.int32)):
            out[key] = mine.contiguous()
    return out


def delta_metadata(state: Mapping[str, Tensor], delta: Mapping[str, Tensor], backbone_name: str,
                   backbone_sha256: str) -> dict[str, str]:
    """The metadata of a delta file for full weights ``state`` (see the module docstring)."""
    return {
        "format": DELTA_FORMAT, "backbone": backbone_name, "backbone_weights_sha256": backbone_sha256,
        "weights_sha256": state_dict_sha256({k: v.detach().to("cpu", torch.float32) for k, v in state.items()}),
        "delta_tensors": str(len(delta)), "total_tensors": str(len(state)),
    }


def rebuild_state(delta: Mapping[str, Tensor], meta: Mapping[str, str], base: Mapping[str, Tensor],
                  base_sha256: str, *, origin: str) -> dict[str, Tensor]:
    """Full weights from a delta and the backbone it was made from; WeightsError on any mismatch."""
    wanted = meta.get("backbone_weights_sha256")
    if wanted != base_sha256:
        raise WeightsError(
            f"{origin} is a delta on backbone {meta.get('backbone')!r} weights {str(wanted)[:12]}..., but the "
            f"installed backbone's weights are {base_sha256[:12]}...; refusing to combine them: install the "
            "backbone package version the camera was adapted with, or adapt the camera again"
        )
    unknown = [k for k in delta if k not in base]
    if unknown:
        raise WeightsError(f"{origin}: delta tensor {unknown[0]!r} is not in the backbone; the file is corrupt")
    state = {k: (delta[k] if k in delta else v.detach().to("cpu", torch.float32)) for k, v in base.items()}
    digest = state_dict_sha256(state)
    if meta.get("weights_sha256") not in (None, digest):
        raise WeightsError(f"{origin}: rebuilt weights hash to {digest[:12]}..., the file records "
                           f"{str(meta.get('weights_sha256'))[:12]}...; the file is corrupt")
    return state
