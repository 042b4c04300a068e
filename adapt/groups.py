"""Camera groups: which LR images belong to which camera.

A group is found for each image of ``--images DIR`` in this order:

1. ``folder``: the image sits in a subfolder ``DIR/<group>/`` (one level deep);
2. ``exif-make``: its EXIF Make, normalised (``"NIKON CORPORATION"`` -> ``nikon``);
3. ``filename-prefix``: a RealSR-style name (``Nikon_006_LR4.png`` -> ``nikon``);
4. otherwise the image is listed under ``ungrouped``.

Torch-free: the runtime's router uses the same normalisation (``adassr.runtime.cameras``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from adassr.runtime.cameras import normalise_camera_name, validate_group_name
from adassr.runtime.errors import CameraError, ImageError
from adassr.runtime.images import SUPPORTED_READ_SUFFIXES

IMAGE_SUFFIXES = SUPPORTED_READ_SUFFIXES
UNGROUPED = "ungrouped"
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z]+)[_\-]")


@dataclass(frozen=True)
class GroupMember:
    path: Path
    derivation: str  # folder | exif-make | filename-prefix | single-image | none


@dataclass(frozen=True)
class CameraGroup:
    name: str
    members: tuple[GroupMember, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(m.path for m in self.members)

    def describe(self) -> str:
        kinds = sorted({m.derivation for m in self.members})
        return f"{self.name} ({len(self.members)} image(s), by {', '.join(kinds)})"

    def to_manifest(self) -> list[dict[str, str]]:
        return [{"path": str(m.path), "derivation": m.derivation} for m in self.members]


def default_images_dir() -> Path:
    """The bundled samples (``samples/cameras`` of the checkout), or ``./samples/cameras``."""
    candidates = [Path.cwd() / "samples" / "cameras", Path(__file__).resolve().parents[1] / "samples" / "cameras"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CameraError(
        "no --images folder given and the bundled samples (samples/cameras) were not found; "
        "pass --images DIR with one subfolder per camera, or --image PATH"
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _group_by_metadata(path: Path) -> tuple[str, str]:
    from adassr.runtime.images import read_camera_exif

    try:
        make, _model = read_camera_exif(path)
    except ImageError:
        make = None
    if make:
        name = normalise_camera_name(make)
        if name:
            return name, "exif-make"
    match = _PREFIX.match(path.name)
    if match:
        name = normalise_camera_name(match.group(1))
        if name:
            return name, "filename-prefix"
    return UNGROUPED, "none"


def _sorted_images(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if _is_image(p))


def discover_groups(directory: str | Path) -> dict[str, CameraGroup]:
    """All camera groups under ``directory``, keyed by group name."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise CameraError(f"the images folder {root} does not exist or is not a folder; pass --images DIR")
    members: dict[str, list[GroupMember]] = defaultdict(list)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _sorted_images(sub.iterdir())
        if images:
            name = validate_group_name(sub.name)
            members[name].extend(GroupMember(p, "folder") for p in images)
    for path in _sorted_images(root.iterdir()):
        name, how = _group_by_metadata(path)
        members[name].append(GroupMember(path, how))
    return {name: CameraGroup(name, tuple(ms)) for name, ms in sorted(members.items())}


def select_group(directory: str | Path, camera: str) -> CameraGroup:
    """The group ``camera`` in ``directory``; CameraError listing the groups found otherwise."""
    wanted = camera.strip().lower()
    groups = discover_groups(directory)
    if not groups:
        raise CameraError(
            f"no images found in {directory} (looked for {', '.join(IMAGE_SUFFIXES)} files in it "
            "and in its subfolders)"
        )
    if wanted not in groups:
        found = "; ".join(g.describe() for g in groups.values())
        raise CameraError(f"unknown camera group {camera!r} in {directory}. Groups found: {found}")
    return groups[wanted]


def single_image_group(path: str | Path, camera: str | None = None) -> CameraGroup:
    """A one-image group (single-image mode); the name comes from ``camera`` or the metadata."""
    image = Path(path).expanduser()
    if not _is_image(image):
        raise CameraError(
            f"--image {image} is not an image file this tool reads ({', '.join(IMAGE_SUFFIXES)})"
        )
    if camera:
        return CameraGroup(validate_group_name(camera), (GroupMember(image, "single-image"),))
    name, _how = _group_by_metadata(image)
    return CameraGroup(name, (GroupMember(image, "single-image"),))
