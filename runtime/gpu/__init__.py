"""CUDA through ``cuda-python`` (no torch, no pycuda): device queries, buffers, streams, graphs.

``cuda-python`` is imported when a function here is first called, never at import time; without
it, or without a driver, calls raise :class:`~adassr.runtime.errors.BackendError` saying so.
"""

from __future__ import annotations

from adassr.runtime.gpu.cudart import (
    CudaGraph,
    DeviceBuffer,
    PinnedBuffer,
    Stream,
    device_count,
    device_identity,
    memory_info,
    set_device,
)

__all__ = [
    "CudaGraph", "DeviceBuffer", "PinnedBuffer", "Stream", "device_count", "device_identity", "memory_info",
    "set_device",
]
