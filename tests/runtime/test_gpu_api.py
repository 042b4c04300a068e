"""The CUDA / TensorRT layer without a GPU: API conformance, clear errors, and the type check.

``cuda-python`` imports on machines without a driver (its calls then return an error code), so
the declared subset of the CUDA runtime API is checked against the installed module here; the
TensorRT code is type-checked against ``tensorrt-stubs`` by ``.ci/typecheck_gpu.py``.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.errors import BackendError

ROOT = Path(__file__).resolve().parents[2]


def _cuda_runtime() -> object:
    return pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")


def test_declared_cuda_runtime_subset_exists_with_these_parameter_names() -> None:
    from adassr.runtime.gpu.cudart import RUNTIME_ENUMS, CudaRuntimeApi

    module = _cuda_runtime()
    declared = {name: fn for name, fn in vars(CudaRuntimeApi).items() if name.startswith("cuda") and callable(fn)}
    assert len(declared) >= 20
    for name, fn in declared.items():
        real = getattr(module, name, None)
        assert real is not None, f"cuda.bindings.runtime has no {name}"
        want = [p for p in inspect.signature(fn).parameters if p != "self"]
        have = list(inspect.signature(real).parameters)
        assert have == want, f"{name}: cuda-python takes {have}, the facade declares {want}"
    for enum, members in RUNTIME_ENUMS.items():
        for member in members:
            assert hasattr(getattr(module, enum), member), f"{enum}.{member}"


def test_no_driver_gives_zero_devices_and_a_clear_gpu_error() -> None:
    _cuda_runtime()
    from adassr.runtime.gpu import device_count, set_device

    if device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(BackendError, match="--gpu 0 is not available: this machine has no CUDA device"):
        set_device(0)


def test_a_driver_older_than_cuda_python_s_runtime_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python 13 on a CUDA 12 driver used to read as "no CUDA device". The real runtime module
    answers, except for the three calls that report this machine's driver (it has none)."""
    runtime = _cuda_runtime()
    from adassr.runtime.gpu import cudart

    class OldDriver:
        def __getattr__(self, name: str) -> object:
            return getattr(runtime, name)

        def cudaGetDeviceCount(self) -> tuple[object, int]:
            return runtime.cudaError_t.cudaErrorInsufficientDriver, 0

        def cudaDriverGetVersion(self) -> tuple[object, int]:
            return runtime.cudaError_t.cudaSuccess, 12080

        def cudaRuntimeGetVersion(self) -> tuple[object, int]:
            return runtime.cudaError_t.cudaSuccess, 13000

    monkeypatch.setattr(cudart, "runtime_api", OldDriver)
    with pytest.raises(BackendError, match=r"supports CUDA up to 12\.8, but the installed cuda-python's runtime is "
                                           r"CUDA 13\.0; .*pip install 'cuda-python>=12\.0,<13'"):
        cudart.device_count()
    monkeypatch.setattr(OldDriver, "cudaDriverGetVersion", lambda self: (runtime.cudaError_t.cudaSuccess, 0))
    assert cudart.device_count() == 0  # no driver at all: a machine without GPUs


