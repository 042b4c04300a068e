"""Explicit backend registry: a backend kind name -> the function that builds and opens it.

Nothing registers itself; the table below is the whole list. Heavy libraries are imported by the
backend when it opens, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from adassr.runtime.backends.base import Backend
from adassr.runtime.errors import BackendError, ConfigError


def _make_onnxruntime(
    model_path: Path,
    *,
    providers: Sequence[str] | str,
    threads: int | None,
    require: bool,
    input_name: str | None,
    output_name: str | None,
) -> Backend:
    from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        model_path,
        providers=providers,
        threads=threads,
        require=require,
        input_name=input_name,
        output_name=output_name,
    )


def _tensorrt_not_built(model_path: Path, **_: object) -> Backend:
    raise BackendError(
        "the native TensorRT backend is not available in this build (it comes with the TensorRT "
        f"engine issue; nothing was opened for {model_path.name}); use --backend onnxruntime, "
        "optionally with --providers tensorrt,cuda,cpu to use onnxruntime's TensorRT execution provider"
    )


BACKENDS: Mapping[str, Callable[..., Backend]] = MappingProxyType(
    {
        "onnxruntime": _make_onnxruntime,
        "tensorrt": _tensorrt_not_built,
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
) -> Backend:
    """Build the ``kind`` backend for ``model_path`` and open it. Close it (or use ``with``) after."""
    factory = BACKENDS.get(kind)
    if factory is None:
        raise ConfigError(f"unknown backend {kind!r}; valid backends are {', '.join(BACKENDS)}")
    backend = factory(
        Path(model_path),
        providers=providers,
        threads=threads,
        require=require,
        input_name=input_name,
        output_name=output_name,
    )
    return backend.open()
