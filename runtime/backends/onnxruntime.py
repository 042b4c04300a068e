"""onnxruntime backend with explicitly chosen, verified execution providers.

Providers are named ``tensorrt``, ``cuda`` or ``cpu`` (or by their full onnxruntime names) in
priority order. A requested provider that this onnxruntime build lacks, or that the session did
not take (onnxruntime-gpu silently runs on CPU without the CUDA libraries), is a *fallback*: it is
logged as a WARNING naming the provider, or raised as :class:`BackendError` with ``require=True``.
The session's own ``get_providers()`` is the truth, not the list of available providers.

onnxruntime's own fallback is switched off (``enable_fallback=0``): when a session with GPU providers
failed to start, or a GPU provider failed at run time, it silently rebuilt the session on its
fallback providers *without their options* (the CUDA EP on device 0 with TF32 on, whatever ``--gpu``
and the fp32 setting asked) and printed a note on stdout. Here a session that fails to start is
retried without its first provider, the others keeping their options, and that provider is a
fallback as above; a provider's failure at run time is a :class:`BackendError` naming it.

onnxruntime is imported when the backend is opened, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adassr.runtime.backends.base import Backend
from adassr.runtime.backends.ort_options import TRT_EP, GpuProviderSettings, provider_options
from adassr.runtime.cpu_info import intra_op_threads
from adassr.runtime.errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

PROVIDER_ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
"""Short provider names accepted on the command line -> onnxruntime execution provider names."""

_ONNX_FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _options_not_taken(session: Any, requested: Sequence[tuple[str, dict[str, str]]]) -> dict[str, str]:
    """Provider -> the options (device, TF32) the session reports other than requested, for its providers."""
    try:
        reported = session.get_provider_options()
    except Exception:  # noqa: BLE001 - an onnxruntime without it: nothing more to check
        return {}
    out: dict[str, str] = {}
    for name, wanted in requested:
        have = reported.get(name)
        if not isinstance(have, dict):
            continue
        wrong = [f"{key} {have[key]} instead of {value}" for key, value in wanted.items()
                 if key in ("device_id", "use_tf32") and key in have and str(have[key]) != value]
        if wrong:
            out[name] = f"{name}: {', '.join(wrong)}"
    return out


def resolve_providers(providers: Sequence[str] | str) -> tuple[str, ...]:
    """Map short or full provider names to onnxruntime names, keeping order, dropping duplicates.

    >>> resolve_providers("cuda,cpu")
    ('CUDAExecutionProvider', 'CPUExecutionProvider')
    """
    if isinstance(providers, str):
        items = [p.strip() for p in providers.split(",")]
    elif not isinstance(providers, Sequence):
        raise ConfigError(f"providers must be a comma-separated string or a list of provider names, got "
                          f"{type(providers).__qualname__}")
    else:
        items = [str(p).strip() for p in providers]
    by_lower = {k: v for k, v in PROVIDER_ALIASES.items()} | {v.lower(): v for v in PROVIDER_ALIASES.values()}
    out: list[str] = []
    for item in items:
        if not item:
            continue
        full = by_lower.get(item.lower())
        if full is None:
            valid = ", ".join(PROVIDER_ALIASES)
            raise ConfigError(
                f"unknown execution provider {item!r}; valid providers are {valid} "
                f"(or {', '.join(PROVIDER_ALIASES.values())})"
            )
        if full not in out:
            out.append(full)
    if not out:
        raise ConfigError(f"no execution provider given; choose from {', '.join(PROVIDER_ALIASES)}")
    return tuple(out)


class OnnxRuntimeBackend(Backend):
    """An onnxruntime ``InferenceSession`` over one ONNX file (one NCHW float input, one output)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        providers: Sequence[str] | str = ("CPUExecutionProvider",),
        threads: int | None = None,
        require: bool = False,
        input_name: str | None = None,
        output_name: str | None = None,
        gpu: GpuProviderSettings | None = None,
    ) -> None:
        super().__init__(model_path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise ConfigError(f"threads must be an integer >= 1 (or None for one per usable physical core), got "
                              f"{threads!r}")
        self._requested = resolve_providers(providers)
        self._threads = None if threads is None else int(threads)
        self._require = require
        self._want_input = input_name
        self._want_output = output_name
        self._gpu = gpu if gpu is not None else GpuProviderSettings()
        self._session: Any = None
        self._actual: tuple[str, ...] = ()
        self._input_name = ""
        self._output_name = ""
        self._input_dtype: type[np.floating[Any]] = np.float32

    @property
    def name(self) -> str:
        return "onnxruntime"

    @property
    def requested_providers(self) -> tuple[str, ...]:
        return self._requested

    @property
    def providers(self) -> tuple[str, ...]:
        """Providers the session actually uses (``session.get_providers()``), empty until opened."""
        return self._actual

    def model_metadata(self) -> dict[str, str]:
        """The ONNX file's ``metadata_props`` (``session.get_modelmeta().custom_metadata_map``)."""
        session = self._session
        if session is None:
            return {}
        return {str(k): str(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return np.dtype(self._input_dtype)

    def _fallback(self, missing: Sequence[str], why: str) -> None:
        message = (
            f"requested execution provider(s) {', '.join(missing)} not in use for "
            f"{self.model_path.name}: {why}; install onnxruntime-gpu with matching CUDA / TensorRT "
            "libraries, or request --providers cpu"
        )
        if self._require:
            raise BackendError(message)
        logger.warning(message)

    def _open(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            import importlib.util

            if importlib.util.find_spec("onnxruntime") is not None:  # there, but its library did not load
                raise BackendError(
                    f"onnxruntime is installed but could not be loaded ({exc}); out of memory (a memory limit "
                    "such as ulimit -v), or a broken install: reinstall it"
                ) from exc
            from adassr.runtime.install import install_hint

            raise BackendError(
                f"onnxruntime is not installed ({exc}); {install_hint('cpu')} (on a CUDA box the 'gpu' extra "
                "instead of 'cpu')"
            ) from exc
        if not self.model_path.is_file():
            raise BackendError(f"ONNX model {self.model_path} does not exist; export it with `adassr export`")
        available = set(ort.get_available_providers())
        usable = [p for p in self._requested if p in available]
        missing = [p for p in self._requested if p not in available]
        if missing:
            self._fallback(missing, f"this onnxruntime build offers only {', '.join(sorted(available))}")
        if not usable:
            usable = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        # One intra-op pool of one thread per usable physical core (cgroup quota and SMT applied):
        # onnxruntime's own default counts every core of the host, also in a CPU-limited container.
        options.intra_op_num_threads = self._threads if self._threads is not None else intra_op_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._gpu.cache_dir is not None and TRT_EP in usable:
            self._gpu.cache_dir.mkdir(parents=True, exist_ok=True)
        source: str | bytes = str(self.model_path)
        try:
            str(self.model_path).encode("utf-8")
        except UnicodeEncodeError:  # a path of undecodable bytes, which onnxruntime's bindings cannot take
            try:
                source = self.model_path.read_bytes()  # the store's models are self-contained (no external data)
            except OSError as exc:
                raise BackendError(f"cannot read the model {self.model_path}: {exc.strerror or exc}") from exc
        # Each start drops the first provider of the last; the CPU comes last even when not asked for (as
        # onnxruntime's own fallback did). A provider is reported only once a later start succeeded: when
        # every start fails, the model is what is wrong, and only that is said.
        candidates = usable if usable[-1] == "CPUExecutionProvider" else [*usable, "CPUExecutionProvider"]
        failed: list[tuple[str, Exception]] = []
        session = None
        for first in range(len(candidates)):
            tried = candidates[first:]
            try:
                session = ort.InferenceSession(source, sess_options=options, enable_fallback=0,
                                               providers=provider_options(tried, self._gpu))
            except Exception as exc:  # onnxruntime raises several unrelated pybind exception types
                failed.append((candidates[first], exc))
                continue
            usable = tried  # the others keep their options (device, precision)
            break
        if session is None:
            last = failed[-1][1]
            raise BackendError(f"onnxruntime cannot load {self.model_path}: {last}; {_load_hint(last)}") from last
        for provider, error in failed:
            self._fallback([provider], f"its session failed to start ({error})")
        with contextlib.suppress(AttributeError):  # onnxruntime builds without the keyword: off here too
            session.disable_fallback()
        actual = tuple(session.get_providers())
        dropped = [p for p in usable if p not in actual]
        if dropped:
            self._fallback(dropped, f"the session runs on {', '.join(actual)}")
        changed = _options_not_taken(session, provider_options(usable, self._gpu))
        if changed:  # an onnxruntime that rebuilt the session on its own (options dropped) despite the keyword
            self._fallback(sorted(changed), f"its options were not taken ({'; '.join(changed.values())})")
        self._bind_io(session)
        self._session = session
        self._actual = actual
        logger.debug("opened %s with providers %s", self.model_path, actual)

    def _bind_io(self, session: Any) -> None:
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1:
            raise BackendError(
                f"{self.model_path.name} has {len(inputs)} inputs ({[i.name for i in inputs]}); "
                "an SR model must have exactly one NCHW image input"
            )
        inp = inputs[0]
        if self._want_input is not None and inp.name != self._want_input:
            raise BackendError(
                f"{self.model_path.name} has input {inp.name!r}, the manifest says {self._want_input!r}; "
                "re-export the model"
            )
        dtype = _ONNX_FLOAT_TYPES.get(inp.type)
        if dtype is None:
            raise BackendError(
                f"{self.model_path.name} input {inp.name!r} has type {inp.type}; expected "
                "tensor(float) or tensor(float16)"
            )
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise BackendError(f"{self.model_path.name} input {inp.name!r} has shape {shape}; expected [N, 3, H, W]")
        names = [o.name for o in outputs]
        if self._want_output is not None:
            if self._want_output not in names:
                raise BackendError(
                    f"{self.model_path.name} has no output {self._want_output!r} (outputs: {names}); "
                    "re-export the model"
                )
            out_name = self._want_output
        elif len(names) == 1:
            out_name = names[0]
        else:
            raise BackendError(f"{self.model_path.name} has outputs {names}; name the image output")
        self._input_name = inp.name
        self._output_name = out_name
        self._input_dtype = dtype

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        session = self._session  # a local reference stays valid if another thread closes us
        if session is None:
            raise BackendError(f"the onnxruntime session for {self.model_path.name} is closed")
        x = batch.astype(self._input_dtype, copy=False)
        try:
            (out,) = session.run([self._output_name], {self._input_name: x})
        except Exception as exc:  # onnxruntime's pybind exception types share no useful base
            gpu = [p for p in self._actual if p != "CPUExecutionProvider"]
            hint = (f" (its execution provider {gpu[0]} failed; request the next one, e.g. --providers "
                    f"{'cuda' if gpu[0] == 'TensorrtExecutionProvider' else 'cpu'})"
                    if type(exc).__name__ == "EPFail" and gpu else "")
            raise BackendError(
                f"onnxruntime failed on {self.model_path.name} with input {x.shape} {x.dtype}: {exc}{hint}"
            ) from exc
        return np.asarray(out)

    def _close(self) -> None:
        self._session = None
        self._actual = ()


def _load_hint(error: Exception) -> str:
    """What to do about a model file onnxruntime refused: a newer ONNX IR version than it knows (a store
    exported by an older adassr, whose exports declared IR 10) has two cures; anything else, re-exporting."""
    if "IR version" in str(error):
        return ("the model declares an ONNX IR version this onnxruntime cannot load: upgrade onnxruntime to 1.18 "
                "or later, or re-export the camera's model with `adassr export --camera CAMERA --store STORE` "
                "(the exports declare IR 9, which onnxruntime loads from 1.17 on)")
    return "the file is not a valid model for this onnxruntime: re-export it with `adassr export`"
