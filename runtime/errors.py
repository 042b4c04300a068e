"""Typed exceptions shared by every stage.

Every message says what was wrong and what to do about it. Stages subclass
:class:`AdassrError` so a CLI can catch one type and print a clean message.
"""

from __future__ import annotations


class AdassrError(Exception):
    """Base class of every error this project raises on purpose."""


class ImageError(AdassrError):
    """An image could not be read or written."""


class ImageTooLargeError(ImageError):
    """An image is too large: its pixel count over the reader's limit (checked from the header,
    before decoding), its output over the output limit, or its output larger than the output
    format holds (both checked before the upscale)."""


class PixelLimitError(ImageTooLargeError):
    """An image has more pixels than the reader's ``max_pixels`` (checked from the header): the limit
    its caller chose, unlike the decoder's own guard against decompression bombs."""


class WeightsError(AdassrError):
    """Model weights are missing, corrupt or do not match the architecture."""


class ShapeError(AdassrError):
    """A tensor or array has the wrong shape."""

    def __init__(self, what: str, actual: tuple[int, ...], expected: str) -> None:
        super().__init__(f"{what}: got shape {tuple(actual)}, expected {expected}")
        self.actual = tuple(actual)
        self.expected = expected


class StoreError(AdassrError):
    """The artifact store is missing, unwritable, or holds files that fail their checksum."""


class ConfigError(AdassrError):
    """An option or argument has an invalid value."""


class CameraError(AdassrError):
    """A camera group is unknown or has no usable images."""


class BackendError(AdassrError):
    """An inference backend could not be created or failed to run."""


class ModelOutputError(BackendError, ShapeError):
    """A model's output (or an engine's accepted input) has another shape than the model's record says:
    the model file is wrong for its manifest (another scale, a broken export), not the caller's input.
    Both a :class:`BackendError` (the server answers 500 ``inference``) and a :class:`ShapeError`."""


def unexpected_error(exc: BaseException) -> str:
    """How a batch command reports an exception that is not an :class:`AdassrError` for one file (the
    file is skipped, the batch goes on): its type and message, and what to do (the traceback is
    logged at debug level, shown with ``-vv``)."""
    detail = str(exc) or "no message"
    return (f"unexpected {type(exc).__name__} ({detail}); this is a bug in adassr or a library it uses: rerun "
            "with -vv for the traceback and report it with the file")
