"""Build, refit and inspect TensorRT engines with the ``tensorrt`` Python API (imported lazily).

- :func:`load_tensorrt` imports TensorRT and checks it is the real library: the ``tensorrt-stubs``
  package installs a ``tensorrt/`` folder of ``.pyi`` files that Python imports as an empty
  namespace package, so "importable" is not "installed".
- :func:`build_engine`: ONNX parser -> network -> builder config -> serialized engine.
  Precision (TF32 off in every case, so FLOAT layers are full fp32): ``fp32`` builds a strongly
  typed network from the fp32 ONNX;
  ``fp16`` builds a strongly typed network from the fp16 ONNX (``model_fp16.onnx``, whose graph
  already keeps ``conv_first`` and the residual sums in fp32, see ``adassr.export.fp16``), so
  TensorRT runs exactly the validated mixed-precision graph; ``bf16`` has no ONNX of its own and
  builds the fp32 ONNX weakly typed with ``BuilderFlag.BF16``, keeping the same layers (the
  convolution reading the input, every elementwise sum/product, and the 1x1 convolutions that
  stand for the residual scaling products, see :func:`keeps_fp32`) in fp32 with precision
  constraints. Optimisation profiles come from :mod:`adassr.runtime.engines.profiles`; the timing
  cache is read from and written back to a file (callers hold the shared folder's lock);
  ``refittable`` sets ``BuilderFlag.REFIT`` and ``weight_stripped`` ``BuilderFlag.STRIP_PLAN``.
- :func:`refit_engine`: deserialize an engine, refit every weight from an ONNX file with
  ``OnnxParserRefitter.refit_from_file``, return the refitted engine serialized with its weights.
- :func:`refit_engine_partial`: deserialize a refittable engine that holds the backbone's weights,
  set only the named (changed) weights with ``Refitter.set_named_weights`` from the camera's ONNX
  initializers (plus any weight TensorRT reports missing because it combined it with a changed
  one), ``refit_cuda_engine``, serialize. Nothing else is read or uploaded.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from adassr.runtime.engines.key import ENGINE_PRECISIONS, ProfileShape
from adassr.runtime.engines.refit import PartialRefitError, RefitReport
from adassr.runtime.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

def install_tensorrt_hint() -> str:
    """How to install TensorRT 10 on the GPU box (the project's tensorrt extra)."""
    from adassr.runtime.install import install_hint

    return (f"install TensorRT 10 on the GPU box (`{install_hint('tensorrt')}`, NVIDIA's tensorrt-cu12 10.x; the "
            "`tensorrt-stubs` type stubs are not TensorRT)")
SUPPORTED_MAJOR = 10


def load_tensorrt() -> ModuleType:
    """The ``tensorrt`` module; BackendError if it is absent, only type stubs, or not TensorRT 10 (the
    API this code is written against: 8 and 9 lack it, 11 removes the weakly typed builder calls)."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"TensorRT is not installed ({exc}); {install_tensorrt_hint()}") from exc
    if not hasattr(tensorrt, "Builder") or not hasattr(tensorrt, "Runtime"):
        raise BackendError("the importable `tensorrt` has no Builder/Runtime (type stubs only?); "
                           f"{install_tensorrt_hint()}")
    check_tensorrt_version(str(getattr(tensorrt, "__version__", "")))
    module: ModuleType = tensorrt
    return module


def check_tensorrt_version(version: str) -> None:
    """BackendError unless ``version`` is a TensorRT 10 release."""
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise BackendError(f"TensorRT {version or '(no version)'} is installed, but adassr needs TensorRT "
                           f"{SUPPORTED_MAJOR}.x; {install_tensorrt_hint()}")


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here (absent, type stubs only, not TensorRT 10), or None when it can."""
    try:
        load_tensorrt()
    except BackendError as exc:
        return str(exc)
    return None


def tensorrt_available() -> bool:
    """Whether the real TensorRT library imports here."""
    return tensorrt_unavailable_reason() is None


def tensorrt_version() -> str:
    return str(load_tensorrt().__version__)


TENSORRT_LOG = logging.getLogger("adassr.tensorrt")
"""Where TensorRT's own messages go: its warnings and errors show as log lines on stderr, its build
log (INFO, VERBOSE) with ``-v`` / ``-vv``. TensorRT's built-in ``trt.Logger`` printed to stdout, among
a command's result lines, and dropped everything below WARNING whatever ``-vv`` asked."""

_LEVELS = (logging.ERROR, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)


def tensorrt_log_level(severity: int) -> int:
    """The logging level of a TensorRT message severity: INTERNAL_ERROR (0) and ERROR (1) -> ERROR,
    WARNING (2) -> WARNING, INFO (3) -> INFO, VERBOSE (4) -> DEBUG."""
    return _LEVELS[severity] if 0 <= severity < len(_LEVELS) else logging.DEBUG


@functools.lru_cache(maxsize=1)
def _logger() -> trt.ILogger:
    load_tensorrt()
    import tensorrt as trt

    class ToLogging(trt.ILogger):  # type: ignore[misc,unused-ignore]  # Any without the stubs
        """TensorRT's messages to :data:`TENSORRT_LOG` (the documented way: a subclass of ``trt.ILogger``
        that calls the base ``__init__`` and implements ``log``)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = tensorrt_log_level(int(severity))
            if TENSORRT_LOG.isEnabledFor(level):
                TENSORRT_LOG.log(level, "%s", msg)

    return ToLogging()


@dataclass(frozen=True)
class BuildSpec:
    """How to build one engine."""

    onnx_path: Path
    precision: str
    profiles: tuple[ProfileShape, ...]
    input_name: str = "lr"
    optimization_level: int = 3
    refittable: bool = False
    weight_stripped: bool = False
    workspace_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if self.weight_stripped and not self.refittable:
            raise ConfigError("a weight-stripped engine must be refittable")


@dataclass(frozen=True)
class BuildReport:
    seconds: float
    timing_cache_bytes: int
    kept_fp32_layers: int


def _parse(builder: trt.Builder, spec: BuildSpec) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    import tensorrt as trt

    flags = 0
    if spec.precision in ("fp32", "fp16"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network: trt.INetworkDefinition = builder.create_network(flags)
    parser: trt.OnnxParser = trt.OnnxParser(network, _logger())
    if not spec.onnx_path.is_file():
        raise BackendError(f"ONNX model {spec.onnx_path} does not exist; export it with `adassr export`")
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser rejected {spec.onnx_path}: {errors}; re-export the model")
    return network, parser


SCALE_AS_CONV_SUFFIX = "/scale_as_conv"
"""Name suffix of the 1x1 Conv nodes that stand for a scalar Mul in ``model.onnx`` (``adassr.export.ort_layout``:
the residual scaling ``0.2 * x`` of each RRDB block, an elementwise product in the network's arithmetic)."""


def keeps_fp32(layer_type: str, name: str, reads_input: bool) -> bool:
    """Whether a weakly typed (bf16) build keeps a layer in fp32: every elementwise layer, the convolution
    reading the network input, and the 1x1 convolutions that stand for a scalar product (ONNX node names
    ``.../scale_as_conv``, which TensorRT's ONNX parser gives its layers)."""
    if layer_type == "ELEMENTWISE":
        return True
    return layer_type == "CONVOLUTION" and (reads_input or SCALE_AS_CONV_SUFFIX in name)


def keep_fp32_layers(network: trt.INetworkDefinition) -> int:
    """Constrain the layers :func:`keeps_fp32` names to fp32; returns how many."""
    import tensorrt as trt

    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    kinds = {trt.LayerType.ELEMENTWISE: "ELEMENTWISE", trt.LayerType.CONVOLUTION: "CONVOLUTION"}
    kept = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        reads_input = any(
            layer.get_input(j) is not None and layer.get_input(j).name in inputs for j in range(layer.num_inputs)
        )
        if keeps_fp32(kinds.get(layer.type, ""), layer.name, reads_input):
            layer.precision = trt.DataType.FLOAT
            for out in range(layer.num_outputs):
                layer.set_output_type(out, trt.DataType.FLOAT)
            kept += 1
    return kept


def _config(builder: trt.Builder, network: trt.INetworkDefinition, spec: BuildSpec) -> tuple[trt.IBuilderConfig, int]:
    import tensorrt as trt

    config: trt.IBuilderConfig = builder.create_builder_config()
    config.builder_optimization_level = spec.optimization_level
    if spec.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    kept = 0
    # TF32 off for every precision: it rounds FLOAT convolutions' inputs to 10-bit mantissas (on by
    # default), and the layers an fp16 or bf16 engine keeps in FLOAT (the convolution reading the
    # input) are kept there for their accuracy (adassr.export.fp16)
    config.clear_flag(trt.BuilderFlag.TF32)
    if spec.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        kept = keep_fp32_layers(network)
    if spec.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if spec.weight_stripped:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
    for shape in spec.profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, trt.Dims(list(shape.min)), trt.Dims(list(shape.opt)),
                          trt.Dims(list(shape.max)))
        if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
            raise BackendError(f"TensorRT refused the optimisation profile {shape.min} .. {shape.max} of "
                               f"{spec.onnx_path.name} (its input shape does not fit it); check the model's "
                               "input and the tile size")
    return config, kept


def build_engine(spec: BuildSpec, timing_cache: Path | None = None) -> tuple[bytes, BuildReport]:
    """Build a serialized engine from ``spec``; read and update ``timing_cache`` when given."""
    load_tensorrt()
    import tensorrt as trt
    start = time.perf_counter()
    builder: trt.Builder = trt.Builder(_logger())
    network, _parser = _parse(builder, spec)
    if network.num_inputs != 1 or network.get_input(0).name != spec.input_name:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise BackendError(f"{spec.onnx_path} has inputs {names}; expected one input named {spec.input_name!r}")
    config, kept = _config(builder, network, spec)
    _use_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT could not build an engine from {spec.onnx_path} ({spec.precision}); run with -vv "
            "for TensorRT's log, or lower --tile / --tile-batch if it ran out of memory"
        )
    data = bytes(memoryview(serialized))
    final = config.get_timing_cache()
    updated = bytes(memoryview(final.serialize())) if final is not None else b""
    if timing_cache is not None and updated:
        from adassr.runtime.store import atomic_write_bytes

        atomic_write_bytes(timing_cache, updated)
    seconds = time.perf_counter() - start
    log.info("built %s engine from %s in %.1f s (%d layers kept in fp32)",
             spec.precision, spec.onnx_path, seconds, kept)
    return data, BuildReport(seconds, len(updated), kept)


