"""Camera-group names: one normalisation used by adaptation (groups) and routing (runtime)."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

# Words that camera makers put in EXIF Make but that carry no identity.
_NOISE_WORDS = {
    "corporation", "corp", "co", "ltd", "inc", "company", "imaging", "optical",
    "camera", "cameras", "electronics", "digital", "gmbh", "ag", "kk", "sa", "plc",
}
# The company-form words of _NOISE_WORDS: a name that is one word and these reads as a maker's name.
_COMPANY_WORDS = {"corporation", "corp", "co", "ltd", "inc", "company", "gmbh", "ag", "kk", "sa", "plc"}
_ALIASES = {
    "eastman": "kodak",
    "olympus": "olympus",
    "om": "olympus",
    "hmd": "nokia",
}


def _as_typed(text: str) -> str:
    """``text`` as the user typed it: a command-line argument in UTF-8 that Python decoded under a C / POSIX
    locale holds surrogate escapes (``ÑOKIA`` -> ``\udcc3\udc91OKIA``), which would lose the letter."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:  # not UTF-8 after all: as it came
        return text


def normalise_camera_name(make: str) -> str:
    """Turn an EXIF Make (or any user-given name) into a short lowercase group name.

    >>> normalise_camera_name("NIKON CORPORATION")
    'nikon'
    >>> normalise_camera_name("Canon")
    'canon'
    >>> normalise_camera_name("FUJIFILM")
    'fujifilm'

    Accented Latin letters lose their accents (``"Zeiß Ōptik"`` -> ``zeiss``) rather than the letter;
    a Make in another script leaves nothing usable. Returns an empty string when nothing usable is left.
    """
    words: list[str] = re.findall(r"[a-z0-9]+", _ascii_fold(_as_typed(make).lower()))
    kept = [w for w in words if w not in _NOISE_WORDS]
    if not kept:
        return ""
    first = kept[0]
    return _ALIASES.get(first, first)


_LIGATURES = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ł": "l", "þ": "th", "ı": "i"})


def _ascii_fold(text: str) -> str:
    """``text`` (lower case) with accents removed and Latin ligatures spelled out: ``"ōptik"`` -> ``"optik"``."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


FALLBACK_CAMERA = "_fallback"
"""The store folder of the model that serves images of no adapted camera (no group name: it starts with '_')."""

_VALID_GROUP = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Names Windows keeps for devices, with or without an extension ("con", "nul.x", "com1"): a store copied
# to a Windows box (a Triton model repository, a backup) could not hold such a folder.
_WINDOWS_DEVICE = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$")


def validate_group_name(name: str) -> str:
    """Check that a group name is safe to use as a directory name; return it lowercased."""
    from adassr.runtime.errors import CameraError

    if not isinstance(name, str):
        raise CameraError(f"a camera group name must be a string, got {type(name).__name__} {name!r}")
    name = _as_typed(name)
    low = name.strip().lower()
    if not _VALID_GROUP.match(low) or low in {".", ".."}:
        hint = ""
        words = re.findall(r"[a-z0-9]+", _ascii_fold(low))
        kept = [w for w in words if w not in _NOISE_WORDS]
        # a maker's name as EXIF spells it: one word that counts, plus a company form ("NIKON CORPORATION",
        # "Leica Camera AG") or accents ("Zeiß"); not a path, not "my camera"
        if len(kept) == 1 and (len(words) == 1 or _COMPANY_WORDS & set(words)) and not re.search(r"[/\\]", name):
            as_make = normalise_camera_name(name)
            if _VALID_GROUP.match(as_make):
                hint = f"; as an EXIF Make it names the group {as_make!r}, so use that"
        raise CameraError(
            f"invalid camera group name {name!r}: use 1-64 characters from a-z, 0-9, '_', '-', '.',"
            f" starting with a letter or digit{hint}"
        )
    if low.endswith("."):
        raise CameraError(
            f"invalid camera group name {name!r}: it must not end with '.' (Windows drops the dot, so the folder"
            f" would not keep its name); use {low.rstrip('.')!r}"
        )
    if _WINDOWS_DEVICE.match(low):
        device = low.split(".")[0]
        raise CameraError(
            f"invalid camera group name {name!r}: {device!r} is a device name on Windows, so a store or Triton"
            f" model repository holding it could not be copied there; pick another name, e.g. {device + '_cam'!r}"
        )
    return low


def camera_name(name: str) -> str:
    """A camera as a user names it (``--camera``, ``?camera=``): the fallback folder in any case
    (``_FALLBACK``), else a group name checked by :func:`validate_group_name` (lowercased)."""
    if isinstance(name, str) and name.strip().lower() == FALLBACK_CAMERA:
        return FALLBACK_CAMERA
    return validate_group_name(name)


FILENAME_PREFIX = re.compile(r"^([A-Za-z][A-Za-z]+)[_\-]")
"""A RealSR-style camera prefix of a file name: ``Nikon_006_LR4.png`` -> ``Nikon``."""
GENERIC_FILE_PREFIXES = frozenset({
    "img", "image", "dsc", "dscn", "dscf", "pxl", "mvimg", "vid", "pano", "photo", "pic", "scan", "screenshot",
    "gopr", "frame", "snapshot",
})
"""File-name prefixes cameras and phones give every photo (``IMG_1001.JPG``: Canon, iPhone; ``DSC_``, ``DSCF``,
``PXL_``): they name no camera, so they make no group (a folder of stripped photos became camera ``img``)."""


def camera_prefix(name: str) -> str | None:
    """The RealSR-style camera prefix of file name ``name`` as written (``Nikon_006_LR4.png`` -> ``Nikon``),
    or None when it has none or the prefix is one every camera writes (:data:`GENERIC_FILE_PREFIXES`)."""
    match = FILENAME_PREFIX.match(name)
    if match is None or match.group(1).lower() in GENERIC_FILE_PREFIXES:
        return None
    return match.group(1)


def camera_from_filename(name: str) -> str | None:
    """The camera group a RealSR-style file name starts with (``Nikon_006_LR4.png`` -> ``nikon``), or None.

    The rule ``adapt`` uses to group a flat folder of images without EXIF Make; None when the name
    has no such prefix, a generic one (``IMG_``), or it gives no valid group name.
    """
    from adassr.runtime.errors import CameraError

    prefix = camera_prefix(name)
    if prefix is None:
        return None
    group = normalise_camera_name(prefix)
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
    if not match:  # an abbreviation: 'fuji' for 'fujifilm', or the other way round
        match = same_brand_names(low, candidates)[:1]
    return f" Did you mean {match[0]!r}?" if match else ""


_MIN_BRAND_PREFIX = 3


def same_brand_names(name: str, known: Iterable[str]) -> list[str]:
    """The names of ``known`` that one of ``name`` and it abbreviates: one starts with the other, and
    the shorter has at least 3 characters (``fuji`` and ``fujifilm``, ``olymp`` and ``olympus``).

    One maker's photos can end up under two such names (a folder named ``fuji``, an EXIF Make
    ``FUJIFILM``); adapt and routing name them so that the split is not silent.

    >>> same_brand_names("fujifilm", ["canon", "fuji", "fujifilm", "_fallback"])
    ['fuji']
    >>> same_brand_names("nikon", ["nikon", "canon"])
    []
    """
    low = name.strip().lower()
    out = []
    for other in sorted(set(known)):
        short, long_ = sorted((low, other), key=len)
        if other != low and len(short) >= _MIN_BRAND_PREFIX and long_.startswith(short):
            out.append(other)
    return out
