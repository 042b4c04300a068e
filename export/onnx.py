"""Export a camera's adapted weights (or a registry backbone) to validated ONNX files in the store.

Pipeline (all in memory; nothing reaches the store until every requested precision validated):

1. ``torch.onnx.export(..., dynamo=True)``, opset 20, one self-contained file (no external data),
   input ``lr`` (N, 3, H, W) float32, output ``sr`` (N, 3, 4H, 4W), dynamic batch / height / width
   (``torch.export.Dim`` with min 1; RRDBNet has no size constraint). Nodes are named after their
   module; the exporter's per-node metadata (stack traces, FX names) is dropped; the model's
   ``metadata_props`` record camera, scale, backbone, weights_sha256, adassr version, precision,
   I/O names and dtype. The graph comes from the store's graph cache when it holds this
   architecture's (:mod:`adassr.export.graph_cache`: the same bytes with the model's weights);
   a cached graph that fails step 2 is exported afresh.
2. fp32 validation: ``onnx.checker`` (full check), then onnxruntime CPU vs PyTorch fp32 on real photo
   crops (see :mod:`adassr.export.crops`: batch 2 of 32x32 plus one 20x28 crop, so the dynamic axes are
   exercised); max abs error <= :data:`FP32_TOLERANCE`.
3. fp16 (:mod:`adassr.export.fp16`): the fp32 graph converted to fp16 with float32 I/O, ``conv_first`` and
   the residual sums kept in fp32. Validation: ``onnx.checker``; the fp16-storage evaluation of the
   graph on the same crops plus the most textured crop of every bundled photo: no inf / NaN, max abs
   error vs PyTorch fp32 <= :data:`FP16_TOLERANCE`, mean <= :data:`FP16_MEAN_TOLERANCE`;
   onnxruntime CPU must load and run the file within the same tolerance (on x86 it upcasts fp16 to
   fp32, so that run checks types and weight rounding only; both numbers are recorded).
4. Publish in one store transaction (the camera's lock is held from reading the manifest to the
   commit, so the adapt stage cannot replace the weights mid-export): ``model.onnx`` /
   ``model_fp16.onnx`` are staged under content-addressed names and committed together with their
   ``artifacts`` and ``manifest["exports"]`` records; a failure before the commit leaves the
   previous export in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adassr.adapt.interrupts import Interrupted, deferred
from adassr.export.crops import ValidationInput, bundled_photos, find_validation_photo, photo_crops, validation_inputs
from adassr.export.errors import ExportError, WeightsUnusable
from adassr.export.graph_cache import GraphCache, cached_export, package_version, store_graph_folder
from adassr.runtime.errors import StoreError
from adassr.runtime.store import (
    EXPORT_KEYS,
    FALLBACK_CAMERA,
    MODEL_FILES,
    MODEL_PRECISIONS,
    CameraStore,
    StoreTransaction,
    adapt_command,
    camera_folder_for_writing,
    store_option,
)

if TYPE_CHECKING:
    import onnx
    import torch

    from adassr.adapt.archs.registry import BackboneRegistry
    from adassr.adapt.weights import LoadedBackbone

log = logging.getLogger(__name__)

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
OPSET = 20
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2  # max abs on [0, 1]; measured worst case 0.0046 (docs/export.md)
FP16_MEAN_TOLERANCE = 2e-3  # mean abs; measured at most 1.5e-4 (a systematic error shows here first)


def _tool_versions() -> dict[str, str]:
    """The versions of what made and validated an export (its manifest record's provenance)."""
    import adassr

    return {"adassr": adassr.__version__,
            **{name: package_version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")}}


@dataclass(frozen=True)
class ModelIdentity:
    """What an exported file is: recorded in its ``metadata_props`` and the manifest."""

    camera: str
    backbone: str
    scale: int
    weights_sha256: str

    def metadata(self, precision: str, **extra: str) -> dict[str, str]:
        import adassr

        return {
            "camera": self.camera,
            "scale": str(self.scale),
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            "adassr_version": adassr.__version__,
            "precision": precision,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "io_dtype": "float32",
            "opset": str(OPSET),
            **extra,
        }


@dataclass(frozen=True)
class ValidatedModel:
    """A serialized model that passed validation, and its ``manifest["exports"]`` record."""

    precision: str
    data: bytes = field(repr=False)
    record: dict[str, Any]

    @property
    def file(self) -> str:
        return MODEL_FILES[self.precision]

    @property
    def key(self) -> str:
        return EXPORT_KEYS[self.precision]


@dataclass(frozen=True)
class ExportResult:
    """What was published: the camera folder and ``manifest["exports"]`` records by key."""

    camera: str
    directory: Path
    exports: dict[str, dict[str, Any]]


def resolve_precisions(precision: str) -> tuple[str, ...]:
    """``fp32`` / ``fp16`` / ``both`` -> the precisions to export."""
    if precision == "both":
        return MODEL_PRECISIONS
    if precision not in MODEL_PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use {', '.join(MODEL_PRECISIONS)} or both")
    return (precision,)


# -- export -----------------------------------------------------------------------------------


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision" not in record.getMessage()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notices that do not concern RRDBNet during one export: "torchvision is
    not installed" (the project does not use torchvision) and torch's own LeafSpec deprecation."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _DropTorchvisionNotice()
    logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.removeFilter(notice)



IR_VERSION = 9
"""The ONNX IR version the exports declare: 9 is the one of opset 20 (ONNX 1.15). The exporter writes 10
(ONNX 1.16), which onnxruntime before 1.18, and the Triton releases that bundle one, refuse to load
("Unsupported model IR version: 10, max supported IR version: 9"); the only IR 10 addition the
exporter's graph carries is per-node metadata, which :func:`tidy_node_metadata` removes."""

EXPORT_SETTINGS = (f"torch.onnx.export dynamo opset {OPSET}; example 2x3x32x32; dynamic N/H/W min 1; optimize; "
                   f"tidy 1; IR {IR_VERSION}")
"""What :func:`trace_fp32` does, part of the graph cache's key (change it with the function)."""


def trace_fp32(model: torch.nn.Module) -> onnx.ModelProto:
    """Export ``model`` (CPU, fp32) with dynamic N/H/W and tidied node names; no model metadata."""
    import torch

    example = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=1),
            3: torch.export.Dim("width", min=1)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,), opset_version=OPSET, external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; re-raised typed, chained
        raise ExportError(f"torch.onnx.export failed: {exc}; nothing was published") from exc
    finally:
        model.train(was_training)
    if program is None:
        raise ExportError("torch.onnx.export returned no program; nothing was published")
    proto = program.model_proto
    tidy_node_metadata(proto)
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    return proto


def export_fp32(model: torch.nn.Module, identity: ModelIdentity,
                graphs: GraphCache | None = None) -> tuple[onnx.ModelProto, bool]:
    """``(proto, from_cache)``: ``model`` as ONNX fp32 carrying ``identity``'s metadata, from the graph
    cache ``graphs`` when it holds this architecture's graph (:mod:`adassr.export.graph_cache`)."""
    proto, from_cache = cached_export(model, trace_fp32, graphs)
    set_metadata(proto, identity.metadata("fp32"))
    return proto, from_cache


def tidy_node_metadata(proto: onnx.ModelProto) -> None:
    """Name each node after its module (``body.3.rdb2.conv5/conv2d_57``, from the exporter's
    ``name_scopes``) and drop the exporter's per-node / per-value metadata (stack traces with local
    paths, FX names), which would otherwise bloat the file and make it depend on the checkout path."""
    import ast

    graph = proto.graph
    for node in graph.node:
        meta = {entry.key: entry.value for entry in node.metadata_props}
        scopes_text = meta.get("pkg.torch.onnx.name_scopes")
        try:
            scopes = [s for s in ast.literal_eval(scopes_text or "[]") if isinstance(s, str) and s]
        except (ValueError, SyntaxError):  # another exporter format: keep the exporter's node name
            scopes = []
        if scopes:
            node.name = "/".join(scopes[-2:])
    for item in [*graph.node, *graph.initializer, *graph.value_info, *graph.input, *graph.output]:
        del item.metadata_props[:]


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model-level ``metadata_props`` with ``metadata``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


# -- validation -------------------------------------------------------------------------------


def torch_reference(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """PyTorch fp32 output for an NCHW float32 batch (the reference every export is compared to)."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(batch)).float().numpy()


def _no_onnxruntime(exc: BaseException | str) -> ExportError:
    from adassr.runtime.install import install_hint

    return ExportError(f"validating the export needs onnxruntime ({exc}); {install_hint('cpu')} (on a CUDA box the "
                       "'gpu' extra instead of 'cpu')")


def require_onnxruntime() -> None:
    """ExportError now, before the minutes of tracing, when onnxruntime, which validates every export, is not
    installed (it failed only at the validation, after the trace)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise _no_onnxruntime("No module named 'onnxruntime'")


def open_session(data: bytes) -> Any:
    """An onnxruntime CPU session for a serialized model, with the I/O names checked."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _no_onnxruntime(exc) from exc
    from adassr.runtime.cpu_info import intra_op_threads

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads()  # as every session (its default counts logical CPUs)
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}; nothing was published") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"exported model has I/O {[i.name for i in inputs]} -> {[o.name for o in outputs]}, expected "
            f"['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']; nothing was published"
        )
    return session


def run_session(session: Any, batch: np.ndarray) -> np.ndarray:
    """Run an onnxruntime session on an NCHW batch (cast to the session's input type)."""
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    (output,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(dtype)})
    return np.asarray(output, dtype=np.float32)


def _check(proto: onnx.ModelProto, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{what} fails onnx.checker: {exc}; nothing was published") from exc


def _compare(name: str, got: np.ndarray, want: np.ndarray, tolerance: float, where: str) -> float:
    if got.shape != want.shape:
        raise ExportError(f"{name} returned shape {got.shape}, PyTorch {want.shape}, on {where}; nothing was published")
    if not np.isfinite(got).all():
        raise ExportError(f"{name} produced inf/NaN on {where}; nothing was published")
    error = float(np.abs(got - want).max())
    if not error <= tolerance:
        raise ExportError(
            f"{name} differs from PyTorch by max abs {error:.3g} (tolerance {tolerance:g}) on {where}; "
            "nothing was published"
        )
    return error


@dataclass(frozen=True)
class Case:
    """A validation input and the PyTorch fp32 output for it."""

    input: ValidationInput
    reference: np.ndarray


def _redo(identity: ModelIdentity) -> str:
    """What to do about weights that are no use: adapt the camera again (the fallback: reinstall)."""
    if identity.camera == FALLBACK_CAMERA:
        return (f"the backbone {identity.backbone!r} is damaged: reinstall the package it comes from, then export it "
                "again")
    return "adapt the camera again, then export it"


def _check_finite_weights(model: torch.nn.Module, identity: ModelIdentity) -> None:
    """``ExportError`` when some weights are NaN or infinite (a diverged run): no export can be right."""
    import torch

    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise WeightsUnusable(f"the weights of {identity.camera!r} hold NaN or infinite values ({len(bad)} tensor(s), "
                              f"e.g. {bad[0]!r}); {_redo(identity)}")


def reference_cases(model: torch.nn.Module, inputs: Sequence[ValidationInput], scale: int,
                    identity: ModelIdentity | None = None) -> list[Case]:
    """Run PyTorch on every input and check the output shape is (N, 3, scale*H, scale*W) and finite."""
    cases = []
    for item in inputs:
        want = torch_reference(model, item.batch)
        n, _, h, w = item.batch.shape
        if want.shape != (n, 3, scale * h, scale * w):
            raise ExportError(f"the model maps {item.batch.shape} to {want.shape}, not (N, 3, {scale}H, {scale}W)")
        if not np.isfinite(want).all():  # the weights' own output: no exported model could match it
            whose = f"of {identity.camera!r} " if identity is not None else ""
            redo = _redo(identity) if identity is not None else "adapt the camera again"
            raise WeightsUnusable(f"PyTorch's own output of the weights {whose}is NaN or infinite on "
                                  f"{item.description}; {redo}")
        cases.append(Case(item, want))
    return cases


def validate_fp32(data: bytes, proto: onnx.ModelProto, cases: Sequence[Case], *,
                  tolerance: float = FP32_TOLERANCE) -> float:
    """Checker + onnxruntime CPU vs PyTorch on every case; returns the max abs error."""
    _check(proto, "the fp32 ONNX model")
    session = open_session(data)
    error = 0.0
    for case in cases:
        got = run_session(session, case.input.batch)
        error = max(error, _compare("onnxruntime (fp32 model)", got, case.reference, tolerance, case.input.description))
    return error


@dataclass(frozen=True)
class Fp16Report:
    max_abs_error: float  # fp16-storage evaluation vs PyTorch fp32, all inputs
    mean_abs_error: float
    onnxruntime_max_abs_error: float  # onnxruntime CPU (computes in fp32 on x86) vs PyTorch fp32
    max_abs_activation: float  # largest |fp16 tensor| seen (fp16 max is 65504)
    largest_nodes: tuple[tuple[str, float], ...]


def validate_fp16(data: bytes, proto: onnx.ModelProto, cases: Sequence[Case], *,
                  tolerance: float = FP16_TOLERANCE, mean_tolerance: float = FP16_MEAN_TOLERANCE,
                  onnxruntime_cases: int = 2) -> Fp16Report:
    """Checker; fp16-storage evaluation of every case (no inf/NaN, max abs error within ``tolerance``,
    mean abs error within ``mean_tolerance``); onnxruntime CPU on the first ``onnxruntime_cases`` cases."""
    from adassr.export.fp16 import evaluate_fp16_storage

    _check(proto, "the fp16 ONNX model")
    session = open_session(data) if onnxruntime_cases > 0 else None
    worst = abs_sum = ort_worst = activation = 0.0
    count = 0
    largest: dict[str, float] = {}
    for index, case in enumerate(cases):
        where = case.input.description
        evaluation = evaluate_fp16_storage(proto, {INPUT_NAME: case.input.batch})
        if evaluation.nonfinite_nodes:
            raise ExportError(
                f"the fp16 model overflows (inf/NaN) at nodes {', '.join(evaluation.nonfinite_nodes)} on {where}; "
                "keep those nodes in fp32 (export/fp16.py) or export fp32 only; nothing was published"
            )
        got = evaluation.output
        worst = max(worst, _compare("the fp16 model (fp16-storage evaluation)", got, case.reference, tolerance, where))
        abs_sum += float(np.abs(got - case.reference).sum(dtype=np.float64))
        count += got.size
        activation = max(activation, evaluation.max_abs_fp16)
        for name, value in evaluation.largest:
            largest[name] = max(largest.get(name, 0.0), value)
        if session is not None and index < onnxruntime_cases:
            got_ort = run_session(session, case.input.batch)
            ort_worst = max(ort_worst, _compare("onnxruntime (fp16 model)", got_ort, case.reference, tolerance, where))
    mean = abs_sum / max(count, 1)
    if not mean <= mean_tolerance:
        raise ExportError(
            f"the fp16 model differs from PyTorch fp32 by mean abs {mean:.3g} (tolerance {mean_tolerance:g}); "
            "nothing was published"
        )
    ranked = tuple(sorted(largest.items(), key=lambda kv: -kv[1])[:5])
    return Fp16Report(worst, mean, ort_worst, activation, ranked)


# -- build (export + validate, nothing written) -----------------------------------------------


def _fp32_file(proto: onnx.ModelProto, cases: Sequence[Case]) -> tuple[onnx.ModelProto, bytes, float]:
    """The fp32 file (with the layout-friendly scalings of export/ort_layout.py), its bytes and its
    validated max abs error vs PyTorch; raises ``ExportError`` when validation fails."""
    from adassr.export.ort_layout import scalar_muls_as_convs

    fp32_proto, rewritten = scalar_muls_as_convs(proto)
    log.info("%d scalar Mul node(s) written as 1x1 Conv for onnxruntime's blocked CPU layout", rewritten)
    data = fp32_proto.SerializeToString()
    return fp32_proto, data, validate_fp32(data, fp32_proto, cases)


def build_models(model: torch.nn.Module, identity: ModelIdentity, precisions: Sequence[str],
                 inputs: Sequence[ValidationInput], *,
                 fp16_extra_inputs: Sequence[ValidationInput] = (),
                 graphs: GraphCache | None = None) -> list[ValidatedModel]:
    """Export and validate every requested precision; raises ``ExportError`` on the first failure.

    ``graphs``: the store's graph cache; a cached graph that fails validation is exported afresh.
    """
    from adassr.export.fp16 import FP32_POLICY, convert_to_fp16, default_fp32_nodes
    from adassr.export.structure import structure_sha256

    where = "; ".join(item.description for item in inputs)
    _check_finite_weights(model, identity)  # before minutes of tracing and validating
    start = time.perf_counter()
    proto, from_cache = export_fp32(model, identity, graphs)
    export_s = round(time.perf_counter() - start, 2)
    log.info("%s %s (%s) in %.1f s", "filled the cached graph of" if from_cache else "exported",
             identity.camera, identity.backbone, export_s)
    start = time.perf_counter()
    cases = reference_cases(model, inputs, identity.scale, identity)
    try:
        fp32_proto, data, error = _fp32_file(proto, cases)
    except ExportError as exc:
        if not from_cache:
            raise
        # a stale or damaged cache entry costs a fresh export, never a wrong model
        log.warning("the cached ONNX graph failed validation (%s); exporting afresh", exc)
        retry = time.perf_counter()
        proto = trace_fp32(model)
        export_s = round(time.perf_counter() - retry, 2)
        if graphs is not None:
            graphs.put(model, proto)
        set_metadata(proto, identity.metadata("fp32"))
        from_cache = False
        fp32_proto, data, error = _fp32_file(proto, cases)
    log.info("fp32 model: max abs error vs PyTorch %.3g (validated in %.1f s)", error, time.perf_counter() - start)
    base = {
        "scale": identity.scale, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "io_dtype": "float32",
        "opset": OPSET, "weights_sha256": identity.weights_sha256, "backbone": identity.backbone,
        "export_time_s": export_s, "graph_from_cache": from_cache, "validated_on": where,
        "versions": _tool_versions(),
    }
    models = []
    if "fp32" in precisions:
        models.append(ValidatedModel("fp32", data, {
            "file": MODEL_FILES["fp32"], "precision": "fp32", **base, "structure_sha256": structure_sha256(fp32_proto),
            "max_abs_error_vs_torch": error, "tolerance": FP32_TOLERANCE,
        }))
    if "fp16" in precisions:
        start = time.perf_counter()
        kept = sorted(default_fp32_nodes(proto))
        proto16 = convert_to_fp16(proto, keep_fp32=kept)
        set_metadata(proto16, identity.metadata("fp16", fp32_policy=FP32_POLICY))
        data16 = proto16.SerializeToString()
        all_inputs = [*inputs, *fp16_extra_inputs]
        cases16 = [*cases, *reference_cases(model, fp16_extra_inputs, identity.scale, identity)]
        report = validate_fp16(data16, proto16, cases16, onnxruntime_cases=len(cases))
        log.info("fp16 model: max abs error vs PyTorch fp32 %.3g (converted and validated in %.1f s)",
                 report.max_abs_error, time.perf_counter() - start)
        models.append(ValidatedModel("fp16", data16, {
            "file": MODEL_FILES["fp16"], "precision": "fp16", **base, "structure_sha256": structure_sha256(proto16),
            "validated_on": "; ".join(item.description for item in all_inputs),
            "max_abs_error_vs_torch": report.max_abs_error, "mean_abs_error_vs_torch": report.mean_abs_error,
            "tolerance": FP16_TOLERANCE, "mean_tolerance": FP16_MEAN_TOLERANCE,
            "validation_method": (
                "fp16-storage evaluation of the ONNX graph (float32 arithmetic, every float16 tensor rounded to "
                "float16; export/fp16.py) vs PyTorch fp32; onnxruntime CPU run of the same file"
            ),
            "onnxruntime_cpu_max_abs_error_vs_torch": report.onnxruntime_max_abs_error,
            "max_abs_activation": report.max_abs_activation,
            "largest_activations": [[name, value] for name, value in report.largest_nodes],
            "fp32_policy": FP32_POLICY,
            "fp32_node_count": len(kept),
        }))
    return models


# -- publish ----------------------------------------------------------------------------------


def publish_models(tx: StoreTransaction, models: Sequence[ValidatedModel], identity: ModelIdentity,
                   manifest_fields: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Stage validated models in ``tx`` and commit them with their manifest records in one step.

    Export records and export artifacts made from other weights are dropped from the manifest (their
    files are superseded: a later commit removes them).
    """
    records: dict[str, dict[str, Any]] = {}
    for item in models:
        payload = item.data

        def write(tmp: Path, payload: bytes = payload) -> None:
            tmp.write_bytes(payload)

        artifact = tx.stage(item.file, write, stage="export",
                            extra={"precision": item.precision, "weights_sha256": identity.weights_sha256})
        records[item.key] = {**item.record, "sha256": artifact["sha256"], "bytes": artifact["bytes"]}
    published = {MODEL_FILES[p] for p in MODEL_PRECISIONS if EXPORT_KEYS[p] in records}

    def update(manifest: dict[str, Any]) -> None:
        if manifest_fields:
            manifest.update(manifest_fields)
        exports = manifest.setdefault("exports", {})
        for key in [k for k, r in exports.items() if r.get("weights_sha256") != identity.weights_sha256]:
            del exports[key]
        artifacts = manifest.setdefault("artifacts", {})
        for name in [n for n, r in artifacts.items()
                     if n not in published and r.get("stage") == "export"
                     and r.get("weights_sha256") != identity.weights_sha256]:
            del artifacts[name]
        exports.update(records)

    try:
        with deferred():  # a signal now waits for the commit (under catch_interrupts; else nothing changes)
            tx.commit(update)
    except Interrupted as late:  # raised only after a commit that completed
        raise Interrupted(late.signum, kept=True) from None
    return records


# -- entry points -----------------------------------------------------------------------------


def store_graph_cache(store_root: str | os.PathLike[str]) -> GraphCache:
    """The graph cache of a store (``<store>/_cache/onnx_graphs``) for this module's exports."""
    return GraphCache(store_graph_folder(store_root), EXPORT_SETTINGS)


def _fp16_extra(precisions: Sequence[str]) -> list[ValidationInput]:
    if "fp16" not in precisions:
        return []
    extra = photo_crops(bundled_photos())
    return [extra] if extra is not None else []


def _current_exports(manifest: Mapping[str, Any], precisions: Sequence[str], digest: object) -> dict[str, Any] | None:
    """The manifest's export records for ``precisions`` when every one is there and made from the weights
    ``digest``; None otherwise."""
    if not isinstance(digest, str):
        return None  # weights of unknown identity: never taken as current
    exports = manifest.get("exports") or {}
    keys = ["onnx_fp16" if p == "fp16" else "onnx" for p in precisions]
    found = {k: exports[k] for k in keys if isinstance(exports.get(k), Mapping)}
    if len(found) == len(keys) and all(r.get("weights_sha256") == digest for r in found.values()):
        return dict(found)
    return None


def export_camera(store_root: str | os.PathLike[str], camera: str, *, precision: str = "fp32",
                  validation_image: str | os.PathLike[str] | None = None,
                  registry: BackboneRegistry | None = None, lock_timeout_s: float = 0.0,
                  if_missing: bool = False) -> ExportResult:
    """Export ``<store>/<camera>/adapted.safetensors`` (sha256-checked) to ONNX and publish it.

    ``lock_timeout_s``: how long to wait for another writer of the camera (default: fail at once).
    ``if_missing``: once the lock is held, return the camera's exports as they are when they already
    are of its current weights (another process exported them meanwhile: a first-use export)."""
    from adassr.adapt.weights import load_safetensors_weights
    from adassr.runtime.store import ADAPTED_WEIGHTS as WEIGHTS_FILE

    precisions = resolve_precisions(precision)
    require_onnxruntime()
    if camera == FALLBACK_CAMERA:
        raise ExportError(f"{FALLBACK_CAMERA} holds the unadapted backbone, not adapted weights: export it with "
                          f"`adassr export --backbone NAME{store_option(store_root)}` (e.g. realesrgan-x4plus)")
    store = CameraStore.open(store_root, camera)
    if not store.exists():
        store.read_manifest()  # StoreError naming the camera and what to run first
    with store.transaction(timeout_s=lock_timeout_s) as tx:
        manifest = tx.manifest
        backbone = manifest.get("backbone")
        name = backbone.get("name") if isinstance(backbone, Mapping) else None
        digest, scale = manifest.get("weights_sha256"), manifest.get("scale")
        existing = _current_exports(manifest, precisions, digest) if if_missing else None
        if existing is not None:
            return ExportResult(store.camera, store.directory, existing)
        adapt = f"`{adapt_command(store.camera, store_root, manifest)}`"
        if not isinstance(name, str) or not isinstance(digest, str) or not isinstance(scale, int):
            raise StoreError(
                f"{store.manifest_path} lacks backbone.name, weights_sha256 or scale (written by adapt); "
                f"rerun {adapt}"
            )
        weights = store.verified_path(WEIGHTS_FILE, manifest)
        loaded = load_safetensors_weights(weights, name, registry=registry)
        if loaded.weights_sha256 != digest:
            raise StoreError(
                f"{weights} holds weights {loaded.weights_sha256[:12]}..., the manifest records {digest[:12]}...; "
                f"the store is inconsistent: rerun {adapt}"
            )
        if scale != loaded.scale:
            raise StoreError(f"manifest scale {scale} differs from backbone {name!r} (x{loaded.scale}); rerun {adapt}")
        identity = ModelIdentity(store.camera, name, loaded.scale, digest)
        photo = find_validation_photo(manifest.get("images") or (), validation_image)
        try:
            models = build_models(loaded.model, identity, precisions, validation_inputs(photo),
                                  fp16_extra_inputs=_fp16_extra(precisions), graphs=store_graph_cache(store_root))
        except WeightsUnusable as exc:
            raise WeightsUnusable(f"{exc} ({adapt}, then `adassr export --camera {store.camera}"
                                  f"{store_option(store_root)}`)") from exc
        records = publish_models(tx, models, identity)
    return ExportResult(store.camera, store.directory, records)


def export_loaded_fallback(store_root: str | os.PathLike[str], loaded: LoadedBackbone, *, precision: str = "fp32",
                           validation_image: str | os.PathLike[str] | None = None, lock_timeout_s: float = 0.0,
                           if_missing: bool = False) -> ExportResult:
    """Export an unadapted backbone as the fallback model into ``<store>/_fallback/``.

    The weights digest recorded is the model's as it is now (computed, about 0.05 s for RRDBNet), not
    ``loaded.weights_sha256``: a model changed after loading would otherwise be published under the
    digest of the weights it was loaded with. A failure leaves no new, empty ``_fallback`` folder.
    ``lock_timeout_s`` and ``if_missing`` as in :func:`export_camera` (an export of the same backbone
    weights found once the lock is held is returned as it is)."""
    from adassr.adapt.weights import state_dict_sha256

    precisions = resolve_precisions(precision)
    require_onnxruntime()
    digest = state_dict_sha256(loaded.model.state_dict())
    identity = ModelIdentity(FALLBACK_CAMERA, loaded.entry.name, loaded.scale, digest)
    photo = find_validation_photo((), validation_image)  # before the store is touched
    with camera_folder_for_writing(store_root, FALLBACK_CAMERA) as store, \
            store.transaction(timeout_s=lock_timeout_s) as tx:
        existing = _current_exports(tx.manifest, precisions, digest) if if_missing else None
        if existing is not None:
            return ExportResult(store.camera, store.directory, existing)
        try:
            models = build_models(loaded.model, identity, precisions, validation_inputs(photo),
                                  fp16_extra_inputs=_fp16_extra(precisions), graphs=store_graph_cache(store_root))
        except WeightsUnusable as exc:
            raise WeightsUnusable(f"{exc} (`adassr export --backbone {loaded.entry.name}{store_option(store_root)}`)") \
                from exc
        fields = {
            "backbone": {"name": loaded.entry.name, "weights_sha256": digest, "source": loaded.source,
                         "licence": loaded.entry.licence},
            "scale": loaded.scale,
            "weights_sha256": digest,
        }
        records = publish_models(tx, models, identity, fields)
    return ExportResult(store.camera, store.directory, records)


def export_fallback(store_root: str | os.PathLike[str], backbone: str, *, precision: str = "fp32",
                    validation_image: str | os.PathLike[str] | None = None,
                    registry: BackboneRegistry | None = None, lock_timeout_s: float = 0.0,
                    if_missing: bool = False) -> ExportResult:
    """Load registry backbone ``backbone`` and export it as the fallback model (options as in
    :func:`export_loaded_fallback`)."""
    from adassr.adapt.weights import load_backbone

    require_onnxruntime()  # before the backbone's conversion
    loaded = load_backbone(backbone, registry=registry)
    return export_loaded_fallback(store_root, loaded, precision=precision, validation_image=validation_image,
                                  lock_timeout_s=lock_timeout_s, if_missing=if_missing)
