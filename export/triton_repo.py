"""A Triton Inference Server model repository from the store: one Triton model per camera group.

Layout written (``adassr export --triton-repo DIR``)::

    DIR/<prefix><camera>/config.pbtxt          platform, tile shape, dynamic batching, instances
    DIR/<prefix><camera>/<version>/model.onnx  (or model.plan for --platform tensorrt_plan)

- Model names: ``<prefix><camera>`` (``adassr_canon``; the fallback folder ``_fallback`` becomes
  ``adassr__fallback``), so the camera routing of ``adassr serve`` maps one to one.
- Input and output: the names, element type (``io_dtype``) and scale recorded by the export in
  the camera's manifest. Dimensions are the fixed tile shape ``[3, tile, tile]`` ->
  ``[3, scale*tile, scale*tile]`` (batch dimension implicit, up to ``max_batch_size``): a
  client pads every tile to that shape (see :mod:`adassr.runtime.server.triton_client`), which
  static TensorRT engines need and which lets Triton batch tiles of different images.
- Versions: the model file of the camera's current export is copied into a new numbered version
  folder unless the latest version already holds exactly these bytes (compared by sha256), so
  re-running the command is a no-op and every new adaptation or re-export becomes version n+1 (a
  rollback to earlier weights too: ``version_policy`` serves the latest version; older ones stay).
  ``adassr_versions.json`` records where each version came from; a damaged one stops the export
  rather than being replaced. One export writes a repository at a time (a lock file at its top).
- ``--platform tensorrt_plan``: the camera's TensorRT engine (``adassr export --engine tensorrt``,
  built on the serving GPU type) for the precision, whose optimisation profile takes batches of
  1..``max_batch_size`` tiles of the tile shape and which was built from the current ONNX export
  (an engine of earlier weights is refused), is copied as ``model.plan``. Without one use
  ``onnxruntime_onnx`` with ``--trt-accelerator``, which lets Triton's onnxruntime backend build
  TensorRT engines itself.

Every file is written atomically (temporary file + rename); a version folder is complete before
it appears under its number, and a config that serves it is written before it (with
``trt_cache_dir``, one without the engine cache, the final one right after; see :func:`write_model`). Model
files are verified against the manifest's sha256 first. Plans of more than one GPU type or TensorRT
release never share a repository (one Triton release could not load them all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adassr.export.errors import ExportError
from adassr.runtime.engines.cache import EngineCache, EngineRecord, current_onnx_sha256
from adassr.runtime.errors import CameraError, ConfigError, StoreError
from adassr.runtime.fields import check_field_types
from adassr.runtime.store import (
    FALLBACK_CAMERA,
    CameraStore,
    atomic_write_bytes,
    export_arguments,
    list_cameras,
    misnamed_folders,
    sha256_file,
    shell_path,
    store_option,
    try_exclusive_lock,
)
from adassr.runtime.tempfiles import create_temp, current_umask, remove_stale_temps
from adassr.runtime.tiling import MAX_TILE

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
MAX_TRITON_BATCH = 1024  # as serve --max-batch (config.pbtxt's fields are int32: a huge one fails in Triton)
MAX_INSTANCES = 256
"""The largest tile side (input pixels) a repository is written for: a 4K frame fits in one tile."""
DEFAULT_PREFIX = "adassr_"
PROVENANCE = "adassr_versions.json"
LOCK_FILE = ".adassr.lock"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class TritonRepoOptions:
    """How the Triton models are configured."""

    platform: str = "onnxruntime_onnx"
    tile: int = 256
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    instance_kind: str = "KIND_GPU"
    prefix: str = DEFAULT_PREFIX
    trt_accelerator: bool = False
    trt_cache_dir: str | None = None  # where Triton's onnxruntime keeps its TensorRT engines (on the Triton host)
    trt_profile: bool = True  # explicit trt_profile_*_shapes (Triton 24.03's onnxruntime backend refuses them)
    precision: str = "fp32"  # which ONNX export (fp32 or fp16) to publish

    def __post_init__(self) -> None:
        try:  # config.pbtxt takes integers: tile=256.0 wrote "dims: [ 3, 256.0, 256.0 ]", which Triton refuses
            check_field_types(self)
        except ConfigError as exc:
            raise ExportError(str(exc)) from None
        if self.platform not in PLATFORMS:
            raise ExportError(f"unknown Triton platform {self.platform!r}; valid: {', '.join(PLATFORMS)}")
        if not 8 <= self.tile <= MAX_TILE:
            raise ExportError(f"--tile must be from 8 to {MAX_TILE} input pixels, got {self.tile}")
        if len(set(self.preferred_batch_sizes)) != len(self.preferred_batch_sizes):
            raise ExportError(f"preferred batch sizes {self.preferred_batch_sizes} repeat a size; give each once")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(self.preferred_batch_sizes)))
        if not 1 <= self.max_batch_size <= MAX_TRITON_BATCH:
            raise ExportError(f"--max-batch must be from 1 to {MAX_TRITON_BATCH}, got {self.max_batch_size}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ExportError(
                f"preferred batch sizes {self.preferred_batch_sizes} must lie in 1..{self.max_batch_size}"
            )
        if not 1 <= self.instance_count <= MAX_INSTANCES:
            raise ExportError(f"--instances must be from 1 to {MAX_INSTANCES}, got {self.instance_count}")
        if self.max_queue_delay_us < 0:
            raise ExportError(f"the max queue delay must be >= 0 microseconds, got {self.max_queue_delay_us}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"unknown instance kind {self.instance_kind!r}; valid: {', '.join(INSTANCE_KINDS)}")
        if not re.match(r"^[A-Za-z0-9_.-]*$", self.prefix):
            raise ExportError(f"model name prefix {self.prefix!r} may use only letters, digits, '_', '-', '.'")
        if self.platform == "tensorrt_plan" and self.instance_kind != "KIND_GPU":
            raise ExportError(f"--platform tensorrt_plan runs on GPUs only (Triton's TensorRT backend refuses "
                              f"{self.instance_kind}); use --instance-kind KIND_GPU, or --platform onnxruntime_onnx")
        if self.trt_accelerator and self.platform != "onnxruntime_onnx":
            raise ExportError("--trt-accelerator applies to --platform onnxruntime_onnx only")
        if self.trt_accelerator and self.instance_kind != "KIND_GPU":
            raise ExportError(f"--trt-accelerator runs TensorRT on GPU instances; with {self.instance_kind} it would "
                              "do nothing: use --instance-kind KIND_GPU, or leave --trt-accelerator out")
        if not self.trt_profile and not self.trt_accelerator:
            raise ExportError("--no-trt-profile changes --trt-accelerator's settings; add --trt-accelerator")
        if self.trt_cache_dir is not None and not self.trt_accelerator:
            raise ExportError("--trt-cache-dir is where --trt-accelerator keeps its engines; add --trt-accelerator")
        if self.trt_cache_dir is not None and not _is_utf8(self.trt_cache_dir):
            raise ExportError(f"--trt-cache-dir must be UTF-8 text (Triton reads its config as UTF-8); "
                              f"{self.trt_cache_dir!r} holds bytes that are not: choose another folder name")
        if self.trt_cache_dir is not None and not self.trt_cache_dir.startswith("/"):
            raise ExportError(f"--trt-cache-dir must be an absolute path on the Triton host (a persistent volume "
                              f"outside the model repository), not {self.trt_cache_dir!r}")
        if self.precision not in ("fp32", "fp16"):
            raise ExportError(f"unknown precision {self.precision!r}; valid: fp32, fp16")


def _is_utf8(text: str) -> bool:
    """False for text holding lone surrogates (Python's stand-ins for a file name's non-UTF-8 bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class TritonModel:
    """One model written (or confirmed) in the repository."""

    name: str
    camera: str
    version: int
    new_version: bool
    sha256: str
    directory: Path
    # the store the model's previous version came from, when another store than this run's: two
    # stores with a camera of the same name share the model (or the store has moved)
    previous_store: str | None = None


def model_name(camera: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Triton model name of a camera group: ``<prefix><camera>``."""
    name = f"{prefix}{camera}"
    if not _NAME.match(name):
        why = (f"{len(name)} characters, over Triton's 128" if len(name) > 128
               else "Triton takes letters, digits, '_', '.' and '-' only")
        raise ExportError(f"Triton model name {name!r} is not valid ({why}); choose another --triton-prefix")
    return name


def _pb_string(text: str) -> str:
    """A protobuf text-format string literal of ``text``: printable ASCII as it is (``"`` and ``\\``
    escaped), every other byte of its UTF-8 as an octal escape. (JSON's ``\\uXXXX`` escapes, written
    before, are no escapes of the text format: Python's protobuf parser refused an emoji's surrogate pair.)"""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 0x20 <= byte <= 0x7E else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def render_config(
    name: str,
    *,
    camera: str,
    record: Mapping[str, Any],
    scale: int,
    options: TritonRepoOptions,
    model_sha256: str = "",
) -> str:
    """The ``config.pbtxt`` text for one camera's model; ``model_sha256`` (the published model file's)
    names the folder of its TensorRT engines with ``trt_cache_dir``."""
    io_dtype = str(record.get("io_dtype", "float32"))
    dtype = TRITON_TYPES.get(io_dtype)
    if dtype is None:
        raise ExportError(f"camera {camera!r}: export io_dtype {io_dtype!r} has no Triton type (float32/float16)")
    input_name = record.get("input_name")
    output_name = record.get("output_name")
    if not isinstance(input_name, str) or not isinstance(output_name, str):
        raise ExportError(
            f"camera {camera!r}: the export record names no input/output tensor; re-export with `adassr export`"
        )
    multiple = int(record.get("multiple_of", 1))
    if options.tile % multiple:
        raise ExportError(f"camera {camera!r}: --tile {options.tile} is not a multiple of {multiple}, which it needs")
    t, hr = options.tile, scale * options.tile
    preferred = " ".join(f"{b}" for b in options.preferred_batch_sizes)
    lines = [
        f"name: {_pb_string(name)}",
        f"platform: {_pb_string(options.platform)}",
        f"max_batch_size: {options.max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        f"  {{ name: {_pb_string(input_name)} data_type: {dtype} dims: [ 3, {t}, {t} ] }}",
        "]",
        "output [",
        f"  {{ name: {_pb_string(output_name)} data_type: {dtype} dims: [ 3, {hr}, {hr} ] }}",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred.replace(' ', ', ')} ]" if preferred else "",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {options.instance_count} kind: {options.instance_kind} }} ]",
    ]
    if options.trt_accelerator:
        lines += _trt_accelerator(name, input_name, dtype, options, model_sha256)
    for key, value in (
        ("adassr_camera", camera),
        ("adassr_scale", str(scale)),
        ("adassr_tile", str(t)),
        ("adassr_multiple_of", str(multiple)),
    ):
        lines.append(f"parameters {{ key: {_pb_string(key)} value: {{ string_value: {_pb_string(value)} }} }}")
    return "\n".join(line for line in lines if line) + "\n"


def _trt_accelerator(name: str, input_name: str, dtype: str, options: TritonRepoOptions,
                     model_sha256: str) -> list[str]:
    """onnxruntime's TensorRT accelerator with one optimisation profile for 1..max_batch tiles (without
    it onnxruntime sizes the engine on the first batch it sees and builds it again for every larger
    one), engines cached in ``trt_cache_dir`` when given (else built again whenever the model loads),
    and a warm-up at the largest batch, so the model turns ready after the build, not on a request.

    The engine folder is named after the model file's sha256: onnxruntime names a cached engine after
    the graph (its inputs, node names and opset), not the weights, so every version of a model would
    otherwise load the first version's engine. The timing cache is shared by the versions. Both folders
    lie directly in ``trt_cache_dir`` (``<model>-<sha16>`` and ``<model>``): onnxruntime creates a missing
    cache folder with a non-recursive mkdir, so a folder two levels down failed on a fresh volume. The
    timing-cache parameters came with the profile ones (Triton 24.04), so ``--no-trt-profile`` (for
    older releases, which refuse unknown parameters) leaves them out too."""
    t, batch = options.tile, options.max_batch_size
    parameters = [("precision_mode", "FP16" if options.precision == "fp16" else "FP32")]
    if options.trt_profile:
        low, high = f"{input_name}:1x3x{t}x{t}", f"{input_name}:{batch}x3x{t}x{t}"
        parameters += [("trt_profile_min_shapes", low), ("trt_profile_opt_shapes", high),
                       ("trt_profile_max_shapes", high)]
    if options.trt_cache_dir is not None:
        if not model_sha256:
            raise ExportError(f"model {name!r}: the TensorRT engine cache needs the model file's sha256")
        root = options.trt_cache_dir.rstrip("/")
        parameters += [("trt_engine_cache_enable", "1"),
                       ("trt_engine_cache_path", f"{root}/{name}-{model_sha256[:16]}")]
        if options.trt_profile:
            parameters += [("trt_timing_cache_enable", "1"), ("trt_timing_cache_path", f"{root}/{name}")]
    return [
        "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
        '  name: "tensorrt"',
        *(f"  parameters {{ key: {_pb_string(key)} value: {_pb_string(value)} }}" for key, value in parameters),
        "} ] } }",
        f'model_warmup [ {{ name: "tiles" batch_size: {batch} inputs {{ key: {_pb_string(input_name)} '
        f"value: {{ data_type: {dtype} dims: [ 3, {t}, {t} ] zero_data: true }} }} }} ]",
    ]


@dataclass(frozen=True)
class _Source:
    """One camera's model to publish, checked against its manifest once (its sha256 is the verified one)."""

    camera: str
    manifest: Mapping[str, Any]
    record: Mapping[str, Any]  # the export record: io names, scale
    path: Path  # the verified file to copy
    sha256: str
    engine: EngineRecord | None  # for tensorrt_plan
    store_root: str  # the store's absolute path, recorded with each version


