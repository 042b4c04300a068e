"""Camera-group names: one normalisation used by adaptation (groups) and routing (runtime)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# Words that camera makers put in EXIF Make but that carry no identity.
_NOISE_WORDS = {
    "corporation", "corp", "co", "ltd", "inc", "company", "imaging", "optical",
    "camera", "cameras", "electronics", "digital", "gmbh", "ag", "kk", "sa", "plc",
}
_ALIASES = {
    "eastman": "kodak",
    "olympus": "olympus",
    "om": "olympus",
    "hmd": "nokia",
}


def normalise_camera_name(make: str) -> str:
    """Turn an EXIF Make (or any user-given name) into a short lowercase group name.

    >>> normalise_camera_name("NIKON CORPORATION")
    'nikon'
    >>> normalise_camera_name("Canon")
    'canon'
    >>> normalise_camera_name("FUJIFILM")
    'fujifilm'

    Returns an empty string when nothing usable is left.
    """
    words: list[str] = re.findall(r"[a-z0-9]+", make.lower())
    kept = [w for w in words if w not in _NOISE_WORDS]
    if not kept:
        return ""
    first = kept[0]
    return _ALIASES.get(first, first)


_VALID_GROUP = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def validate_group_name(name: str) -> str:
    """Check that a group name is safe to use as a directory name; return it lowercased."""
    from adassr.runtime.errors import CameraError

    low = name.strip().lower()
    if not _VALID_GROUP.match(low) or low in {".", ".."}:
        raise CameraError(
            f"invalid camera group name {name!r}: use 1-64 characters from a-z, 0-9, '_', '-', '.',"
            " starting with a letter or digit"
        )
    return low


FILENAME_PREFIX = re.compile(r"^([A-Za-z][A-Za-z]+)[_\-]")
"""A RealSR-style camera prefix of a file name: ``Nikon_006_LR4.png`` -> ``Nikon``."""


def camera_from_filename(name: str) -> str | None:
    """The camera group a RealSR-style file name starts with (``Nikon_006_LR4.png`` -> ``nikon``), or None.

    The rule ``adapt`` uses to group a flat folder of images without EXIF Make; None when the name
    has no such prefix or it gives no valid group name.
    """
    from adassr.runtime.errors import CameraError

    match = FILENAME_PREFIX.match(name)
    if match is None:
        return None
    group = normalise_camera_name(match.group(1))
    if not group:
        return None
    try:
        return validate_group_name(group)
    except CameraError:
        return None


def closest_camera_hint(name: str, known: Iterable[str]) -> str:
    """``" Did you mean 'nokia'?"`` when ``name`` looks like a typo of one of ``known``, else ``""``.

    >>> closest_camera_hint("nokai", ["canon", "nokia", "_fallback"])
    " Did you mean 'nokia'?"
    >>> closest_camera_hint("sony", ["canon", "nokia"])
    ''
    """
    low = name.strip().lower()
    candidates = sorted({k for k in known if k != low})
    match = difflib.get_close_matches(low, candidates, n=1, cutoff=0.75)
    if not match and len(low) >= 3:  # an abbreviation: 'fuji' for 'fujifilm'
        match = [k for k in candidates if k.startswith(low)][:1]
    return f" Did you mean {match[0]!r}?" if match else ""
