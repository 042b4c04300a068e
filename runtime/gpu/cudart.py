"""A small typed facade over ``cuda.bindings.runtime`` (the CUDA runtime API of cuda-python).

cuda-python's runtime module is compiled and ships no type stubs, so :class:`CudaRuntimeApi`
declares the subset used here; ``tests/runtime/test_gpu_cudart.py`` checks every declared
function and enum member against the installed ``cuda.bindings.runtime`` (names and parameter
names), so a wrong name or signature fails CI even without a GPU.

Every call returns a tuple whose first item is a ``cudaError_t``; :func:`_check` turns a non-zero
code into :class:`BackendError` with cudaGetErrorName / cudaGetErrorString. Resources are owned
by small classes with an idempotent ``free()``/``destroy()``.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Protocol, cast

import numpy as np

from adassr.runtime.engines.key import GpuIdentity
from adassr.runtime.errors import BackendError


def install_hint() -> str:
    """How to install cuda-python, through the interpreter running adassr."""
    from adassr.runtime.install import pip_command

    return f"{pip_command()} install cuda-python (and run on a machine with an NVIDIA driver)"


class CudaRuntimeApi(Protocol):
    """The functions and enums of ``cuda.bindings.runtime`` this project calls."""

    cudaError_t: Any
    cudaMemcpyKind: Any
    cudaStreamCaptureMode: Any

    def cudaGetDeviceCount(self) -> tuple[Any, int]: ...
    def cudaDriverGetVersion(self) -> tuple[Any, int]: ...
    def cudaRuntimeGetVersion(self) -> tuple[Any, int]: ...
    def cudaSetDevice(self, device: int) -> tuple[Any]: ...
    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]: ...
    def cudaMemGetInfo(self) -> tuple[Any, int, int]: ...
    def cudaGetErrorName(self, error: Any) -> tuple[Any, bytes]: ...
    def cudaGetErrorString(self, error: Any) -> tuple[Any, bytes]: ...
    def cudaMalloc(self, size: int) -> tuple[Any, int]: ...
    def cudaFree(self, devPtr: int) -> tuple[Any]: ...
    def cudaMallocHost(self, size: int) -> tuple[Any, int]: ...
    def cudaFreeHost(self, ptr: int) -> tuple[Any]: ...
    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any]: ...
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, Any]: ...
    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any]: ...
    def cudaStreamDestroy(self, stream: Any) -> tuple[Any]: ...
    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[Any]: ...
    def cudaStreamEndCapture(self, stream: Any) -> tuple[Any, Any]: ...
    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[Any, Any]: ...
    def cudaGraphLaunch(self, graphExec: Any, stream: Any) -> tuple[Any]: ...
    def cudaGraphExecDestroy(self, graphExec: Any) -> tuple[Any]: ...
    def cudaGraphDestroy(self, graph: Any) -> tuple[Any]: ...


RUNTIME_ENUMS: dict[str, tuple[str, ...]] = {
    "cudaError_t": ("cudaSuccess", "cudaErrorInsufficientDriver", "cudaErrorNoDevice"),
    "cudaMemcpyKind": ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"),
    "cudaStreamCaptureMode": ("cudaStreamCaptureModeThreadLocal",),
}
"""Enum members used here (checked against cuda-python by the tests)."""

STREAM_NON_BLOCKING = 1  # cudaStreamNonBlocking: no implicit sync with the legacy default stream


@functools.lru_cache(maxsize=1)
def runtime_api() -> CudaRuntimeApi:
    """``cuda.bindings.runtime`` (or the older ``cuda.cudart``); BackendError when not installed."""
    try:
        from cuda.bindings import runtime as module
    except ImportError:
        try:
            from cuda import cudart as module  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise BackendError(f"cuda-python is not installed ({exc}); {install_hint()}") from exc
    return cast(CudaRuntimeApi, module)


def _describe(err: Any) -> tuple[str, str]:
    """(name, text) of a CUDA error code, as CUDA gives them."""
    api = runtime_api()
    try:
        return api.cudaGetErrorName(err)[1].decode(), api.cudaGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001 - describing an error must not raise another
        return str(err), ""


def _check(result: tuple[Any, ...], what: str) -> Any:
    """Raise BackendError if ``result[0]`` is not cudaSuccess; return the remaining value(s)."""
    api = runtime_api()
    err = result[0]
    if err != api.cudaError_t.cudaSuccess:
        name, text = _describe(err)
        raise BackendError(f"CUDA call {what} failed: {name} ({text}); check the NVIDIA driver and --gpu")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def device_count() -> int:
    """Number of CUDA devices (0 when the driver is missing or finds none). A driver older than the
    CUDA runtime of the installed cuda-python is a BackendError that says which to install, and any
    other failure to start CUDA (a driver and library mismatch, an initialisation error) a BackendError
    with CUDA's own words: they would otherwise read as a machine without GPUs."""
    api = runtime_api()
    err, count = api.cudaGetDeviceCount()
    if err == api.cudaError_t.cudaSuccess:
        return int(count)
    if err == api.cudaError_t.cudaErrorInsufficientDriver:
        driver_err, driver = api.cudaDriverGetVersion()
        if driver_err == api.cudaError_t.cudaSuccess and driver:  # 0: no driver installed at all
            runtime = api.cudaRuntimeGetVersion()[1] or 0
            from adassr.runtime.install import pip_command

            raise BackendError(
                f"the NVIDIA driver supports CUDA up to {_cuda_version(int(driver))}, but the installed "
                f"cuda-python's runtime is CUDA {_cuda_version(int(runtime))}; install the cuda-python of the "
                f"driver's CUDA major ({pip_command()} install 'cuda-python>={int(driver) // 1000}.0,<"
                f"{int(driver) // 1000 + 1}'), or upgrade the driver"
            )
        return 0  # no driver installed at all: a machine without GPUs
    if err == api.cudaError_t.cudaErrorNoDevice:
        return 0
    name, text = _describe(err)
    raise BackendError(f"CUDA could not start: {name} ({text}); check the NVIDIA driver and its libraries "
                       "(nvidia-smi), or run without a GPU option")