def _check_stored_model(store: CameraStore, manifest: Mapping[str, Any], record: Mapping[str, Any],
                        path: Path, *, check_ir: bool) -> None:
    """ExportError when the scale the ONNX file records (``adassr export`` writes it into its metadata)
    contradicts the manifest's, which sizes the config's output: a hand-edited manifest gave a config
    whose output dims Triton would refuse at every request. A file without the record is not checked.
    With ``check_ir`` (the file itself is published), also when the file declares an ONNX IR version
    above the exports' (:data:`adassr.export.onnx.IR_VERSION`): a store exported by an older adassr."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a protobuf DecodeError and kin: the file is not a model
        raise ExportError(f"camera {store.camera!r}: {path} is no readable ONNX model ({exc}); run "
                          f"`adassr export {_export_what(store, manifest)}{store_option(store.root)}` again") from exc
    if check_ir:
        from adassr.export.onnx import IR_VERSION

        if proto.ir_version > IR_VERSION:  # an export made before the exports declared IR 9
            raise ExportError(
                f"camera {store.camera!r}: its model file {path.name} declares ONNX IR version {proto.ir_version}, "
                f"which Triton releases bundling onnxruntime before 1.18 refuse to load (the exports declare IR "
                f"{IR_VERSION} since); run `adassr export {_export_what(store, manifest)}{store_option(store.root)}` "
                "again to write it anew")
    _check_tensors(store, manifest, record, proto, path)
    recorded = {entry.key: entry.value for entry in proto.metadata_props}.get("scale")
    scale = record.get("scale", manifest.get("scale"))
    if recorded is not None and recorded != str(scale):
        raise ExportError(f"camera {store.camera!r}: its manifest says the model upscales x{scale}, but its model "
                          f"file {path.name} records x{recorded}: the manifest was edited or damaged; set its "
                          f"'scale' back to {recorded}, or run `adassr export {_export_what(store, manifest)}"
                          f"{store_option(store.root)}` again")


_ONNX_ELEM_TYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16


def _check_tensors(store: CameraStore, manifest: Mapping[str, Any], record: Mapping[str, Any], proto: Any,
                   path: Path) -> None:
    """ExportError when the model file has no input or output of the record's name, or of another element
    type than the record's ``io_dtype``: Triton refuses to load such a config (a hand-edited or damaged
    manifest). A record without names is left to :func:`render_config`, which says so."""
    io_dtype = str(record.get("io_dtype", "float32"))
    fix = (f"run `adassr export {_export_what(store, manifest)}{store_option(store.root)}` again (the manifest "
           "was edited or damaged)")
    graph = proto.graph
    for role, name, tensors in (("input", record.get("input_name"), graph.input),
                                ("output", record.get("output_name"), graph.output)):
        if not isinstance(name, str):
            continue
        found = next((t for t in tensors if t.name == name), None)
        if found is None:
            names = ", ".join(repr(t.name) for t in tensors) or "none"
            raise ExportError(f"camera {store.camera!r}: its manifest names the model's {role} {name!r}, but "
                              f"{path.name} has no such {role} ({role}s: {names}); {fix}")
        code = found.type.tensor_type.elem_type
        elem = _ONNX_ELEM_TYPES.get(code, f"ONNX type {code}")
        if elem != io_dtype:
            raise ExportError(f"camera {store.camera!r}: its manifest says the model's {role} {name!r} is {io_dtype}, "
                              f"but {path.name} declares {elem}; {fix}")


def _source(store: CameraStore, manifest: Mapping[str, Any], options: TritonRepoOptions) -> _Source:
    """The camera's export record, the file to copy (checked against the manifest) and, for
    ``tensorrt_plan``, the engine's record."""
    exports = manifest.get("exports") or {}
    key = "onnx_fp16" if options.precision == "fp16" else "onnx"
    if key not in exports:
        precision = " --precision fp16" if key == "onnx_fp16" else ""
        raise ExportError(
            f"camera {store.camera!r} has no {options.precision} ONNX export; run "
            f"`adassr export {_export_what(store, manifest)}{precision}{store_option(store.root)}`"
        )
    record = exports[key]
    try:
        path = store.verified_path(str(record["file"]), manifest)
    except Exception as exc:  # noqa: BLE001 - StoreError with the reason (missing, checksum)
        raise ExportError(f"camera {store.camera!r}: {exc}") from exc
    _check_stored_model(store, manifest, record, path, check_ir=options.platform != "tensorrt_plan")
    if options.platform == "tensorrt_plan":
        engine = _engine(store, manifest, options)
        return _Source(store.camera, manifest, record, EngineCache.for_camera(store).path_of(engine),
                       engine.sha256, engine, _store_root(store))
    sha256 = str(manifest["artifacts"][str(record["file"])]["sha256"])  # what verified_path checked
    return _Source(store.camera, manifest, record, path, sha256, None, _store_root(store))


