"""A bounded, thread-safe LRU of open backends, keyed on what makes a session unique.

Evicted backends are closed. Opening happens under the cache's lock, so two threads asking for
the same model open it once (and a slow open delays other lookups: fine for a CLI and a small
server; a per-key lock can come with the HTTP server). A caller that got a backend just before it
was evicted may see BackendError("closed") on its next ``infer``; in-flight calls finish.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from adassr.runtime.backends.base import Backend
from adassr.runtime.errors import ConfigError


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

    @property
    def max_entries(self) -> int:
        return self._max

    def get(self, key: ModelKey, open_fn: Callable[[], Backend]) -> Backend:
        """The cached backend for ``key``, or ``open_fn()`` (which must return an open backend)."""
        evicted: list[Backend] = []
        with self._lock:
            backend = self._entries.get(key)
            if backend is not None and backend.is_open:
                self._entries.move_to_end(key)
                return backend
            backend = open_fn()
            if not backend.is_open:
                backend.open()
            self._entries[key] = backend
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                _, old = self._entries.popitem(last=False)
                evicted.append(old)
        for old in evicted:
            old.close()
        return backend

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
        """Close and forget every backend."""
        with self._lock:
            backends = list(self._entries.values())
            self._entries.clear()
        for backend in backends:
            backend.close()

    def __enter__(self) -> ModelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
