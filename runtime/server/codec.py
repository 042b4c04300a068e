"""Uploaded bytes -> :class:`LoadedImage`, and upscaled pixels -> response bytes.

Decoding goes through :func:`adassr.runtime.images.read_image` (format sniffing, EXIF camera
name and orientation, the pixel limit checked from the header before decoding, Pillow's
decompression-bomb guard): the upload is written to a file with a random name in a private
folder the server made for itself (mode 0700), read, and deleted. Nothing from the request
is used to name it. Error messages name "the uploaded image", never that file.

Encoding uses :func:`adassr.runtime.images.encode_image`, the same encoder ``adassr upscale``
writes files with, so a response is byte-identical to the CLI's file for the same pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from adassr.runtime.errors import AdassrError, ConfigError, ImageError, ImageTooLargeError, PixelLimitError
from adassr.runtime.images import LoadedImage, encode_image, read_image

logger = logging.getLogger(__name__)

UPLOAD_NAME = "the uploaded image"


class UploadSpaceError(AdassrError):
    """The server could not store an upload to decode it (its temporary folder is full): a 503, not the
    client's fault."""


UPLOADS_PREFIX = "adassr-serve-"
"""Start of the name of a server's uploads' folder: ``adassr-serve-<pid>-<random>``."""
_SERVER_FOLDER = re.compile(re.escape(UPLOADS_PREFIX) + r"\d{1,10}-[^/]+\Z")
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC


def remove_stale_upload_folders(base: Path) -> list[Path]:
    """Remove the uploads' folders in ``base`` that servers of this user left when killed (SIGKILL, the OOM
    killer). In /dev/shm they hold memory, with the uploads that were in flight, until the machine restarts.

    A running server holds an exclusive ``flock`` on its folder; a folder whose lock can be taken belongs to no
    running server. (Not its pid: a server in another pid namespace that shares /dev/shm, a container of the
    same pod, has a pid that means nothing here, and a restarted container's server gets its killed
    predecessor's pid.) Returns the folders removed; one that cannot be looked at or removed is left, logged."""
    import fcntl

    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if _SERVER_FOLDER.match(entry.name) is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(entry.path, _DIRECTORY_FLAGS)
        except OSError:
            continue  # gone meanwhile, or not ours to look into
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running server's
            if not _same_folder(fd, entry.path):
                continue  # removed by another server starting at the same time (and perhaps made again)
            shutil.rmtree(entry.path)
        except FileNotFoundError:
            continue  # another server starting at the same time removed it first
        except OSError as exc:
            logger.warning("could not remove %s, the uploads' folder of a server that is gone: %s", entry.path,
                           exc.strerror or exc)
            continue
        finally:
            os.close(fd)
        removed.append(Path(entry.path))
    return removed


