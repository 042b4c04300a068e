"""The ONNX graph cache: a camera's export fills a cached graph with its weights, byte for byte what a
fresh export gives, and a damaged or wrong cache entry costs a fresh export, never a wrong model."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from adassr.adapt.archs.registry import ArchParams, BackboneEntry, WeightSource
from adassr.export import onnx as onnx_export
from adassr.export.graph_cache import GraphCache, cached_export, graph_key, store_graph_folder, with_weights
from adassr.runtime.store import list_cameras

from .test_onnx_export import CAMERA, REGISTRY, TINY, make_store

SMALLER = BackboneEntry(name="tiny-1-block", scale=4, arch=ArchParams(num_feat=16, num_block=1, num_grow_ch=8),
                        source=WeightSource("none", "none", "none.param", "none.bin"), licence="test only",
                        description="another tiny architecture")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(seed: int, entry: BackboneEntry = TINY) -> torch.nn.Module:
    torch.manual_seed(seed)
    return entry.build().eval()


def _cache(folder: Path) -> GraphCache:
    return GraphCache(folder, onnx_export.EXPORT_SETTINGS)


def test_a_cached_graph_with_other_weights_is_byte_identical_to_a_fresh_export(tmp_path: Path) -> None:
    cache = _cache(tmp_path / "graphs")
    first, from_cache = cached_export(_model(0), onnx_export.trace_fp32, cache)
    assert not from_cache and len(list(cache.folder.glob("*.onnx"))) == 1
    other = _model(1)
    filled, from_cache = cached_export(other, onnx_export.trace_fp32, cache)
    assert from_cache
    assert filled.SerializeToString() == onnx_export.trace_fp32(other).SerializeToString()
    assert filled.SerializeToString() != first.SerializeToString()  # the weights did change


def test_the_key_follows_the_architecture_and_the_settings() -> None:
    model = _model(0)
    assert graph_key(model, "a") == graph_key(_model(5), "a")  # weights are not part of the key
    assert graph_key(model, "a") != graph_key(_model(0, SMALLER), "a")
    assert graph_key(model, "a") != graph_key(model, "b")


def test_initializers_that_do_not_match_the_weights_are_not_used(tmp_path: Path) -> None:
    proto = onnx_export.trace_fp32(_model(0))
    assert with_weights(proto, {"conv_first.weight": torch.zeros(16, 3, 3, 3).numpy()}) is not None
    assert with_weights(proto, {"no.such.weight": torch.zeros(1).numpy()}) is None
    assert with_weights(proto, {"conv_first.weight": torch.zeros(16, 3, 5, 5).numpy()}) is None  # shape
    assert with_weights(proto, {"conv_first.weight": torch.zeros(16, 3, 3, 3).double().numpy()}) is None  # dtype
    cache = _cache(tmp_path)
    cache.put(_model(0), proto)
    (stored,) = tmp_path.glob("*.onnx")
    stored.rename(cache.path(_model(0, SMALLER)))  # another architecture's graph under this one's key
    assert cache.get(_model(0, SMALLER)) is None


def test_a_graph_that_does_not_name_every_weight_is_not_cached_and_a_hit_marks_it_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(Mutation testing.) A graph with a weight folded away can never be filled: caching it cost a warning
    and a fresh export every time. And a hit refreshes the file's time, so the graph every export uses is
    not the first one evicted."""
    import logging
    import os

    model = _model(0)
    proto = onnx_export.trace_fp32(model)
    folded = onnx.ModelProto()
    folded.CopyFrom(proto)
    folded.graph.initializer[0].name = "renamed_by_a_folding_pass"
    cache = _cache(tmp_path / "graphs")
    with caplog.at_level(logging.INFO, logger="adassr.export.graph_cache"):
        cache.put(model, folded)
    assert not (cache.folder.exists() and list(cache.folder.glob("*.onnx")))
    assert "not caching the ONNX graph" in caplog.text
    cache.put(model, proto)
    path = cache.path(model)
    os.utime(path, (1000, 1000))
    assert cache.get(_model(1)) is not None and path.stat().st_mtime > 1000


def test_a_cache_that_cannot_be_written_or_touched_does_not_fail_the_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from adassr.export import graph_cache

    model = _model(0)
    proto = onnx_export.trace_fp32(model)
    cache = _cache(tmp_path / "graphs")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(graph_cache, "atomic_write_bytes", full)
    cache.put(model, proto)  # a warning, no exception
    monkeypatch.undo()
    cache.put(model, proto)
    monkeypatch.setattr(graph_cache.os, "utime", full)  # a read-only cache folder
    assert cache.get(model) is not None


