"""The export stage's exception type."""

from __future__ import annotations

from adassr.runtime.errors import AdassrError


class ExportError(AdassrError):
    """An export failed or its validation did not pass; nothing was published."""
