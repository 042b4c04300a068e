"""Exported ONNX graphs kept between exports, so a camera's export swaps weights instead of re-tracing.

``torch.onnx.export`` (dynamo) traces, decomposes and optimises the whole network: 13-34 s for
RRDBNet x4 on a 2-core CPU, most of an ``adassr export``. Every camera adapted from one backbone
exports to the same graph with other weight values, so the graph is kept in
``<store>/_cache/onnx_graphs/<key>.onnx`` and an export with a cached graph only writes the model's
tensors into it.

The key is a sha256 of everything the graph depends on: this cache's format, the model's class
(module and name) and the source of the module that defines it, every state-dict entry's name,
shape and dtype, the torch / onnx / onnxscript versions and the caller's export settings (opset,
example input, dynamic axes). A cached file records its key in its ``metadata_props``; it is used
only when it loads, records the key it is stored under and each state-dict entry has an
initializer of that name, shape and dtype; its tensors are then replaced by the model's.
The caller validates the result against PyTorch exactly as it validates a fresh export, and
exports afresh when a cached graph fails (:func:`adassr.export.onnx.build_models`), so a stale or
damaged cache can cost time but never publish a wrong model. A graph whose initializers do not
name every state-dict entry (a weight folded into another constant) is not cached.

Files are written atomically; the folder is capped at :data:`MAX_CACHE_BYTES`, least recently used
first. Nothing fails when the cache cannot be read or written (a log line says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from adassr.runtime.errors import StoreError
from adassr.runtime.lru_folder import evict_least_recent, remove_dead_writes
from adassr.runtime.store import CACHE_FOLDER, atomic_write_bytes

if TYPE_CHECKING:
    import onnx
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = "adassr-onnx-graph/1"
MAX_CACHE_BYTES = 512 * 1024 * 1024
KEY_PROPERTY = "adassr.graph_cache_key"  # metadata_props entry of a cached file: its own key
STORE_FOLDER = (CACHE_FOLDER, "onnx_graphs")  # under the store root


def store_graph_folder(store_root: str | os.PathLike[str]) -> Path:
    """Where export keeps the graphs of a store: ``<store>/_cache/onnx_graphs``."""
    return Path(store_root).joinpath(*STORE_FOLDER)


def package_version(package: str) -> str:
    """The installed version of ``package`` (its distribution name), or ``"absent"``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _module_source_sha256(cls: type) -> str:
    """sha256 of the source file that defines ``cls`` ("unknown" where it cannot be read)."""
    module = sys.modules.get(cls.__module__)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return "unknown"
    return hashlib.sha256(source.encode()).hexdigest()


def graph_key(model: torch.nn.Module, settings: str) -> str:
    """Hex sha256 of what the exported graph of ``model`` depends on (see the module docstring)."""
    cls = type(model)
    entries = [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()]
    record = {
        "format": CACHE_FORMAT, "class": f"{cls.__module__}.{cls.__qualname__}",
        "source": _module_source_sha256(cls), "state": entries, "settings": settings,
        "versions": {p: package_version(p) for p in ("torch", "onnx", "onnxscript")},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray] | None:
    """The model's state as numpy arrays, or None when a tensor has no numpy dtype (bfloat16)."""
    try:
        return {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    except (TypeError, RuntimeError):
        return None


def _initializer_indices(proto: onnx.ModelProto, state: dict[str, np.ndarray]) -> dict[str, int] | None:
    """The initializer index of each ``state`` entry, or None when one has no initializer of its
    name, shape and dtype."""
    from onnx import helper

    indices = {init.name: i for i, init in enumerate(proto.graph.initializer)}
    found = {}
    for name, array in state.items():
        index = indices.get(name)
        if index is None:
            return None
        init = proto.graph.initializer[index]
        if list(init.dims) != list(array.shape) or helper.tensor_dtype_to_np_dtype(init.data_type) != array.dtype:
            return None
        found[name] = index
    return found


def with_weights(proto: onnx.ModelProto, state: dict[str, np.ndarray]) -> onnx.ModelProto | None:
    """A copy of ``proto`` whose initializers named like ``state``'s entries hold those arrays, or
    None when an entry has no initializer of its name, shape and dtype."""
    import onnx
    from onnx import numpy_helper

    indices = _initializer_indices(proto, state)
    if indices is None:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for name, index in indices.items():
        out.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(state[name]), name))
    return out


@dataclass(frozen=True)
class GraphCache:
    """Exported graphs in ``folder``; :meth:`get` and :meth:`put` never raise for the cache's own troubles."""

    folder: Path
    settings: str  # the caller's export settings, part of every key
    max_bytes: int = MAX_CACHE_BYTES

    def path(self, model: torch.nn.Module) -> Path:
        return self.folder / f"{graph_key(model, self.settings)}.onnx"

    def get(self, model: torch.nn.Module) -> onnx.ModelProto | None:
        """The cached graph of ``model``'s architecture with ``model``'s weights, or None."""
        import onnx

        path = self.path(model)
        remove_dead_writes(self.folder)
        try:
            proto = onnx.load_model_from_string(path.read_bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - protobuf's decode errors share no useful base
            log.warning("ignoring the unreadable cached ONNX graph %s (%s); exporting afresh", path, exc)
            return None
        recorded = {entry.key: entry.value for entry in proto.metadata_props}.get(KEY_PROPERTY)
        if recorded != path.stem:  # a file copied or renamed into the folder: not this architecture's graph
            log.warning("ignoring the cached ONNX graph %s: it records key %s", path, recorded)
            return None
        del proto.metadata_props[:]
        state = _numpy_state(model)
        filled = None if state is None else with_weights(proto, state)
        if filled is None:
            log.warning("ignoring the cached ONNX graph %s: its initializers do not match the model's weights; "
                        "exporting afresh", path)
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves its graphs
            os.utime(path)
        return filled

    def put(self, model: torch.nn.Module, proto: onnx.ModelProto) -> None:
        """Keep ``proto`` (exported from ``model``) for the next export of the same architecture."""
        state = _numpy_state(model)
        if state is None or _initializer_indices(proto, state) is None:
            log.info("not caching the ONNX graph: its initializers do not name every weight of the model")
            return
        import onnx

        path = self.path(model)
        keyed = onnx.ModelProto()
        keyed.CopyFrom(proto)
        del keyed.metadata_props[:]
        entry = keyed.metadata_props.add()
        entry.key, entry.value = KEY_PROPERTY, path.stem
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, keyed.SerializeToString())
            self._evict()
        except (OSError, StoreError) as exc:  # the cache only saves time: a full disk must not fail the export
            log.warning("could not cache the ONNX graph in %s (%s); the export goes on without it", self.folder, exc)

    def _evict(self) -> None:
        evict_least_recent(self.folder, "*.onnx", self.max_bytes)


def cached_export(model: torch.nn.Module, export: Callable[[torch.nn.Module], onnx.ModelProto],
                  cache: GraphCache | None) -> tuple[onnx.ModelProto, bool]:
    """``(graph, from_cache)``: the cached graph with ``model``'s weights, else ``export(model)`` (then cached)."""
    if cache is not None:
        cached = cache.get(model)
        if cached is not None:
            return cached, True
    proto = export(model)
    if cache is not None:
        cache.put(model, proto)
    return proto, False
