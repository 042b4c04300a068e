from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from adassr.runtime.backends import BACKENDS, Backend, ModelCache, ModelKey, open_backend
from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend, resolve_providers
from adassr.runtime.errors import BackendError, ConfigError, ShapeError

from ._models import SCALE, write_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("models") / "tiny.onnx", seed=5)


@pytest.fixture(scope="module")
def model_fp16_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("models16") / "tiny_fp16.onnx", seed=5, fp16=True)


def _batch(n: int = 2, h: int = 12, w: int = 9) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, h, w), dtype=np.float32)


def _unavailable_gpu_provider() -> str:
    available = set(ort.get_available_providers())
    for short, full in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        if full not in available:
            return short
    pytest.skip("this onnxruntime has every GPU provider: no fallback to provoke")


def test_provider_names_are_resolved_in_order() -> None:
    assert resolve_providers("cuda,cpu") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert resolve_providers(["TensorRT", "CPUExecutionProvider", "cpu"]) == (
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    )
    with pytest.raises(ConfigError, match="valid providers are tensorrt, cuda, cpu"):
        resolve_providers("cpu,rocm")
    with pytest.raises(ConfigError, match="no execution provider"):
        resolve_providers(" , ")


def test_onnxruntime_backend_runs_on_cpu_and_matches_the_session(model_path: Path) -> None:
    x = _batch()
    with OnnxRuntimeBackend(model_path, providers=("cpu",), threads=1) as backend:
        assert backend.name == "onnxruntime"
        assert backend.providers == ("CPUExecutionProvider",)
        assert backend.input_dtype == np.float32
        y = backend.infer(x)
    assert y.dtype == np.float32 and y.shape == (2, 3, 12 * SCALE, 9 * SCALE)
    ref = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_float64_input_is_accepted_and_output_is_float32(model_path: Path) -> None:
    with OnnxRuntimeBackend(model_path) as backend:
        y64 = backend.infer(_batch(1).astype(np.float64))
        y32 = backend.infer(_batch(1))
    assert y64.dtype == np.float32
    np.testing.assert_allclose(y64, y32, atol=1e-6)


def test_fp16_model_gets_a_cast_input_and_returns_float32(model_path: Path, model_fp16_path: Path) -> None:
    x = _batch(1, 16, 16)
    with OnnxRuntimeBackend(model_fp16_path) as b16, OnnxRuntimeBackend(model_path) as b32:
        assert b16.input_dtype == np.float16
        y16 = b16.infer(x)
        y32 = b32.infer(x)
    assert y16.dtype == np.float32
    assert np.abs(y16 - y32).max() < 4e-3  # half-precision input / output rounding


def test_unavailable_provider_falls_back_with_a_warning(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gpu = _unavailable_gpu_provider()
    full = resolve_providers(gpu)[0]
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path, providers=(gpu, "cpu")) as backend):
        assert backend.providers == ("CPUExecutionProvider",)
        assert backend.infer(_batch(1)).shape[0] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and full in warnings[0].getMessage()
    with pytest.raises(BackendError, match=full):
        OnnxRuntimeBackend(model_path, providers=(gpu, "cpu"), require=True).open()


