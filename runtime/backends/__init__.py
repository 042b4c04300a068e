"""Inference backends: the interface, the explicit registry, and the per-model LRU cache.

Importing this package imports no inference library; each backend imports its own when opened.
"""

from __future__ import annotations

from runtime.backends.base import Backend
from runtime.backends.cache import ModelCache, ModelKey
from runtime.backends.registry import BACKENDS, open_backend

__all__ = ["BACKENDS", "Backend", "ModelCache", "ModelKey", "open_backend"]
