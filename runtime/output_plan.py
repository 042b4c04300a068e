"""Where ``adassr upscale`` writes: output names and folders planned from the inputs, and the checks that
keep a run from overwriting a photo (the rules are in :mod:`adassr.runtime.upscale_cli`'s docstring).

:func:`plan_outputs` gives the ``(input, output)`` pairs of a file or a folder run; :func:`skip_existing`
and :func:`remove_stale_outputs` act on them; :func:`mark_output_in_input` leaves :data:`OUTPUT_MARKER`
in an output folder that a later run would otherwise read as a camera's photos.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from adassr.runtime.errors import ConfigError
from adassr.runtime.images import (
    SUPPORTED_READ_SUFFIXES,
    SUPPORTED_WRITE_SUFFIXES,
    is_image_file,
    unreadable_image_entry,
)
from adassr.runtime.images.camera_formats import left_out_note, unread_photos
from adassr.runtime.links import broken_link
from adassr.runtime.tempfiles import NAME_MAX, remove_stale_temps

log = logging.getLogger(__name__)

_AUTO_EXT = {".mpo": ".jpg", ".jfif": ".jpg", ".jpe": ".jpg", ".bmp": ".png"}

def _output_suffix(ext: str, source: Path) -> str:
    if ext == "auto":
        suffix = source.suffix.lower()
        suffix = _AUTO_EXT.get(suffix, suffix)
        return suffix if suffix in SUPPORTED_WRITE_SUFFIXES else ".png"
    suffix = "." + ext.lower().lstrip(".")
    if suffix not in SUPPORTED_WRITE_SUFFIXES:
        raise ConfigError(
            f"--ext {ext!r} is not a writable format; choose auto or one of "
            f"{', '.join(s.lstrip('.') for s in SUPPORTED_WRITE_SUFFIXES)}"
        )
    return suffix


def _same_format(suffix: str) -> str:
    """One spelling per format: ``.jpeg`` is ``.jpg``, ``.tiff`` is ``.tif``."""
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(suffix, suffix)


def given_path(text: str) -> Path:
    """A path argument; an empty one (an unset shell variable) is refused: ``Path("")`` is the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a file or folder (an empty value would mean the "
                                         "current folder)")
    if text == "-":
        raise argparse.ArgumentTypeError("'-' (standard input or output) is not supported; name a file or folder "
                                         "(./- for one called -)")
    return Path(text)


def _list_images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if is_image_file(p) or unreadable_image_entry(p) is not None)
    except OSError as exc:
        raise ConfigError(f"cannot read the folder {folder} ({exc.strerror or exc}); check its permissions, "
                          "or move it out of the input") from None


def _unread_format_files(folders: Sequence[tuple[Path, Path]]) -> list[Path]:
    """The visible files of the input ``folders`` whose suffix names a camera format that is not read."""
    found = []
    for folder, _ in folders:
        with contextlib.suppress(OSError):  # a folder that cannot be listed was refused by _list_images
            found += unread_photos(folder.iterdir())
    return found


OUTPUT_MARKER = ".adassr-upscale-output"
"""Left in an output folder that lies in the input folder, one level down (where the run reads camera
folders): it tells a later run that the images there are outputs, not photos to protect."""


# Suffixes that name an image format: as -o they mean a file, so an unwritable one is an error.
_IMAGE_SUFFIXES = frozenset(SUPPORTED_READ_SUFFIXES) | {
    ".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".ico", ".tga", ".exr", ".hdr",
    ".pgm", ".ppm", ".pbm", ".pnm", ".psd", ".svg", ".dng", ".raw", ".apng",
}


def _check_output_suffix(output: Path) -> None:
    suffix = output.suffix.lower()
    if suffix in _IMAGE_SUFFIXES and suffix not in SUPPORTED_WRITE_SUFFIXES and not output.is_dir():
        raise ConfigError(
            f"cannot write {output.name}: {suffix} is not a writable format; use one of "
            f"{', '.join(SUPPORTED_WRITE_SUFFIXES)}, or an output folder name without an image suffix"
        )