def test_session_provider_drop_is_detected(model_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """onnxruntime-gpu without CUDA libraries lists CUDA as available but the session runs on CPU."""
    real_available = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real_available(), "CUDAExecutionProvider"])
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=None, **kwargs):
        return real_session(path, sess_options=sess_options, providers=[p for p in providers if p in real_available()],
                            **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path, providers="cuda,cpu") as backend):
        assert backend.providers == ("CPUExecutionProvider",)
    assert any("CUDAExecutionProvider" in r.getMessage() and "runs on" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(model_path, providers="cuda,cpu", require=True).open()


def test_onnxruntimes_own_fallback_is_off_and_a_failed_start_keeps_the_other_providers_options(
        model_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """onnxruntime rebuilt a session whose GPU providers failed to start, or failed at run time, on its fallback
    providers without their options (the CUDA EP on device 0 with TF32 on, whatever --gpu asked), printing a note
    on stdout, and the backend went on reporting the providers it opened with (a helper's review)."""
    from adassr.runtime.backends.ort_options import GpuProviderSettings

    real_available, real_session = ort.get_available_providers, ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", *real_available()])
    calls: list[tuple[list, dict]] = []

    def session(path, sess_options=None, providers=None, **kwargs):
        calls.append((list(providers), kwargs))
        if any(name != "CPUExecutionProvider" for name, _ in providers):  # this box's GPU stack is broken
            raise RuntimeError(f"{providers[0][0]} cannot start")
        return real_session(path, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path, providers="tensorrt,cuda,cpu",
                             gpu=GpuProviderSettings(device_id=1)) as backend):
        assert backend.providers == ("CPUExecutionProvider",)
        assert backend.infer(_batch(1)).shape[0] == 1
    assert all(kwargs == {"enable_fallback": 0} for _, kwargs in calls)
    assert [[name for name, _ in providers] for providers, _ in calls] == [
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]
    assert calls[1][0][0][1]["device_id"] == "1" and calls[1][0][0][1]["use_tf32"] == "0"  # options kept
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 2 and "TensorrtExecutionProvider not in use" in said[0] and "failed to start" in said[0]
    assert "CUDAExecutionProvider not in use" in said[1]
    with pytest.raises(BackendError, match="TensorrtExecutionProvider not in use .*failed to start"):
        OnnxRuntimeBackend(model_path, providers="tensorrt,cuda,cpu", require=True).open()


def test_a_model_no_provider_can_load_is_a_model_error_and_gpu_only_requests_end_on_the_cpu(
        model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """The retry blamed each provider as soon as its start failed: a model no onnxruntime can load (an opset
    too new, a damaged file) gave "CUDAExecutionProvider not in use ... install onnxruntime-gpu" warnings, or
    under --require-providers only that error; and `--providers cuda` failing to start said "re-export the
    model" where onnxruntime's own fallback had run it on the CPU with a warning (a review of the change)."""
    real_available, real_session = ort.get_available_providers, ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real_available()])

    def session(path, sess_options=None, providers=None, **kwargs):
        if any(name == "CUDAExecutionProvider" for name, _ in providers):  # a device that fails to start
            raise RuntimeError("CUDA failure 101: invalid device ordinal")
        return real_session(path, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    for require in (False, True):
        with caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"), \
                pytest.raises(BackendError, match=r"onnxruntime cannot load .*broken.onnx: .*re-export it"):
            OnnxRuntimeBackend(broken, providers="cuda,cpu", require=require).open()
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # no provider blamed
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path, providers="cuda") as backend):  # GPU only: the CPU as the last start
        assert backend.providers == ("CPUExecutionProvider",)
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "CUDAExecutionProvider not in use" in said and "invalid device ordinal" in said
    with pytest.raises(BackendError, match="CUDAExecutionProvider not in use .*invalid device ordinal"):
        OnnxRuntimeBackend(model_path, providers="cuda", require=True).open()


def test_a_provider_failing_at_run_time_is_an_error_not_a_silent_rebuild(model_path: Path, capsys) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    with OnnxRuntimeBackend(model_path, providers="cpu") as backend:
        inner = backend._session._sess

        class Failing:
            def __getattr__(self, name):  # everything but run is the real session's
                return getattr(inner, name)

            def run(self, *args, **kwargs):
                raise EPFail("the provider failed for this shape")

        backend._session._sess = Failing()
        with pytest.raises(BackendError, match="the provider failed for this shape"):
            backend.infer(_batch(1))
        assert backend.providers == ("CPUExecutionProvider",)
    assert "Falling back" not in capsys.readouterr().out  # onnxruntime's own retry, on stdout, did not run


def test_provider_options_the_session_did_not_take_are_a_fallback(model_path: Path, caplog, monkeypatch) -> None:
    """An onnxruntime that ignores enable_fallback could still rebuild a session on device 0: its reported
    provider options are compared with the requested ones."""
    from adassr.runtime.backends import onnxruntime as module

    class Reported:
        def get_provider_options(self) -> dict:
            return {"CUDAExecutionProvider": {"device_id": "0", "use_tf32": "1"}, "CPUExecutionProvider": {}}

    requested = [("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0", "cudnn_conv_use_max_workspace": "1"}),
                 ("CPUExecutionProvider", {})]
    assert module._options_not_taken(Reported(), requested) == {
        "CUDAExecutionProvider": "CUDAExecutionProvider: device_id 0 instead of 1, use_tf32 1 instead of 0"}
    assert module._options_not_taken(Reported(), requested[1:]) == {}


