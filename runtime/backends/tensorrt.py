"""Native TensorRT backend: a serialized engine run through ``execute_async_v3`` (no torch, no pycuda).

One :class:`TensorRTBackend` owns the deserialized engine and up to ``streams`` *slots*; a slot is
one execution context with its own optimisation profile (contexts may not share one: engines are
built with one copy of the profile per stream, see ``plan_profiles(copies=)``), CUDA stream,
device buffers (sized for the largest profile shape) and pinned host buffers. A call splits its
batch into chunks of at most the engine's largest batch and sends consecutive chunks to
consecutive slots, so the host-to-device copy of one chunk overlaps the inference of the previous
one; concurrent callers take free slots (a slot is
locked while in use; a caller locks its slots in index order, so two callers never wait on each
other). With ``cuda_graph=True`` each slot's inference is captured as a CUDA graph after one
ordinary warm-up run and replayed afterwards (the copies stay outside the graph): this removes the
per-layer launch overhead for the fixed tile shape. A graph is valid only while its execution
context is unchanged (TensorRT's guide: one context per captured graph), so a slot keeps one graph
for one input shape: a short last chunk runs padded with zero rows to the engine's batch, and
another input shape replaces the graph (captured anew). Every call makes the backend's GPU current
in the calling thread (CUDA's current device is per thread).

The engine file is checked against nothing here: callers pass a path they got from
:class:`adassr.runtime.engines.EngineCache` (sha256-verified, key matching this GPU and TensorRT).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adassr.runtime.backends.base import Backend
from adassr.runtime.engines.trt import deserialize, load_tensorrt
from adassr.runtime.errors import BackendError, ConfigError, ModelOutputError
from adassr.runtime.gpu import cudart

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class _Slot:
    """One execution context with its stream and buffers."""

    context: trt.IExecutionContext
    stream: cudart.Stream
    device_in: cudart.DeviceBuffer
    device_out: cudart.DeviceBuffer
    host_in: cudart.PinnedBuffer
    host_out: cudart.PinnedBuffer
    lock: threading.Lock = field(default_factory=threading.Lock)
    graph: cudart.CudaGraph | None = None  # captured for ``graph_shape`` on this slot's context
    graph_shape: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None  # the input shape last set on the context
    out_shape: tuple[int, ...] | None = None  # the output shape TensorRT reports for ``shape``
    pending: tuple[int, tuple[int, ...]] | None = None  # (chunk index, output shape) awaiting copy-out

    def drop_graph(self) -> None:
        graph, self.graph, self.graph_shape = self.graph, None, None
        if graph is not None:
            graph.destroy()

    def free(self) -> None:
        """Release every CUDA resource of the slot, each even when an earlier one fails (the first
        failure is raised afterwards)."""
        _release_all([self.drop_graph, self.device_in.free, self.device_out.free, self.host_in.free,
                      self.host_out.free, self.stream.destroy])


def _release_after_failure(failure: BaseException, releases: Iterable[Callable[[], None]]) -> None:
    """Release what a failed set-up had allocated; a release that fails too is noted on ``failure``,
    which stays the error raised."""
    try:
        _release_all(releases)
    except Exception as cleanup:  # noqa: BLE001 - recorded on the failure being raised
        failure.add_note(f"releasing what the set-up had allocated failed too: {cleanup}")


def _release_all(releases: Iterable[Callable[[], None]]) -> None:
    """Call every release function, then raise the first failure: after a CUDA error (which is
    sticky) one failed free must not leak the rest."""
    first: BaseException | None = None
    for release in releases:
        try:
            release()
        except Exception as exc:  # noqa: BLE001 - kept and raised below, after the other releases
            first = first or exc
    if first is not None:
        raise first


@dataclass(frozen=True)
class _Io:
    input_name: str
    output_name: str
    input_dtype: np.dtype[Any]
    output_dtype: np.dtype[Any]
    max_input: tuple[int, int, int, int]


class TensorRTBackend(Backend):
    """A TensorRT engine file on GPU ``device`` (see the module docstring)."""

    def __init__(self, engine_path: str | Path, *, device: int = 0, streams: int = 2,
                 cuda_graph: bool = False) -> None:
        super().__init__(engine_path)
        if streams < 1:
            raise ConfigError(f"streams must be >= 1, got {streams}")
        if device < 0:
            raise ConfigError(f"--gpu must be >= 0, got {device}")
        self._device = device
        self._n_streams = streams
        self._cuda_graph = cuda_graph
        self._engine: trt.ICudaEngine | None = None
        self._slots: list[_Slot] = []
        self._io: _Io | None = None
        self._next = 0
        self._pick = threading.Lock()
        self._scale: int | None = None  # the engine's output / input size, found when opened

    @property
    def name(self) -> str:
        return "tensorrt"

    @property
    def providers(self) -> tuple[str, ...]:
        return (f"cuda:{self._device}",) if self._opened else ()

    def model_metadata(self) -> dict[str, str]:
        """``{"scale": ...}``: an engine file holds no key-value metadata, but the output shape TensorRT
        infers for the largest input says the engine's scale, which the manifest's must match (a hand-edited
        manifest, an engine built from another camera's ONNX: caught at open, as for ONNX files)."""
        return {} if self._scale is None or not self._opened else {"scale": str(self._scale)}

    # -- open / close -----------------------------------------------------------------------------
    def _open(self) -> None:
        load_tensorrt()
        import tensorrt as trt

        if not self.model_path.is_file():
            raise BackendError(
                f"engine {self.model_path} does not exist; build it with `adassr export --engine tensorrt`"
            )
        cudart.set_device(self._device)
        engine = deserialize(self.model_path.read_bytes())
        io = self._describe(trt, engine)
        # A context runs with one optimisation profile at a time and two contexts must not share one:
        # one slot (context + stream) per profile, up to ``streams``.
        count = min(self._n_streams, engine.num_optimization_profiles)
        slots: list[_Slot] = []
        try:
            for index in range(count):
                slots.append(self._make_slot(engine, io, index))
        except BaseException as exc:
            _release_after_failure(exc, [slot.free for slot in slots])
            raise
        self._engine, self._io, self._slots = engine, io, slots
        out = slots[0].out_shape if slots else None
        self._scale = engine_scale(io.max_input, out) if out is not None else None

    def _describe(self, trt: Any, engine: trt.ICudaEngine) -> _Io:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(
                f"{self.model_path.name} has inputs {inputs} and outputs {outputs}; an SR engine has one of each"
            )
        name_in, name_out = inputs[0], outputs[0]
        largest: tuple[int, int, int, int] | None = None
        for profile in range(engine.num_optimization_profiles):
            _, _, high = engine.get_tensor_profile_shape(name_in, profile)
            dims = tuple(int(high[i]) for i in range(len(high)))
            if len(dims) != 4:
                raise BackendError(f"{self.model_path.name} input {name_in} has rank {len(dims)}; expected NCHW")
            shape = (dims[0], dims[1], dims[2], dims[3])
            if largest is None or np.prod(shape) > np.prod(largest):
                largest = shape
        if largest is None:
            raise BackendError(f"{self.model_path.name} has no optimisation profile")
        return _Io(name_in, name_out, _numpy_dtype(trt, engine, name_in), _numpy_dtype(trt, engine, name_out),
                   largest)

    def _make_slot(self, engine: trt.ICudaEngine, io: _Io, profile: int) -> _Slot:
        """A context on ``profile`` with its stream and buffers; whatever was allocated is released
        when a later step fails. The output buffer is sized from the output shape TensorRT reports
        for the largest input (the engine decides the scale, whatever the caller assumes). Every
        profile must take that input: adassr's engines repeat one profile per stream
        (``plan_profiles(copies=)``); an engine whose profiles differ fails to open here."""
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(
                f"TensorRT could not create an execution context for {self.model_path.name} (out of GPU memory?)"
            )
        made: list[Callable[[], None]] = []
        try:
            stream = cudart.Stream()
            made.append(stream.destroy)
            try:  # the binding returns True or raises RuntimeError ("Error in set optimization profile async.")
                selected = context.set_optimization_profile_async(profile, stream.ptr)
            except RuntimeError as exc:
                raise BackendError(f"TensorRT could not select optimisation profile {profile} of "
                                   f"{self.model_path.name} ({exc}); rebuild the engine") from exc
            if not selected:
                raise BackendError(
                    f"TensorRT could not select optimisation profile {profile} of {self.model_path.name}")
            stream.synchronize()
            out_shape = self._output_shape(context, io, io.max_input)
            in_bytes = int(np.prod(io.max_input)) * io.input_dtype.itemsize
            out_bytes = int(np.prod(out_shape)) * io.output_dtype.itemsize
            device_in = cudart.DeviceBuffer(in_bytes)
            made.append(device_in.free)
            device_out = cudart.DeviceBuffer(out_bytes)
            made.append(device_out.free)
            host_in = cudart.PinnedBuffer(in_bytes)
            made.append(host_in.free)
            host_out = cudart.PinnedBuffer(out_bytes)
            made.append(host_out.free)
            slot = _Slot(context, stream, device_in, device_out, host_in, host_out, shape=io.max_input,
                         out_shape=out_shape)
            for name, buffer in ((io.input_name, device_in), (io.output_name, device_out)):
                if not context.set_tensor_address(name, buffer.ptr):
                    raise BackendError(f"{self.model_path.name}: TensorRT refused the device address of tensor "
                                       f"{name!r}")
        except BaseException as exc:
            _release_after_failure(exc, list(reversed(made)))
            raise
        return slot

    def _output_shape(self, context: trt.IExecutionContext, io: _Io, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Set ``shape`` as the context's input shape and return the output shape TensorRT infers."""
        if not context.set_input_shape(io.input_name, shape):
            raise ModelOutputError("TensorRT engine input", shape, "a shape inside the engine's optimisation profiles")
        dims = context.get_tensor_shape(io.output_name)
        out = tuple(int(dims[i]) for i in range(len(dims)))
        if len(out) != 4 or min(out) < 1 or out[0] != shape[0]:
            raise BackendError(
                f"{self.model_path.name}: TensorRT reports output {out} for input {shape}; an SR engine maps "
                "(N, C, H, W) to (N, C, s*H, s*W)"
            )
        return out

    def _close(self) -> None:
        """Free each slot once the call using it (if any) has finished with it, then forget the engine."""
        if self._slots:
            cudart.set_device(self._device)

        def release(slot: _Slot) -> Callable[[], None]:
            def free() -> None:
                with slot.lock:  # waits for a running call on this slot, which reads ``_io`` until it ends
                    slot.free()
            return free

        try:
            _release_all([release(slot) for slot in self._slots])
        finally:
            self._slots = []
            self._engine = None
            self._io = None
            self._scale = None

    # -- inference --------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        io = self._io
        if io is None or not self._slots:
            raise BackendError(f"the TensorRT engine {self.model_path.name} is closed")
        n, c, h, w = batch.shape
        if c != io.max_input[1] or h > io.max_input[2] or w > io.max_input[3]:
            raise ModelOutputError("TensorRT engine input", batch.shape,
                             f"at most {io.max_input} (rebuild the engine for this tile size)")
        cudart.set_device(self._device)  # the current device is per thread; callers may be on any thread
        step = io.max_input[0]
        chunks = [batch[i:i + step] for i in range(0, n, step)]
        results: list[np.ndarray | None] = [None] * len(chunks)
        slots = self._take_slots(min(len(chunks), len(self._slots)))
        failed = True
        try:
            for index, chunk in enumerate(chunks):
                slot = slots[index % len(slots)]
                self._drain(slot, results)
                self._enqueue(slot, io, chunk, index)
            for slot in slots:
                self._drain(slot, results)
            failed = False
        finally:
            for slot in slots:
                if failed:  # copies of a failed call may still run on the stream: the next call must not
                    with contextlib.suppress(Exception):  # write its pinned input buffer under them
                        slot.stream.synchronize()
                slot.pending = None
                slot.lock.release()
        return np.concatenate([r for r in results if r is not None], axis=0)

    def _take_slots(self, count: int) -> list[_Slot]:
        """``count`` slots, locked, starting at the next one in turn (waits when others hold them)."""
        with self._pick:
            start = self._next
            self._next = (self._next + count) % len(self._slots)
        indices = [(start + i) % len(self._slots) for i in range(count)]
        for index in sorted(indices):  # one global order: a caller waiting for a slot holds none above it
            self._slots[index].lock.acquire()
        return [self._slots[index] for index in indices]

    def _enqueue(self, slot: _Slot, io: _Io, chunk: np.ndarray, index: int) -> None:
        rows = int(chunk.shape[0])
        shape = tuple(int(s) for s in chunk.shape)
        if self._cuda_graph:  # one graph shape per slot: a short chunk runs padded with zero rows
            shape = (io.max_input[0], *shape[1:])
        host_in = slot.host_in.view(io.input_dtype, shape)
        np.copyto(host_in[:rows], chunk, casting="same_kind")
        if rows < shape[0]:
            host_in[rows:] = 0
        cudart.copy_to_device(slot.device_in, slot.host_in, host_in.nbytes, slot.stream)
        if slot.shape != shape or slot.out_shape is None:
            slot.shape, slot.out_shape = None, None
            slot.out_shape = self._output_shape(slot.context, io, shape)
            slot.shape = shape
        out_shape = (rows, *slot.out_shape[1:])
        self._execute(slot, shape)
        out_bytes = int(np.prod(out_shape)) * io.output_dtype.itemsize  # the leading rows: the real chunk
        cudart.copy_to_host(slot.host_out, slot.device_out, out_bytes, slot.stream)
        slot.pending = (index, out_shape)

    def _execute(self, slot: _Slot, shape: tuple[int, ...]) -> None:
        if not self._cuda_graph:
            if not slot.context.execute_async_v3(slot.stream.ptr):
                raise BackendError(f"TensorRT execution failed for input {shape} on {self.model_path.name}")
            return
        if slot.graph is None or slot.graph_shape != shape:
            slot.drop_graph()  # captured on the context before its shape changed: invalid now
            # TensorRT needs one ordinary run after a shape change before its work can be captured.
            if not slot.context.execute_async_v3(slot.stream.ptr):
                raise BackendError(f"TensorRT execution failed for input {shape} on {self.model_path.name}")
            graph = cudart.CudaGraph()
            graph.begin(slot.stream)
            try:
                try:
                    ok = slot.context.execute_async_v3(slot.stream.ptr)
                finally:
                    graph.end(slot.stream)  # always ends the capture: the stream must not stay capturing
                if not ok:
                    raise BackendError(f"TensorRT execution could not be captured as a CUDA graph for input {shape}")
            except BaseException:
                graph.destroy()
                raise
            slot.graph, slot.graph_shape = graph, shape
        slot.graph.launch(slot.stream)

    def _drain(self, slot: _Slot, results: list[np.ndarray | None]) -> None:
        """Wait for the slot's pending chunk and copy its output out of the pinned buffer."""
        if slot.pending is None or self._io is None:
            return
        index, out_shape = slot.pending
        slot.stream.synchronize()
        results[index] = np.array(slot.host_out.view(self._io.output_dtype, out_shape), dtype=np.float32)
        slot.pending = None


def engine_scale(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int | None:
    """The integer factor an NCHW engine maps ``input_shape`` to ``output_shape`` by (height and width
    alike), or None when the shapes show none (then the scale is not checked)."""
    if len(input_shape) != 4 or len(output_shape) != 4 or min(input_shape[2:]) < 1:
        return None
    (h, w), (out_h, out_w) = input_shape[2:], output_shape[2:]
    if out_h % h or out_w % w or out_h // h != out_w // w:
        return None
    return out_h // h


def _numpy_dtype(trt: Any, engine: trt.ICudaEngine, name: str) -> np.dtype[Any]:
    """The numpy type of an engine tensor (``trt.nptype`` has none for bf16 or fp8: a clear error)."""
    kind = engine.get_tensor_dtype(name)
    try:
        dtype: np.dtype[Any] = np.dtype(trt.nptype(kind))
    except (TypeError, KeyError) as exc:
        raise BackendError(
            f"engine tensor {name!r} has type {kind}, which has no numpy type; adassr engines take and return "
            "float32 or float16 (re-export and rebuild with `adassr export --engine tensorrt`)"
        ) from exc
    return dtype
