"""Serve models of an adassr Triton repository through a real tritonserver (PyTriton).

Run by tests/runtime/test_triton_client.py under a Python that has ``nvidia-pytriton`` and
``onnxruntime`` (PyTriton's bundled tritonserver has only the Python backend, so onnxruntime runs
the repository's ``model.onnx`` inside it). The model is bound with the tensor names, tile
shape, maximum batch size and dynamic batching of its ``config.pbtxt``. Usage::

    python _pytriton_server.py REPO MODEL[,MODEL...] HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _binding(repo: str, name: str) -> dict[str, Any]:
    """``Triton.bind`` arguments for model ``name`` of the repository (its config and newest version)."""
    model_dir = Path(repo) / name
    config = (model_dir / "config.pbtxt").read_text()
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    names = re.findall(r'name: "([^"]+)" data_type', config)
    dims = [list(map(int, d.split(","))) for d in re.findall(r"dims: \[ ([0-9, ]+) \]", config)]
    max_batch = int(re.search(r"max_batch_size: (\d+)", config).group(1))  # type: ignore[union-attr]
    delay = int(re.search(r"max_queue_delay_microseconds: (\d+)", config).group(1))  # type: ignore[union-attr]
    session = ort.InferenceSession(str(model_dir / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    in_name, out_name = names

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (out,) = session.run([out_name], {in_name: inputs[in_name].astype(np.float32)})
        return {out_name: out}

    return {
        "model_name": name,
        "infer_func": infer,
        "inputs": [Tensor(name=in_name, dtype=np.float32, shape=tuple(dims[0]))],
        "outputs": [Tensor(name=out_name, dtype=np.float32, shape=tuple(dims[1]))],
        "config": ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=delay)),
        "strict": True,
    }


def main() -> None:
    repo, models, http_port, grpc_port, metrics_port = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    triton_config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    with Triton(config=triton_config) as triton:
        for name in models.split(","):
            triton.bind(**_binding(repo, name))
        print("serving", models, flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
