"""The export stage's exception type."""

from __future__ import annotations

from adassr.runtime.errors import AdassrError


class ExportError(AdassrError):
    """An export failed or its validation did not pass; nothing was published."""


class WeightsUnusable(ExportError):
    """The weights themselves cannot give a valid model (NaN, infinite outputs): only adapting the camera again
    helps. :func:`adassr.export.onnx.export_camera` adds the commands, which need the store and the photos."""