def _store_root(store: CameraStore) -> str:
    try:
        return str(store.root.resolve())
    except (OSError, RuntimeError):
        return str(store.root.absolute())


def _covers(profile: Mapping[str, Any], shape: tuple[int, ...], batch: int) -> bool:
    low, high = list(profile.get("min", ())), list(profile.get("max", ()))
    want_low, want_high = [1, *shape], [batch, *shape]
    return (
        len(low) == len(high) == 4
        and all(a <= b for a, b in zip(low, want_low, strict=True))
        and all(a >= b for a, b in zip(high, want_high, strict=True))
    )


def _engine(store: CameraStore, manifest: Mapping[str, Any], options: TritonRepoOptions) -> EngineRecord:
    """The camera's TensorRT engine for this precision whose profile takes ``1..max_batch x 3 x tile x tile``
    (its file checked against the record's sha256)."""
    shape = (3, options.tile, options.tile)
    current = current_onnx_sha256(manifest)
    found: list[EngineRecord] = []
    stale = 0
    engines = manifest.get("engines")
    for data in (engines.values() if isinstance(engines, Mapping) else ()):  # a damaged field: no engine
        try:
            record = EngineRecord.from_json(data)
        except ConfigError:
            continue  # not an engine record this adassr reads: the engine cache reports it when asked
        key = record.key
        if key.precision != options.precision or record.key.weight_stripped:
            continue
        if any(_covers(p.to_json(), shape, options.max_batch_size) for p in key.profiles):
            if key.source_sha256 not in current:
                stale += 1  # built from an earlier export: publishing it would serve the old weights
                continue
            found.append(record)
    if not found and stale:
        raise ExportError(
            f"camera {store.camera!r}: its {options.precision} TensorRT engine for this tile shape was built from an "
            "earlier export, not from the current ONNX model (the camera was adapted or exported again since); "
            f"rebuild it on the serving GPU with `{_engine_command(store, manifest, options)}`"
        )
    if not found:
        raise ExportError(
            f"camera {store.camera!r} has no {options.precision} TensorRT engine whose profile takes batches of "
            f"1-{options.max_batch_size} tiles of {options.tile}x{options.tile}; build one on the serving GPU with "
            f"`{_engine_command(store, manifest, options)}`, or use --platform onnxruntime_onnx (--trt-accelerator "
            "lets Triton build TensorRT engines itself)"
        )
    targets = sorted({f"{r.key.gpu.name} with TensorRT {r.key.tensorrt_version}" for r in found})
    if len(targets) > 1:
        raise ExportError(
            f"camera {store.camera!r} has matching engines for several GPUs or TensorRT versions "
            f"({'; '.join(targets)}); "
            "a Triton repository holds one plan per model, which only a Triton release with the same TensorRT on the "
            "same GPU type loads: write each repository from a store with the engines of its target only"
        )
    record = found[0]
    path = EngineCache.for_camera(store).path_of(record)
    if not path.is_file() or sha256_file(path) != record.sha256:
        raise ExportError(
            f"camera {store.camera!r}: the engine {record.file} is missing or fails its checksum; rebuild it "
            "with `adassr export --engine tensorrt`"
        )
    return record


