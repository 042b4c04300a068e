"""The artifact store: the only contract between the adapt, export and runtime stages.

Layout::

    <store>/<camera>/manifest.json                       provenance, settings, checksums (schema below)
    <store>/<camera>/adapted.<sha256[:16]>.safetensors   adapted weights (adapt stage)
    <store>/<camera>/model.<sha256[:16]>.onnx            exported model (export stage), model_fp16...
    <store>/_fallback/                                   an unadapted backbone for cameras with no model
    <store>/_cache/                                      caches that only save time (adaptation's weight maps)

Artifacts have a logical name (``adapted.safetensors``, ``model.onnx``, ...), the key of
``manifest["artifacts"][<name>] = {"file", "sha256", "bytes", "stage", "created", ...}``; the
file on disk (``file``) is content-addressed, so a new version never overwrites the one the
current manifest describes; ``created`` is when these bytes were first written under that name (an
unchanged re-export keeps it). Readers resolve names through the manifest and verify the sha256
before trusting a file (:meth:`CameraStore.verified_path`).

Transactions (:meth:`CameraStore.transaction`): a writer takes the camera's exclusive lock
(``<store>/<camera>/.lock``), removes temporary files of killed writers, reads and validates the
manifest (so a damaged store fails before any work), stages new artifact files, and commits by
replacing ``manifest.json`` atomically: that rename is the single commit point, so a reader sees
the old set of files or the new one, never a mix. The files the previous manifest referred to and
the new one does not are listed as ``superseded_files`` and stay until the next commit, so a reader
of the previous manifest still finds them; files no manifest refers to are removed after the commit
(and by the next lock holder after a crash). Nothing staged by an aborted transaction is ever referenced. Every
file is written through a temporary file, fsynced and renamed; file modes follow the umask.

ONNX artifacts may not use external-data files unless each is listed with its sha256 in the
record's ``external_data`` (``[{"file", "sha256"}]``); the export stage never makes them.

Manifest schema (``schema_version`` 1), top-level keys, each owned by one stage, checked on load
by :func:`validate_manifest`:

- ``schema_version`` (int), ``camera`` (str), ``updated`` (ISO time)
- adapt: ``images``, ``backbone`` ({name, weights_sha256, ...}), ``scale`` (int 1-16), ``kernel``,
  ``niqe_before``, ``niqe_after``, ``per_image``, ``steps``, ``stop_reason``, ``seed``,
  ``precision``, ``device``, ``wall_time_s``, ``attention``, ``versions``, ``weights_sha256``,
  ``config``, ``interrupted`` (bool: true when ``--keep-on-interrupt`` published an interrupted run),
  ``timing`` (where the last internal step's time went: set-up, plain steps, the periods' first
  steps that sample the tail-mode bank of pairs, evaluations; counts, totals and means in seconds),
  ``threads`` (CPU runs: ``max`` intra-op threads, ``automatic`` (false under ``ADASSR_THREADS``) and
  the ``changes`` made while other processes used the cores; null on a GPU), ``admm`` (only with
  ``--admm-iters`` > 1: one record per iteration's internal step, with ``iteration``, ``steps``,
  ``best_step``, ``kept_start``, mean ``niqe_before`` / ``niqe_after``, ``stop_reason``,
  ``diverged``; the top-level ``steps`` and ``best_step`` are the last iteration's)
- export: ``exports`` ({"onnx": {...}, "onnx_fp16": {...}}, each with ``file``, ``scale`` (1-16),
  optional ``multiple_of`` (1-1024), ``input_name``, ``output_name``)
- all: ``artifacts`` as above; ``superseded_files`` (the previous generation's file names, kept for
  its readers until the next commit), written by every commit.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adassr.runtime.cameras import FALLBACK_CAMERA as FALLBACK_CAMERA  # re-exported: the store names the folder
from adassr.runtime.cameras import camera_name, closest_camera_hint, validate_group_name
from adassr.runtime.errors import CameraError, ConfigError, StoreError
from adassr.runtime.links import broken_link
from adassr.runtime.tempfiles import create_temp, remove_stale_temps

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
log = logging.getLogger(__name__)
# .files: (device, inode) of the camera locks this thread holds (a nested flock would wait on itself)
_HELD_LOCKS = threading.local()
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is kilobytes; engine records of many GPUs stay far below this
_LOCK_OPEN_ATTEMPTS = 20  # opening a camera's lock file while another writer removes the unused folder
ENGINES_FOLDER = "engines"
"""A camera's TensorRT engines: files in ``<camera>/engines/``, records under the manifest key of the same name."""
ORT_TRT_CACHE_DIR = "ort-trt"
"""onnxruntime's TensorRT engine caches: ``<camera>/engines/ort-trt/<ONNX sha256[:16]>-...``, one folder per ONNX
file, precision, profiles and onnxruntime version; a folder goes when no manifest names its ONNX file any more."""
_ORT_TRT_CACHE_NAME = re.compile(r"^([0-9a-f]{16})-")
_ONNX_CONTENT_NAME = re.compile(r"\.([0-9a-f]{16})\.onnx$")
FALLBACK_BACKBONE = "realesrgan-x4plus"  # the registry backbone exported as the fallback by default
MODEL_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")  # precisions of exported models (not training)
MODEL_FILES: Mapping[str, str] = MappingProxyType({"fp32": "model.onnx", "fp16": "model_fp16.onnx"})
EXPORT_KEYS: Mapping[str, str] = MappingProxyType({"fp32": "onnx", "fp16": "onnx_fp16"})  # manifest["exports"] keys
ADAPTED_WEIGHTS = "adapted.safetensors"  # the adapt stage's output, read by export and --backend torch
DEFAULT_STORE = Path("models")
MAX_SCALE = 16
MAX_MULTIPLE_OF = 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_NAME = re.compile(r"^.+\.[0-9a-f]{16}(\.[A-Za-z0-9_]+)?$")


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` for a command line the user copies: quoted for the shell, and a relative path starting with
    ``-`` written ``./-path`` (``mv``, ``chmod`` and argparse would take it for an option)."""
    text = str(path)
    if text.startswith("-"):
        text = os.path.join(".", text)
    return shlex.quote(text)


def store_option(root: str | os.PathLike[str]) -> str:
    """`` --store ROOT`` for a command suggested to the user, or nothing for the default store: a hint
    without it, followed as given, would write into ./models and leave the user's store as it was. A
    relative root starting with ``-`` is written ``./-root`` (argparse would take it for an option)."""
    given = Path(root).expanduser()
    try:
        default = given.resolve() == DEFAULT_STORE.resolve()
    except (OSError, RuntimeError):
        default = False
    return "" if default else f" --store {shell_path(given)}"


PHOTO_FOLDER = "PHOTO_FOLDER"
"""What an ``adapt`` command suggested to the user names as ``--images`` where the camera's photos are not
known: without ``--images`` adapt reads the bundled samples (for a camera named like one of them, canon,
nintendo or nokia, it would adapt to those without a word)."""


def photo_folder(manifest: Mapping[str, Any] | None) -> str | None:
    """The folder of the photos a camera was adapted on (the deepest one holding every image its manifest
    records), as ``adapt --images`` takes it with ``--camera``; None when the manifest records none."""
    records = (manifest or {}).get("images") or ()
    paths = [r["path"] for r in records if isinstance(r, Mapping) and isinstance(r.get("path"), str) and r["path"]]
    if not paths:
        return None
    try:
        return os.path.commonpath([os.path.dirname(p) or "." for p in paths])
    except ValueError:  # absolute and relative paths mixed (a hand-edited manifest)
        return None


def adapt_command(camera: str, root: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None) -> str:
    """The ``adassr adapt`` command that (re)builds ``camera`` in the store ``root``: on the photos its manifest
    records (``--image PATH`` for a camera adapted on one image), else on :data:`PHOTO_FOLDER` for the user to
    fill in."""
    records = [r for r in (manifest or {}).get("images") or () if isinstance(r, Mapping)]
    if len(records) == 1 and records[0].get("derivation") == "single-image" and isinstance(records[0].get("path"), str):
        return f"adassr adapt --image {shell_path(records[0]['path'])} --camera {camera}{store_option(root)}"
    photos = photo_folder(manifest)
    images = shell_path(photos) if photos is not None else PHOTO_FOLDER
    return f"adassr adapt --camera {camera} --images {images}{store_option(root)}"


def export_arguments(camera: str, manifest: Mapping[str, Any] | None) -> str:
    """What ``adassr export`` takes to export ``camera`` again: ``--camera NAME``, or for the fallback (exported
    from its backbone, not as a camera) ``--backbone NAME``, the one its manifest records."""
    if camera != FALLBACK_CAMERA:
        return f"--camera {camera}"
    backbone = (manifest or {}).get("backbone")
    name = backbone.get("name") if isinstance(backbone, Mapping) else None
    return f"--backbone {name if isinstance(name, str) and name else FALLBACK_BACKBONE}"


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
"""Open flag that refuses a symbolic link in the last path component (POSIX; Windows has none)."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file is named after the writer's pid (removed by a later run if the writer is
    killed) and gets the umask-derived mode of a plain ``open()``. On any exception it is removed
    and ``path`` is left as it was. ``OSError`` while writing (disk full, permissions) becomes a
    :class:`StoreError` naming the file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(target)
    os.close(fd)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise StoreError(
                f"cannot write {target}: {exc.strerror or exc}; check free space and permissions "
                "(nothing was changed)"
            ) from exc
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_bytes(path, _json_bytes(obj))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def content_file_name(name: str, sha256: str) -> str:
    """On-disk name of artifact ``name`` with digest ``sha256``: ``model.onnx`` -> ``model.<16 hex>.onnx``."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name}.{sha256[:16]}"
    return f"{stem}.{sha256[:16]}.{suffix}"


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and name not in {"", ".", ".."} and "/" not in name and "\\" not in name
            and "\x00" not in name)


def is_engine_file(file: object, *, folder: str | None = ENGINES_FOLDER) -> bool:
    """Whether an engine record's ``file`` is ``<folder>/<plain name>.engine`` (a camera's engines) or,
    with ``folder=None``, a plain ``<name>.engine`` (the shared folder): a record never points elsewhere,
    since a rebuild deletes the file a replaced record names."""
    if not isinstance(file, str) or not file.endswith(".engine"):
        return False
    if folder is None:
        return _plain_name(file)
    head, _, name = file.partition("/")
    return head == folder and _plain_name(name)


# -- manifest validation -----------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_artifact(path: Path, name: object, record: object) -> None:
    where = f"{path}: artifacts[{name!r}]"
    if not _plain_name(name):
        raise StoreError(f"{path}: artifact name {name!r} is not a plain file name")
    if not isinstance(record, Mapping):
        raise StoreError(f"{where} is not an object")
    if not isinstance(record.get("sha256"), str) or not _HEX64.match(record["sha256"]):
        raise StoreError(f"{where} has no valid sha256 (64 hex digits)")
    if "bytes" in record and (not _is_int(record["bytes"]) or record["bytes"] < 0):
        raise StoreError(f"{where}['bytes'] must be a non-negative integer, got {record['bytes']!r}")
    if "file" in record and not _plain_name(record["file"]):
        raise StoreError(f"{where}['file'] must be a plain file name, got {record['file']!r}")
    if "stage" in record and not isinstance(record["stage"], str):
        raise StoreError(f"{where}['stage'] must be a string, got {record['stage']!r}")
    external = record.get("external_data", [])
    if not isinstance(external, list):
        raise StoreError(f"{where}['external_data'] must be a list of {{file, sha256}} objects")
    for item in external:
        if (not isinstance(item, Mapping) or not _plain_name(item.get("file"))
                or not isinstance(item.get("sha256"), str) or not _HEX64.match(item["sha256"])):
            raise StoreError(
                f"{where}['external_data'] holds {item!r}: each entry needs a plain 'file' name and a 64-hex 'sha256'"
            )


def _check_scale(where: str, value: object) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_SCALE:  # type: ignore[operator]
        raise StoreError(
            f"{where} must be an integer from 1 to {MAX_SCALE}, got {value!r}"
        )


def try_exclusive_lock(fd: int) -> bool:
    """``fcntl.flock`` an exclusive lock on ``fd`` without waiting: False when another open file holds
    it (closing ``fd`` releases it); other errors raise."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def damaged_manifest_advice(path: Path) -> str:
    """The way out of a manifest that cannot be read: every stage refuses the camera until it is gone
    (rerunning the stage that wrote it fails the same way, since it reads the manifest first)."""
    camera, store = path.parent.name, f" --store {shell_path(path.parent.parent)}"
    rebuild = (f"`{adapt_command(camera, path.parent.parent)}` (then `adassr export --camera {camera}{store}`)"
               if camera != FALLBACK_CAMERA else f"`adassr export --backbone realesrgan-x4plus{store}`")
    return (f"every stage refuses this camera while the manifest is damaged: move it away "
            f"(`mv {shell_path(path)} {shell_path(str(path) + '.damaged')}`), then rebuild the camera "
            f"with {rebuild}")


def validate_manifest(data: object, path: Path) -> dict[str, Any]:
    """Type- and range-check a parsed manifest; return it, or raise :class:`StoreError` saying what is wrong."""
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or not _is_int(version):
        raise StoreError(f"{path} has schema_version {version!r}, this adassr reads {SCHEMA_VERSION}")
    if "camera" in data and not isinstance(data["camera"], str):
        raise StoreError(f"{path}: 'camera' must be a string, got {data['camera']!r}")
    artifacts = data.get("artifacts", {})
    if not isinstance(artifacts, dict):
        raise StoreError(f"{path}: 'artifacts' must be an object, got {type(artifacts).__name__}")
    for name, record in artifacts.items():
        _check_artifact(path, name, record)
    if "scale" in data:
        _check_scale(f"{path}: 'scale'", data["scale"])
    for key in ("weights_sha256",):
        if key in data and not isinstance(data[key], str):
            raise StoreError(f"{path}: {key!r} must be a string, got {data[key]!r}")
    if "backbone" in data:
        backbone = data["backbone"]
        if not isinstance(backbone, Mapping) or not isinstance(backbone.get("name"), str):
            raise StoreError(
                f"{path}: 'backbone' must be an object with a string 'name'"
            )
    if "interrupted" in data and not isinstance(data["interrupted"], bool):
        raise StoreError(f"{path}: 'interrupted' must be true or false, got {data['interrupted']!r}")
    exports = data.get("exports", {})
    if not isinstance(exports, dict):
        raise StoreError(f"{path}: 'exports' must be an object, got {type(exports).__name__}")
    for key, record in exports.items():
        where = f"{path}: exports[{key!r}]"
        if not isinstance(record, Mapping) or not _plain_name(record.get("file")):
            raise StoreError(f"{where} needs a plain 'file' name")
        if "scale" in record:
            _check_scale(f"{where}['scale']", record["scale"])
        multiple = record.get("multiple_of", 1)
        if not _is_int(multiple) or not 1 <= multiple <= MAX_MULTIPLE_OF:
            raise StoreError(f"{where}['multiple_of'] must be an integer from 1 to {MAX_MULTIPLE_OF}, got {multiple!r}")
        for io_key in ("input_name", "output_name"):
            if record.get(io_key) is not None and not isinstance(record[io_key], str):
                raise StoreError(f"{where}[{io_key!r}] must be a string, got {record[io_key]!r}")
    # Engine records are checked where they are used (runtime/engines/cache.py): a damaged one costs a
    # rebuild of that engine, never the camera's ONNX model.
    return data


def _file_holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` holds exactly ``data`` (False when it cannot be read)."""
    try:
        return path.read_bytes() == data
    except OSError:
        return False


_MAX_STALE_LOCKS = 20  # lock files found replaced in a row before the lock gives up (see CameraStore.lock)
SUPERSEDED_KEY = "superseded_files"
"""Manifest key: the files the previous manifest referred to and this one does not. They stay on disk
for one more commit, so that a reader that read the previous manifest a moment before the commit
still finds its files (it would otherwise fail with "listed in the manifest but missing")."""


def _superseded_files(manifest: Mapping[str, Any] | None) -> set[str]:
    """The manifest's superseded files that are plain names or engine files (never a path elsewhere)."""
    listed = (manifest or {}).get(SUPERSEDED_KEY)
    if not isinstance(listed, list):
        return set()
    return {f for f in listed if isinstance(f, str) and (_plain_name(f) or is_engine_file(f))}