def test_an_installed_onnxruntime_that_fails_to_load_is_not_called_missing(model_path: Path, monkeypatch) -> None:
    """Under a memory limit onnxruntime's library failed to map, and the error said "onnxruntime is not
    installed ... pip install" (a helper's hunt under ulimit -v)."""
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("libonnxruntime.so: failed to map segment from shared object")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(BackendError, match=r"onnxruntime is installed but could not be loaded \(.*failed to map "
                                           r"segment.*\); out of memory"):
        OnnxRuntimeBackend(model_path).open()


def test_infer_validates_its_input(model_path: Path) -> None:
    backend = OnnxRuntimeBackend(model_path)
    with pytest.raises(BackendError, match="not open"):
        backend.infer(_batch())
    with backend:
        with pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
            backend.infer(np.zeros((1, 1, 8, 8), np.float32))
        with pytest.raises(ShapeError):
            backend.infer(np.zeros((3, 8, 8), np.float32))
        with pytest.raises(BackendError, match="float"):
            backend.infer(np.zeros((1, 3, 8, 8), np.uint8))
        with pytest.raises(ShapeError, match="empty"):
            backend.infer(np.zeros((0, 3, 8, 8), np.float32))
        with pytest.raises(BackendError, match="must be a numpy array, got builtins.list"):  # was "got shape ()"
            backend.infer(_batch().tolist())  # type: ignore[arg-type]


def test_context_manager_closes_and_a_closed_backend_refuses(model_path: Path) -> None:
    with open_backend("onnxruntime", model_path) as backend:
        assert backend.is_open
        backend.infer(_batch(1))
    assert not backend.is_open and backend.providers == ()
    with pytest.raises(BackendError, match="closed"):
        backend.infer(_batch(1))
    backend.close()  # twice is fine


def test_manifest_io_names_are_checked(model_path: Path) -> None:
    with pytest.raises(BackendError, match="manifest says 'image'"):
        open_backend("onnxruntime", model_path, input_name="image")
    with pytest.raises(BackendError, match="no output 'out'"):
        open_backend("onnxruntime", model_path, output_name="out")
    open_backend("onnxruntime", model_path, input_name="lr", output_name="sr").close()


def test_broken_or_missing_model_is_a_backend_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not an onnx model" * 10)
    with pytest.raises(BackendError, match="cannot load"):
        open_backend("onnxruntime", bad)
    with pytest.raises(BackendError, match="does not exist"):
        open_backend("onnxruntime", tmp_path / "absent.onnx")


def test_registry_is_explicit() -> None:
    assert list(BACKENDS) == ["onnxruntime", "tensorrt"]
    with pytest.raises(ConfigError, match="valid backends are onnxruntime, tensorrt"):
        open_backend("openvino", "m.onnx")
    with pytest.raises(BackendError, match="runs TensorRT engines, not m.onnx"):
        open_backend("tensorrt", "m.onnx")
    with pytest.raises(ConfigError, match="valid providers"):
        open_backend("onnxruntime", "m.onnx", providers=("gpu",))


# -- the LRU ------------------------------------------------------------------------------------
class _CountingBackend(Backend):
    opened = 0

    def __init__(self, tag: str, delay: float = 0.0) -> None:
        super().__init__(Path(f"{tag}.onnx"))
        self.delay = delay
        self.closed = 0

    @property
    def name(self) -> str:
        return "counting"

    def _open(self) -> None:
        time.sleep(self.delay)
        type(self).opened += 1

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def _close(self) -> None:
        self.closed += 1


def _key(camera: str) -> ModelKey:
    return ModelKey(camera, f"sha-{camera}", "fp32", ("CPUExecutionProvider",))


def test_lru_evicts_and_closes_the_least_recently_used() -> None:
    cache = ModelCache(max_entries=2)
    a = cache.get(_key("a"), lambda: _CountingBackend("a"))
    b = cache.get(_key("b"), lambda: _CountingBackend("b"))
    assert cache.get(_key("a"), lambda: pytest.fail("must be cached")) is a
    c = cache.get(_key("c"), lambda: _CountingBackend("c"))  # evicts b (a was used more recently)
    assert b.closed == 1 and not b.is_open and a.is_open and c.is_open
    assert cache.keys() == [_key("a"), _key("c")] and len(cache) == 2
    assert _key("b") not in cache
    cache.clear()
    assert a.closed == 1 and c.closed == 1 and len(cache) == 0