def _export_what(store: CameraStore, manifest: Mapping[str, Any]) -> str:
    """What `adassr export` takes to export this camera (:func:`adassr.runtime.store.export_arguments`)."""
    return export_arguments(store.camera, manifest)


def _engine_command(store: CameraStore, manifest: Mapping[str, Any], options: TritonRepoOptions) -> str:
    """The command that builds the engine ``--platform tensorrt_plan`` needs."""
    precision = " --precision fp16" if options.precision == "fp16" else ""
    return (f"adassr export {_export_what(store, manifest)} --store {shell_path(store.root)} "
            f"--engine tensorrt{precision} "
            f"--tile {options.tile} --tile-batch {options.max_batch_size}")


_TRITON_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT64 = 2**63


def triton_version(name: str) -> int | None:
    """The version Triton reads from a folder name, None for a folder it ignores.

    Triton (core ``VersionsToLoad``) skips a name longer than one character that starts with ``0``
    (``007``) and reads the rest with ``std::stoll``: leading white space, a sign and ASCII digits,
    whatever follows (``7.bak`` is version 7, ``0`` is version 0; other digits, ``٣``, are none).
    """
    if len(name) > 1 and name.startswith("0"):
        return None
    match = _TRITON_NUMBER.match(name)
    if match is None:
        return None
    value = int(match.group(1))
    return value if -_INT64 <= value < _INT64 else None


