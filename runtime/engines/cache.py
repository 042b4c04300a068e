"""Where engines live, how they are recorded, and the rule that one engine is built once.

Layout::

    <store>/<camera>/engines/<key file name>    a camera's engines (built from its ONNX, or refitted)
    <store>/<camera>/manifest.json              ["engines"][<key digest>] = record (below)
    <store>/_engines/<key file name>            shared refittable base engines (one per backbone
                                                structure x GPU x TensorRT x precision x profiles)
    <store>/_engines/index.json                 {"engines": {<key digest>: record}}
    <store>/_engines/timing-<gpu>-trt<v>-<precision>[-refit].cache  TensorRT timing cache per GPU,
                                               TensorRT version and builder flags

A record is ``{"file", "sha256", "bytes", "created", "key": EngineKey.to_json(), "build_s",
"base": <base key digest or null>, "base_file", "refit_s", "refit": {mode, summary, changed
weights, ...} or null, ...}``. A camera engine refitted from a base engine names the base: if that
base is rebuilt, the camera engine is refitted again; ``refit`` says whether only the weights that
differ from the backbone were set (:class:`~adassr.runtime.engines.refit.RefitInfo`).

:meth:`EngineCache.ensure` is the only way an engine gets built: under the folder's lock (the same
``flock`` the store uses for a camera) it re-reads the records, returns a matching engine whose
file passes its sha256, and otherwise logs why no stored engine fits (other GPU, other TensorRT,
changed ONNX, ...) and calls the caller's ``build`` function. Two processes asking for the same
engine therefore build it once: the second waits for the lock and then finds the first one's engine.
Engines for other GPUs or TensorRT versions are kept (a store may be shared by several machines);
a camera's engines built from an ONNX file that is no longer current are deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adassr.runtime.engines.key import EngineKey, explain_mismatch
from adassr.runtime.engines.refit import RefitInfo
from adassr.runtime.errors import ConfigError, StoreError
from adassr.runtime.store import (
    ENGINES_FOLDER,
    CameraStore,
    StoreTransaction,
    atomic_output,
    atomic_write_json,
    is_engine_file,
    sha256_file,
)
from adassr.runtime.tempfiles import remove_stale_temps

log = logging.getLogger(__name__)

BASE_ENGINES = "_engines"
BASE_INDEX = "index.json"
MANIFEST_KEY = "engines"
DEFAULT_LOCK_TIMEOUT_S = 1800.0  # a build of this network takes minutes; a waiting process waits


@dataclass(frozen=True)
class EngineRecord:
    """One stored engine (see the module docstring for the JSON form)."""

    key: EngineKey
    file: str
    sha256: str
    bytes: int
    created: str
    build_s: float | None = None
    base: str | None = None
    base_file: str | None = None
    refit_s: float | None = None
    source_file: str | None = None
    refit: RefitInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file, "sha256": self.sha256, "bytes": self.bytes, "created": self.created,
            "key": self.key.to_json(), "build_s": self.build_s, "base": self.base, "base_file": self.base_file,
            "refit_s": self.refit_s, "source_file": self.source_file,
            "refit": None if self.refit is None else self.refit.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineRecord:
        try:
            return cls(
                key=EngineKey.from_json(data["key"]), file=str(data["file"]), sha256=str(data["sha256"]),
                bytes=int(data["bytes"]), created=str(data["created"]),
                build_s=None if data.get("build_s") is None else float(data["build_s"]),
                base=None if data.get("base") is None else str(data["base"]),
                base_file=None if data.get("base_file") is None else str(data["base_file"]),
                refit_s=None if data.get("refit_s") is None else float(data["refit_s"]),
                source_file=None if data.get("source_file") is None else str(data["source_file"]),
                refit=None if data.get("refit") is None else RefitInfo.from_json(data["refit"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed engine record: {exc!r}") from exc


@dataclass(frozen=True)
class BuildOutput:
    """What a build function reports after writing an engine file."""

    seconds: float
    base: str | None = None
    base_file: str | None = None
    refit_s: float | None = None
    source_file: str | None = None
    refit: RefitInfo | None = None


BuildFn = Callable[[Path], BuildOutput]
"""Writes the engine to the given temporary path; raises on failure (nothing is published)."""


@dataclass(frozen=True)
class Lookup:
    """Result of matching stored records against a wanted key."""

    record: EngineRecord | None
    reasons: tuple[str, ...]  # why no engine fits (empty when ``record`` is set)


def match_records(
    records: Mapping[str, Mapping[str, Any]], wanted: EngineKey, *, base: str | None = None
) -> Lookup:
    """The stored record for ``wanted`` (and, for a refitted engine, the current ``base``), or why none fits.

    Pure: checks keys only; the file's checksum is checked by :class:`EngineCache`.
    """
    exact = records.get(wanted.digest)
    if exact is not None:
        try:
            record = EngineRecord.from_json(exact)
        except ConfigError as exc:  # the build writes a good record under this digest over it
            return Lookup(None, (f"record {wanted.digest[:16]} unreadable ({exc})",))
        if base is None or record.base == base:
            return Lookup(record, ())
        return Lookup(None, (f"{record.file} was refitted from base engine {str(record.base)[:16]}, "
                             f"the current base is {base[:16]}",))
    if not records:
        return Lookup(None, ("no engine stored yet",))
    reasons = []
    for digest, data in records.items():
        try:
            stored = EngineRecord.from_json(data)
        except ConfigError as exc:
            reasons.append(f"record {digest[:16]} unreadable ({exc})")
            continue
        if stored.key.kind != wanted.kind or stored.key.precision != wanted.precision:
            continue
        why = explain_mismatch(stored.key, wanted)
        reasons.append(f"{stored.file}: " + "; ".join(why))
    return Lookup(None, tuple(reasons) or (f"no {wanted.kind} {wanted.precision} engine stored yet",))


def current_onnx_sha256(manifest: Mapping[str, Any]) -> set[str]:
    """The sha256 of every ONNX model the camera's manifest exports now (what a current engine is built from)."""
    artifacts = manifest.get("artifacts") or {}
    found = set()
    for record in (manifest.get("exports") or {}).values():
        entry = artifacts.get(str(record.get("file"))) if isinstance(record, Mapping) else None
        if isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str):
            found.add(entry["sha256"])
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class EngineCache:
    """Engines of one folder: a camera's ``engines/`` or the shared ``_engines/`` (see module docstring)."""

    def __init__(self, store: CameraStore, *, shared: bool) -> None:
        self._store = store
        self._shared = shared
        self._tx: StoreTransaction | None = None  # the camera's open store transaction while locked

    @classmethod
    def for_camera(cls, store: CameraStore) -> EngineCache:
        return cls(store, shared=False)

    @classmethod
    def shared(cls, root: str | Path) -> EngineCache:
        return cls(CameraStore(Path(root).expanduser(), BASE_ENGINES), shared=True)

    @property
    def folder(self) -> Path:
        return self._store.directory if self._shared else self._store.directory / ENGINES_FOLDER

    @property
    def label(self) -> str:
        return "shared base engines" if self._shared else f"camera {self._store.camera!r}"

    def path_of(self, record: EngineRecord) -> Path:
        """The record's engine file; StoreError when the record points outside this cache's folder."""
        if not self._own_file(record):
            where = "<name>.engine" if self._shared else f"{ENGINES_FOLDER}/<name>.engine"
            raise StoreError(f"the engine record of {self.label} names the file {record.file!r}, not {where} in "
                             f"{self._store.directory}; remove that record (engines are rebuilt when needed)")
        return self._store.directory / record.file

    def timing_cache_path(self, key: EngineKey) -> Path:
        """Timing cache for ``key``'s GPU, TensorRT version, precision and refittability (always in the
        shared folder): TensorRT's timings hold for one device, version and set of builder flags that
        change the layer implementations (TF32, REFIT; the guide's "Builder performance" section)."""
        version = "".join(c for c in key.tensorrt_version if c.isdigit() or c == ".") or "unknown"
        refit = "-refit" if key.refittable else ""
        return self._store.root / BASE_ENGINES / f"timing-{key.gpu.slug}-trt{version}-{key.precision}{refit}.cache"

    # -- records ------------------------------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        """Stored records by key digest (empty when there are none)."""
        if self._shared:
            index = self._store.directory / BASE_INDEX
            if not index.is_file():
                return {}
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bytes that are not UTF-8
                raise StoreError(f"{index} is unreadable ({exc}); delete it to rebuild the shared engines") from exc
            engines = data.get(MANIFEST_KEY, {}) if isinstance(data, dict) else {}
        else:
            manifest = self._tx.manifest if self._tx is not None else self._store.read_manifest_or_empty()
            engines = manifest.get(MANIFEST_KEY, {})
        if not isinstance(engines, dict):
            raise StoreError(f"the engine records of {self.label} are not a JSON object; delete them to rebuild")
        return engines

    def _update(self, change: Callable[[dict[str, Any], set[str] | None], None]) -> None:
        """Apply ``change(engines, current)`` to the stored records; ``current`` is the sha256 of every
        ONNX file the camera exports now (None for the shared folder)."""
        if self._shared:
            engines = self.records()
            change(engines, None)
            atomic_write_json(self._store.directory / BASE_INDEX, {MANIFEST_KEY: engines})
        else:
            def update(manifest: dict[str, Any]) -> None:
                engines = manifest.setdefault(MANIFEST_KEY, {})
                change(engines, current_onnx_sha256(manifest))

            if self._tx is None:
                self._store.update_manifest(update)
            else:  # commit, and keep a transaction open on the committed manifest (the lock is still held)
                committed = self._tx.commit(update)
                self._tx = StoreTransaction(self._store, committed)

    def _own_file(self, record: EngineRecord) -> bool:
        return is_engine_file(record.file, folder=None if self._shared else ENGINES_FOLDER)

    def _verified(self, record: EngineRecord) -> Path | None:
        if not self._own_file(record):
            log.warning("the engine record of %s names %r, outside its folder; it is ignored and replaced",
                        self.label, record.file)
            return None
        path = self.path_of(record)
        if not path.is_file():
            log.warning("engine %s is recorded for %s but missing; it will be rebuilt", path, self.label)
            return None
        digest = sha256_file(path)
        if digest != record.sha256:
            log.warning("engine %s fails its checksum (sha256 %s..., recorded %s...); it will be rebuilt",
                        path, digest[:12], record.sha256[:12])
            return None
        return path

    def find(self, wanted: EngineKey, *, base: str | None = None) -> tuple[EngineRecord | None, tuple[str, ...]]:
        """A usable stored engine for ``wanted`` (checksum verified), else None and the reasons."""
        lookup = match_records(self.records(), wanted, base=base)
        if lookup.record is None:
            return None, lookup.reasons
        if self._verified(lookup.record) is None:
            return None, (f"{lookup.record.file} is missing or damaged",)
        return lookup.record, ()

    def find_serving(self, wanted: EngineKey) -> EngineRecord | None:
        """A stored engine (checksum verified) that computes what ``wanted`` asks for, whatever builder
        settings it was made with: same model, precision, profiles, GPU and TensorRT, any optimisation
        level, refittable or not (its own weights either way). The highest optimisation level wins.

        For serving: ``adassr export --engine tensorrt --opt-level 5`` or ``--no-refit`` builds an engine
        that the runtime, which asks for the defaults, would otherwise build again beside it.
        """
        same = dataclasses.replace(wanted, optimization_level=0, refittable=False, weight_stripped=False).to_json()
        found = []
        for data in self.records().values():
            try:
                record = EngineRecord.from_json(data)
            except ConfigError:
                continue  # find() and ensure() report it
            key = record.key
            if key.weight_stripped:
                continue
            if dataclasses.replace(key, optimization_level=0, refittable=False).to_json() == same:
                found.append(record)
        for record in sorted(found, key=lambda r: (-r.key.optimization_level, r.key.refittable, r.file)):
            if self._verified(record) is not None:
                return record
        return None

    @property
    def transaction(self) -> StoreTransaction | None:
        """The camera's store transaction while :meth:`lock` is held (None for the shared folder)."""
        return self._tx

    @contextlib.contextmanager
    def lock(self, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
        """The folder's exclusive lock: a store transaction for a camera, the plain lock for the shared folder.

        Not re-entrant. While it is held, this cache reads and commits the camera's manifest
        through the transaction (:attr:`transaction`).
        """
        if self._shared:
            with self._store.lock(timeout_s=timeout_s):
                remove_stale_temps(self.folder, locked=True)  # a base-engine build killed mid-write
                yield
            return
        with self._store.transaction(timeout_s=timeout_s) as tx:
            self._tx = tx
            try:
                yield
            finally:
                self._tx = None

    def ensure(
        self,
        wanted: EngineKey,
        build: BuildFn,
        *,
        base: str | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        locked: bool = False,
    ) -> tuple[EngineRecord, bool]:
        """The engine for ``wanted``: a stored one, else built now. Returns ``(record, built)``.

        Holds the folder's lock (unless the caller already holds it: ``locked=True``) from the lookup
        to the manifest update, so concurrent callers build an engine once.
        """
        ctx = contextlib.nullcontext() if locked else self.lock(lock_timeout_s)
        with ctx:
            record, reasons = self.find(wanted, base=base)
            if record is not None:
                log.info("using stored TensorRT engine %s for %s", record.file, self.label)
                return record, False
            log.warning("building TensorRT engine %s for %s: no stored engine fits (%s)",
                        wanted.file_name, self.label, " | ".join(reasons))
            record = self._build_and_record(wanted, build)
            return record, True

    def _build_and_record(self, wanted: EngineKey, build: BuildFn) -> EngineRecord:
        target = self.folder / wanted.file_name
        start = time.perf_counter()
        with atomic_output(target) as tmp:
            output = build(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise StoreError(f"building {wanted.file_name} produced no engine; nothing was recorded")
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
        rel = str(target.relative_to(self._store.directory))
        record = EngineRecord(
            key=wanted, file=rel, sha256=digest, bytes=size, created=_now(),
            build_s=round(output.seconds if output.seconds else time.perf_counter() - start, 3),
            base=output.base, base_file=output.base_file, refit_s=output.refit_s, source_file=output.source_file,
            refit=output.refit,
        )
        removed: list[str] = []

        def change(engines: dict[str, Any], current: set[str] | None) -> None:
            for digest_, data in list(engines.items()):
                try:
                    old = EngineRecord.from_json(data)
                except ConfigError:
                    del engines[digest_]
                    continue
                if not self._own_file(old):  # a record naming a file elsewhere: forgotten, its file untouched
                    del engines[digest_]
                    continue
                # built from an ONNX file the camera no longer exports (an engine of its other precision,
                # or of another GPU or TensorRT version, built from a current export, stays)
                superseded = (current is not None and old.key.kind == wanted.kind
                              and old.key.source_sha256 != wanted.source_sha256
                              and old.key.source_sha256 not in current)
                replaced = digest_ == wanted.digest
                # the same engine under an older key version (built before a builder change): never loaded again
                outdated = (old.key.precision == wanted.precision
                            and (old.key.key_version, old.key.bf16_layers) < (wanted.key_version, wanted.bf16_layers)
                            and dataclasses.replace(old.key, key_version=wanted.key_version,
                                                    bf16_layers=wanted.bf16_layers) == wanted)
                if (superseded or replaced or outdated) and old.file != rel:
                    removed.append(old.file)
                    del engines[digest_]
            engines[wanted.digest] = record.to_json()

        self._update(change)
        if self._shared:  # a camera's replaced engines are superseded by the commit (readers keep them a while)
            for name in removed:
                with contextlib.suppress(FileNotFoundError):
                    (self._store.directory / name).unlink()
                    log.info("removed engine %s (built from an ONNX file that is no longer current)", name)
        return record