def _referenced_files(manifest: Mapping[str, Any]) -> set[str]:
    """Every file the manifest refers to, relative to the camera folder (engines as ``engines/<file>``)."""
    files: set[str] = set()
    for name, record in (manifest.get("artifacts") or {}).items():
        files.add(str(record.get("file", name)))
        files.update(str(item["file"]) for item in record.get("external_data", []))
    engines = manifest.get(ENGINES_FOLDER)
    for record in (engines.values() if isinstance(engines, Mapping) else ()):
        if isinstance(record, Mapping) and is_engine_file(record.get("file")):  # never a path elsewhere
            files.add(record["file"])
    return files


@dataclass(frozen=True)
class CameraStore:
    """One camera group's folder in a store. Holds no state beyond the two paths."""

    root: Path
    camera: str

    @classmethod
    def open(cls, root: str | os.PathLike[str], camera: str, *, create: bool = False) -> CameraStore:
        """Open ``<root>/<camera>``; with ``create`` make it (and check it is writable)."""
        name = camera_name(camera)
        root_path = Path(root).expanduser()
        store = cls(root_path, name)
        if create:
            try:
                store.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store folder {store.directory}: "
                    f"{broken_link(store.directory) or exc.strerror or exc}; "
                    "choose a writable location with --store DIR"
                ) from exc
            if not os.access(store.directory, os.W_OK):
                raise StoreError(
                    f"the store folder {store.directory} is not writable; "
                    "choose a writable location with --store DIR"
                )
        elif root_path.exists() and not root_path.is_dir():
            raise StoreError(
                f"the model store {root_path} is a file, not a folder; point --store at the store's "
                "folder (the one that holds a folder per camera)"
            )
        elif not root_path.is_dir():
            raise StoreError(
                f"the model store {root_path} does not exist; run `{adapt_command('NAME', root_path)}` and "
                f"`adassr export --camera NAME{store_option(root_path)}`, or `adassr export --backbone "
                f"realesrgan-x4plus{store_option(root_path)}` for the fallback model, first; or point "
                "--store at an existing store"
            )
        return store

    @property
    def directory(self) -> Path:
        return self.root / self.camera

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def path(self, name: str) -> Path:
        """Path of a plain file name inside this camera's folder (no manifest lookup, no checks)."""
        if not _plain_name(name):
            raise StoreError(f"invalid artifact name {name!r}: a plain file name is required")
        return self.directory / name

    def artifact_path(self, name: str, manifest: Mapping[str, Any] | None = None) -> Path:
        """On-disk path of artifact ``name`` as the manifest records it (not verified)."""
        manifest = self.read_manifest() if manifest is None else manifest
        record = (manifest.get("artifacts") or {}).get(name)
        if not isinstance(record, Mapping):
            return self.path(name)
        return self.path(str(record.get("file", name)))

    def exists(self) -> bool:
        """Whether the camera has a manifest: any entry of that name, so that a damaged one (a link to
        nothing, a FIFO) is read and reported, never taken for "no manifest" (and the fallback).

        A camera folder that cannot be looked into is no answer either: StoreError when it is unreadable,
        a loop of links, or a link to nothing (a share that is not mounted), since "no manifest" would
        serve the fallback model for the camera's photos (and replace outputs of its adapted one)."""
        try:
            os.lstat(self.manifest_path)
            return True
        except FileNotFoundError:
            if os.path.islink(self.directory) and not os.path.exists(self.directory):
                raise StoreError(
                    f"the camera folder {self.directory} is a link to {os.readlink(self.directory)}, which does "
                    "not exist (a share that is not mounted?); mount or restore it, or remove the link"
                ) from None
            return False
        except NotADirectoryError:
            return False  # a file where the folder would be: no camera (list_cameras leaves it out too)
        except OSError as exc:
            loop = broken_link(self.directory)
            if loop is not None:
                raise StoreError(f"cannot look into the camera folder {self.directory}: {loop}; fix or remove the "
                                 "link") from exc
            raise StoreError(
                f"cannot look into the camera folder {self.directory}: {exc.strerror or exc}; give the user "
                "running adassr read access to it (or remove it from the store)"
            ) from exc

    def remove_if_unused(self) -> bool:
        """Remove this camera's folder when it holds nothing but its lock file (a first run that
        published nothing); done under the lock, so a folder another writer holds stays. True if removed."""
        try:
            with self.lock():
                if {entry.name for entry in os.scandir(self.directory)} != {LOCK_NAME}:
                    return False
                (self.directory / LOCK_NAME).unlink()
                self.directory.rmdir()
                return True
        except (OSError, StoreError):
            return False

    # -- manifest -------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """Read and validate the manifest; StoreError if missing, unreadable, of another schema or invalid."""
        path = self.manifest_path
        try:
            st = os.stat(path)  # through a link: what would be read
            if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the read, /dev/zero never end it
                raise StoreError(f"{path} is not a regular file (a folder, a FIFO or a device); "
                                 f"{damaged_manifest_advice(path)}")
            if st.st_size > MAX_MANIFEST_BYTES:
                raise StoreError(f"{path} is {st.st_size:,} bytes, more than a manifest ever holds "
                                 f"({MAX_MANIFEST_BYTES:,}); {damaged_manifest_advice(path)}")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if os.path.lexists(path):  # a link to nothing
                raise StoreError(f"{path} is a link to a file that does not exist; "
                                 f"{damaged_manifest_advice(path)}") from None
            if self.camera == FALLBACK_CAMERA:
                raise StoreError(f"the store has no fallback model ({path} is missing); export it with "
                                 f"`adassr export --backbone {FALLBACK_BACKBONE}{store_option(self.root)}`") from None
            hint = closest_camera_hint(self.camera, list_cameras(self.directory.parent))
            advice = ("" if hint else  # a likely typo: no advice to adapt it under the mistyped name
                      f" Adapt it with `{adapt_command(self.camera, self.root)}` (or export a backbone) first")
            raise StoreError(f"no manifest for camera {self.camera!r} at {path}.{hint}{advice}") from None
        except UnicodeDecodeError as exc:
            raise StoreError(f"{path} is not UTF-8 text ({exc.reason}); {damaged_manifest_advice(path)}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link that leads back to itself
                raise StoreError(f"{path} is a loop of links; {damaged_manifest_advice(path)}") from exc
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from exc
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # ValueError: also an integer of thousands of digits
            msg = (f"{exc.msg.removesuffix(' at')} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError)
                   else "nested too deeply" if isinstance(exc, RecursionError) else str(exc))
            raise StoreError(f"{path} is not valid JSON ({msg}); {damaged_manifest_advice(path)}") from exc
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:  # a newer adassr
            raise StoreError(f"{path} was written by a newer adassr (schema_version {version}; this one reads "
                             f"{SCHEMA_VERSION}); upgrade adassr to use this camera")
        try:
            return validate_manifest(data, path)
        except StoreError as exc:
            raise StoreError(f"{exc}; {damaged_manifest_advice(path)}") from None

    def read_manifest_or_empty(self) -> dict[str, Any]:
        if not self.exists():
            return {"schema_version": SCHEMA_VERSION, "camera": self.camera, "artifacts": {}}
        return self.read_manifest()

    def update_manifest(self, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change the manifest (no new files) in one transaction (takes the lock; waits up to 10 s)."""
        with self.transaction(timeout_s=10.0) as tx:
            return tx.commit(update)

    # -- artifacts ------------------------------------------------------------------------
    def publish(
        self, name: str, write: Callable[[Path], None], *, stage: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write one artifact through ``write(tmp_path)`` and commit it in its own transaction.

        Returns the artifact record stored in the manifest.
        """
        with self.transaction(timeout_s=10.0) as tx:
            record = tx.stage(name, write, stage=stage, extra=extra)
            tx.commit()
        return record

    def verified_path(self, name: str, manifest: Mapping[str, Any] | None = None) -> Path:
        """Return the artifact's path after checking it (and any external data) against the manifest."""
        manifest = self.read_manifest() if manifest is None else manifest
        record = (manifest.get("artifacts") or {}).get(name)
        if not isinstance(record, Mapping):
            have = ", ".join(sorted(manifest.get("artifacts") or {})) or "none"
            raise StoreError(
                f"camera {self.camera!r} has no {name} in its manifest (artifacts: {have}); "
                "run the stage that makes it"
            )
        path = self.path(str(record.get("file", name)))
        missing = StoreError(f"{path} ({name}) is listed in the manifest but missing (another process may have "
                             "just replaced it: retry); otherwise rerun the stage that made it")
        if not path.is_file():
            raise missing
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            raise StoreError(f"cannot read {path} ({name}): {exc.strerror or exc}") from exc
        if digest != record.get("sha256"):
            raise StoreError(
                f"{path} ({name}) fails its checksum (sha256 {digest[:12]}..., manifest says "
                f"{str(record.get('sha256'))[:12]}...): the file was modified or damaged; "
                "rerun the stage that made it"
            )
        if name.endswith(".onnx"):
            self._check_external_data(name, path, record)
        return path

    def _check_external_data(self, name: str, path: Path, record: Mapping[str, Any]) -> None:
        from adassr.runtime.onnx_external import external_data_files

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {path} ({name}): {exc.strerror or exc} (another process may have just "
                             "replaced it: retry)") from exc
        locations = external_data_files(data, name=str(path))
        listed = {str(item["file"]): str(item["sha256"]) for item in record.get("external_data", [])}
        for location in locations:
            if not _plain_name(location) or location not in listed:
                raise StoreError(
                    f"{path} ({name}) loads external data from {location!r}, which the manifest does not "
                    "list with a sha256; refusing to load unverified files (re-export with `adassr export`, "
                    "which writes self-contained models)"
                )
            data_path = self.path(location)
            try:
                matches = data_path.is_file() and sha256_file(data_path) == listed[location]
            except OSError:
                matches = False
            if not matches:
                raise StoreError(
                    f"{data_path} (external data of {name}) is missing or fails its checksum; "
                    "rerun the stage that made it"
                )

    # -- locking and transactions ---------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, timeout_s: float = 0.0, poll_s: float = 0.2) -> Iterator[None]:
        """Exclusive lock on this camera's folder (fcntl.flock on ``.lock``).

        With ``timeout_s`` 0 fail at once when another process holds it. Not re-entrant: inside a
        transaction, use the transaction's methods, not :meth:`publish` / :meth:`update_manifest`.
        """
        held: set[tuple[int, int]] = _HELD_LOCKS.__dict__.setdefault("files", set())
        deadline = time.monotonic() + timeout_s
        waiting = False
        stale = 0
        while True:
            fd, key = self._open_lock_file(held)
            try:
                locked = try_exclusive_lock(fd)
                if locked and self._lock_file_is(key):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # not ours yet, or the file was removed meanwhile (remove_if_unused): open it anew
            if locked:
                stale += 1
                if stale > _MAX_STALE_LOCKS:
                    raise StoreError(
                        f"cannot confirm the lock file {self.directory / LOCK_NAME}: the file locked is not the "
                        "one its path names (another process keeps replacing it, or the file system does not "
                        "report file identities); check the store's file system")
                continue
            if not waiting and timeout_s > 0:
                waiting = True
                log.warning("another adassr process%s is writing camera %r in %s; waiting for it (up to %.0f s)",
                            self._holder(), self.camera, self.root, timeout_s)
            if time.monotonic() >= deadline:
                pid = self._holder_pid()
                holder = f" (pid {pid})" if pid else ""
                stopped = f"; if it does not end (a stopped or hung process: `ps -p {pid}`), end it" if pid else ""
                raise StoreError(
                    f"another adassr process{holder} is writing camera {self.camera!r} in "
                    f"{self.root} (lock {self.directory / LOCK_NAME}); wait for it to "
                    f"finish, or use another --store{stopped}"
                )
            time.sleep(poll_s)
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)
        finally:
            os.close(fd)  # closing releases the flock

    def refuse_alias(self) -> None:
        """StoreError when another camera name of this store reaches this camera's folder too (``canon -> nikon``,
        an alias for serving, or two links to one folder elsewhere) and the folder is that camera's: a model
        written under this name would replace the other camera's. The folder belongs to the name its manifest
        records, else to the name that is no link. Checked by every :meth:`StoreTransaction.stage` (engines and
        their records, built from the folder's own model, may still be written through an alias), and by
        ``adapt`` before it trains."""
        try:
            own = os.stat(self.directory)
        except OSError:  # no folder yet, or one that cannot be looked into (reported where it is read)
            return
        sharing = []
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.name == self.camera or not _is_group_name(entry.name):
                        continue
                    with contextlib.suppress(OSError):
                        other = entry.stat()  # through links
                        if (other.st_dev, other.st_ino) == (own.st_dev, own.st_ino):
                            sharing.append(entry.name)
        except OSError:
            return
        if not sharing:
            return
        names = {self.camera, *sharing}
        recorded = None
        with contextlib.suppress(StoreError):
            recorded = self.read_manifest_or_empty().get("camera")
        if recorded in names:
            owner = recorded
        else:
            real = [name for name in names if not (self.root / name).is_symlink()]
            owner = real[0] if len(real) == 1 else None
        if owner == self.camera:
            return
        whose = f"camera {owner!r}" if owner is not None else f"camera(s) {', '.join(map(repr, sorted(sharing)))}"
        model = repr(owner) if owner is not None else "that camera"
        raise StoreError(
            f"the camera folder {self.directory} is also the folder of {whose} in this store "
            f"({os.path.realpath(self.directory)}): writing camera {self.camera!r} there would replace the model of "
            f"{model}; remove the link (a copy, cp -r, makes a camera of its own), or adapt or export {model} itself"
        )

    def _open_lock_file(self, held: set[tuple[int, int]]) -> tuple[int, tuple[int, int]]:
        """Open (creating it and the folder) the lock file; ``(fd, (device, inode))``.

        A writer that removes an unused camera folder (:meth:`remove_if_unused`) may take the folder away
        between the mkdir and the open (ENOENT), or during the mkdir (EEXIST from pathlib's check): tried
        again, a few times, before it counts as a real failure."""
        for attempt in range(_LOCK_OPEN_ATTEMPTS):
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                # never through a link: a planted .lock -> some file would have it truncated (shared stores)
                fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
                break
            except (FileNotFoundError, FileExistsError) as exc:
                if attempt + 1 < _LOCK_OPEN_ATTEMPTS and not self.directory.is_file():
                    continue
                raise StoreError(
                    f"cannot open the lock file {self.directory / LOCK_NAME}: {exc.strerror or exc}; "
                    "choose a writable location with --store DIR"
                ) from exc
            except OSError as exc:
                if os.path.islink(self.directory / LOCK_NAME):
                    raise StoreError(
                        f"the lock file {self.directory / LOCK_NAME} is a symbolic link (adassr never makes one, "
                        "and writing through it would change the file it points to); remove the link and rerun"
                    ) from exc
                raise StoreError(
                    f"cannot open the lock file {self.directory / LOCK_NAME}: {exc.strerror or exc}; "
                    "choose a writable location with --store DIR"
                ) from exc
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)  # the file itself, however the path reaches it (links, mounts)
        if key in held:
            os.close(fd)
            raise StoreError(
                f"camera {self.camera!r} in {self.root} is already locked by this thread: store transactions "
                "do not nest; inside a transaction use its own methods, not publish() or update_manifest()"
            )
        return fd, key

    def _holder_pid(self) -> str | None:
        """The pid of the process that holds the lock (it writes its pid into the file), or None."""
        try:
            text = (self.directory / LOCK_NAME).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if text.isdigit() else None

    def _holder(self) -> str:
        """`` (pid N)`` of the process that holds the lock, or ``""``."""
        pid = self._holder_pid()
        return f" (pid {pid})" if pid else ""

    def _lock_file_is(self, key: tuple[int, int]) -> bool:
        """Whether the lock file's path still names the file locked (another process may have removed
        it, and its folder, with :meth:`remove_if_unused` while this one waited on the old file)."""
        try:
            st = os.stat(self.directory / LOCK_NAME)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == key

    @contextlib.contextmanager
    def transaction(self, *, timeout_s: float = 0.0) -> Iterator[StoreTransaction]:
        """Lock the camera, clean up after killed writers, validate the manifest, yield a transaction.

        Everything that can fail before work starts fails here: the lock (StoreError if another
        process holds it past ``timeout_s``), an unreadable or invalid manifest. Files staged
        but not committed are removed when the block exits.
        """
        with self.lock(timeout_s=timeout_s):
            # under the camera's lock, which every writer of temporary files here holds: any other's is dead
            remove_stale_temps(self.directory, locked=True)
            if not (self.directory / ENGINES_FOLDER).is_symlink():  # not through a link to a folder elsewhere
                remove_stale_temps(self.directory / ENGINES_FOLDER, locked=True)  # a build killed mid-write
            manifest = self.read_manifest_or_empty()
            scan = self.manifest_matches_folder(manifest)
            self._remove_orphans(manifest, previous=None, scan=scan)
            tx = StoreTransaction(self, manifest, scan=scan)
            try:
                yield tx
            finally:
                tx._discard()

    def manifest_matches_folder(self, manifest: Mapping[str, Any]) -> bool:
        """Whether ``manifest`` refers to at least one file, every file it refers to is in the camera's folder and
        every export names a recorded artifact: only then are the folder's other content-addressed files known
        to be leftovers (of a killed writer, of a cut clean-up). A missing manifest, or one that lost or changed
        its records (edited by hand, replaced, linked to another camera's), says nothing of them."""
        files = _referenced_files(manifest)
        exports = manifest.get("exports") or {}
        artifacts = manifest.get("artifacts") or {}
        if not files or not isinstance(exports, Mapping):
            return False
        if not all(isinstance(r, Mapping) and r.get("file") in artifacts for r in exports.values()):
            return False
        return all((self.directory / name).is_file() for name in files)

    def _remove_orphans(self, manifest: Mapping[str, Any], previous: Mapping[str, Any] | None, *,
                        scan: bool) -> list[str]:
        """Remove the files ``previous`` referenced and, with ``scan``, the folder's other content-addressed files,
        that ``manifest`` does not refer to. ``scan`` only where the manifest the transaction began with matched the
        folder (:meth:`manifest_matches_folder`): else the unlisted files may be the camera's weights and models,
        and a failed command took them with it."""
        keep = _referenced_files(manifest) | _superseded_files(manifest) | {MANIFEST_NAME, LOCK_NAME}
        candidates = (_referenced_files(previous) | _superseded_files(previous)) if previous is not None else set()
        if not scan:
            return [name for name in sorted(candidates - keep) if self._unlink(name)]
        with contextlib.suppress(OSError):
            candidates.update(e.name for e in os.scandir(self.directory)
                              if _CONTENT_NAME.match(e.name) and not e.name.startswith("."))
        engines = self.directory / ENGINES_FOLDER
        if not engines.is_symlink():  # a link to a folder elsewhere (shared engines) is not the camera's to clean
            with contextlib.suppress(OSError):  # engines no record refers to (re-adapting forgets the records)
                candidates.update(f"{ENGINES_FOLDER}/{e.name}" for e in os.scandir(engines) if e.name.endswith(
                    ".engine") and not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        removed = [name for name in sorted(candidates - keep) if self._unlink(name)]
        return removed + self._remove_stale_ort_trt_caches(keep)

    def _unlink(self, name: str) -> bool:
        """Remove the camera's file ``name`` (never through a link out of its folder); whether it was removed."""
        if "/" in name and (self.directory / name).parent.is_symlink():
            return False
        try:
            (self.directory / name).unlink()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return False
        return True

    def _remove_stale_ort_trt_caches(self, keep: set[str]) -> list[str]:
        """Remove onnxruntime's TensorRT cache folders of ONNX files that no name in ``keep`` is (a new ONNX
        file gets a new folder, so the old one would never be read again: tens to hundreds of MB each)."""
        engines = self.directory / ENGINES_FOLDER
        caches = engines / ORT_TRT_CACHE_DIR
        if engines.is_symlink() or caches.is_symlink():
            return []  # shared engines elsewhere are not the camera's to clean
        current = {match.group(1) for name in keep if (match := _ONNX_CONTENT_NAME.search(name))}
        try:
            entries = list(os.scandir(caches))
        except OSError:  # no such folder: no onnxruntime TensorRT session ever ran for this camera
            return []
        removed = []
        for entry in entries:
            match = _ORT_TRT_CACHE_NAME.match(entry.name)
            if match is None or match.group(1) in current or not entry.is_dir(follow_symlinks=False):
                continue
            _remove_tree(Path(entry.path), why="onnxruntime's TensorRT engine cache of an ONNX file the camera no "
                                               "longer has")
            removed.append(f"{ENGINES_FOLDER}/{ORT_TRT_CACHE_DIR}/{entry.name}")
        return removed



@contextlib.contextmanager
def camera_folder_for_writing(root: str | os.PathLike[str], camera: str) -> Iterator[CameraStore]:
    """Open ``<root>/<camera>`` with ``create=True`` for a writer that may be its first. When the
    block fails (an error or an interrupt), what the opening made and nothing holds is removed again:
    the camera folder when this call created it and it holds nothing but its lock file
    (:meth:`CameraStore.remove_if_unused`), and the store root when this call created it and it holds
    nothing else then but the caches the run began (``_cache``: a mistyped ``--store`` interrupted after
    the export's graph was cached left 67 MB behind). A failed first run leaves no folder behind; folders
    that existed stay, empty or not, and so does a new root where another camera appeared meanwhile."""
    given = Path(root).expanduser()
    real_root = Path(os.path.realpath(given))  # `typo/../store` is the existing `store`: never taken for new
    new_root = not os.path.lexists(real_root)
    new_camera = not os.path.lexists(CameraStore(given, camera_name(camera)).directory)
    store = CameraStore.open(given, camera, create=True)
    made = _identity(real_root) if new_root else None  # the folder this call made, and no other
    try:
        yield store
    except BaseException:
        if new_camera and store.remove_if_unused() and made is not None and _identity(real_root) == made:
            with contextlib.suppress(OSError):  # anything else there (another camera's folder): it stays
                if {entry.name for entry in os.scandir(real_root)} <= {CACHE_FOLDER}:
                    if (real_root / CACHE_FOLDER).is_dir() and not (real_root / CACHE_FOLDER).is_symlink():
                        _remove_tree(real_root / CACHE_FOLDER, why="the caches of a first run that failed")
                    real_root.rmdir()
        raise


def _identity(folder: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``folder`` (not following a final link), or None when it cannot be looked at."""
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino

CACHE_FOLDER = "_cache"
"""The store root's folder of caches that only save time (weight maps, ONNX graphs); ``_`` starts no camera name."""


class StoreTransaction:
    """New artifacts and manifest changes of one camera, published together by :meth:`commit`.

    Made by :meth:`CameraStore.transaction` (which holds the lock). ``manifest`` is a private copy
    of the validated current manifest; staged files are referenced only once committed.
    """

    def __init__(self, store: CameraStore, manifest: dict[str, Any], *, scan: bool | None = None) -> None:
        """``scan``: whether the commit may remove content-addressed files no manifest lists (default: whether
        ``manifest`` matches the folder, :meth:`CameraStore.manifest_matches_folder`)."""
        self.store = store
        self._scan = store.manifest_matches_folder(manifest) if scan is None else scan
        self.previous = manifest
        self.manifest = copy.deepcopy(manifest)
        self._staged: dict[str, dict[str, Any]] = {}
        self._committed = False

    def stage(
        self, name: str, write: Callable[[Path], None], *, stage: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write artifact ``name`` through ``write(tmp_path)`` under its content-addressed name.

        The file is not referenced until :meth:`commit`. An empty file, and an ONNX file with
        external data, are refused (StoreError). Returns the artifact record.
        """
        if self._committed:
            raise StoreError("this store transaction is already committed; open a new one")
        if not self._staged:  # once a transaction: the store's folder is read for it
            self.store.refuse_alias()
        target = self.store.path(name)  # validates the name
        _check_extra(name, extra)
        fd, tmp = create_temp(target)
        os.close(fd)
        final: Path | None = None
        earlier = self._staged.get(name)  # a record of this name staged before in this transaction, or None
        try:
            try:
                write(tmp)
                if tmp.is_dir():
                    raise StoreError(f"writing {name} produced a folder, not a file; nothing was published")
                if not tmp.exists() or tmp.stat().st_size == 0:
                    raise StoreError(f"writing {name} produced an empty file; nothing was published")
                if name.endswith(".onnx"):
                    from adassr.runtime.onnx_external import external_data_files

                    if external_data_files(tmp.read_bytes(), name=name):
                        raise StoreError(
                            f"{name} refers to external-data files; the store keeps self-contained ONNX "
                            "models only (export with external_data=False)"
                        )
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                digest = sha256_file(tmp)
                size = tmp.stat().st_size
                final = self.store.path(content_file_name(name, digest))
                os.replace(tmp, final)
                _fsync_dir(self.store.directory)
            except OSError as exc:
                raise StoreError(
                    f"cannot write {name} in {self.store.directory}: {exc.strerror or exc}; check free space "
                    "and permissions (the previous model is unchanged)"
                ) from exc
            record: dict[str, Any] = {"file": final.name, "sha256": digest, "bytes": size, "stage": stage,
                                      "created": self._created(name, digest)}
            if extra:
                record.update(extra)
            self._staged[name] = record
        except BaseException:  # a failure, or a signal's exception, also one between the rename and the record
            if tmp.is_dir() and not tmp.is_symlink():
                _remove_tree(tmp)
            else:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if final is not None and self._staged.get(name) is earlier:
                self._drop_unrecorded(final)
            raise
        self.manifest.setdefault("artifacts", {})[name] = record
        return record

    def _drop_unrecorded(self, final: Path) -> None:
        """Remove ``final``, renamed into place by a :meth:`stage` that failed before recording it, unless a
        manifest or another staged record uses that file (content-addressed: the same bytes, the same name)."""
        keep = (_referenced_files(self.previous) | _superseded_files(self.previous)
                | {r["file"] for r in self._staged.values()})
        if final.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()

    def _created(self, name: str, digest: str) -> str:
        """When artifact ``name`` with content ``digest`` was first made: the previous record's time when
        the camera already has these bytes under that name (an unchanged re-export), else now."""
        artifacts = (self.previous or {}).get("artifacts")
        before = artifacts.get(name) if isinstance(artifacts, Mapping) else None
        created = before.get("created") if isinstance(before, Mapping) and before.get("sha256") == digest else None
        return created if isinstance(created, str) else _now()

    def commit(self, update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Apply ``update`` to the new manifest, replace ``manifest.json`` atomically (the commit point),
        then remove the files no longer referenced. Returns the committed manifest."""
        if self._committed:
            raise StoreError("this store transaction is already committed; open a new one")
        manifest = self.manifest
        if update is not None:
            update(manifest)
        manifest["schema_version"] = SCHEMA_VERSION
        manifest["camera"] = self.store.camera
        manifest["updated"] = _now()
        # the previous generation stays one commit longer, for readers of the previous manifest (one
        # generation only: a writer committing in a burst must not pile up old files)
        manifest[SUPERSEDED_KEY] = sorted(_referenced_files(self.previous) - _referenced_files(manifest))
        validate_manifest(manifest, self.store.manifest_path)
        data = _json_bytes(manifest)
        try:
            atomic_write_bytes(self.store.manifest_path, data)
        finally:
            # An exception after the rename (a Ctrl-C during the folder's fsync) leaves the new manifest
            # in place: it is committed then, and its staged files must not be discarded.
            self._committed = self._committed or _file_holds(self.store.manifest_path, data)
        self._committed = True
        self.store._remove_orphans(manifest, previous=self.previous, scan=self._scan)
        return manifest

    def _discard(self) -> None:
        if self._committed:
            return
        keep = _referenced_files(self.previous) | _superseded_files(self.previous)
        for record in self._staged.values():
            if record["file"] not in keep:
                with contextlib.suppress(FileNotFoundError):
                    self.store.path(record["file"]).unlink()


def store_argument(text: str) -> Path:
    """argparse type of ``--store``: an empty value (an unset shell variable) is refused, since ``Path("")``
    would be the current folder, where a first-use export would then write a 67 MB model."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name the model store folder (an empty value would mean the "
                                         "current folder)")
    return Path(text)


def list_cameras(root: str | os.PathLike[str], *, among: Callable[[str], bool] | None = None) -> list[str]:
    """Camera groups with a manifest in the store (the fallback folder included); with ``among``, only
    those whose folder name (lower-cased) it accepts, and only their manifests are looked up (routing
    asks for a few related names per image, in stores of hundreds of cameras).

    A folder whose name is no valid group name (copied in by hand, or valid under older rules) is left
    out: no command can open it, and it must not stop the store's other cameras; :func:`misnamed_folders`
    names such folders so that commands can warn about them.
    """
    return sorted({name for name, problem in _manifest_folders(root, among=among) if problem is None})


def misnamed_folders(root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(folder, why)`` for each folder of the store that holds a manifest but has no camera group name."""
    return sorted((Path(root) / name, problem) for name, problem in _manifest_folders(root) if problem is not None)


def warn_misnamed_folders(root: str | os.PathLike[str]) -> None:
    """Log a warning for each folder :func:`list_cameras` leaves out, so that a camera does not vanish silently."""
    for folder, why in misnamed_folders(root):
        log.warning("the store folder %s %s", folder, misnamed_note(why))


def misnamed_note(why: str) -> str:
    """What is said of a store folder with a manifest whose name is no camera group name (``why``)."""
    return (f"holds a manifest but is not used: its name is no camera group name ({why}); rename it to a valid "
            "name or move it out of the store")


@dataclass(frozen=True)
class StoreScan:
    """What :func:`scan_store` found: the cameras with a manifest, the camera folders whose manifest
    could not be looked up (permissions, I/O errors), by name with the reason, and the folders with a
    manifest whose name is no camera group name (:func:`misnamed_folders`), by folder name with why."""

    cameras: list[str]
    unreadable: dict[str, str]
    misnamed: dict[str, str] = field(default_factory=dict)


def scan_store(root: str | os.PathLike[str]) -> StoreScan:
    """:func:`list_cameras` for a process that keeps serving a store: a folder it cannot read is not
    taken for a folder without a manifest (a ``chmod 000`` dropped every model a server had loaded).
    OSError when the store folder exists but cannot be listed; a store that does not exist is empty."""
    unreadable: dict[str, str] = {}
    found = list(_manifest_folders(root, unreadable))
    cameras = sorted({name for name, problem in found if problem is None})
    return StoreScan(cameras, {name: why for name, why in unreadable.items() if name not in cameras},
                     {name: problem for name, problem in found if problem is not None})


def _manifest_folders(root: str | os.PathLike[str], unreadable: dict[str, str] | None = None, *,
                      among: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str | None]]:
    """``(camera name, problem with the name or None)`` of each folder with a manifest (of those whose
    lower-cased name ``among`` accepts, when given). With ``unreadable``, folders whose manifest cannot
    be looked up are recorded there, and a store folder that cannot be listed raises OSError; without
    it, both count as no manifest."""
    root_path = Path(root)
    if not root_path.is_dir():
        return
    try:
        names = os.listdir(root_path)
    except OSError:
        if unreadable is not None:
            raise
        return
    for entry in sorted(n for n in names if among is None or among(n.lower())):
        folder = root_path / entry
        try:
            if not folder.is_dir():  # a file, a link to a file, or a broken link
                problem = broken_link(folder)  # a camera folder on a share that went away: not "no camera"
                if problem is not None and unreadable is not None and _is_group_name(folder.name):
                    unreadable[folder.name] = problem
                continue
            # lstat: a manifest that is a link to nothing is a camera with a damaged manifest, not no
            # camera (glob leaves such links out, and the camera's images then went to the fallback)
            os.lstat(folder / MANIFEST_NAME)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:  # an entry that cannot be looked at (a closed folder, a link into one, ...)
            if unreadable is not None and _is_group_name(folder.name):
                unreadable[folder.name] = exc.strerror or str(exc)
            continue
        name = folder.name
        problem = None
        if name != FALLBACK_CAMERA:
            try:
                if validate_group_name(name) != name:
                    if _same_folder(folder, root_path / name.lower()):  # a case-insensitive file system
                        name = name.lower()
                    else:
                        problem = f"camera group names are lower case, so it would be opened as {name.lower()!r}"
            except CameraError as exc:
                problem = str(exc)
        yield name, problem


def _is_group_name(name: str) -> bool:
    if name == FALLBACK_CAMERA:
        return True
    try:
        return validate_group_name(name) == name
    except CameraError:
        return False


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


_RECORD_KEYS = frozenset({"file", "sha256", "bytes", "stage", "created"})


def _check_extra(name: str, extra: Mapping[str, Any] | None) -> None:
    """``ConfigError`` for artifact ``extra`` fields that would replace the computed ones or are not JSON."""
    if not extra:
        return
    clash = sorted(_RECORD_KEYS & set(extra))
    if clash:
        raise ConfigError(f"extra fields of {name} may not set {', '.join(clash)}: the store computes them")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extra fields of {name} must be JSON values (str, number, bool, None, lists, "
                          f"objects): {exc}") from None


def _remove_tree(folder: Path, *, why: str = "which a failed writer left in the store") -> None:
    """Remove a stray folder (a failed writer's by default); what cannot be removed is named in a warning."""
    def warn(_function: object, path: str, problem: object) -> None:
        error = problem[1] if isinstance(problem, tuple) else problem  # onerror's exc_info, onexc's exception
        log.warning("could not remove %s, %s (%s); delete it by hand", path, why, error)

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=warn)
    else:
        shutil.rmtree(folder, onerror=warn)