def _versions(model_dir: Path) -> dict[int, Path]:
    """The model's version folders as Triton counts them: ``{version: folder}``.

    ExportError for a folder Triton reads as a version it cannot load (``7.bak`` is version 7 to it,
    and it then opens ``<model>/7``): the newest version would never be served."""
    if not model_dir.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        version = triton_version(path.name)
        if version is None:
            continue
        if path.name != str(version):
            if not (model_dir / str(version)).is_dir():
                raise ExportError(
                    f"the folder {path} reads as version {version} to Triton (it takes the number a folder name "
                    f"starts with) and it would then load {model_dir / str(version)}, which does not exist; rename "
                    "or move that folder out of the model"
                )
            continue
        found[version] = path
    return found


def _read_provenance(path: Path) -> dict[str, Any]:
    """The model's version records; ExportError for a damaged file (it is never silently replaced)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{path} cannot be read ({exc}); it records where each version came from, so it is not overwritten: "
            "repair it or move it away, then rerun") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a JSON object of version records; repair it or move it away, then rerun")
    return data


@contextlib.contextmanager
def _repository_lock(repo: Path) -> Iterator[None]:
    """Exclusive lock on the repository (``.adassr.lock`` at its top, which Triton does not read as a
    model): two exports writing one repository would race for the same version numbers."""
    try:  # never through a link: it would create (or lock) a file outside the repository
        fd = os.open(repo / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if os.path.islink(repo / LOCK_FILE):
            raise ExportError(f"the lock file {repo / LOCK_FILE} is a symbolic link (adassr never makes one); "
                              "remove it and rerun") from exc
        raise
    try:
        if not try_exclusive_lock(fd):
            raise ExportError(f"another adassr export is writing the Triton repository {repo}; wait for it to "
                              "finish, then rerun")
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Plan:
    """What writing one camera's model will do, worked out (and checked) before anything is written."""

    source: _Source
    name: str
    model_dir: Path
    version: int
    new: bool
    config: str
    provenance: dict[str, Any]
    file_name: str  # model.onnx or model.plan
    # the config while the new version is put in place, when the final one would reach the served version
    # first (see write_model); None when the final config can go first
    interim_config: str | None = None


def plan_model(repo: Path, source: _Source, options: TritonRepoOptions) -> _Plan:
    """Check and work out one camera's model in ``repo`` (reads only): its name, that the model folder is
    a folder and this camera's (a model of another camera under the same name is refused: Triton would
    serve one camera's weights for the other), its config, and whether its bytes need a new version.

    The current export becomes a new version unless the latest version already holds exactly its
    bytes: an older version with the same bytes (a rollback) is not what Triton serves, since it
    serves the latest, so it gets a new number too."""
    camera, manifest, record, digest = source.camera, source.manifest, source.record, source.sha256
    name = model_name(camera, options.prefix)
    model_dir = repo / name
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportError(f"{model_dir} is a file, where the Triton model of camera {camera!r} goes; move it away")
    file_name = MODEL_FILES[options.platform]
    versions = _versions(model_dir)
    provenance = _read_provenance(model_dir / PROVENANCE)
    owner = _owner(provenance) or _config_camera(model_dir / "config.pbtxt")
    if owner is not None and owner != camera:
        raise ExportError(f"the Triton model {name!r} in {repo} serves camera {owner!r}, not {camera!r}: two cameras "
                          "would share one model name; use another --triton-prefix or another repository")
    latest = max(versions, default=None)
    unchanged = (latest is not None and (versions[latest] / file_name).is_file()
                 and sha256_file(versions[latest] / file_name) == digest)
    scale = record.get("scale", manifest.get("scale"))
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16:
        raise ExportError(f"camera {camera!r}: its export record and manifest give no valid integer 'scale' (got "
                          f"{scale!r}), which the Triton config needs; run `adassr export --camera {camera}"
                          f"{store_option(source.store_root)}` again")
    config = render_config(name, camera=camera, record=record, scale=scale, options=options, model_sha256=digest)
    version = latest if unchanged and latest is not None else max([0, *versions]) + 1  # ours start at 1
    interim = None
    if not unchanged and versions and options.trt_cache_dir is not None:
        # The final config names the new version's engine folder; written before the new version is in
        # place, a polling Triton would reload the served version with it and build the old weights' engine
        # there, which the new version would then load (onnxruntime names engines after the graph, not the
        # weights). Until the new version is in place the config keeps no engine cache.
        interim = render_config(name, camera=camera, record=record, scale=scale,
                                options=dataclasses.replace(options, trt_cache_dir=None), model_sha256=digest)
    return _Plan(source, name, model_dir, version, not unchanged, config, provenance, file_name, interim)