def _input_folders(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """``(input folder, output folder)``: ``source`` itself, then each visible subfolder one level
    down (the layout ``adapt --images`` reads, one folder per camera), except the output folder."""
    try:
        out = output.resolve()
    except (RuntimeError, OSError) as exc:  # a loop of links: RuntimeError on Python 3.11
        raise ConfigError(f"-o {output}: {broken_link(output) or exc}; choose another -o") from None
    folders = [(source, output)]
    try:
        subfolders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"cannot read the input folder {source} ({exc.strerror or exc}); check its "
                          "permissions") from None
    # A folder is read once: a link back to the input, or a second name of a folder (a link), is left
    # out with a warning; where a folder and a link to it are both there, the folder keeps its name.
    seen = {source.resolve(), out}
    kept = set()
    for sub in sorted(subfolders, key=lambda p: (p.is_symlink(), p.name)):
        real = sub.resolve()
        if real in seen:
            if real != out:
                log.warning("not reading %s: it is a link to %s, which this run reads already", sub, real)
            continue
        if (sub / OUTPUT_MARKER).exists():  # an earlier run's output folder: its images are results, not photos
            log.warning("not reading %s: an earlier upscale wrote it (it holds %s); pass it as -i to upscale "
                        "those images again", sub, OUTPUT_MARKER)
            continue
        seen.add(real)
        kept.add(sub)
    used: set[str] = set()
    names = {sub.name.casefold() for sub in kept}  # a new name never takes another input folder's
    for sub in subfolders:
        if sub not in kept:
            continue
        name, n = sub.name, 2
        while name.casefold() in used or (name != sub.name and name.casefold() in names):
            name, n = _numbered(sub.name, n), n + 1  # Nikon/ and nikon/ are one folder on macOS and Windows
        if name != sub.name:
            log.warning("the outputs of %s go to %s: a folder whose name differs only in case from another's "
                        "would be the same folder on a case-insensitive file system", sub, output / name)
        used.add(name.casefold())
        folders.append((sub, output / name))
    return folders


def _numbered(name: str, n: int) -> str:
    """``<name>_<n>``, with ``name`` cut (by characters) where the whole would pass :data:`NAME_MAX` bytes: a
    name the run makes itself must never fail (a folder that cannot be made stops the whole run)."""
    tail = f"_{n}"
    while len(os.fsencode(name + tail)) > NAME_MAX and len(name) > 1:
        name = name[:-1]
    return name + tail


def is_camera_folder_of(source: Path, output: Path) -> bool:
    """Whether a run of ``source`` reads ``output`` as one of its camera folders (one level down): by its
    own place (where ``output`` is a link, the next run lists the link), by its target (a link from
    elsewhere to ``source/nikon``), or through a link in ``source`` to it (``source/nikon -> output``)."""
    try:
        top, out = source.resolve(), output.resolve()
        if out == top:
            return False
        if out.parent == top or Path(os.path.abspath(output)).parent.resolve() == top:
            return True
        with os.scandir(top) as entries:
            links = [Path(entry.path) for entry in entries if entry.is_symlink()]
    except (OSError, RuntimeError):  # a broken link: reported where the output folder is made
        return False
    for link in links:
        with contextlib.suppress(OSError, RuntimeError):  # a broken link or a loop: not the output folder
            if link.resolve() == out:
                return True
    return False


def _check_output_in_input(source: Path, output: Path) -> None:
    """Refuse an output folder that is one of the input's camera folders with photos of its own: the
    run would skip them and could overwrite them with outputs of the same name. A folder an earlier
    run wrote (it holds :data:`OUTPUT_MARKER`) or one without images is fine."""
    if not (output.is_dir() and is_camera_folder_of(source, output)) or (output / OUTPUT_MARKER).exists():
        return
    if _list_images(output):
        raise ConfigError(
            f"the output folder {output} is a folder of the input {source} (directly or through a link) and holds "
            "images of its own, which the "
            "run would skip and could overwrite; choose an output folder outside the input, or an empty one"
        )


def _folder_pairs(inputs: list[Path], target: Path, ext: str,
                  reserved: frozenset[str] = frozenset()) -> list[tuple[Path, Path]]:
    """Output names in one folder: ``<stem>.<ext>``; inputs that would share one keep their suffix, as
    do those whose name is ``reserved`` (lower case: the mirrored subfolders' names)."""
    names = [(p, p.stem + _output_suffix(ext, p)) for p in inputs]
    counts = Counter(name.lower() for _, name in names)  # lower case: case-insensitive file systems too

    def clashes(name: str) -> bool:
        return counts[name.lower()] > 1 or name.lower() in reserved

    taken = set(reserved) | {name.lower() for _, name in names if not clashes(name)}
    pairs = []
    for p, name in names:
        if clashes(name):
            base, suffix = f"{p.stem}_{p.suffix.lower().lstrip('.')}", Path(name).suffix
            name, n = base + suffix, 2
            while name.lower() in taken:  # "x.jpg" next to an "x_jpg.png" of its own
                name, n = f"{base}_{n}{suffix}", n + 1
            taken.add(name.lower())
        pairs.append((p, target / name))
    return pairs


