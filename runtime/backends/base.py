"""The inference backend interface: open, validated ``infer`` on NCHW float arrays, close.

Shaped like Polygraphy's runners: the public :meth:`Backend.infer` checks its input and output and
delegates to a private ``_infer``; a backend is a context manager that opens on enter and closes
on exit. A backend holds its session and nothing per call, so one instance may serve many calls.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from types import TracebackType

import numpy as np

from adassr.runtime.errors import BackendError, ConfigError, ModelOutputError, ShapeError


class Backend(abc.ABC):
    """One loaded model. Subclasses implement ``_open``, ``_infer`` and ``_close``."""

    def __init__(self, model_path: str | Path) -> None:
        if not isinstance(model_path, (str, os.PathLike)):
            raise ConfigError(f"model_path must be a path (str or os.PathLike), got {type(model_path).__qualname__}")
        self._model_path = Path(model_path)
        self._opened = False

    # -- identity ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Backend kind, e.g. ``"onnxruntime"``."""

    @property
    def providers(self) -> tuple[str, ...]:
        """Execution providers / devices actually in use (valid once opened)."""
        return ()

    @property
    def model_path(self) -> Path:
        return self._model_path

    def model_metadata(self) -> dict[str, str]:
        """The model file's own key-value metadata (an ONNX file's ``metadata_props``: ``adassr export``
        records camera, scale, precision there), valid once opened; empty where the backend has none."""
        return {}

    @property
    def is_open(self) -> bool:
        return self._opened

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> Backend:
        """Load the model; calling it on an open backend does nothing. Returns ``self``."""
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        """Release the model; safe to call twice."""
        if self._opened:
            self._opened = False
            self._close()

    def __enter__(self) -> Backend:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inference --------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an ``N x 3 x H x W`` float batch in [0, 1]; return float32 ``N x 3 x sH x sW``."""
        if not self._opened:
            raise BackendError(
                f"the {self.name} backend for {self._model_path.name} is not open (or was closed); "
                "call open() or use it as a context manager"
            )
        if not isinstance(batch, np.ndarray):
            raise BackendError(f"model input must be a numpy array, got {type(batch).__module__}."
                               f"{type(batch).__qualname__} (a torch tensor: .numpy() it)")
        if batch.ndim != 4 or batch.shape[1] != 3:
            shape = getattr(batch, "shape", ())
            raise ShapeError("model input batch", tuple(shape), "(N, 3, H, W) RGB")
        if not np.issubdtype(batch.dtype, np.floating):
            raise BackendError(
                f"model input must be a float array in [0, 1], got dtype {batch.dtype}; "
                "convert images with adassr.runtime.images.to_float32 first"
            )
        if min(batch.shape) < 1:
            raise ShapeError("model input batch", batch.shape, "no empty dimension")
        out = self._infer(np.ascontiguousarray(batch))
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[1] != 3:
            raise ModelOutputError(
                f"{self.name} output of {self._model_path.name}", out.shape, f"({batch.shape[0]}, 3, sH, sW)")
        return np.asarray(out, dtype=np.float32)

    # -- implementation ---------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def __repr__(self) -> str:
        state = "open" if self._opened else "closed"
        return f"{type(self).__name__}({str(self._model_path)!r}, {state}, providers={self.providers})"
