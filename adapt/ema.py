"""Exponential moving average of weights (Eq. 16), kept in fp32 whatever the training precision."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from adassr.runtime.errors import ConfigError


class WeightEma:
    """Theta_A,t = alpha * Theta_A,t-1 + (1 - alpha) * Theta_t, for the named parameters given.

    Starts at the parameters' current values (Theta_A,0 = Theta_e^(k+1)).
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        self.decay = decay
        self._params = dict(named_parameters)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in self._params.items()
        }

    @torch.no_grad()
    def update(self) -> None:
        # one multi-tensor lerp instead of a kernel per parameter tensor (702 for RRDBNet x4plus)
        shadows = [self.shadow[name] for name in self._params]
        torch._foreach_lerp_(shadows, [p.to(torch.float32) for p in self._params.values()], 1.0 - self.decay)

    def view(self) -> Mapping[str, torch.Tensor]:
        """A read-only mapping of the current EMA weights (no copy: they change with :meth:`update`)."""
        return MappingProxyType(self.shadow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.shadow.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model`` (parameters with the same names)."""
        own = dict(model.named_parameters())
        for name, value in self.shadow.items():
            own[name].copy_(value.to(own[name].dtype))