_CONFIG_CAMERA = re.compile(r'key:\s*"adassr_camera"\s*value:\s*\{\s*string_value:\s*"([^"\\]*)"')


def _config_camera(path: Path) -> str | None:
    """The ``adassr_camera`` parameter of a model's config.pbtxt (None when there is none to read)."""
    try:
        match = _CONFIG_CAMERA.search(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return match.group(1) if match else None


def _latest_record(provenance: Mapping[str, Any], field: str) -> str | None:
    """``field`` of the latest recorded version (None when nothing is recorded)."""
    numbered = [int(v) for v in provenance if _VERSION_NAME.fullmatch(str(v))]
    if not numbered:
        return None
    latest = provenance[str(max(numbered))]
    return str(latest.get(field)) if isinstance(latest, Mapping) and latest.get(field) else None


def _owner(provenance: Mapping[str, Any]) -> str | None:
    """The camera whose model the latest recorded version is (None when nothing is recorded)."""
    return _latest_record(provenance, "camera")


def write_model(plan: _Plan) -> TritonModel:
    """Carry out a :func:`plan_model` plan: copy the model into its new version folder (verified against
    the checksum the manifest records), write the config if it changed, record the version."""
    source, model_dir, version, camera = plan.source, plan.model_dir, plan.version, plan.source.camera
    config_path = model_dir / "config.pbtxt"
    wanted = plan.config.encode("utf-8")
    first = wanted if plan.interim_config is None else plan.interim_config.encode("utf-8")
    before = config_path.read_bytes() if config_path.is_file() else None
    # The new version is copied and verified in a hidden file at the repository's top first (Triton loads
    # folders there, not files), then moved into a hidden folder of the model (Triton reads no version
    # there), then the config is written, then the version folder is renamed into place: a polling Triton
    # never sees the new version without its config (a new model would load auto-completed, a new tile shape
    # with the old dims), and a new model's folder lacks its config or version only for a few file-system
    # calls, not for the copy. An ONNX model's earlier versions take the new dims as well. The config is
    # rewritten only when it changes: Triton in poll mode reloads a model whose files changed.
    copy = _copy_model_file(source, model_dir.parent, f"{plan.name}.{plan.file_name}") if plan.new else None
    _remove_dead_staging(model_dir)
    created = not model_dir.exists()
    staging: Path | None = None
    config_written = published = False
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        if copy is not None:
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
            os.chmod(staging, 0o777 & ~current_umask())  # as a plain mkdir makes it (mkdtemp's is 0700)
            os.rename(copy, staging / plan.file_name)
        if before != first:
            atomic_write_bytes(config_path, first)
            config_written = True
        if staging is not None:
            _publish_version(staging, model_dir / str(version))
            published = True
        if first != wanted:
            atomic_write_bytes(config_path, wanted)  # the engine cache, now that its version is the one served
    except BaseException:
        with contextlib.suppress(OSError, StoreError):  # the first failure is the one to report
            if not published:  # the new version never appeared: the model is put back as it was
                if copy is not None:
                    copy.unlink(missing_ok=True)
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
                if config_written and before is not None:
                    atomic_write_bytes(config_path, before)  # the versions there keep the config they came with
                elif created:  # a model folder with a config and no version would be a broken model to Triton
                    config_path.unlink(missing_ok=True)
                    model_dir.rmdir()
            # else the new version is in place with a config that serves it (at worst the interim one, without
            # the engine cache: a rerun writes the final one)
        raise
    previous = _latest_record(plan.provenance, "store")
    result = TritonModel(plan.name, camera, version, plan.new, source.sha256, model_dir,
                         previous if previous is not None and previous != source.store_root else None)
    if not plan.new and str(version) in plan.provenance and result.previous_store is None:
        return result  # the record of these bytes stands (the same bytes from another store: recorded anew)
    provenance = dict(plan.provenance)
    record, manifest, engine = source.record, source.manifest, source.engine
    provenance[str(version)] = {
        "camera": camera,
        "store": source.store_root,
        "sha256": source.sha256,
        "source_file": str(record["file"]),
        "precision": record.get("precision"),
        "manifest_updated": manifest.get("updated"),
        "weights_sha256": manifest.get("weights_sha256"),
    }
    if engine is not None:  # a plan loads only in a Triton whose TensorRT built it, on that GPU type
        provenance[str(version)].update(engine_file=engine.file, tensorrt_version=engine.key.tensorrt_version,
                                        gpu_name=engine.key.gpu.name)
    atomic_write_bytes(model_dir / PROVENANCE,
                       (json.dumps(provenance, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return result


_STAGING = re.compile(r"^\.\d+\.[a-z0-9_]{8}$")
"""A version's hidden staging folder in its model folder (``.<version>.<mkdtemp's 8 characters>``, see
:func:`write_model`): a folder a user made there (``.1.bak``) does not match."""


def _remove_dead_staging(model_dir: Path) -> None:
    """Remove the staging folders killed exports left in ``model_dir`` (a whole model's copy each; nothing
    removed them). Called under the repository's lock: no other export is staging there."""
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if _STAGING.match(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _publish_version(staging: Path, version_dir: Path) -> None:
    """Put a staged version in place under its number: one rename, so Triton sees it whole or not at all."""
    os.rename(staging, version_dir)


def _copy_model_file(source: _Source, repo: Path, target: str) -> Path:
    """Copy the model into a hidden temporary file at the top of ``repo`` (named after ``target``, see
    :mod:`adassr.runtime.tempfiles`; copies of killed exports are removed first) and check the copy."""
    camera = source.camera
    remove_stale_temps(repo, target=target)
    fd, tmp = create_temp(repo / target)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with open(source.path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            except FileNotFoundError as exc:  # content-addressed: a re-export makes a new file, drops this one
                raise ExportError(f"the model of camera {camera!r} ({source.path.name}) was replaced while the "
                                  "repository was written (the camera was exported again); rerun") from exc
            out.flush()
            os.fsync(out.fileno())
        if sha256_file(tmp) != source.sha256:
            raise ExportError(f"the copy of {camera!r}'s model {source.path} does not match the checksum its "
                              "manifest records: the camera was exported again while the repository was "
                              "written, or the disk is failing; rerun")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def repository_warnings(repo: str | os.PathLike[str], store_root: str | os.PathLike[str],
                        options: TritonRepoOptions | None = None) -> list[str]:
    """What a repository written from the whole store may serve wrongly (reads only): a camera of the store
    without an export (adapted again since, its model serves the earlier weights) and a model whose
    camera the store no longer has."""
    opts = options or TritonRepoOptions()
    out, root = Path(repo).expanduser(), Path(store_root).expanduser()
    cameras = list_cameras(root)
    warnings: list[str] = []
    for camera in cameras:
        try:
            exports = CameraStore.open(root, camera).read_manifest().get("exports") or {}
        except (StoreError, CameraError):
            continue  # write_repository reports a damaged camera itself
        if exports:
            continue
        command = (f"`adassr export --backbone realesrgan-x4plus{store_option(root)}`" if camera == FALLBACK_CAMERA
                   else f"`adassr export --camera {camera}{store_option(root)}`")
        if (out / _safe_name(camera, opts.prefix)).is_dir():
            warnings.append(f"camera {camera!r} has no export now (adapted again since?): its Triton model still "
                            f"serves the earlier export; run {command}, then rerun")
        else:
            warnings.append(f"camera {camera!r} has no export, so it has no Triton model; run {command}")
    known = set(cameras)
    for model_dir in sorted(p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            owner = _owner(_read_provenance(model_dir / PROVENANCE)) or _config_camera(model_dir / "config.pbtxt")
        except ExportError:
            continue
        if owner is not None and owner not in known:
            warnings.append(f"the Triton model {model_dir.name!r} serves camera {owner!r}, which this store does not "
                            f"have (any more); unless another store writes it into this repository, remove "
                            f"{model_dir} to stop serving it")
    return warnings


def _has_exports(root: Path, camera: str, on_skip: Callable[[str, str], None] | None) -> bool:
    """Whether the store's ``camera`` has an export; a manifest that cannot be read is reported to
    ``on_skip`` (False) when given, else raises."""
    try:
        return bool(_store_camera(root, camera).read_manifest().get("exports"))
    except StoreError as exc:
        if on_skip is None:
            raise
        on_skip(camera, str(exc))
        return False


def _safe_name(camera: str, prefix: str) -> str:
    try:
        return model_name(camera, prefix)
    except ExportError:
        return f"{prefix}{camera}"


def _store_camera(root: Path, folder: str) -> CameraStore:
    """The camera of a store folder that holds a manifest; ExportError when its name is no camera name."""
    try:
        return CameraStore.open(root, folder)
    except CameraError as exc:
        raise ExportError(f"the store folder {root / folder} holds a manifest, but its name is no camera group name "
                          f"({exc}); rename it or move it out of the store") from None


def _plan_target(gpu_name: object, tensorrt_version: object) -> str:
    return f"{gpu_name} with TensorRT {tensorrt_version}"


def _check_one_tensorrt_target(repo: Path, plans: Sequence[_Plan]) -> None:
    """``ExportError`` when the plans this run publishes, together with the plans the repository's other
    models serve, were built for more than one GPU type or TensorRT release: one Triton release loads the
    plans of its own TensorRT only, so some models of the repository could never load."""
    targets: dict[str, list[str]] = {}
    writing = {plan.name for plan in plans}  # models, not cameras: another --triton-prefix is another model
    for plan in plans:
        if plan.source.engine is not None:
            key = plan.source.engine.key
            targets.setdefault(_plan_target(key.gpu.name, key.tensorrt_version), []).append(plan.source.camera)
    if not targets:
        return
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            provenance = _read_provenance(model_dir / PROVENANCE)
            versions = _versions(model_dir)
        except ExportError:
            continue  # a damaged record or version folder: that model's own export reports it
        latest = max(versions, default=None)
        if latest is None or not (versions[latest] / MODEL_FILES["tensorrt_plan"]).is_file():
            continue  # no plan served there
        record = provenance.get(str(latest))
        if not isinstance(record, Mapping) or model_dir.name in writing:
            continue  # a model this run publishes again: its new plan replaces the served one
        if record.get("tensorrt_version") and record.get("gpu_name"):
            targets.setdefault(_plan_target(record["gpu_name"], record["tensorrt_version"]), []).append(
                f"{model_dir.name} (already in the repository)")
    if len(targets) > 1:
        listed = "; ".join(f"{target}: {', '.join(who)}" for target, who in sorted(targets.items()))
        raise ExportError(
            f"the TensorRT plans of {repo} would be built for more than one GPU type or TensorRT release ({listed}); "
            "a Triton release loads only the plans of its own TensorRT on the GPU type they were built for, so some "
            "models would never load: build every camera's engine for one target (`adassr export --engine tensorrt` "
            "on the serving GPU) or write each target's plans into a repository of its own"
        )


def _check_apart(repo: Path, store_root: Path, *, model: str | None = None) -> None:
    """``ExportError`` when the repository (or, with ``model``, that model's folder, perhaps a link) and the store
    are one folder or one holds the other."""
    a, b = repo.resolve(), store_root.resolve()
    if a == b or b in a.parents or a in b.parents:
        if model is not None:
            raise ExportError(f"the folder of the Triton model {model!r}, {repo}, is {a} (through a link), which is "
                              f"in the model store {store_root} or holds it: the model's config and versions would "
                              "be written among the store's files; remove the link")
        raise ExportError(f"the Triton repository {repo} and the model store {store_root} must be separate folders "
                          "(neither inside the other): Triton loads every folder of its repository as a model")


def write_repository(
    repo: str | os.PathLike[str],
    store_root: str | os.PathLike[str],
    cameras: Sequence[str] | None = None,
    options: TritonRepoOptions | None = None,
    *,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[TritonModel]:
    """Write the Triton model of every camera in ``cameras`` (default: every exported camera, fallback included).

    Every camera's export is checked before anything is written, so a bad name or a camera without
    the export asked for leaves the repository as it was. The repository may be neither inside the
    store nor around it (Triton would take the store's folders for models).

    With the whole store (no ``cameras``) and ``on_skip``, a camera whose manifest or export cannot be
    used (damaged, a file missing or changed, no export of the precision or engine asked for) is left
    out and reported as ``on_skip(camera, reason)``, so that one broken camera does not hold back the
    others; its Triton model, if it has one, stays as it was. ExportError when no camera is left."""
    opts = options or TritonRepoOptions()
    if not isinstance(opts, TritonRepoOptions):
        raise ExportError(f"options must be a TritonRepoOptions, got {type(opts).__name__}")
    if isinstance(cameras, str):
        raise ExportError(f"cameras must be a list of camera names, got the string {cameras!r}: pass [{cameras!r}]")
    root = Path(store_root).expanduser()
    CameraStore.open(root, FALLBACK_CAMERA)  # StoreError if the store is missing
    if cameras:
        chosen = list(dict.fromkeys(cameras))
    else:
        for folder, why in misnamed_folders(root)[:1]:  # the whole store was asked for: none may go missing
            raise ExportError(f"the store folder {folder} holds a manifest, but its name is no camera group name "
                              f"({why}); rename it or move it out of the store")
        chosen = [c for c in list_cameras(root) if _has_exports(root, c, on_skip)]
        if not chosen:
            raise ExportError(f"no camera in {root} has an export; run `adassr export --camera NAME"
                              f"{store_option(root)}` (or `adassr export --backbone realesrgan-x4plus"
                              f"{store_option(root)}`) first")
    skip = on_skip if not cameras else None
    out = Path(repo).expanduser()
    _check_apart(out, root)
    if out.exists() and not out.is_dir():
        raise ExportError(f"the Triton repository {out} is a file, not a folder; choose a folder with "
                          "--triton-repo DIR")
    created = not out.exists()
    try:
        sources = []
        seen: set[str] = set()
        for camera in chosen:  # all of them checked (each file hashed once) before any is written
            store = CameraStore.open(root, camera)
            if store.camera in seen:  # one camera named twice ("canon", "Canon"): one model, one new version
                continue
            seen.add(store.camera)
            try:
                source = _source(store, store.read_manifest(), opts)
                model_name(source.camera, opts.prefix)  # before the repository folder is made
            except (ExportError, StoreError) as exc:
                if skip is None:
                    raise
                skip(store.camera, str(exc))
                continue
            sources.append(source)
        if not sources:
            raise ExportError(f"no camera in {root} could be published (each is named above); mend them, then rerun")
        out.mkdir(parents=True, exist_ok=True)
        with _repository_lock(out):
            try:
                plans = [plan_model(out, source, opts) for source in sources]  # every check before any write
                for plan in plans:
                    _check_apart(plan.model_dir, root, model=plan.name)
                _check_one_tensorrt_target(out, plans)
                return [write_model(plan) for plan in plans]
            except BaseException:
                # Only the lock holder cleans up, while it holds the lock: an export that lost the race for
                # a new repository removed the winner's lock file and folder (then a third export ran
                # beside the winner).
                if created and {p.name for p in out.iterdir()} == {LOCK_FILE}:  # made by this run, left empty
                    with contextlib.suppress(OSError):
                        (out / LOCK_FILE).unlink()
                        out.rmdir()
                raise
    except OSError as exc:
        raise ExportError(f"cannot write the Triton repository {out}: {exc.strerror or exc}"
                          f"{f' ({exc.filename})' if exc.filename else ''}; choose a writable folder with "
                          "--triton-repo DIR") from exc