def _use_timing_cache(config: trt.IBuilderConfig, timing_cache: Path | None) -> None:
    """Give the build the timing cache stored in ``timing_cache``, or a new one where TensorRT refuses
    the stored bytes (damaged, or written for another GPU or TensorRT): ``set_timing_cache`` says so
    only by returning False, and the build would then time every layer again without a word."""
    stored = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    if stored:
        reason = "damaged, or made for another GPU or TensorRT version"
        try:
            cache = config.create_timing_cache(stored)
        except Exception as exc:  # noqa: BLE001 - TensorRT raises its own types for damaged bytes; reported below
            cache, reason = None, f"{type(exc).__name__}: {exc}"
        if cache is not None and config.set_timing_cache(cache, False):
            return
        log.warning("TensorRT did not accept the timing cache %s (%s); this build starts a new one and "
                    "replaces it", timing_cache, reason)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise BackendError("TensorRT could not create a timing cache for the build; check its log (-vv)")


def deserialize(data: bytes) -> trt.ICudaEngine:
    """An engine from its bytes; BackendError if this TensorRT / GPU cannot load it."""
    load_tensorrt()
    import tensorrt as trt
    runtime: trt.Runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(
            "TensorRT could not deserialize the engine (built by another TensorRT version or for another "
            "GPU?); delete it and rebuild with `adassr export --engine tensorrt`"
        )
    return engine