def test_a_leased_backend_is_closed_only_when_its_last_lease_ends() -> None:
    """An image's tiles run on one backend: eviction or clear() by other threads must not close it
    under them (it used to, and the next tile failed with 'not open')."""
    cache = ModelCache(max_entries=1)
    with cache.lease(_key("a"), lambda: _CountingBackend("a")) as a:
        with cache.lease(_key("a"), lambda: pytest.fail("must be cached")) as again:
            assert again is a
        b = cache.get(_key("b"), lambda: _CountingBackend("b"))  # evicts a, which is leased
        assert a.is_open and a.closed == 0 and cache.keys() == [_key("b")]
        cache.clear()  # b closes now; a still leased
        assert b.closed == 1 and a.is_open
    assert a.closed == 1 and not a.is_open  # its last lease ended
    with cache.lease(_key("c"), lambda: _CountingBackend("c")) as c:
        pass
    assert c.is_open and cache.keys() == [_key("c")]  # not evicted: stays open in the cache
    with pytest.raises(BackendError), cache.lease(_key("z"), _raise_open):
        pass
    assert cache.keys() == [_key("c")]


def _raise_open() -> Backend:
    raise BackendError("cannot open")


def test_a_lease_ends_when_its_block_raises_or_an_evicted_model_fails_to_close(
        caplog: pytest.LogCaptureFixture) -> None:
    class _FailingClose(_CountingBackend):
        def _close(self) -> None:
            raise BackendError("the driver refused")

    cache = ModelCache(max_entries=1)
    with pytest.raises(RuntimeError), cache.lease(_key("a"), lambda: _CountingBackend("a")) as a:
        raise RuntimeError("the image failed")
    with cache.lease(_key("b"), lambda: _CountingBackend("b")):  # evicts a: no lease holds it, so it closes
        pass
    assert a.closed == 1
    cache = ModelCache(max_entries=2)
    failing = cache.get(_key("f"), lambda: _FailingClose("f"))
    other = cache.get(_key("o"), lambda: _CountingBackend("o"))
    cache.get(_key("x"), lambda: _CountingBackend("x"))  # evicts f, whose close fails
    with caplog.at_level(logging.WARNING), cache.lease(_key("g"), lambda: _CountingBackend("g")) as g:
        assert g.is_open  # the image runs: the failing close was another model's
    assert other.closed == 1 and cache._leases == {}  # the next evicted model closed; the lease ended
    assert failing is not None and any("closing the evicted model" in r.getMessage() for r in caplog.records)


def test_lru_key_includes_checksum_precision_and_providers(model_path: Path) -> None:
    with ModelCache(4) as cache:
        k1 = ModelKey("canon", "aaa", "fp32", ("CPUExecutionProvider",))
        b1 = cache.get(k1, lambda: open_backend("onnxruntime", model_path))
        for other in (
            ModelKey("canon", "bbb", "fp32", ("CPUExecutionProvider",)),
            ModelKey("canon", "aaa", "fp16", ("CPUExecutionProvider",)),
            ModelKey("canon", "aaa", "fp32", ("CUDAExecutionProvider", "CPUExecutionProvider")),
        ):
            assert cache.get(other, lambda: open_backend("onnxruntime", model_path)) is not b1
        assert len(cache) == 4
    assert not b1.is_open


def test_lru_opens_a_model_once_under_concurrency() -> None:
    _CountingBackend.opened = 0
    cache = ModelCache(2)
    got: list[Backend] = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get(_key("x"), lambda: _CountingBackend("x", 0.05))))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _CountingBackend.opened == 1 and len({id(b) for b in got}) == 1