def plan_outputs(source: Path, output: Path, ext: str, *, notes: list[str] | None = None) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs for a file or a folder (see the module docstring). With ``notes``, a list, a
    note naming the files of a folder input left out for their format (HEIF, raw, ...) is appended to it."""
    for path, option in ((source, "-i"), (output, "-o")):
        try:
            os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a name longer than the file system takes, a component that is a file, ...
            if exc.errno != errno.ENOTDIR:
                raise ConfigError(f"{option} {path}: {exc.strerror or exc}; choose another {option}") from None
    if not source.exists():
        raise ConfigError(f"input {source} does not exist")
    _check_output_suffix(output)
    if source.is_dir():
        if output.exists() and not output.is_dir():
            raise ConfigError(f"the input is a folder, so the output {output} must be a folder, not a file")
        if not output.exists() and output.suffix.lower() in SUPPORTED_WRITE_SUFFIXES:
            raise ConfigError(f"the input is a folder, so the output must be a folder, but {output} reads as an "
                              "image file name; pass a folder name (it is created)")
        if output.exists() and output.resolve() == source.resolve():
            raise ConfigError(f"the output folder {output} is the input folder; choose another -o")
        _check_output_in_input(source, output)
        pairs = []
        folders = _input_folders(source, output)
        subfolders = frozenset(target.name.lower() for _, target in folders[1:])
        for index, (folder, target) in enumerate(folders):
            pairs.extend(_folder_pairs(_list_images(folder), target, ext, subfolders if index == 0 else frozenset()))
        note = left_out_note(_unread_format_files(folders))
        if not pairs:
            raise ConfigError(
                f"no images in {source} or its subfolders (looked for {', '.join(SUPPORTED_READ_SUFFIXES)})"
                + (f"; {note}" if note else "")
            )
        _check_no_input_overwritten(pairs)
        if note is not None and notes is not None:
            notes.append(note)
        return pairs
    is_file_target = output.suffix.lower() in SUPPORTED_WRITE_SUFFIXES and not output.is_dir()
    if is_file_target:
        if ext != "auto" and _same_format(_output_suffix(ext, source)) != _same_format(output.suffix.lower()):
            raise ConfigError(f"--ext {ext} contradicts the output file name {output.name}; drop one")
        target = output
    else:
        target = output / (source.stem + _output_suffix(ext, source))
    if entry_exists(target) and target.resolve() == source.resolve():
        raise ConfigError(f"the output {target} would overwrite the input; choose another -o")
    return [(source, target)]


def entry_exists(path: Path) -> bool:
    """Whether anything is at ``path``; False where the name cannot be looked up at all (longer than the file
    system takes): writing that output then fails on its own, named, and the batch goes on."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names (after links), None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_no_input_overwritten(pairs: list[tuple[Path, Path]]) -> None:
    """ConfigError when an output of a folder run is one of its input files: a link in the output folder
    back into the input (``out/nikon -> ../photos/nikon``), or an output folder placed so that a mirrored
    subfolder lands on the input (``-i ph -o .`` with ``ph/ph/x.png``) would otherwise replace a photo."""
    inputs = {}
    for source, _ in pairs:
        key = _file_id(source)
        if key is not None:
            inputs[key] = source
    for source, target in pairs:
        key = _file_id(target)  # an output that does not exist yet is no input
        if key is not None and key in inputs:
            raise ConfigError(
                f"the output {target} of {source} is the input file {inputs[key]} (through a link or the folder "
                "layout), which the run would overwrite; choose an output folder outside the input"
            )


def skip_existing(pairs: list[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], int]:
    """``(pairs whose output does not exist yet, how many were left out)`` for ``--skip-existing``.

    Any existing entry counts, a file or not: a folder or a link in an output's place is never
    written over either."""
    todo = [(source, target) for source, target in pairs if not entry_exists(target)]
    return todo, len(pairs) - len(todo)


def remove_stale_outputs(pairs: list[tuple[Path, Path]]) -> None:
    """Remove the temporary files that killed writers left for the outputs of ``pairs`` (skipped ones
    too), reading each output folder once: the images are then written without reading their folder
    each time (which made a folder's run grow with the square of its size)."""
    names: dict[Path, list[str]] = {}
    for _, target in pairs:
        names.setdefault(target.parent, []).append(target.name)
    for folder, targets in names.items():
        remove_stale_temps(folder, target=targets)


def mark_output_in_input(source: Path, output: Path) -> None:
    """Leave :data:`OUTPUT_MARKER` in an output folder that is one of the input's camera folders, so
    that the next run knows its images are outputs (see :func:`_check_output_in_input`)."""
    if source.is_dir() and is_camera_folder_of(source, output):
        try:
            output.mkdir(parents=True, exist_ok=True)
            (output / OUTPUT_MARKER).touch()
        except OSError as exc:
            raise ConfigError(f"the output folder {output} is not writable ({exc.strerror or exc}); choose "
                              "another -o") from None