def refit_engine(engine_data: bytes, onnx_path: Path) -> tuple[bytes, float]:
    """Refit every weight of a refittable engine from ``onnx_path``; return its bytes and the seconds taken."""
    load_tensorrt()
    import tensorrt as trt
    start = time.perf_counter()
    engine = deserialize(engine_data)
    refitter: trt.Refitter = trt.Refitter(engine, _logger())
    parser_refitter: trt.OnnxParserRefitter = trt.OnnxParserRefitter(refitter, _logger())
    if not parser_refitter.refit_from_file(str(onnx_path)):
        errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors))
        raise BackendError(f"refitting from {onnx_path} failed: {errors}; the ONNX does not match the base engine")
    missing = refitter.get_missing_weights()
    if missing:
        raise BackendError(f"refitting from {onnx_path} left weights unset ({', '.join(missing[:5])}...)")
    if not refitter.refit_cuda_engine():
        raise BackendError(f"TensorRT refused the weights of {onnx_path}; rebuild the base engine")
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)  # a stripped base: keep the refitted weights
    # TensorRT >= 10.14 serializes such an engine as not refittable unless asked (NvInferRuntime.h,
    # kINCLUDE_REFIT); the camera engine is recorded as refittable, so ask where the flag exists
    include_refit = getattr(trt.SerializationFlag, "INCLUDE_REFIT", None)
    if include_refit is not None:
        config.set_flag(include_refit)
    data = bytes(memoryview(engine.serialize_with_config(config)))
    return data, time.perf_counter() - start


_MAX_MISSING_ROUNDS = 3  # weights TensorRT combined with a changed one are added; this bounds the loop


