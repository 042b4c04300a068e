"""Explicit backend registry: a backend kind name -> the function that builds and opens it.

Nothing registers itself; the table below is the whole list. Heavy libraries are imported by the
backend when it opens, never here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from adassr.runtime.backends.base import Backend
from adassr.runtime.backends.ort_options import GpuProviderSettings
from adassr.runtime.errors import BackendError, ConfigError


def _make_onnxruntime(
    model_path: Path,
    *,
    providers: Sequence[str] | str,
    threads: int | None,
    require: bool,
    input_name: str | None,
    output_name: str | None,
    gpu: GpuProviderSettings | None = None,
) -> Backend:
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        model_path,
        providers=providers,
        threads=threads,
        require=require,
        input_name=input_name,
        output_name=output_name,
        gpu=gpu,
    )


def _make_tensorrt(model_path: Path, *, gpu: GpuProviderSettings | None = None, cuda_graph: bool = False,
                   streams: int = 2, **_: object) -> Backend:
    """A TensorRT engine file (``model_path``), e.g. from :func:`adassr.runtime.engines.manage.ensure_camera_engine`."""
    from adassr.runtime.backends.tensorrt import TensorRTBackend

    if model_path.suffix != ".engine":
        raise BackendError(
            f"the tensorrt backend runs TensorRT engines, not {model_path.name}; build one with "
            "`adassr export --camera NAME --engine tensorrt` (adassr upscale --backend tensorrt does this on demand)"
        )
    return TensorRTBackend(model_path, device=gpu.device_id if gpu else 0, streams=streams, cuda_graph=cuda_graph)


BACKENDS: Mapping[str, Callable[..., Backend]] = MappingProxyType(
    {
        "onnxruntime": _make_onnxruntime,
        "tensorrt": _make_tensorrt,
    }
)
"""Every backend kind this build knows, in preference order."""


def open_backend(
    kind: str,
    model_path: str | Path,
    *,
    providers: Sequence[str] | str = ("cpu",),
    threads: int | None = None,
    require: bool = False,
    input_name: str | None = None,
    output_name: str | None = None,
    gpu: GpuProviderSettings | None = None,
    cuda_graph: bool = False,
) -> Backend:
    """Build the ``kind`` backend for ``model_path`` and open it. Close it (or use ``with``) after.

    ``gpu`` carries the GPU settings (device, onnxruntime provider options); ``cuda_graph`` applies
    to the tensorrt backend.
    """
    factory = BACKENDS.get(kind)
    if factory is None:
        raise ConfigError(f"unknown backend {kind!r}; valid backends are {', '.join(BACKENDS)}")
    if not isinstance(model_path, (str, os.PathLike)):
        raise ConfigError(f"model_path must be a path (str or os.PathLike), got {type(model_path).__qualname__}")
    backend = factory(
        Path(model_path),
        providers=providers,
        threads=threads,
        require=require,
        input_name=input_name,
        output_name=output_name,
        gpu=gpu,
        **({"cuda_graph": cuda_graph} if kind == "tensorrt" else {}),
    )
    return backend.open()
