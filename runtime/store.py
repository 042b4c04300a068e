"""The artifact store: the only contract between the adapt, export and runtime stages.

Layout::

    <store>/<camera>/manifest.json          provenance, settings, checksums (schema below)
    <store>/<camera>/adapted.safetensors    adapted weights (adapt stage)
    <store>/<camera>/model.onnx             exported model (export stage), model_fp16.onnx ...
    <store>/_fallback/                      an unadapted backbone exported for cameras with no model

Every file is published atomically (temporary file in the same folder, fsync, rename) and
recorded in ``manifest["artifacts"][<file name>] = {"sha256", "bytes", "stage", "created"}``.
Readers verify the sha256 before trusting a file. Writers of one camera are serialised with an
exclusive lock on ``<store>/<camera>/.lock``.

Manifest schema (``schema_version`` 1), top-level keys, each owned by one stage:

- ``schema_version`` (int), ``camera`` (str), ``updated`` (ISO time)
- adapt: ``images``, ``backbone`` ({name, weights_sha256, ...}), ``scale``, ``kernel``,
  ``niqe_before``, ``niqe_after``, ``per_image``, ``steps``, ``stop_reason``, ``seed``,
  ``precision``, ``device``, ``wall_time_s``, ``attention``, ``versions``, ``weights_sha256``,
  ``config``
- export: ``exports`` ({"onnx": {...}, "onnx_fp16": {...}})
- all: ``artifacts`` as above.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adassr.runtime.cameras import validate_group_name
from adassr.runtime.errors import StoreError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
FALLBACK_CAMERA = "_fallback"
ADAPTED_WEIGHTS = "adapted.safetensors"  # the adapt stage's output, read by export and --backend torch
DEFAULT_STORE = Path("models")


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
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


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CameraStore:
    """One camera group's folder in a store. Holds no state beyond the two paths."""

    root: Path
    camera: str

    @classmethod
    def open(cls, root: str | os.PathLike[str], camera: str, *, create: bool = False) -> CameraStore:
        """Open ``<root>/<camera>``; with ``create`` make it (and check it is writable)."""
        name = camera if camera == FALLBACK_CAMERA else validate_group_name(camera)
        root_path = Path(root).expanduser()
        store = cls(root_path, name)
        if create:
            try:
                store.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store folder {store.directory}: {exc.strerror or exc}; "
                    "choose a writable location with --store DIR"
                ) from exc
            if not os.access(store.directory, os.W_OK):
                raise StoreError(
                    f"the store folder {store.directory} is not writable; "
                    "choose a writable location with --store DIR"
                )
        elif not root_path.is_dir():
            raise StoreError(
                f"the model store {root_path} does not exist; run `adapt --camera NAME` or "
                "`adassr export` first, or point --store at an existing store"
            )
        return store

    @property
    def directory(self) -> Path:
        return self.root / self.camera

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def path(self, name: str) -> Path:
        """Path of an artifact file inside this camera's folder (no checks)."""
        if "/" in name or "\\" in name or name in {"", ".", ".."}:
            raise StoreError(f"invalid artifact name {name!r}: a plain file name is required")
        return self.directory / name

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # -- manifest -------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """Read and validate the manifest; StoreError if missing, unreadable or of another schema."""
        path = self.manifest_path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreError(
                f"no manifest for camera {self.camera!r} at {path}; adapt it with "
                f"`adapt --camera {self.camera}` (or export a backbone) first"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); the store is damaged: "
                "rerun the stage that wrote it"
            ) from exc
        if not isinstance(data, dict):
            raise StoreError(f"{path} does not hold a JSON object; rerun the stage that wrote it")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema_version {version!r}, this adassr reads {SCHEMA_VERSION}; "
                "rerun the stage that wrote it with this version"
            )
        return data

    def read_manifest_or_empty(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"schema_version": SCHEMA_VERSION, "camera": self.camera, "artifacts": {}}
        return self.read_manifest()

    def update_manifest(self, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read (or start) the manifest, apply ``update`` in place, and write it atomically.

        Call it while holding :meth:`lock` when other writers may run.
        """
        manifest = self.read_manifest_or_empty()
        update(manifest)
        manifest["schema_version"] = SCHEMA_VERSION
        manifest["camera"] = self.camera
        manifest["updated"] = _now()
        atomic_write_json(self.manifest_path, manifest)
        return manifest

    # -- artifacts ------------------------------------------------------------------------
    def publish(
        self, name: str, write: Callable[[Path], None], *, stage: str, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write an artifact through ``write(tmp_path)``, publish it atomically, record its sha256.

        Returns the artifact record stored in the manifest.
        """
        target = self.path(name)
        with atomic_output(target) as tmp:
            write(tmp)
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise StoreError(f"writing {name} produced an empty file; nothing was published")
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
        record: dict[str, Any] = {"sha256": digest, "bytes": size, "stage": stage, "created": _now()}
        if extra:
            record.update(extra)

        def _record(manifest: dict[str, Any]) -> None:
            manifest.setdefault("artifacts", {})[name] = record

        self.update_manifest(_record)
        return record

    def verified_path(self, name: str, manifest: Mapping[str, Any] | None = None) -> Path:
        """Return the artifact's path after checking it against the sha256 in the manifest."""
        manifest = self.read_manifest() if manifest is None else manifest
        record = manifest.get("artifacts", {}).get(name)
        path = self.path(name)
        if record is None:
            have = ", ".join(sorted(manifest.get("artifacts", {}))) or "none"
            raise StoreError(
                f"camera {self.camera!r} has no {name} in its manifest (artifacts: {have}); "
                "run the stage that makes it"
            )
        if not path.is_file():
            raise StoreError(f"{path} is listed in the manifest but missing; rerun the stage that made it")
        digest = sha256_file(path)
        if digest != record.get("sha256"):
            raise StoreError(
                f"{path} fails its checksum (sha256 {digest[:12]}..., manifest says "
                f"{str(record.get('sha256'))[:12]}...): the file was modified or damaged; "
                "rerun the stage that made it"
            )
        return path

    # -- locking --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, timeout_s: float = 0.0, poll_s: float = 0.2) -> Iterator[None]:
        """Exclusive lock on this camera's folder (fcntl.flock on ``.lock``).

        With ``timeout_s`` 0 fail at once when another process holds it.
        """
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"another adassr process is writing camera {self.camera!r} in "
                            f"{self.root} (lock {self.directory / LOCK_NAME}); wait for it to "
                            "finish, or use another --store"
                        ) from None
                    time.sleep(poll_s)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing releases the flock


def list_cameras(root: str | os.PathLike[str]) -> list[str]:
    """Camera groups with a manifest in the store (the fallback folder included)."""
    root_path = Path(root)
    if not root_path.is_dir():
        return []
    return sorted(p.parent.name for p in root_path.glob(f"*/{MANIFEST_NAME}"))
