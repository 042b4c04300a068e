"""State-dict checks, the weights digest, and the :class:`LoadedBackbone` descriptor.

``weights_sha256`` (recorded by the cache, export and manifests) is the sha256 of the *tensors*,
not of a file: for each key in sorted order, ``key NUL dtype NUL shape NUL`` (dtype without the
``torch.`` prefix, shape as comma-separated ints) followed by the tensor's raw bytes (CPU,
C-contiguous, little-endian). Loaded weights are float32, so the same weights give the same digest
whether they came from ncnn files, the cache, a ``.pth`` or a ``.safetensors`` file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from adassr.adapt.archs.registry import BackboneEntry
from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.runtime.errors import ConfigError, WeightsError


@dataclass(frozen=True)
class LoadedBackbone:
    """A backbone ready to run, with its provenance.

    ``model`` is in eval mode (parameters still require grad, for adaptation); ``weights_sha256``
    is the digest of the weights as loaded (see the module docstring); ``source`` says where they
    came from (package file, cache, checkpoint path).
    """

    model: RRDBNet
    entry: BackboneEntry
    scale: int
    weights_sha256: str
    source: str

    def provenance(self) -> dict[str, str]:
        """Strings for a manifest: backbone name, scale, weights digest, source and licence."""
        return {
            "backbone": self.entry.name,
            "scale": str(self.scale),
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "licence": self.entry.licence,
        }


def state_dict_sha256(state: Mapping[str, Tensor]) -> str:
    """Hex sha256 of a state dict's keys, dtypes, shapes and bytes (see the module docstring)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        shape = ",".join(str(d) for d in tensor.shape)
        digest.update(f"{key}\0{dtype}\0{shape}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def check_finite(state: Mapping[str, Tensor], *, origin: str) -> None:
    """WeightsError naming the first tensor of ``state`` with NaN or infinite values. Called where weights
    are written: a diverged run's weights are never saved (readers check what they use themselves:
    the export refuses such weights with its own advice)."""
    for key in sorted(state):
        if not bool(torch.isfinite(state[key]).all()):
            raise WeightsError(f"{origin}: key {key!r} has NaN or infinite values (a diverged training run?); "
                               "they are not saved")


def expected_shapes(entry: BackboneEntry) -> dict[str, torch.Size]:
    """Parameter name -> shape of ``entry``'s architecture, in state-dict order (no allocation)."""
    with torch.device("meta"):
        model = entry.build()
    return {key: value.shape for key, value in model.state_dict().items()}


def check_state_dict(
    state: Mapping[str, object], expected: Mapping[str, torch.Size], *, origin: str
) -> dict[str, Tensor]:
    """Validate keys and shapes; return float32 contiguous tensors in ``expected`` order.

    Raises ``WeightsError`` naming the first missing, mis-shaped, non-tensor or unexpected key.
    """
    advice = "the weights belong to another architecture or are corrupt; pick the matching backbone"
    checked: dict[str, Tensor] = {}
    for key, shape in expected.items():
        value = state.get(key)
        if value is None:
            prefixed = [k for k in state if isinstance(k, str) and k.endswith("." + key)]
            hint = (f" (it has {prefixed[0]!r}: strip the prefix {prefixed[0][: -len(key)]!r} from every key, e.g. "
                    "the 'module.' that torch.nn.DataParallel adds)") if prefixed else ""
            raise WeightsError(f"{origin}: missing key {key!r} ({len(state)} keys present){hint}; {advice}")
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise WeightsError(
                f"{origin}: key {key!r} is not a floating-point tensor ({type(value).__name__}); {advice}")
        if value.shape != shape:
            raise WeightsError(
                f"{origin}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}; {advice}"
            )
        checked[key] = value.detach().to(torch.float32).contiguous()
    extra = [key for key in state if key not in expected]
    if extra:
        raise WeightsError(f"{origin}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all); {advice}")
    return checked


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; ``ConfigError`` for a name torch does not know or a CUDA device this
    machine or this torch build does not have (torch raised a bare AssertionError or RuntimeError)."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: this machine (or this torch build) has no CUDA GPU; use 'cpu'")
        if target.index is not None and target.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    return target


def assemble(
    entry: BackboneEntry,
    state: Mapping[str, object],
    *,
    source: str,
    device: str | torch.device = "cpu",
    weights_sha256: str | None = None,
) -> LoadedBackbone:
    """Check ``state`` against ``entry``, build the model around it and describe the result.

    ``weights_sha256`` may be passed when already known for exactly these float32 tensors.
    """
    target = checked_device(device)
    checked = check_state_dict(state, expected_shapes(entry), origin=source)
    with torch.device("meta"):
        model = entry.build()
    model.load_state_dict(checked, strict=True, assign=True)
    model = model.to(target).eval()
    digest = weights_sha256 or state_dict_sha256(checked)
    return LoadedBackbone(model=model, entry=entry, scale=entry.scale, weights_sha256=digest, source=source)
