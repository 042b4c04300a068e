"""Inference backends: the interface, the explicit registry, and the per-model LRU cache.

Importing this package imports no inference library; each backend imports its own when opened.
"""

from __future__ import annotations

from adassr.runtime.backends.base import Backend
from adassr.runtime.backends.cache import ModelCache, ModelKey
from adassr.runtime.backends.registry import BACKENDS, open_backend

__all__ = ["BACKENDS", "Backend", "ModelCache", "ModelKey", "open_backend"]