def test_failed_open_leaves_no_entry() -> None:
    cache = ModelCache(2)

    def boom() -> Backend:
        raise BackendError("cannot open")

    with pytest.raises(BackendError):
        cache.get(_key("z"), boom)
    assert len(cache) == 0
    with pytest.raises(ConfigError, match=">= 1"):
        ModelCache(0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"threads": 1.5}, "threads must be an integer >= 1"),  # was onnxruntime's "incompatible function arguments"
    ({"threads": True}, "threads must be an integer >= 1"),
    ({"providers": None}, "providers must be a comma-separated string or a list"),  # was "not iterable"
])
def test_open_backend_refuses_option_types_with_its_own_words(model_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_backend("onnxruntime", model_path, **kwargs)
    with pytest.raises(ConfigError, match="model_path must be a path .*got int"):
        open_backend("onnxruntime", 3)  # type: ignore[arg-type]


def test_a_model_of_an_ir_version_onnxruntime_does_not_know_gets_both_cures(model_path: Path, tmp_path: Path) -> None:
    """A store exported by an older adassr (IR 10) on onnxruntime 1.17 was told only to re-export, which a
    runtime-only install cannot do (a helper's hunt of stores across versions): upgrading is said too.
    (IR 99 stands in for it: the onnxruntime installed here loads IR 10.)"""
    import onnx

    proto = onnx.load(str(model_path))
    proto.ir_version = 99
    newer = tmp_path / "newer.onnx"
    newer.write_bytes(proto.SerializeToString())
    with pytest.raises(BackendError, match=r"(?s)cannot load .*newer.onnx: .*IR version.*upgrade onnxruntime to 1.18 "
                                           r"or later, or re-export .*adassr export --camera"):
        open_backend("onnxruntime", newer)


# -- from mutation testing: behaviour no test checked ---------------------------------------------


def test_a_gpu_only_request_on_a_cpu_build_runs_on_the_cpu_with_a_warning(
        model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`--providers cuda` alone on an onnxruntime without it: the CPU runs it (an IndexError if the CPU
    were not put last), or --require-providers refuses."""
    gpu = _unavailable_gpu_provider()
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path, providers=gpu) as backend):
        assert backend.providers == ("CPUExecutionProvider",)
        assert backend.infer(_batch(1)).shape == (1, 3, 12 * SCALE, 9 * SCALE)
    assert any(resolve_providers(gpu)[0] in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with pytest.raises(BackendError, match=resolve_providers(gpu)[0]):
        OnnxRuntimeBackend(model_path, providers=gpu, require=True).open()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_thread_count_asked_for_is_the_sessions(model_path: Path, threads: int) -> None:
    """--threads must reach the session: a dropped value silently used every core the box offers."""
    with OnnxRuntimeBackend(model_path, threads=threads) as backend:
        assert backend._session.get_session_options().intra_op_num_threads == threads


@pytest.mark.parametrize("threads", [0, -1])
def test_zero_or_negative_threads_are_refused(model_path: Path, threads: int) -> None:
    """onnxruntime reads 0 as one thread per host core: the opposite of a limit."""
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        OnnxRuntimeBackend(model_path, threads=threads)


def test_options_a_session_did_not_take_warn_or_refuse_when_opening(model_path: Path, caplog, monkeypatch) -> None:
    """The check of the options the session reports (device, TF32) acts when a model opens."""
    from adassr.runtime.backends import onnxruntime as module

    monkeypatch.setattr(module, "_options_not_taken", lambda *_a: {
        "CUDAExecutionProvider": "CUDAExecutionProvider: device_id 0 instead of 1"})
    with (caplog.at_level(logging.WARNING, logger="adassr.runtime.backends.onnxruntime"),
          OnnxRuntimeBackend(model_path) as backend):
        assert backend.infer(_batch(1)).shape[0] == 1
    assert any("its options were not taken (CUDAExecutionProvider: device_id 0 instead of 1)" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(BackendError, match="device_id 0 instead of 1"):
        OnnxRuntimeBackend(model_path, require=True).open()


def _graph(tmp_path: Path, name: str, inputs: list[tuple[str, int]], outputs: list[str]) -> Path:
    """A tiny ONNX model: ``inputs`` (name, channels) of NCHW float, each output an Identity of the first."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [inputs[0][0]], [out]) for out in outputs]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, "H", "W"]) for n, c in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", inputs[0][1], "H", "W"]) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("inputs, outputs, message", [
    ([("lr", 3), ("extra", 3)], ["sr"], r"has 2 inputs .*exactly one NCHW image input"),
    ([("lr", 1)], ["sr"], r"input 'lr' has shape \['N', 1, 'H', 'W'\]; expected \[N, 3, H, W\]"),
    ([("lr", 4)], ["sr"], r"expected \[N, 3, H, W\]"),
    ([("lr", 3)], ["sr", "aux"], r"has outputs \['sr', 'aux'\]; name the image output"),
], ids=["two-inputs", "grey-input", "rgba-input", "two-outputs"])
def test_models_that_are_not_one_image_in_one_image_out_are_refused_at_open(
        tmp_path: Path, inputs: list[tuple[str, int]], outputs: list[str], message: str) -> None:
    """Such a model was taken at open (the first output used silently, or onnxruntime's error at run time)
    when these checks were dropped (mutation testing)."""
    with pytest.raises(BackendError, match=message):
        OnnxRuntimeBackend(_graph(tmp_path, "odd", inputs, outputs)).open()
    with OnnxRuntimeBackend(_graph(tmp_path, "named", [("lr", 3)], ["sr", "aux"]), output_name="sr") as backend:
        assert backend.infer(_batch(1)).shape == (1, 3, 12, 9)  # named in the manifest: taken


