"""A bounded, thread-safe LRU of open backends, keyed on what makes a session unique.

Evicted backends are closed. Opening happens under the cache's lock, so two threads asking for
the same model open it once (and a slow open delays other lookups: fine for a CLI and a small
server; a per-key lock can come with the HTTP server).

A caller that runs several ``infer`` calls on one backend (the tiles of an image) takes a
:meth:`ModelCache.lease`: a backend evicted or cleared while leased is closed when its last lease
ends, so other threads asking for other cameras never close it under a running image. A backend
from :meth:`ModelCache.get` has no such guarantee: it may be closed by the next eviction.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from adassr.runtime.backends.base import Backend
from adassr.runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKey:
    """Identity of an open model: camera folder, file checksum, precision, backend and providers."""

    camera: str
    sha256: str
    precision: str
    providers: tuple[str, ...]
    backend: str = "onnxruntime"


class ModelCache:
    """LRU of open backends; at most ``max_entries`` stay open."""

    def __init__(self, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ConfigError(f"model cache size must be >= 1, got {max_entries}")
        self._max = max_entries
        self._entries: OrderedDict[ModelKey, Backend] = OrderedDict()
        self._lock = threading.Lock()
        self._leases: dict[int, int] = {}  # id(backend) -> leases running
        self._retired: dict[int, Backend] = {}  # evicted or cleared while leased: closed at the last release

    @property
    def max_entries(self) -> int:
        return self._max

    def _acquire(self, key: ModelKey, open_fn: Callable[[], Backend]) -> tuple[Backend, list[Backend]]:
        """Under the lock: the backend for ``key`` (opened when needed) and the evicted ones to close."""
        backend = self._entries.get(key)
        if backend is not None and backend.is_open:
            self._entries.move_to_end(key)
            return backend, []
        backend = open_fn()
        if not backend.is_open:
            backend.open()
        self._entries[key] = backend
        self._entries.move_to_end(key)
        evicted: list[Backend] = []
        while len(self._entries) > self._max:
            _, old = self._entries.popitem(last=False)
            evicted.append(old)
        return backend, self._closable(evicted)

    def _closable(self, backends: list[Backend]) -> list[Backend]:
        """Under the lock: those of ``backends`` nobody leases (to close now); the others are retired."""
        out = []
        for backend in backends:
            if self._leases.get(id(backend)):
                self._retired[id(backend)] = backend
            else:
                out.append(backend)
        return out

    def get(self, key: ModelKey, open_fn: Callable[[], Backend]) -> Backend:
        """The cached backend for ``key``, or ``open_fn()`` (which must return an open backend).

        Without a lease: the next eviction may close it (see :meth:`lease`)."""
        with self._lock:
            backend, to_close = self._acquire(key, open_fn)
        _close_evicted(to_close)
        return backend

    @contextlib.contextmanager
    def lease(self, key: ModelKey, open_fn: Callable[[], Backend]) -> Iterator[Backend]:
        """The backend for ``key`` (as :meth:`get`), kept open until the block ends even when it is
        evicted or the cache is cleared meanwhile; then closed if it left the cache."""
        with self._lock:
            backend, to_close = self._acquire(key, open_fn)
            self._leases[id(backend)] = self._leases.get(id(backend), 0) + 1
        try:
            _close_evicted(to_close)
            yield backend
        finally:
            retired = None
            with self._lock:
                left = self._leases[id(backend)] - 1
                if left:
                    self._leases[id(backend)] = left
                else:
                    del self._leases[id(backend)]
                    retired = self._retired.pop(id(backend), None)
            if retired is not None:
                retired.close()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[ModelKey]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Close and forget every backend (a leased one when its last lease ends)."""
        with self._lock:
            backends = self._closable(list(self._entries.values()))
            self._entries.clear()
        for backend in backends:
            backend.close()

    def __enter__(self) -> ModelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _close_evicted(backends: list[Backend]) -> None:
    """Close models evicted to make room: each one, whatever the others do. A model that fails to
    close is named in a warning and not raised: the caller asked for another model, which is fine."""
    for backend in backends:
        try:
            backend.close()
        except Exception as exc:  # noqa: BLE001 - any backend's close error; logged with the model named
            log.warning("closing the evicted model %s failed (%s); its memory may stay in use until the process "
                        "ends", getattr(backend, "path", backend), exc)
