"""PyTorch inference tuned for a GPU box without TensorRT: channels_last, fp16/bf16, CUDA graphs.

:class:`TorchRunner` wraps an SR model (NCHW float in [0, 1] -> NCHW, ``scale`` times larger) and
runs it as configured by :class:`TorchRunOptions`:

- ``precision``: ``fp32``; ``fp16`` or ``bf16`` run the whole model in that dtype (weights and
  activations; the output is returned as float32). On CPU only fp32 and bf16 are offered.
- ``channels_last``: model and input in NHWC memory order (tensor-core convolutions on CUDA).
- ``cuda_graph``: the first call with a new input shape runs eagerly twice (warm-up, cuDNN
  algorithm choice) and then captures the forward pass into a CUDA graph with static input and
  output buffers; later calls of that shape copy into the static input and replay the graph.
  Meant for the runtime's fixed tile shape. CUDA only.

A runner holds its graphs and static buffers; one runner is used by one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adassr.runtime.errors import ConfigError

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TorchRunOptions:
    """How to run the model (see the module docstring)."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.precision not in TORCH_PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(TORCH_PRECISIONS)}, got {self.precision!r}")
        is_cuda = torch.device(self.device).type == "cuda"
        if self.cuda_graph and not is_cuda:
            raise ConfigError("CUDA graphs need a CUDA device (--device cuda / --gpu N)")
        if self.precision == "fp16" and not is_cuda:
            raise ConfigError("fp16 inference needs a CUDA device; use bf16 or fp32 on the CPU")

    @property
    def label(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.cuda_graph:
            parts.append("CUDA graph")
        return " ".join(parts)


class TorchRunner:
    """Runs an SR model as configured (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, options: TorchRunOptions) -> None:
        self._options = options
        self._device = torch.device(options.device)
        self._dtype = _DTYPES[options.precision]
        self._format = torch.channels_last if options.channels_last else torch.contiguous_format
        model = model.eval().to(self._device, dtype=self._dtype)
        self._model = model.to(memory_format=self._format)  # type: ignore[call-overload]  # untyped overload
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @property
    def options(self) -> TorchRunOptions:
        return self._options

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._device, dtype=self._dtype, non_blocking=True).contiguous(memory_format=self._format)

    @torch.inference_mode()
    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The model output for ``x`` (any device / dtype) as a tensor on the runner's device, in its dtype."""
        if not self._options.cuda_graph:
            return self._model(self._prepare(x))
        shape = tuple(x.shape)
        entry = self._graphs.get(shape)
        if entry is None:
            entry = self._capture(self._prepare(x))
            self._graphs[shape] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._model(static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._model(static_in)
        return graph, static_in, static_out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 numpy in, NCHW float32 numpy out (the runtime's ``InferFn``)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._device.type == "cuda":
            x = x.pin_memory()
        out = self.run_tensor(x)
        return out.float().cpu().numpy()

    def clear(self) -> None:
        """Drop captured graphs and their static buffers."""
        self._graphs.clear()
