"""Tiny real ONNX super-resolution models and store layouts for the runtime tests (no torch).

The model: linear x4 resize of the input plus a residual from five 3x3 convolutions (8 channels,
dilations 1, 2, 4, 2, 1 with LeakyReLU 0.2) and DepthToSpace(4): an RRDBNet-like head and tail
with a receptive field radius of 10 LR pixels, comparable to the tiling overlap, with fixed
random weights. Outputs look like a sharpened upscale of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adassr.runtime.store import CameraStore

SCALE = 4
RF_RADIUS = 10  # 1 + 2 + 4 + 2 + 1
_DILATIONS = (1, 2, 4, 2, 1)


def build_tiny_sr(*, seed: int = 0, channels: int = 8, fp16: bool = False, scale: int = SCALE,
                  metadata: dict[str, str] | None = None) -> bytes:
    """Serialized ONNX model: input ``lr`` N x 3 x H x W -> output ``sr`` N x 3 x sH x sW; ``metadata``
    becomes its ``metadata_props`` (as ``adassr export`` records camera, scale, ...)."""
    rng = np.random.default_rng(seed)
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "lr"
    if fp16:
        nodes.append(helper.make_node("Cast", ["lr"], ["lr32"], to=TensorProto.FLOAT))
        x = "lr32"
    chans = [3] + [channels] * (len(_DILATIONS) - 1) + [3 * scale * scale]
    h = x
    for k, d in enumerate(_DILATIONS):
        cin, cout = chans[k], chans[k + 1]
        gain = 0.02 if k == len(_DILATIONS) - 1 else np.sqrt(2.0 / (9 * cin))
        w = (rng.standard_normal((cout, cin, 3, 3)) * gain).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        out = f"c{k}"
        nodes.append(helper.make_node("Conv", [h, f"w{k}", f"b{k}"], [out], pads=[d] * 4, dilations=[d, d]))
        if k < len(_DILATIONS) - 1:
            nodes.append(helper.make_node("LeakyRelu", [out], [f"a{k}"], alpha=0.2))
            out = f"a{k}"
        h = out
    nodes.append(helper.make_node("DepthToSpace", [h], ["res"], blocksize=scale, mode="CRD"))
    inits.append(numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"))
    nodes.append(helper.make_node("Resize", [x, "", "scales"], ["base"], mode="linear"))
    final = "sr32" if fp16 else "sr"
    nodes.append(helper.make_node("Add", ["base", "res"], [final]))
    if fp16:
        nodes.append(helper.make_node("Cast", ["sr32"], ["sr"], to=TensorProto.FLOAT16))
    graph = helper.make_graph(
        nodes,
        "tiny_sr",
        [helper.make_tensor_value_info("lr", elem, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("sr", elem, ["N", 3, "SH", "SW"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="adassr-tests")
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model(path: Path, **kwargs: Any) -> Path:
    path.write_bytes(build_tiny_sr(**kwargs))
    return path


def publish_camera(
    root: Path,
    camera: str,
    *,
    seed: int = 0,
    fp16: bool = False,
    scale: int = SCALE,
    input_name: str = "lr",
    output_name: str = "sr",
    metadata: dict[str, str] | None = None,
    channels: int = 8,
) -> CameraStore:
    """Publish ``model.onnx`` (and ``model_fp16.onnx`` with ``fp16``) with manifest export records, in one
    commit as ``adassr export`` does (the previous version's files stay until the camera's next commit)."""
    store = CameraStore.open(root, camera, create=True)
    files = [("onnx", "model.onnx", False)] + ([("onnx_fp16", "model_fp16.onnx", True)] if fp16 else [])
    records: dict[str, Any] = {}
    with store.transaction(timeout_s=30) as tx:
        for key, name, half in files:
            data = build_tiny_sr(seed=seed, fp16=half, scale=scale, metadata=metadata, channels=channels)
            tx.stage(name, lambda p, data=data: p.write_bytes(data), stage="export")
            records[key] = {
                "file": name,
                "scale": scale,
                "precision": "fp16" if half else "fp32",
                "io_dtype": "float16" if half else "float32",  # build_tiny_sr's fp16 model takes and gives fp16
                "input_name": input_name,
                "output_name": output_name,
            }

        def _update(manifest: dict[str, Any]) -> None:
            manifest["scale"] = scale
            manifest.setdefault("exports", {}).update(records)

        tx.commit(_update)
    return store


def fallback_and_canon(root: Path, *, canon_fp16: bool = False) -> Path:
    """A store at ``root`` with the fallback model (seed 0) and a ``canon`` camera (seed 1; with ``canon_fp16``
    also its fp16 export); returns ``root``."""
    from adassr.runtime.store import FALLBACK_CAMERA

    publish_camera(root, FALLBACK_CAMERA, seed=0)
    publish_camera(root, "canon", seed=1, fp16=canon_fp16)
    return root