def set_device(index: int) -> None:
    """Make ``index`` the current device of this thread; BackendError names the valid range."""
    count = device_count()
    if not 0 <= index < count:
        have = f"devices 0-{count - 1}" if count else "no CUDA device (or no driver)"
        raise BackendError(f"--gpu {index} is not available: this machine has {have}")
    _check(runtime_api().cudaSetDevice(index), f"cudaSetDevice({index})")


def device_identity(index: int) -> GpuIdentity:
    """Name and compute capability of device ``index`` (what an engine key records)."""
    props = _check(runtime_api().cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    raw = props.name
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuIdentity(name.strip(), (int(props.major), int(props.minor)))


def memory_info() -> tuple[int, int]:
    """``(free, total)`` bytes on the current device."""
    free, total = _check(runtime_api().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


class Stream:
    """A non-blocking CUDA stream."""

    def __init__(self) -> None:
        self._handle: Any = _check(runtime_api().cudaStreamCreateWithFlags(STREAM_NON_BLOCKING),
                                   "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> Any:
        return self._handle

    @property
    def ptr(self) -> int:
        """The stream as an integer (what TensorRT's ``execute_async_v3`` takes)."""
        return int(self._handle)

    def synchronize(self) -> None:
        _check(runtime_api().cudaStreamSynchronize(self._handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _check(runtime_api().cudaStreamDestroy(handle), "cudaStreamDestroy")


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc)."""

    def __init__(self, nbytes: int) -> None:
        if nbytes < 1:
            raise BackendError(f"a device buffer needs at least 1 byte, got {nbytes}")
        self.nbytes = nbytes
        self._ptr: int = int(_check(runtime_api().cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    @property
    def ptr(self) -> int:
        return self._ptr

    def free(self) -> None:
        if self._ptr:
            ptr, self._ptr = self._ptr, 0
            _check(runtime_api().cudaFree(ptr), "cudaFree")


class PinnedBuffer:
    """``nbytes`` of page-locked host memory (cudaMallocHost) with a numpy view."""

    def __init__(self, nbytes: int) -> None:
        if nbytes < 1:
            raise BackendError(f"a pinned buffer needs at least 1 byte, got {nbytes}")
        self.nbytes = nbytes
        self._ptr: int = int(_check(runtime_api().cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        self._bytes = (ctypes.c_ubyte * nbytes).from_address(self._ptr)

    @property
    def ptr(self) -> int:
        return self._ptr

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """A numpy array of ``shape`` / ``dtype`` over the start of the buffer."""
        count = int(np.prod(shape))
        need = count * dtype.itemsize
        if need > self.nbytes:
            raise BackendError(f"a {shape} {dtype} view needs {need} bytes, the pinned buffer has {self.nbytes}")
        flat: np.ndarray = np.frombuffer(memoryview(self._bytes).cast("B"), dtype=dtype, count=count)
        return flat.reshape(shape)

    def free(self) -> None:
        if self._ptr:
            ptr, self._ptr = self._ptr, 0
            _check(runtime_api().cudaFreeHost(ptr), "cudaFreeHost")


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    api = runtime_api()
    _check(api.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, api.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
           "cudaMemcpyAsync(host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    api = runtime_api()
    _check(api.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, api.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
           "cudaMemcpyAsync(device to host)")


class CudaGraph:
    """Work captured on a stream once (``begin`` ... ``end``) and replayed with :meth:`launch`."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._exec: Any = None

    @property
    def ready(self) -> bool:
        return self._exec is not None

    def begin(self, stream: Stream) -> None:
        api = runtime_api()
        _check(api.cudaStreamBeginCapture(stream.handle, api.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture")

    def end(self, stream: Stream) -> None:
        api = runtime_api()
        self._graph = _check(api.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        self._exec = _check(api.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    def launch(self, stream: Stream) -> None:
        if self._exec is None:
            raise BackendError("the CUDA graph was not captured; call begin() and end() first")
        _check(runtime_api().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        api = runtime_api()
        if self._exec is not None:
            handle, self._exec = self._exec, None
            _check(api.cudaGraphExecDestroy(handle), "cudaGraphExecDestroy")
        if self._graph is not None:
            graph, self._graph = self._graph, None
            _check(api.cudaGraphDestroy(graph), "cudaGraphDestroy")