def test_store_exports_use_the_cache_and_record_it(tmp_path: Path) -> None:
    make_store(tmp_path, CAMERA, seed=0)
    make_store(tmp_path, "second", seed=1)
    first = onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    second = onnx_export.export_camera(tmp_path, "second", registry=REGISTRY)
    assert first.exports["onnx"]["graph_from_cache"] is False
    assert second.exports["onnx"]["graph_from_cache"] is True
    assert len(list(store_graph_folder(tmp_path).glob("*.onnx"))) == 1
    assert list_cameras(tmp_path) == sorted([CAMERA, "second"])  # the cache is no camera
    # the same file as an export without the cache
    for entry in store_graph_folder(tmp_path).glob("*.onnx"):
        entry.unlink()
    again = onnx_export.export_camera(tmp_path, "second", registry=REGISTRY)
    assert again.exports["onnx"]["graph_from_cache"] is False
    assert again.exports["onnx"]["sha256"] == second.exports["onnx"]["sha256"]


def _poison(cache_folder: Path) -> None:
    """Keep every initializer but make the graph compute something else (the first Conv's bias is dropped)."""
    (path,) = cache_folder.glob("*.onnx")
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "Conv" and len(node.input) == 3:
            del node.input[2]
            break
    path.write_bytes(proto.SerializeToString())


def test_a_cached_graph_that_fails_validation_is_exported_afresh(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    make_store(tmp_path, CAMERA, seed=0)
    make_store(tmp_path, "second", seed=1)
    onnx_export.export_camera(tmp_path, CAMERA, registry=REGISTRY)
    _poison(store_graph_folder(tmp_path))
    result = onnx_export.export_camera(tmp_path, "second", registry=REGISTRY)
    record = result.exports["onnx"]
    assert record["graph_from_cache"] is False and record["max_abs_error_vs_torch"] <= record["tolerance"]
    assert "failed validation" in caplog.text
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["exports"]["onnx"]["sha256"] == record["sha256"]
    # the cache now holds the good graph again
    third = onnx_export.export_camera(tmp_path, "second", registry=REGISTRY)
    assert third.exports["onnx"]["graph_from_cache"] is True and third.exports["onnx"]["sha256"] == record["sha256"]


def test_an_unreadable_cache_entry_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = _cache(tmp_path)
    model = _model(0)
    cache.folder.mkdir(exist_ok=True)
    cache.path(model).write_bytes(b"not a protobuf \xff\xfe" * 10)
    assert cache.get(model) is None
    assert "unreadable cached ONNX graph" in caplog.text


def test_the_folder_keeps_under_its_cap(tmp_path: Path) -> None:
    proto = onnx_export.trace_fp32(_model(0))
    size = len(proto.SerializeToString())
    cache = GraphCache(tmp_path, "settings", max_bytes=int(size * 1.5))
    cache.put(_model(0), proto)
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    other = GraphCache(tmp_path, "other settings", max_bytes=int(size * 1.5))
    other.put(_model(0), proto)
    assert [p.name for p in tmp_path.glob("*.onnx")] == [other.path(_model(0)).name]  # the older one went


def test_a_model_without_numpy_weights_is_exported_without_the_cache(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    model = _model(0).to(torch.bfloat16)
    assert cache.get(model) is None
    cache.put(model, onnx.ModelProto())
    assert list(tmp_path.glob("*.onnx")) == []


def test_a_killed_exports_half_written_graph_goes_on_a_cache_hit(tmp_path: Path) -> None:
    """A killed export's temporary graph (tens of MB, outside the byte cap) was removed only by evictions,
    which run on a miss: a cache that kept hitting kept it for good (a helper's fault-injection hunt)."""
    import os
    import time

    cache = _cache(tmp_path / "graphs")
    cached_export(_model(0), onnx_export.trace_fp32, cache)
    dead = cache.folder / f".{cache.path(_model(0)).name}.999999999.0123456789ab.tmp"
    young = cache.folder / f".{cache.path(_model(0)).name}.999999999.ba9876543210.tmp"
    for leftover in (dead, young):
        leftover.write_bytes(b"half a graph")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(dead, (two_days_ago, two_days_ago))  # a young one may be another machine's write in progress
    assert cached_export(_model(1), onnx_export.trace_fp32, cache)[1]  # a hit
    assert not dead.exists() and young.exists()