def _numpy_dtype(dtype: trt.DataType) -> type[np.floating] | None:
    import tensorrt as trt

    if dtype == trt.DataType.FLOAT:
        return np.float32
    if dtype == trt.DataType.HALF:
        return np.float16
    return None


def _as_weights(refitter: trt.Refitter, name: str, array: np.ndarray, keep: list[np.ndarray]) -> trt.Weights:
    """``array`` as TensorRT weights of the prototype's type and size; ``keep`` holds the buffer alive."""
    import tensorrt as trt

    prototype = refitter.get_weights_prototype(name)
    if prototype.size < 0:
        raise PartialRefitError(f"{name!r} is not a refittable weight of the base engine")
    want = _numpy_dtype(prototype.dtype)
    if want is None:
        raise PartialRefitError(f"weight {name!r} has TensorRT type {prototype.dtype}; only float / half are refitted "
                                "weight by weight")
    if array.dtype != want:
        if array.dtype.kind != "f":
            raise PartialRefitError(f"weight {name!r} is {array.dtype} in the ONNX model, {want.__name__} in the "
                                    "engine")
        array = array.astype(want)
    array = np.ascontiguousarray(array)
    if array.size != prototype.size:
        raise PartialRefitError(f"weight {name!r} has {array.size} values in the ONNX model, {prototype.size} in the "
                                "engine; the base engine was built from another network")
    keep.append(array)  # trt.Weights references the buffer without copying it
    return trt.Weights(array)


def refit_engine_partial(engine_data: bytes, onnx_path: Path, names: Sequence[str]) -> tuple[bytes, RefitReport]:
    """Refit only ``names`` of a refittable engine that holds the backbone's weights.

    The values come from the initializers of ``onnx_path`` (the camera's ONNX). If TensorRT
    combined a changed weight with others while building (``get_missing_weights`` is not empty
    after setting the changed ones), those are set from the same ONNX too. With no names the
    engine's bytes are returned as they are (the camera's weights equal the backbone's).

    Raises :class:`~adassr.runtime.engines.refit.PartialRefitError` when TensorRT does not accept
    the weights one by one (the caller then refits every weight from a weight-stripped base).
    """
    from adassr.runtime.engines.onnx_weights import read_initializers

    load_tensorrt()
    import tensorrt as trt
    start = time.perf_counter()
    if not names:
        return engine_data, RefitReport(time.perf_counter() - start, 0)
    engine = deserialize(engine_data)
    refitter: trt.Refitter = trt.Refitter(engine, _logger())
    refittable = set(refitter.get_all_weights())
    unknown = [name for name in names if name not in refittable]
    if unknown:
        raise PartialRefitError(f"{len(unknown)} changed weights ({', '.join(unknown[:5])}) are not refittable "
                                "weights of the base engine")
    keep: list[np.ndarray] = []
    done: set[str] = set()
    pending = list(dict.fromkeys(names))
    for _ in range(_MAX_MISSING_ROUNDS):
        try:
            arrays = read_initializers(onnx_path, pending)
        except BackendError as exc:  # e.g. TensorRT asks for a weight that is no initializer of the ONNX
            raise PartialRefitError(str(exc)) from exc
        for name in pending:
            if not refitter.set_named_weights(name, _as_weights(refitter, name, arrays[name], keep)):
                raise PartialRefitError(f"TensorRT rejected the new values of weight {name!r}")
            done.add(name)
        missing = refitter.get_missing_weights()
        if not missing:
            break
        if any(not m for m in missing):
            raise PartialRefitError("TensorRT needs unnamed weights set along with the changed ones")
        pending = [m for m in missing if m not in done]
        if not pending:
            raise PartialRefitError(f"TensorRT still reports set weights as missing ({', '.join(missing[:5])})")
        log.info("TensorRT combined %d more weights with the changed ones (%s...); setting them too",
                 len(pending), ", ".join(pending[:3]))
    else:
        raise PartialRefitError(f"weights still missing after {_MAX_MISSING_ROUNDS} rounds: "
                                f"{', '.join(refitter.get_missing_weights()[:5])}")
    if not refitter.refit_cuda_engine():
        raise PartialRefitError(f"TensorRT refused the {len(done)} changed weights of {onnx_path}")
    data = bytes(memoryview(engine.serialize()))  # ``keep`` held the weight buffers until here
    seconds = time.perf_counter() - start
    log.info("refitted %d of %d weights from %s in %.2f s", len(done), len(refittable), onnx_path, seconds)
    return data, RefitReport(seconds, len(done), len(refittable))