def test_a_model_under_a_path_that_is_not_utf8_opens(model_path: Path, tmp_path: Path) -> None:
    """onnxruntime's bindings take only text paths: such a model is read as bytes."""
    odd = tmp_path / os.fsdecode(b"camera-\xff.onnx")
    try:
        odd.write_bytes(model_path.read_bytes())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    with OnnxRuntimeBackend(odd) as backend:
        assert backend.infer(_batch(1)).shape == (1, 3, 12 * SCALE, 9 * SCALE)


def test_a_model_every_provider_refuses_is_described_by_the_cpu_s_error(tmp_path: Path, monkeypatch) -> None:
    """The GPU start's error (a device problem) is not the model's: the message is the last start's."""
    real_available, real_session = ort.get_available_providers, ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real_available()])

    def session(path, sess_options=None, providers=None, **kwargs):
        if any(name == "CUDAExecutionProvider" for name, _ in providers):
            raise RuntimeError("CUDA failure 101: invalid device ordinal")
        return real_session(path, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(BackendError) as info:
        OnnxRuntimeBackend(broken, providers="cuda,cpu").open()
    assert "invalid device ordinal" not in str(info.value) and "re-export it" in str(info.value)


@pytest.mark.parametrize("failed, advice", [
    (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "--providers cuda"),
    (("CUDAExecutionProvider", "CPUExecutionProvider"), "--providers cpu"),
])
def test_a_provider_failing_at_run_time_names_the_next_one_to_request(
        model_path: Path, failed: tuple[str, ...], advice: str) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    with OnnxRuntimeBackend(model_path, providers="cpu") as backend:
        inner = backend._session._sess

        class Failing:
            def __getattr__(self, name):
                return getattr(inner, name)

            def run(self, *args, **kwargs):
                raise EPFail("the provider failed for this shape")

        backend._session._sess = Failing()
        backend._actual = failed  # as if the session ran on these
        with pytest.raises(BackendError, match=f"its execution provider {failed[0]} failed; request the next one, "
                                               f"e.g. {advice}"):
            backend.infer(_batch(1))


def test_a_cached_backend_someone_closed_is_opened_again() -> None:
    cache = ModelCache(2)
    first = cache.get(_key("a"), lambda: _CountingBackend("a"))
    first.close()
    again = cache.get(_key("a"), lambda: _CountingBackend("a"))
    assert again is not first and again.is_open
    assert again.infer(_batch(1)).shape == (1, 3, 12, 9)


def test_a_model_opened_again_after_someone_closed_it_is_the_most_recently_used() -> None:
    cache = ModelCache(2)
    cache.get(_key("a"), lambda: _CountingBackend("a")).close()
    b = cache.get(_key("b"), lambda: _CountingBackend("b"))
    a = cache.get(_key("a"), lambda: _CountingBackend("a"))  # opened again: now the most recent
    cache.get(_key("c"), lambda: _CountingBackend("c"))  # evicts b, not the model just handed out
    assert a.is_open and not b.is_open and cache.keys() == [_key("a"), _key("c")]


def test_clear_keeps_a_leased_model_open_until_its_lease_ends() -> None:
    cache = ModelCache(2)
    with cache.lease(_key("a"), lambda: _CountingBackend("a")) as a:
        other = cache.get(_key("b"), lambda: _CountingBackend("b"))
        cache.clear()  # another thread clears while a's image runs
        assert a.is_open and a.infer(_batch(1)).shape == (1, 3, 12, 9)
        assert not other.is_open and len(cache) == 0
    assert not a.is_open and a.closed == 1


def test_a_retired_model_is_released_when_its_lease_ends() -> None:
    import gc
    import weakref

    cache = ModelCache(1)
    with cache.lease(_key("a"), lambda: _CountingBackend("a")) as a:
        cache.get(_key("b"), lambda: _CountingBackend("b"))  # evicts a while leased
    assert a.closed == 1
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None  # the cache keeps no reference to a model it closed


def test_open_and_close_run_once_however_often_they_are_called() -> None:
    _CountingBackend.opened = 0
    backend = _CountingBackend("a")
    assert backend.open() is backend and backend.open() is backend
    assert _CountingBackend.opened == 1
    backend.close()
    backend.close()
    assert backend.closed == 1


def test_a_model_path_that_is_not_a_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model_path must be a path"):
        OnnxRuntimeBackend(3)  # type: ignore[arg-type]


def test_inputs_and_outputs_of_another_rank_are_refused() -> None:
    from adassr.runtime.errors import ModelOutputError

    class Flat(_CountingBackend):
        def _infer(self, batch: np.ndarray) -> np.ndarray:
            return batch[..., 0]

    with _CountingBackend("a") as backend, pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
        backend.infer(np.zeros((2, 3, 8, 8, 1), np.float32))
    with Flat("flat") as backend, pytest.raises(ModelOutputError, match="output of flat.onnx"):
        backend.infer(_batch(2))


def test_an_output_of_the_wrong_batch_or_channels_is_a_model_output_error() -> None:
    from adassr.runtime.errors import ModelOutputError

    class Wrong(_CountingBackend):
        def __init__(self, cut: str) -> None:
            super().__init__("wrong")
            self.cut = cut

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            return batch[:1] if self.cut == "batch" else batch[:, :1]

    for cut in ("batch", "channels"):
        with Wrong(cut) as backend, pytest.raises(ModelOutputError, match=r"output of wrong.onnx"):
            backend.infer(_batch(2))


def test_the_tensorrt_factory_passes_the_gpu_and_cuda_graph(monkeypatch, tmp_path: Path) -> None:
    """`--gpu 1 --cuda-graph` must reach the TensorRT backend (it ran on device 0 without graphs otherwise);
    the backend itself needs a GPU, so its constructor is recorded here."""
    import adassr.runtime.backends.tensorrt as trt_module
    from adassr.runtime.backends.ort_options import GpuProviderSettings

    seen: dict[str, object] = {}

    class Recorded(_CountingBackend):
        def __init__(self, path: Path, **kwargs: object) -> None:
            super().__init__("engine")
            seen.update(kwargs)

    monkeypatch.setattr(trt_module, "TensorRTBackend", Recorded)
    backend = open_backend("tensorrt", tmp_path / "camera.engine", gpu=GpuProviderSettings(device_id=1),
                           cuda_graph=True)
    assert backend.is_open and seen == {"device": 1, "streams": 2, "cuda_graph": True}


def test_no_tensorrt_cache_folder_is_made_for_a_session_without_tensorrt(model_path: Path, tmp_path: Path) -> None:
    from adassr.runtime.backends.ort_options import GpuProviderSettings

    cache = tmp_path / "trt-cache"
    with OnnxRuntimeBackend(model_path, gpu=GpuProviderSettings(cache_dir=cache)) as backend:
        assert backend.providers == ("CPUExecutionProvider",)
    assert not cache.exists()


def test_open_backend_refuses_an_empty_kind_and_a_tensorrt_file_that_is_not_an_engine() -> None:
    with pytest.raises(ConfigError, match="unknown backend ''; valid backends are onnxruntime, tensorrt"):
        open_backend("", "m.onnx")
    with pytest.raises(BackendError, match="runs TensorRT engines, not m.plan"):
        open_backend("tensorrt", "m.plan")


def test_open_backend_hands_the_gpu_settings_and_require_to_onnxruntime(model_path: Path) -> None:
    from adassr.runtime.backends.ort_options import GpuProviderSettings

    settings = GpuProviderSettings(device_id=1, fp16=True)
    with open_backend("onnxruntime", model_path, gpu=settings) as backend:
        assert backend._gpu is settings  # the CUDA / TensorRT options (device, precision) come from it
    gpu = _unavailable_gpu_provider()
    with pytest.raises(BackendError, match=resolve_providers(gpu)[0]):
        open_backend("onnxruntime", model_path, providers=gpu, require=True)