def test_other_cuda_start_failures_say_what_cuda_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any CUDA failure but "driver too old" read as "this machine has no CUDA device (or no driver)": a
    driver and library mismatch, an initialisation error (a helper's review against cuda-python)."""
    runtime = _cuda_runtime()
    from adassr.runtime.gpu import cudart

    class Mismatch:
        def __getattr__(self, name: str) -> object:
            return getattr(runtime, name)

        def cudaGetDeviceCount(self) -> tuple[object, int]:
            return runtime.cudaError_t.cudaErrorSystemDriverMismatch, 0

    monkeypatch.setattr(cudart, "runtime_api", Mismatch)
    with pytest.raises(BackendError, match=r"CUDA could not start: cudaErrorSystemDriverMismatch \(system has "
                                           r"unsupported display driver / cuda driver combination\); check the NVIDIA"):
        cudart.set_device(0)
    monkeypatch.setattr(Mismatch, "cudaGetDeviceCount", lambda self: (runtime.cudaError_t.cudaErrorNoDevice, 0))
    assert cudart.device_count() == 0  # a driver that finds no device: a machine without GPUs


def test_tensorrt_messages_map_onto_log_levels() -> None:
    """TensorRT's built-in Logger printed to stdout and dropped INFO / VERBOSE whatever -vv asked; its messages
    now go to the `adassr.tensorrt` logger at these levels (a helper's review against TensorRT's pyCore.cpp)."""
    import logging

    from adassr.runtime.engines.trt import TENSORRT_LOG, tensorrt_log_level

    assert [tensorrt_log_level(v) for v in range(5)] == [logging.ERROR, logging.ERROR, logging.WARNING, logging.INFO,
                                                         logging.DEBUG]  # INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE
    assert tensorrt_log_level(9) == logging.DEBUG and TENSORRT_LOG.name == "adassr.tensorrt"


def test_type_stubs_are_not_mistaken_for_tensorrt() -> None:
    from adassr.runtime.engines.trt import load_tensorrt, tensorrt_available

    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if tensorrt is not None and hasattr(tensorrt, "Builder"):
        pytest.skip("real TensorRT is installed")
    assert not tensorrt_available()
    with pytest.raises(BackendError, match=r"\[tensorrt\]'"):
        load_tensorrt()


def test_tensorrt_backend_without_tensorrt_fails_on_open_with_the_install_hint(tmp_path: Path) -> None:
    from adassr.runtime.backends.tensorrt import TensorRTBackend
    from adassr.runtime.engines.trt import tensorrt_available

    if tensorrt_available():
        pytest.skip("real TensorRT is installed")
    backend = TensorRTBackend(tmp_path / "x.engine")
    with pytest.raises(BackendError, match="TensorRT"):
        backend.open()
    assert not backend.is_open
    with pytest.raises(BackendError, match="not open"):
        backend.infer(np.zeros((1, 3, 8, 8), np.float32))


def test_tensorrt_and_cuda_code_type_checks_against_the_stubs() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed")
    try:
        import importlib.metadata as md

        md.distribution("tensorrt-stubs")
    except Exception:  # noqa: BLE001
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "typecheck_gpu.py")], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rejected, so the stubs are in use" in result.stdout


@pytest.mark.gpu
def test_pinned_and_device_buffers_round_trip_on_a_gpu() -> None:
    _cuda_runtime()
    from adassr.runtime.gpu import device_count
    from adassr.runtime.gpu.cudart import DeviceBuffer, PinnedBuffer, Stream, copy_to_device, copy_to_host

    if device_count() == 0:
        pytest.skip("no CUDA device")
    data = np.arange(1000, dtype=np.float32)
    stream, dev = Stream(), DeviceBuffer(data.nbytes)
    host_a, host_b = PinnedBuffer(data.nbytes), PinnedBuffer(data.nbytes)
    try:
        host_a.view(np.dtype(np.float32), data.shape)[:] = data
        copy_to_device(dev, host_a, data.nbytes, stream)
        copy_to_host(host_b, dev, data.nbytes, stream)
        stream.synchronize()
        np.testing.assert_array_equal(host_b.view(np.dtype(np.float32), data.shape), data)
    finally:
        for item in (dev, host_a, host_b):
            item.free()
        stream.destroy()


def test_tensorrt_slots_are_locked_in_one_order() -> None:
    """A caller that takes slots [1, 0] (the turn had moved on) used to lock 1 and then wait for 0,
    while another caller held 0 and waited for 1: both hung. Slots are now locked in index order, so a
    caller waiting for one holds none above it. (The slots' CUDA parts are not touched here.)"""
    import threading

    from adassr.runtime.backends.tensorrt import TensorRTBackend, _Slot

    backend = TensorRTBackend(Path("never-opened.engine"), streams=2)
    slots = [_Slot(None, None, None, None, None, None) for _ in range(2)]  # type: ignore[arg-type]
    backend._slots = slots
    first = backend._take_slots(1)  # slot 0; the turn moves to slot 1
    assert first == [slots[0]]
    waiting = threading.Thread(target=backend._take_slots, args=(2,), daemon=True)  # takes [1, 0]
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # slot 0 is still held
    assert not slots[1].lock.locked()  # it waits for slot 0 without holding slot 1
    slots[0].lock.release()
    waiting.join(5)
    assert not waiting.is_alive() and slots[0].lock.locked() and slots[1].lock.locked()