def _same_folder(fd: int, path: str | os.PathLike[str]) -> bool:
    """Whether the folder open as ``fd`` is still the one at ``path`` (not removed, nor replaced)."""
    try:
        held, named = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def uploads_base() -> Path | None:
    """Where uploads' folders go: /dev/shm when it is writable (memory), else None (the temporary folder)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


class UploadFolder:
    """A private temporary folder for decoding uploads, locked while the server runs (see
    :func:`remove_stale_upload_folders`); :meth:`close` removes it."""

    def __init__(self) -> None:
        """ConfigError when no temporary folder can be made (a read-only root file system without a
        writable /dev/shm or $TMPDIR). The folders killed servers left there are removed first (logged)."""
        import fcntl

        base = uploads_base()
        stale = remove_stale_upload_folders(base if base is not None else Path(tempfile.gettempdir()))
        if stale:
            logger.info("removed %d uploads' folder(s) that killed servers left: %s", len(stale),
                        ", ".join(str(p) for p in stale))
        self._lock = -1
        made: Path | None = None
        try:
            for _ in range(5):  # made, then locked at once; made again in the rare case a cleaner took it between
                made = Path(tempfile.mkdtemp(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-", dir=base))
                try:
                    self._lock = os.open(made, _DIRECTORY_FLAGS)
                    fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (BlockingIOError, FileNotFoundError):  # a server starting beside took it for a stale one
                    self._unlock()
                    continue
                if _same_folder(self._lock, made):
                    break
                self._unlock()
            else:
                raise OSError(errno.EBUSY, "servers starting beside it kept removing its new folder")
            self.path = made
            os.chmod(self.path, 0o700)
        except OSError as exc:  # mkdtemp's FileNotFoundError: "No usable temporary directory found in [...]"
            self._unlock()
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise ConfigError(f"the server has no writable temporary folder to decode uploads in "
                              f"({exc.strerror or exc}); set TMPDIR to a writable folder (or make /dev/shm "
                              "writable)") from None

    def decode(self, data: bytes, *, max_pixels: int, notes: list[str] | None = None) -> LoadedImage:
        """Decode uploaded bytes; ImageError / ImageTooLargeError with messages about the upload. ``notes``:
        a list that takes the reader's notes about the upload (only its first frame read, an unreadable EXIF
        block ignored), each starting with the upload's name; without one they are dropped. They are kept per
        request: the process's warnings state is not touched."""
        if not data:
            raise ImageError(f"{UPLOAD_NAME} is empty; send the image file's bytes as the request body")
        try:
            fd, name = tempfile.mkstemp(prefix="upload-", dir=self.path)
        except OSError as exc:
            raise UploadSpaceError(f"the server cannot store the upload for decoding ({exc.strerror or exc}); "
                                   "retry later") from None
        found: list[str] = []
        try:
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            except OSError as exc:  # a full /dev/shm (64 MB in a default Docker container), a file size limit
                raise UploadSpaceError(f"the server is out of space for uploads ({exc.strerror or exc}); retry "
                                       "later or send a smaller image") from None
            try:
                image = read_image(name, max_pixels=max_pixels, notes=found)
            except PixelLimitError as exc:  # this server's limit (not the decoder's own guard)
                raise PixelLimitError(f"{_scrub(str(exc), name)} (this server's limit, set by its operator "
                                      "with --max-pixels)") from None
            except ImageTooLargeError as exc:
                raise ImageTooLargeError(_scrub(str(exc), name)) from None
            except ImageError as exc:
                cause = _server_side(exc)
                if cause is not None:  # the server's own limits, not the upload: a 503 the client may retry
                    raise UploadSpaceError(f"the server could not read the upload back for decoding "
                                           f"({cause.strerror or cause}); retry later") from None
                raise ImageError(_scrub(str(exc), name)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if notes is not None:
            notes.extend(_scrub(message, name) for message in found)
        return dataclasses.replace(image, path=None)  # the upload's temporary name is nobody's business

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, -1  # closed once: a second close must not close a reused descriptor
        if lock >= 0:
            with contextlib.suppress(OSError):
                os.close(lock)


_SERVER_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO, errno.ENOSPC})
"""OS errors in reading the server's own copy of an upload that are the server's trouble (out of file
descriptors or memory, a failing disk), not a damaged upload."""


def _server_side(exc: BaseException) -> OSError | None:
    """The OSError with one of :data:`_SERVER_ERRNOS` behind ``exc`` (its causes followed), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _SERVER_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _scrub(message: str, path: str) -> str:
    return message.replace(path, UPLOAD_NAME)


def without_path(message: str) -> str:
    """An image writer's message without its leading ``<file>: `` (a request's output has no file)."""
    return message.split(": ", 1)[-1]


def encode(pixels: np.ndarray, alpha: np.ndarray | None, *, suffix: str, quality: int,
           icc_profile: bytes | None = None, exif: bytes | None = None,
           peak: int | None = None) -> tuple[bytes, list[str]]:
    """Encoded image bytes and the notes the encoder raised (e.g. alpha dropped by JPEG); the notes are kept per
    call, not through the process's warnings state, which concurrent requests would share. ``peak``: the
    16-bit level that stands for white (the upload's sample range), as :func:`encode_image` takes it."""
    notes: list[str] = []
    data = encode_image(suffix, pixels, alpha=alpha, quality=quality, icc_profile=icc_profile, notes=notes,
                        exif=exif, peak=peak)
    return data, [without_path(note) for note in notes]
