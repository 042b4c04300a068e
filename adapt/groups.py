"""Camera groups: which LR images belong to which camera.

A group is found for each image of ``--images DIR`` in this order:

1. ``folder``: the image sits in a subfolder ``DIR/<group>/`` (one level deep);
2. ``exif-make``: its EXIF Make, normalised (``"NIKON CORPORATION"`` -> ``nikon``);
3. ``filename-prefix``: a RealSR-style name (``Nikon_006_LR4.png`` -> ``nikon``);
4. otherwise the image is listed under ``ungrouped``; when ``DIR`` itself is named after the
   camera asked for (``--images photos/nikon --camera nikon``), those images join that group.

Images whose file name marks them as high-resolution ground truth (a ``HR`` token:
RealSR's ``Nikon_001_HR.png``, ``street_hr.jpg``) are left out of every group and listed as
skipped: a RealSR-style folder holds each ``_LR4`` image next to its ``_HR`` original, and
adaptation must learn from the camera's LR images only. Selecting such a group warns once.

Names that are not valid group names (a folder ``My Camera/``, an EXIF Make longer than the
limit) never fail the other groups: :func:`scan_groups` lists them as skipped with the reason.
Folders whose names differ only in case (``Tiny/`` and ``tiny/``) would name the same group and
are refused: both are skipped, and selecting that group raises CameraError saying why.
Files in camera formats that are not read (a phone's ``.heic``, raw files: see
``adassr.runtime.images.camera_formats``) are listed as skipped too; selecting a group warns once
naming those it loses, and a group of only such files is refused saying what to convert them to.

Torch-free: the runtime's router uses the same normalisation (``adassr.runtime.cameras``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adassr.runtime.cameras import (
    camera_prefix,
    closest_camera_hint,
    normalise_camera_name,
    same_brand_names,
    validate_group_name,
)
from adassr.runtime.errors import CameraError, ImageError
from adassr.runtime.images import SUPPORTED_READ_SUFFIXES, is_image_file, unreadable_image_entry
from adassr.runtime.images.camera_formats import advice, left_out_note, suffix_format, unread_photos
from adassr.runtime.store import MANIFEST_NAME, MAX_MANIFEST_BYTES

UNGROUPED = "ungrouped"
_HR_TOKEN = re.compile(r"(?:^|[_\-. ])hr(?:[_\-. ]|$)", re.IGNORECASE)
GROUND_TRUTH_REASON = (
    "its name marks it as a high-resolution ground-truth image (an 'HR' token, as in RealSR's "
    "Nikon_001_HR.png); adaptation learns from a camera's LR images only: move it out or rename it"
)

log = logging.getLogger(__name__)


def marks_ground_truth(path: Path) -> bool:
    """Whether the file name has an ``HR`` token (``Nikon_001_HR.png``, ``hr_0001.png``; not ``chrome.png``)."""
    return _HR_TOKEN.search(path.stem) is not None


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
        words = {"none": "naming no camera", "exif-make": "by EXIF Make", "filename-prefix": "by file-name prefix",
                 "folder": "by folder", "single-image": "single image"}
        kinds = sorted({words.get(m.derivation, f"by {m.derivation}") for m in self.members})
        return f"{self.name} ({len(self.members)} image(s), {', '.join(kinds)})"

    def to_manifest(self) -> list[dict[str, str]]:
        return [{"path": str(m.path), "derivation": m.derivation} for m in self.members]


def default_images_dir() -> Path:
    """The bundled samples (``samples/cameras`` of the checkout), or ``./samples/cameras``."""
    candidates = [Path(__file__).resolve().parents[1] / "samples" / "cameras"]
    with contextlib.suppress(OSError):  # the working folder was deleted: no samples there
        candidates.insert(0, Path.cwd() / "samples" / "cameras")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CameraError(
        "no --images folder given and the bundled samples (samples/cameras) were not found; "
        "pass --images DIR with one subfolder per camera, or --image PATH"
    )


@dataclass(frozen=True)
class SkippedSource:
    """A folder or image that names no usable group, and why."""

    path: Path
    reason: str
    group: str | None = None  # the group the image would have joined, when known
    unnamed: bool = False  # an image whose EXIF Make or name prefix gives no valid group name


@dataclass(frozen=True)
class GroupScan:
    """Result of :func:`scan_groups`: usable groups, skipped sources, refused (conflicting) group names."""

    groups: dict[str, CameraGroup]
    skipped: tuple[SkippedSource, ...]
    conflicts: dict[str, str]  # group name -> why it is refused
    folder_group: str | None = None  # listed_groups: the group the folder given forms by its own name, if any
    also: dict[str, CameraGroup] = field(default_factory=dict)
    """:func:`listed_groups` only: the groups that some loose images of :attr:`folder_group` (all of them in it)
    belong to as well, by their own file-name prefix or EXIF Make, as ``--camera`` of that name takes them
    (RealSR's flat folder ``Test/`` of ``Canon_*`` and ``Nikon_*`` files: groups ``canon`` and ``nikon``)."""

    def also_line(self) -> str | None:
        """The line ``adapt --list`` prints under :attr:`folder_group` when :attr:`also` is not empty: the
        listed groups that share its images."""
        if self.folder_group is None or not self.also or self.folder_group not in self.groups:
            return None
        folder = self.groups[self.folder_group]
        mine = {_file_identity(m.path) for m in folder.members}
        shared = {_file_identity(m.path) for group in self.also.values() for m in group.members} & mine
        names = list(self.also)
        listed = f"group {names[0]}" if len(names) == 1 else f"groups {', '.join(names[:-1])} and {names[-1]}"
        return (f"{self.folder_group}: {len(shared)} of its {len(folder.members)} images also name their camera, by "
                f"file-name prefix or EXIF Make, so they are in {listed} too (--camera {names[0]} adapts that "
                f"group as listed, --camera {self.folder_group} the folder's {len(folder.members)})")


def _valid_name(name: str) -> str | None:
    try:
        return validate_group_name(name)
    except CameraError:
        return None


def _group_by_metadata(path: Path) -> tuple[str, str, str | None]:
    """``(group, derivation, problem)``; ``problem`` says why a found name was unusable (group "")."""
    from adassr.runtime.images import read_camera_exif

    try:
        make, _model = read_camera_exif(path)
    except ImageError:
        make = None
    if make:
        name = normalise_camera_name(make)
        if name:
            valid = _valid_name(name)
            if valid is None:
                return "", "exif-make", (
                    f"its EXIF Make {make[:40]!r}{'...' if len(make) > 40 else ''} gives the group name "
                    f"{name[:40]!r}{'...' if len(name) > 40 else ''}, which is not a valid group name "
                    "(1-64 characters a-z 0-9 _ - .); put the image in a folder named after its camera"
                )
            return valid, "exif-make", None
    prefix = camera_prefix(path.name)
    if prefix is not None:
        name = normalise_camera_name(prefix)
        if name:
            valid = _valid_name(name)
            if valid is None:
                return "", "filename-prefix", (
                    f"its file-name prefix {prefix[:40]!r} is not a valid group name; "
                    "put the image in a folder named after its camera"
                )
            return valid, "filename-prefix", None
    return UNGROUPED, "none", None


_UNGROUPED_IS_NO_CAMERA = (
    f"{UNGROUPED!r} is not a camera: it collects the images that name no camera, which may come from several; "
    "put them in a folder named after their camera (--images DIR with DIR/<camera>/), or give one image and a "
    "name with --image FILE --camera NAME"
)


def _sorted_images(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if is_image_file(p))


def _unreadable_entries(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """``(entry, why it is skipped)`` for entries named like images that are no readable file (a broken
    link, a FIFO): listed as skipped rather than left out without a word."""
    found = []
    for path in sorted(paths):
        why = unreadable_image_entry(path)
        if why is not None:
            found.append((path, f"{why}; it is named like an image but cannot be read"))
    return found


UNREAD_FORMAT_REASON = "a format adassr does not read"


def _unread_format_entries(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """``(file, why it is skipped)`` for visible files whose suffix names a camera format that is not read
    (HEIF, raw, ...): named as skipped, so a folder of a phone's ``.heic`` photos is not half-used in silence."""
    return [(path, f"a {kind} file, {UNREAD_FORMAT_REASON}: {advice(kind)}")
            for path in unread_photos(paths) if (kind := suffix_format(path)) is not None]


def skipped_lines(skipped: Iterable[SkippedSource]) -> list[str]:
    """``adapt --list``'s lines for what a scan skipped, in order: one per source, except the files in formats
    that are not read, one line per folder (a phone's folder of 500 ``.heic`` photos is one line, not 500)."""
    entries: list[str | Path] = []  # a line, or the folder whose unread files take this place
    unread: dict[Path, list[Path]] = {}
    for source in skipped:
        if UNREAD_FORMAT_REASON not in source.reason:
            entries.append(f"skipped {source.path}: {source.reason}")
            continue
        folder = source.path.parent
        if folder not in unread:
            entries.append(folder)
            unread[folder] = []
        unread[folder].append(source.path)
    return [f"skipped in {e}: {left_out_note(unread[e])}" if isinstance(e, Path) else e for e in entries]


def _is_store_camera_folder(folder: Path) -> bool:
    """Whether ``folder`` is a camera folder of a model store: its ``manifest.json`` is adassr's (other
    tools write files of that name too)."""
    path = folder / MANIFEST_NAME
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:  # a FIFO would hang the read
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "schema_version" in data and isinstance(data.get("artifacts"), dict)


_NESTED_REASON = "it holds no images itself, only in folders below it"
_BELOW_CAMERA_REASON = "photos in folders below the camera folder"
_BELOW_LIMIT = 2000
"""Folder entries :func:`_image_below` looks at, at most (a tree of millions must not stall a scan)."""


def _image_below(folder: Path) -> Path | None:
    """An image in a folder below ``folder`` (up to three levels, hidden folders, links and a model store's
    camera folders left out, at most :data:`_BELOW_LIMIT` entries looked at), or None."""
    seen = 0
    for top, dirs, files in os.walk(folder):
        depth = len(Path(top).relative_to(folder).parts)
        # a model store's camera folders hold adapt's reports, not photos (a store inside --images)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < 3
                         and not _is_store_camera_folder(Path(top) / d))
        if depth > 0:
            for name in sorted(files):
                if is_image_file(Path(top) / name):
                    return Path(top) / name
        seen += len(dirs) + len(files)
        if seen > _BELOW_LIMIT:
            return None
    return None


def scan_groups(directory: str | Path) -> GroupScan:
    """All camera groups under ``directory``, plus what was skipped and why (see the module docstring)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise CameraError(f"the images folder {root} does not exist or is not a folder; pass --images DIR")
    members: dict[str, list[GroupMember]] = defaultdict(list)
    skipped: list[SkippedSource] = []
    folders: dict[str, list[Path]] = defaultdict(list)
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise CameraError(f"cannot read the images folder {root} ({exc.strerror or exc}); check its "
                          "permissions") from None
    seen_folders = {_resolved(root)}
    # real folders before links: the folder a link points at keeps its own name, the link is skipped
    for sub in sorted((p for p in entries if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: (p.is_symlink(), p)):
        target = _resolved(sub)
        if target in seen_folders:  # a link back to the images folder, or to a folder already scanned
            skipped.append(SkippedSource(sub, (
                f"it is a link to {target}, which is the images folder itself or another of its folders: its "
                "images would join a second group")))
            continue
        seen_folders.add(target)
        try:
            listing = list(sub.iterdir())
        except OSError as exc:
            skipped.append(SkippedSource(sub, f"cannot read the folder ({exc.strerror or exc}); check its permissions"))
            continue
        images, broken = _sorted_images(listing), _unreadable_entries(listing)
        unread = _unread_format_entries(listing)
        if not images:  # no group (nor a case clash with one) from a folder without a readable image
            skipped.extend(SkippedSource(p, why) for p, why in broken)
            skipped.extend(SkippedSource(p, why, _valid_name(sub.name)) for p, why in unread)
            deeper = _image_below(sub)
            if deeper is not None and not broken:  # camera/2026-11/IMG_1001.JPG: say why it is no group
                skipped.append(SkippedSource(sub, (
                    f"{_NESTED_REASON} (e.g. {deeper.relative_to(sub)}), which "
                    f"adapt does not read (a camera's photos sit directly in its folder): move or link them "
                    f"into {sub}")))
            continue
        if _is_store_camera_folder(sub):  # a camera folder of a model store: reports, not photos
            skipped.append(SkippedSource(sub, (
                f"it holds a {MANIFEST_NAME}: it is a camera folder of a model store (its images are adapt's "
                "reports), not photos; point --images at the camera's photos")))
            continue
        name = _valid_name(sub.name)
        if name is None:
            skipped.append(SkippedSource(sub, (
                f"folder name {sub.name!r} is not a valid camera group name (1-64 characters a-z 0-9 _ - ., "
                "starting with a letter or digit); rename the folder"
            )))
            continue
        folders[name].append(sub)
        members[name].extend(GroupMember(p, "folder") for p in images if not marks_ground_truth(p))
        deeper = _image_below(sub)
        if deeper is not None:  # nikon/ holds photos, and more in nikon/2026-11/: those are not read
            below = sub / deeper.relative_to(sub).parts[0]
            skipped.append(SkippedSource(below, (
                f"{_BELOW_CAMERA_REASON} {sub.name}/ are not read (e.g. {deeper.relative_to(sub)}; a camera's "
                f"photos sit directly in its folder): move or link them into {sub}"), name))
        skipped.extend(SkippedSource(p, why, name) for p, why in broken)
        skipped.extend(SkippedSource(p, why, name) for p, why in unread)
        skipped.extend(SkippedSource(p, GROUND_TRUTH_REASON, name) for p in images if marks_ground_truth(p))
    conflicts: dict[str, str] = {}
    for name, subs in folders.items():
        if len(subs) > 1:
            listed = " and ".join(f"{s.name}/" for s in subs)
            conflicts[name] = (
                f"folders {listed} differ only in case and would both be camera group {name!r}; "
                "merge them into one folder or rename one"
            )
            skipped.extend(SkippedSource(s, conflicts[name]) for s in subs)
            del members[name]
    skipped.extend(SkippedSource(path, why) for path, why in _unreadable_entries(entries))
    skipped.extend(SkippedSource(path, why) for path, why in _unread_format_entries(entries))
    for path in _sorted_images(entries):
        name, how, problem = _group_by_metadata(path)
        if problem is not None:
            skipped.append(SkippedSource(path, problem, unnamed=not marks_ground_truth(path)))
        elif name in conflicts:
            skipped.append(SkippedSource(path, conflicts[name]))
        elif marks_ground_truth(path):
            skipped.append(SkippedSource(path, GROUND_TRUTH_REASON, name))
        else:
            members[name].append(GroupMember(path, how))
    _drop_repeated_files(members, skipped)
    # a folder of ground truth only has no members: it is no group (its images are in ``skipped``)
    groups = {name: CameraGroup(name, tuple(ms)) for name, ms in sorted(members.items()) if ms}
    return GroupScan(groups, tuple(skipped), conflicts)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: its own path
        return path.absolute()


def _drop_repeated_files(members: dict[str, list[GroupMember]], skipped: list[SkippedSource]) -> None:
    """Keep each file once: a symbolic or hard link to an image already listed would be trained and
    scored as another photo (and take a place of --max-images). The one in a camera's subfolder stays (a
    link put in ``nikon/`` to a loose photo is a photo of nikon: the loose file went to another group, and
    nikon lost it); among equals the real file, then the first in group and path order."""
    seen: dict[object, Path] = {}
    dropped: set[Path] = set()
    everyone = [(name, member) for name in sorted(members) for member in members[name]]
    # camera folders' files first, then real files before links: a link is dropped, not the file it names
    for _, member in sorted(everyone, key=lambda item: (item[1].derivation != "folder", item[1].path.is_symlink())):
        key = _file_identity(member.path)
        if key is None:  # reported when it is read
            continue
        if key in seen:
            skipped.append(SkippedSource(member.path, f"the same file as {seen[key]} (a link), used once"))
            dropped.add(member.path)
        else:
            seen[key] = member.path
    for name in members:
        members[name] = [m for m in members[name] if m.path not in dropped]


def _file_identity(path: Path) -> object | None:
    """What makes two paths one file: device and inode, or the real path where the filesystem reports
    no inode (0: some network shares and FUSE mounts); None when the file cannot be looked at."""
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_ino:
        return (info.st_dev, info.st_ino)
    return os.path.realpath(path)


def listed_groups(directory: str | Path) -> GroupScan:
    """What ``adapt --list`` shows: :func:`scan_groups`, where ``directory`` itself is named after a camera
    group, with its loose images in that group as ``adapt --camera NAME`` takes them (and as ``upscale``
    and ``serve`` route them by the folder): the skipped ones that joined are no longer listed as skipped."""
    scan = scan_groups(directory)
    own = _valid_name(Path(os.path.abspath(Path(directory).expanduser())).name)
    if own is None or own == UNGROUPED:
        return scan
    groups = _with_folder_named_group(scan, Path(directory), own)
    taken = {_file_identity(m.path) for m in groups[own].members} if own in groups else set()
    skipped = tuple(s for s in scan.skipped if not (s.unnamed and _file_identity(s.path) in taken))
    also = {name: group for name, group in scan.groups.items()  # as --camera NAME takes them: whole
            if name not in (own, UNGROUPED) and any(_file_identity(m.path) in taken for m in group.members)}
    listed = {name: also.get(name, group) for name, group in groups.items()}
    listed.update((name, group) for name, group in also.items() if name not in listed)  # all its images moved
    return GroupScan(dict(sorted(listed.items())), skipped, scan.conflicts, own if own in groups else None, also)


def discover_groups(directory: str | Path) -> dict[str, CameraGroup]:
    """All usable camera groups under ``directory``, keyed by group name (skipped sources left out)."""
    return scan_groups(directory).groups


def select_group(directory: str | Path, camera: str) -> CameraGroup:
    """The group ``camera`` in ``directory``; CameraError listing the groups found otherwise."""
    wanted = camera.strip().lower()
    if wanted == UNGROUPED:
        raise CameraError(_UNGROUPED_IS_NO_CAMERA)
    scan = scan_groups(directory)
    groups = _with_folder_named_group(scan, Path(directory), wanted)
    if wanted in scan.conflicts:
        raise CameraError(f"camera group {wanted!r} in {directory} is ambiguous: {scan.conflicts[wanted]}")
    own = _is_named(Path(directory), wanted)
    directory_path = Path(directory).expanduser()
    ground_truth = [s.path for s in scan.skipped
                    if (s.group == wanted or (own and s.path.parent == Path(directory).expanduser()))
                    and s.reason == GROUND_TRUTH_REASON]
    if ground_truth and wanted not in groups:
        raise CameraError(
            f"camera group {wanted!r} in {directory} has only images whose names mark them as high-resolution "
            f"ground truth ({len(ground_truth)}, e.g. {ground_truth[0].name}); adapt needs the camera's LR "
            "images (RealSR: the _LR files)"
        )
    nested = [s for s in scan.skipped if s.reason.startswith(_NESTED_REASON)]
    wanted_nested = [s for s in nested if s.path.name.lower() == wanted]
    nested_note = "".join(f" {s.path}: {s.reason}." for s in (wanted_nested or nested)[:1])
    unread = [s for s in scan.skipped if UNREAD_FORMAT_REASON in s.reason]
    wanted_unread = [s.path for s in unread if s.group == wanted or (own and s.path.parent == directory_path)]
    if not groups:
        unread_note = left_out_note(s.path for s in unread)
        raise CameraError(
            f"no images found in {directory} (looked for {', '.join(SUPPORTED_READ_SUFFIXES)} files in it "
            f"and in its subfolders).{nested_note}{f' {unread_note}.' if unread_note else ''}"
        )
    if wanted not in groups and wanted_nested:
        raise CameraError(f"camera group {wanted!r} has no images:{nested_note}")
    if wanted not in groups and wanted_unread:
        raise CameraError(f"camera group {wanted!r} has no images adassr reads: {left_out_note(wanted_unread)}")
    if wanted not in groups:
        listed = listed_groups(directory).groups  # as `adapt --list` names them
        found = "; ".join(g.describe() for g in listed.values())
        folder = _valid_name(Path(os.path.abspath(Path(directory).expanduser())).name)
        named = (f" The folder {directory} is itself named {folder!r}, so its loose images are group {folder!r}: "
                 f"adapt them with --camera {folder}, or put them in a folder named {wanted}."
                 if folder is not None and folder != UNGROUPED and folder in listed else "")
        raise CameraError(
            f"unknown camera group {camera!r} in {directory}."
            f"{closest_camera_hint(wanted, [g for g in listed if g != UNGROUPED])} "
            f"Groups found: {found}.{named} (Images that name no "
            "camera are 'ungrouped'; in a folder named after the camera they join its group.)"
        )
    for below in (s for s in scan.skipped if s.group == wanted and s.reason.startswith(_BELOW_CAMERA_REASON)):
        log.warning("camera group %r: %s", wanted, below.reason)
    if wanted_unread:
        log.warning("camera group %r: %s", wanted, left_out_note(wanted_unread))
    if ground_truth:
        log.warning("camera group %r: left out %d image(s) whose names mark them as high-resolution ground truth "
                    "(e.g. %s); adaptation learns from the camera's LR images only", wanted, len(ground_truth),
                    ground_truth[0].name)
    for other in _same_maker_elsewhere(groups, wanted):
        log.warning("camera group %r: the images also hold group %s, perhaps the same camera named once by a folder "
                    "and once by its EXIF Make (e.g. fuji/ and FUJIFILM); it is not used. If it is this camera, put "
                    "its images in the folder %s/ to adapt them together; if it is another camera of that maker, "
                    "leave it", wanted, groups[other].describe(), wanted)
    return groups[wanted]


def _same_maker_elsewhere(groups: dict[str, CameraGroup], wanted: str) -> list[str]:
    """The groups whose name and ``wanted`` abbreviate one another where one of the two is named by
    EXIF Makes (two folders ``canon/`` and ``canon_r5/`` are two cameras someone named on purpose)."""
    def by_make(name: str) -> bool:
        return any(m.derivation == "exif-make" for m in groups[name].members)

    return [other for other in same_brand_names(wanted, groups) if by_make(other) or by_make(wanted)]


def _is_named(directory: Path, wanted: str) -> bool:
    """Whether the folder ``directory`` itself is named after camera group ``wanted``."""
    # abspath, not resolve: "." gets its name, and a linked folder is named by its link, as its images
    # are when they are routed (resolve named it by the target)
    return _valid_name(Path(os.path.abspath(directory.expanduser())).name) == wanted


def _with_folder_named_group(scan: GroupScan, directory: Path, wanted: str) -> dict[str, CameraGroup]:
    """``scan.groups``, where ``directory`` itself is named ``wanted`` (``--images photos/nikon --camera
    nikon``), with all its loose images joining group ``wanted``: the folder rule applied to the folder
    given, as to a subfolder, and as ``upscale`` and ``serve`` route them once ``wanted`` is in the store
    (the folder first). Images with another camera's EXIF Make join too (they were kept in that camera's
    group, whose model never served them), and so do those whose Make or name prefix gives no valid group
    name (skipped before, and told to go in a folder named after their camera, where they were)."""
    groups = scan.groups
    if wanted == UNGROUPED or not _is_named(directory, wanted):
        return groups
    top = directory.expanduser()
    known = {_file_identity(m.path) for group in groups.values() for m in group.members}
    joined: list[GroupMember] = [GroupMember(s.path, "folder") for s in scan.skipped
                                 if s.unnamed and s.path.parent == top and _file_identity(s.path) not in known]
    rest: dict[str, CameraGroup] = {}
    for name, group in groups.items():
        moves = [m.path.parent == top for m in group.members]
        joined += [GroupMember(m.path, "folder") for m, move in zip(group.members, moves, strict=True) if move]
        kept = tuple(m for m, move in zip(group.members, moves, strict=True) if not move)  # one pass, not N x N
        if kept and name != wanted:
            rest[name] = CameraGroup(name, kept)
        elif name == wanted:
            joined += list(kept)
    if not joined:
        return groups
    return {**rest, wanted: CameraGroup(wanted, tuple(sorted(joined, key=lambda m: m.path)))}


def single_image_group(path: str | Path, camera: str | None = None) -> CameraGroup:
    """A one-image group (single-image mode); the name comes from ``camera`` or the metadata."""
    image = Path(path).expanduser()
    if not image.exists():
        raise CameraError(f"--image {image} does not exist")
    if image.is_dir():
        raise CameraError(f"--image {image} is a folder; pass one image file, or the folder with --images DIR")
    if not is_image_file(image):
        raise CameraError(
            f"--image {image} is not an image file this tool reads ({', '.join(SUPPORTED_READ_SUFFIXES)})"
        )
    if marks_ground_truth(image):
        raise CameraError(f"--image {image}: its name marks it as high-resolution ground truth (an HR token), not "
                          "camera output; adapt learns from the camera's own LR images (rename it if it is one)")
    if camera:
        if camera.strip().lower() == UNGROUPED:
            raise CameraError(_UNGROUPED_IS_NO_CAMERA)
        return CameraGroup(validate_group_name(camera), (GroupMember(image, "single-image"),))
    name, _how, problem = _group_by_metadata(image)
    if problem is not None:
        raise CameraError(f"--image {image}: {problem}; or name the group with --camera NAME")
    if name == UNGROUPED:  # it would publish a camera called "ungrouped", which the next such image overwrites
        raise CameraError(f"--image {image} names no camera (no EXIF Make, no camera prefix in its file name); "
                          "name its group with --camera NAME")
    return CameraGroup(name, (GroupMember(image, "single-image"),))
