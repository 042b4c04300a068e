"""Whole-run checks for ``adassr upscale``: everything that concerns the run, not one image.

Each check raises an :class:`~adassr.runtime.errors.AdassrError` saying what to do, so the CLI
reports it once, before the first image is read, with exit status 2. Problems of one image (a
damaged file, an image too large, a camera whose model fails its checksum) stay per image.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from adassr.runtime.cameras import camera_name
from adassr.runtime.cpu_info import MAX_THREADS
from adassr.runtime.errors import BackendError, ConfigError, StoreError
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore, list_cameras, store_option, warn_misnamed_folders
from adassr.runtime.tempfiles import create_temp

log = logging.getLogger(__name__)


def check_threads(threads: int | None) -> None:
    """``--threads``: None (one per usable physical core) or an integer from 1 to :data:`MAX_THREADS`."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be an integer from 1 to {MAX_THREADS} (or omitted: one per usable "
                          f"physical core), got {threads!r}")


def check_output_folders(targets: Iterable[Path]) -> None:
    """Each target's folder is writable: it, or the nearest existing folder above it (where the run
    will create it), takes a temporary file. Nothing is created or left behind."""
    for folder in sorted({Path(t).parent for t in targets}):
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a folder")
            fd, probe = create_temp(existing / "write-check")
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"the output folder {folder} is not writable (creating a file in {existing} failed: "
                f"{exc.strerror or exc}); choose another -o"
            ) from exc


def check_required_providers(providers: Sequence[str], *, require: bool) -> None:
    """With ``require``, every requested onnxruntime execution provider must be in this build."""
    if not require:
        return
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise BackendError(
            f"--require-providers: {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(sorted(available))}); install the matching onnxruntime package or "
            "drop --require-providers to fall back"
        )


def exported_cameras(store_root: str | os.PathLike[str], *, warn: bool = True) -> list[str]:
    """Camera folders (the fallback first) whose manifest lists at least one export. A camera whose
    manifest cannot be read is left out with a warning (``warn``: a caller that looks before the run's
    own check says nothing): it must not stop the other cameras' images
    (its own fail one by one, naming the problem; asked for with ``--camera``, it fails the run)."""
    root = Path(store_root).expanduser()
    found = []
    for camera in list_cameras(root):
        try:
            manifest = CameraStore.open(root, camera).read_manifest()
        except StoreError as exc:
            if warn:
                log.warning("camera %s of the store is not used: %s", camera, exc)
            continue
        if manifest.get("exports"):
            found.append(camera)
    return sorted(found, key=lambda c: (c != FALLBACK_CAMERA, c))


def check_store_serves(store_root: str | os.PathLike[str], *, camera: str | None) -> str:
    """The store exists and holds a model that can serve this run; return the camera folder to try first.

    An explicit ``camera`` needs its own export or the fallback; without one, any export will do
    (images are routed by their folder, EXIF Make or name prefix). A damaged manifest of the explicit
    camera is a StoreError here too.
    """
    root = Path(store_root).expanduser()
    CameraStore.open(root, FALLBACK_CAMERA)  # StoreError if the store is missing
    warn_misnamed_folders(root)
    cameras = exported_cameras(root)
    if not cameras:
        raise StoreError(
            f"the model store {root} holds no exported model; export the fallback with "
            f"`adassr export --backbone realesrgan-x4plus{store_option(root)}`, or adapt and export a camera"
        )
    if camera is not None:
        camera = camera_name(camera)  # as routing reads it
        named = CameraStore.open(root, camera)
        if named.exists():
            named.read_manifest()  # its damage, not "no exported model" (which export, reading it first, cannot fix)
        if camera in cameras or FALLBACK_CAMERA in cameras:
            return camera if camera in cameras else FALLBACK_CAMERA
        raise StoreError(
            f"no exported model for camera {camera!r} and no fallback model in {root}; "
            f"run `adassr export --camera {camera}{store_option(root)}` or `adassr export --backbone "
            f"realesrgan-x4plus{store_option(root)}`"
        )
    return cameras[0]