class _Resource:
    """A stand-in for one CUDA resource of a slot: records its release, fails when told to."""

    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def free(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise BackendError(f"cudaFree failed for {self.name}")

    destroy = free


def test_a_failed_release_does_not_leak_the_other_resources_of_a_tensorrt_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a (sticky) CUDA error the first failed free used to stop the slot's release, leaking the
    rest; `close` stopped at the first slot too and kept its list. Every release is now tried and the
    first failure raised afterwards. (Python stand-ins for the CUDA buffers: no GPU here.)"""
    from adassr.runtime.backends.tensorrt import TensorRTBackend, _Slot
    from adassr.runtime.gpu import cudart

    log: list[str] = []

    def slot(prefix: str, failing: str = "") -> _Slot:
        parts = [_Resource(log, f"{prefix}.{n}", fail=n == failing) for n in ("stream", "din", "dout", "hin", "hout")]
        return _Slot(None, parts[0], parts[1], parts[2], parts[3], parts[4])  # type: ignore[arg-type]

    with pytest.raises(BackendError, match="a.din"):
        slot("a", failing="din").free()
    assert log == ["a.din", "a.dout", "a.hin", "a.hout", "a.stream"]
    log.clear()
    backend = TensorRTBackend(Path("never-opened.engine"), streams=2)
    backend._slots = [slot("a", failing="dout"), slot("b")]
    monkeypatch.setattr(cudart, "set_device", lambda device: None)  # no device to select here
    with pytest.raises(BackendError, match="a.dout"):
        backend._close()
    assert sorted(log) == sorted(f"{p}.{n}" for p in "ab" for n in ("stream", "din", "dout", "hin", "hout"))
    assert backend._slots == [] and backend._io is None


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "11.0.0", "", "unknown"])
def test_tensorrt_other_than_10_is_refused_with_the_install_hint(version: str) -> None:
    from adassr.runtime.engines.trt import check_tensorrt_version

    with pytest.raises(BackendError, match=r"needs TensorRT 10\.x.*\[tensorrt\]'"):
        check_tensorrt_version(version)
    check_tensorrt_version("10.13.0.35")  # the supported major passes


def test_close_waits_for_a_running_call_before_it_frees_the_slot_and_forgets_the_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review found `close` clearing the engine's description before waiting for the slots: a call
    still running read it after its stream synchronised and failed. (Stand-ins for the CUDA buffers.)"""
    import threading

    from adassr.runtime.backends.tensorrt import TensorRTBackend, _Slot
    from adassr.runtime.gpu import cudart

    log: list[str] = []
    parts = [_Resource(log, name) for name in ("stream", "din", "dout", "hin", "hout")]
    slot = _Slot(None, parts[0], parts[1], parts[2], parts[3], parts[4])  # type: ignore[arg-type]
    backend = TensorRTBackend(Path("never-opened.engine"), streams=1)
    description = object()
    backend._slots, backend._io = [slot], description  # type: ignore[assignment]
    monkeypatch.setattr(cudart, "set_device", lambda device: None)
    slot.lock.acquire()  # a call is running on the slot
    closing = threading.Thread(target=backend._close, daemon=True)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and backend._io is description and log == []  # nothing freed or forgotten yet
    slot.lock.release()  # the call ends
    closing.join(5)
    assert not closing.is_alive() and backend._io is None and backend._slots == []
    assert sorted(log) == ["din", "dout", "hin", "hout", "stream"]


def test_the_tensorrt_backend_reads_the_engines_scale_from_its_shapes() -> None:
    """An engine file has no metadata; the scale the manifest's is checked against (as an ONNX file's
    record is) comes from the output shape TensorRT infers for the largest input."""
    from adassr.runtime.backends.tensorrt import TensorRTBackend, engine_scale

    assert engine_scale((2, 3, 256, 192), (2, 3, 1024, 768)) == 4
    assert engine_scale((1, 3, 64, 64), (1, 3, 128, 128)) == 2
    assert engine_scale((1, 3, 64, 64), (1, 3, 256, 128)) is None  # not one factor: not checked
    assert engine_scale((1, 3, 64, 60), (1, 3, 256, 250)) is None
    assert engine_scale((1, 3, 0, 64), (1, 3, 0, 256)) is None
    assert TensorRTBackend("x.engine").model_metadata() == {}  # not open: nothing to say
