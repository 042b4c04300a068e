"""A stand-in for tritonserver in the default test run: the parts of the KServe v2 HTTP protocol the
client uses (server live, model ready, model config, infer with binary tensors), serving the newest
version of each model of a repository ``write_repository`` wrote, through onnxruntime on the CPU.

It reads each model's ``config.pbtxt`` with Triton's own protobuf schema (``model_config_pb2`` from
tritonclient) and refuses inputs whose shape the config does not allow, as Triton does. Runs in a
thread of the test process; ``fault`` makes every inference answer NaN (``"nan"``), a cropped
output (``"short"``) or nothing until the block ends (``"hang"``). The real-server tests (opt-in,
PyTriton) cover what a stand-in cannot.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_WIRE_TYPES = {"FP32": np.float32, "FP16": np.float16}
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[0-9]+)?(/ready|/config|/infer)?$")


def _wire_type(data_type: int) -> str:
    """``FP32`` / ``FP16``: the wire type of a config's ``TYPE_FP32`` / ``TYPE_FP16``."""
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(data_type)).removeprefix("TYPE_")


def _load_models(repo: Path) -> dict[str, tuple[Any, ort.InferenceSession]]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    models = {}
    for folder in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        newest = max(int(p.name) for p in folder.iterdir() if re.fullmatch(r"[1-9][0-9]*", p.name))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(folder / str(newest) / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        models[config.name] = (config, session)
    return models


@dataclass
class FakeTriton:
    """A running stand-in: its ``host:port``, the model name and input shape of every inference
    request, and :meth:`reload` (Triton's poll mode: the repository read again)."""

    url: str
    calls: list[dict[str, Any]]
    models: dict[str, tuple[Any, ort.InferenceSession]]
    repo: Path
    not_ready: set[str]  # models in the repository that answer "not ready" (loading, or failed to load)

    def reload(self) -> None:
        self.models.clear()
        self.models.update(_load_models(self.repo))


@contextmanager
def fake_triton(repo: Path, *, fault: str | None = None) -> Iterator[FakeTriton]:
    """Serve ``repo`` on a loopback port until the block ends."""
    from google.protobuf import json_format

    models = _load_models(repo)
    calls: list[dict[str, Any]] = []
    not_ready: set[str] = set()
    released = threading.Event()  # "hang": inferences wait for this, set when the block ends

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if not headers else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, message: str) -> None:
            self._answer(400, json.dumps({"error": message}).encode())

        def _model(self) -> tuple[str, str, Any] | None:
            match = _MODEL_PATH.match(self.path)
            if match is None:
                return None
            name, what = match.group(1), match.group(2) or ""
            if name not in models:
                self._error(f"Request for unknown model: '{name}' is not found")
                return None
            return name, what, models[name]

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/v2/health/live":
                return self._answer(200)
            found = self._model()
            if found is None:
                return None if _MODEL_PATH.match(self.path) else self._error(f"unknown path {self.path}")
            name, what, (config, _) = found
            if what == "/config":
                body = json_format.MessageToDict(config, preserving_proto_field_name=True)
                return self._answer(200, json.dumps(body).encode())
            return self._answer(400 if name in not_ready else 200)  # ready

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v2/repository/index":
                index = [{"name": name, "version": "1", "state": "UNAVAILABLE" if name in not_ready else "READY",
                          "reason": "loading" if name in not_ready else ""} for name in sorted(models)]
                return self._answer(200, json.dumps(index).encode())
            found = self._model()
            if found is None:
                return None
            name, _, (config, session) = found
            head = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            request, offset, feeds = json.loads(body[:head]), head, {}
            for item in request["inputs"]:
                size = item["parameters"]["binary_data_size"]
                array = np.frombuffer(body[offset : offset + size], _WIRE_TYPES[item["datatype"]])
                feeds[item["name"]] = array.reshape(item["shape"])
                offset += size
            spec = config.input[0]
            batch = feeds.get(spec.name)
            if batch is None or list(batch.shape[1:]) != list(spec.dims) or batch.shape[0] > config.max_batch_size:
                shape = None if batch is None else list(batch.shape)
                return self._error(f"unexpected shape for input '{spec.name}' for model '{name}': {shape}")
            wire = _wire_type(spec.data_type)
            sent = next(item["datatype"] for item in request["inputs"] if item["name"] == spec.name)
            if sent != wire:  # Triton refuses data of another type than the config's
                return self._error(f"unexpected datatype TYPE_{sent} for inference input '{spec.name}', "
                                   f"expecting TYPE_{wire} for model '{name}'")
            calls.append({"model": name, "shape": tuple(batch.shape), "datatype": sent})
            if fault == "hang":
                released.wait()
                return None
            (result,) = session.run(None, {spec.name: batch})
            if fault == "nan":
                result[...] = np.nan
            elif fault == "short":
                result = result[:, :, :-4]
            out_wire = _wire_type(config.output[0].data_type)  # answered in the config's type, as Triton does
            data = np.ascontiguousarray(result, dtype=_WIRE_TYPES[out_wire]).tobytes()
            header = json.dumps({"model_name": name, "model_version": "1", "outputs": [{
                "name": config.output[0].name, "datatype": out_wire, "shape": list(result.shape),
                "parameters": {"binary_data_size": len(data)}}]}).encode()
            return self._answer(200, header + data, {"Inference-Header-Content-Length": str(len(header))})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeTriton(f"127.0.0.1:{server.server_address[1]}", calls, models, repo, not_ready)
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
