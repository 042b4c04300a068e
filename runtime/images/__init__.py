"""Image I/O for the torch-free runtime: decode, EXIF camera name and orientation, atomic write.

Pixels are numpy arrays H x W x C (C = 1 grey or 3 RGB), uint8 or uint16, in display orientation,
with alpha kept separately. See :mod:`adassr.runtime.images.read` and :mod:`adassr.runtime.images.write` for the
decoding strategy and the per-format rules.
"""

from __future__ import annotations

from adassr.runtime.images._model import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_READ_SUFFIXES,
    SUPPORTED_WRITE_SUFFIXES,
    AlphaDroppedWarning,
    ImageWarning,
    LoadedImage,
    ProfileDroppedWarning,
    is_image_file,
    unreadable_image_entry,
)
from adassr.runtime.images.convert import from_float32, to_float32, used_peak
from adassr.runtime.images.orientation import apply_orientation
from adassr.runtime.images.read import (
    INCOMPLETE_SCANS,
    image_notes_logged,
    read_camera_exif,
    read_image,
    read_image_size,
)
from adassr.runtime.images.write import (
    PreparedWrite,
    check_quality,
    check_writable_size,
    encode_image,
    prepare_write,
    size_problem,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "INCOMPLETE_SCANS",
    "SUPPORTED_READ_SUFFIXES",
    "SUPPORTED_WRITE_SUFFIXES",
    "AlphaDroppedWarning",
    "ImageWarning",
    "LoadedImage",
    "PreparedWrite",
    "ProfileDroppedWarning",
    "apply_orientation",
    "check_quality",
    "check_writable_size",
    "encode_image",
    "image_notes_logged",
    "prepare_write",
    "is_image_file",
    "from_float32",
    "read_camera_exif",
    "read_image",
    "read_image_size",
    "size_problem",
    "to_float32",
    "unreadable_image_entry",
    "used_peak",
    "write_image",
]
