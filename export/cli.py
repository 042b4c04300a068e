"""``adassr export``: a camera's adapted weights, or a registry backbone as the fallback, to ONNX.

torch, onnx and onnxruntime are imported inside :func:`run_export` only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adassr.export.triton_repo import PLATFORMS
from adassr.runtime.console import one_line
from adassr.runtime.store import DEFAULT_STORE, MODEL_PRECISIONS, store_argument

if TYPE_CHECKING:
    from adassr.export.tensorrt import EngineOptions

EXPORT_CHOICES = (*MODEL_PRECISIONS, "both", "bf16")  # what --precision accepts (bf16: TensorRT engines only)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", metavar="NAME", action="append",
                        help="camera group whose adapted.safetensors is exported (repeatable with --triton-repo)")
    source.add_argument("--backbone", metavar="NAME",
                        help="export this unadapted registry backbone as the fallback model (<store>/_fallback/)")
    parser.add_argument("--store", type=store_argument, default=DEFAULT_STORE, metavar="DIR",
                        help=f"model store folder (default: {DEFAULT_STORE})")
    parser.add_argument("--precision", choices=EXPORT_CHOICES, default="fp32",
                        help="model.onnx (fp32), model_fp16.onnx (fp16: half weights and activations, "
                             "float32 I/O), or both (default: fp32); with --engine tensorrt also the engine's "
                             "precision (both -> fp16; bf16 only with --engine tensorrt)")
    parser.add_argument("--validation-image", type=Path, default=None, metavar="PATH",
                        help="photo whose crops validate the export (default: the camera's first readable "
                             "image, else samples/cameras/nokia/iptc.jpg)")
    engine = parser.add_argument_group("TensorRT engine (on a GPU box with TensorRT)")
    engine.add_argument("--engine", choices=("none", "tensorrt"), default="none",
                        help="also build (or reuse) the camera's TensorRT engine for this GPU (default none)")
    engine.add_argument("--gpu", type=int, default=0, metavar="N", help="CUDA device to build for (default 0)")
    engine.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                        help="TensorRT builder optimisation level (default 3; 5 searches longest)")
    engine.add_argument("--no-refit", action="store_true",
                        help="build the camera's own engine instead of refitting the shared base engine of its "
                             "backbone (one build per camera instead of one per GPU type)")
    engine.add_argument("--tile", type=int, default=512,
                        help="runtime tile size the engine's profile is built for (default 512; `upscale --backend "
                             "tensorrt` loads the engine when run with the same --tile and --tile-batch, `serve "
                             "--backend tensorrt` with the same --tile, --pad-to-tile and --max-batch equal to "
                             "--tile-batch); "
                             "with --triton-repo the tile shape of the Triton models")
    engine.add_argument("--tile-batch", type=int, default=1, help="tiles per call the profile allows (default 1)")
    triton = parser.add_argument_group(
        "--triton-repo (a Triton Inference Server model repository from the store's exports; no torch)")
    triton.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                        help="write one Triton model per camera (default: every exported camera) into DIR")
    triton.add_argument("--platform", choices=PLATFORMS, default="onnxruntime_onnx",
                        help="Triton platform (default onnxruntime_onnx; tensorrt_plan needs the camera's engine)")
    triton.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size (default 8)")
    triton.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    triton.add_argument("--instance-kind", choices=("KIND_GPU", "KIND_CPU"), default="KIND_GPU",
                        help="where instances run (default KIND_GPU)")
    triton.add_argument("--trt-accelerator", action="store_true",
                        help="let Triton's onnxruntime backend run the model through TensorRT (GPU instances)")
    triton.add_argument("--trt-cache-dir", default=None, metavar="PATH",
                        help="with --trt-accelerator: absolute path, existing on the Triton host (a persistent "
                             "volume outside the model repository), where onnxruntime keeps the TensorRT engines it "
                             "builds, one folder per model file; without it every model load builds its engine again")
    triton.add_argument("--no-trt-profile", dest="trt_profile", action="store_false",
                        help="with --trt-accelerator: leave out the explicit optimisation profile "
                             "(trt_profile_*_shapes) and the timing cache (trt_timing_cache_*), which Triton "
                             "releases before 24.04 refuse ('unknown parameter'); onnxruntime then sizes the engine "
                             "on the batches it sees")
    triton.add_argument("--triton-prefix", default="adassr_", help="model name prefix (default adassr_)")


def _run_triton(args: argparse.Namespace) -> int:
    from adassr.export.errors import ExportError
    from adassr.export.triton_repo import TritonRepoOptions, repository_warnings, write_repository

    if args.backbone is not None:
        raise ExportError("--triton-repo publishes existing exports; export the backbone first, then rerun")
    if getattr(args, "engine", "none") != "none" or args.validation_image is not None:
        raise ExportError("--triton-repo publishes existing exports and builds nothing: run `adassr export --camera "
                          "NAME --engine tensorrt` (or with --validation-image) first, then --triton-repo")
    _refuse_options_of_other_modes(args, parser_defaults(), engine=False, triton=True)
    if args.precision not in ("fp32", "fp16"):
        raise ExportError("--triton-repo publishes one precision per model: use --precision fp32 or fp16")
    options = TritonRepoOptions(
        platform=args.platform, tile=args.tile, max_batch_size=args.max_batch,
        preferred_batch_sizes=tuple(b for b in (args.max_batch // 2, args.max_batch) if b >= 1),
        instance_count=args.instances, instance_kind=args.instance_kind, prefix=args.triton_prefix,
        trt_accelerator=args.trt_accelerator, trt_cache_dir=args.trt_cache_dir, trt_profile=args.trt_profile,
        precision=args.precision,
    )
    skipped: list[str] = []

    def left_out(camera: str, reason: str) -> None:  # the whole store only: the other cameras go on
        skipped.append(camera)
        print(one_line(f"warning: camera {camera!r} left out: {reason}; its Triton model, if it has one, is "
                       "unchanged"), file=sys.stderr)

    for model in write_repository(args.triton_repo, args.store, args.camera, options, on_skip=left_out):
        state = "new version" if model.new_version else "unchanged"
        print(f"{model.camera}: {one_line(str(model.directory))}/{model.version} ({state}, "
              f"sha256 {model.sha256[:12]}...)")
        if model.previous_store is not None:
            print(f"warning: the Triton model {model.name!r} was last published from the store "
                  f"{one_line(str(model.previous_store))}, not {one_line(str(Path(args.store).expanduser()))}: "
                  f"two stores with a camera {model.camera!r} now share it (unless the store has moved); give "
                  "one of them another --triton-prefix", file=sys.stderr)
    if args.camera is None:  # the whole store: what the repository may now serve wrongly
        for warning in repository_warnings(args.triton_repo, args.store, options):
            print(f"warning: {one_line(warning)}", file=sys.stderr)
    if skipped:
        print(f"error: {len(skipped)} camera(s) left out ({', '.join(sorted(skipped))}), each named above with its "
              "reason; the others are published", file=sys.stderr)
        return 1
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``adassr export``; SIGINT / SIGTERM stop it with one line saying what was published (exit 130 / 143)."""
    from adassr.adapt.interrupts import Interrupted, catch_interrupts

    done: list[str] = []  # "onnx" once the camera's ONNX export is committed
    try:
        with catch_interrupts():
            if args.triton_repo is not None:
                return _run_triton(args)
            return _run_export(args, done)
    except Interrupted as exc:
        print(one_line(f"export: {exc}; {_interrupted_note(args, exc.kept or bool(done))}"), file=sys.stderr)
        return exc.exit_code


def _interrupted_note(args: argparse.Namespace, onnx_published: bool) -> str:
    """What a stopped export left, for its one line."""
    if args.triton_repo is not None:
        return ("the Triton repository holds complete model versions only (each is put in place whole) and the "
                "store is unchanged; run the export again to finish it")
    what = "the fallback" if args.camera is None else f"camera {args.camera[0]!r}"
    if not onnx_published:
        return f"nothing was published: the model and exports of {what} are unchanged"
    if getattr(args, "engine", "none") == "tensorrt":
        return ("the ONNX export was published; the TensorRT engine was not finished (run the export again with "
                "--engine tensorrt)")
    return "the signal came as the export was saved, which completed: the ONNX export is published"


def _run_export(args: argparse.Namespace, done: list[str]) -> int:
    if args.camera is None and args.backbone is None:
        from adassr.export.errors import ExportError

        raise ExportError("name what to export: --camera NAME or --backbone NAME (or --triton-repo DIR)")
    if args.camera is not None and len(args.camera) > 1:
        from adassr.export.errors import ExportError

        raise ExportError("export one --camera at a time (several are accepted with --triton-repo only)")
    from adassr.adapt.cpu_setup import configure_cpu_threads
    from adassr.export.onnx import export_camera, export_fallback
    from adassr.runtime.errors import ConfigError

    configure_cpu_threads()  # one thread per usable core, or ADASSR_THREADS (a bad value fails here, exit 2)
    engine = getattr(args, "engine", "none")
    if args.precision == "bf16" and engine != "tensorrt":
        raise ConfigError("--precision bf16 exists only for TensorRT engines: add --engine tensorrt, or export "
                          "fp32 / fp16 ONNX")
    _refuse_options_of_other_modes(args, parser_defaults(), engine=engine == "tensorrt", triton=False)
    engine_options = None
    if engine == "tensorrt":  # fail before the (minutes long) ONNX export, not after it
        from adassr.runtime.engines.trt import load_tensorrt
        from adassr.runtime.gpu import set_device

        engine_options = _engine_options(args)
        load_tensorrt()
        set_device(args.gpu)
    onnx_precision = "fp32" if args.precision == "bf16" else args.precision
    if args.camera is not None:
        result = export_camera(args.store, args.camera[0], precision=onnx_precision,
                               validation_image=args.validation_image)
    else:
        result = export_fallback(args.store, args.backbone, precision=onnx_precision,
                                 validation_image=args.validation_image)
    done.append("onnx")
    from adassr.runtime.store import CameraStore

    store = CameraStore.open(args.store, result.camera)
    manifest = store.read_manifest()
    for record in result.exports.values():
        path = store.artifact_path(record["file"], manifest)  # the content-addressed file on disk
        print(
            f"{result.camera}: {one_line(str(path))} ({record['precision']}, {record['bytes'] / 1e6:.1f} MB, "
            f"sha256 {record['sha256'][:12]}...), max abs error vs PyTorch fp32 "
            f"{record['max_abs_error_vs_torch']:.2g} (tolerance {record['tolerance']:g}), "
            f"export {record['export_time_s']:.1f} s"
        )
    if engine_options is not None:
        _build_engine(engine_options, args.store, result.camera)
    return 0


def _engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine's build options (ConfigError naming the option for a bad --tile or --tile-batch)."""
    from adassr.export.tensorrt import EngineOptions
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.tiling import TilingOptions

    precision = "fp16" if args.precision == "both" else args.precision
    if args.tile == 0:
        raise ConfigError("--tile 0 (untiled) would build an engine that no command loads: upscale and serve run "
                          "TensorRT engines on tiles of a fixed size; pass the --tile you will serve with "
                          "(default 512)")
    try:
        tiling = TilingOptions(tile=args.tile, overlap=min(32, max(0, (args.tile - 1) // 2)) if args.tile else 0,
                               batch_size=args.tile_batch)
    except ConfigError as exc:
        raise ConfigError(f"--tile {args.tile} / --tile-batch {args.tile_batch}: {exc}") from None
    return EngineOptions(precision=precision, device=args.gpu, optimization_level=args.opt_level,
                         refit=not args.no_refit, tiling=tiling)


_ENGINE_OPTIONS = ("gpu", "opt_level", "no_refit", "tile_batch")
_TRITON_OPTIONS = ("platform", "max_batch", "instances", "instance_kind", "trt_accelerator", "trt_cache_dir",
                   "trt_profile", "triton_prefix")


def parser_defaults() -> dict[str, object]:
    """``adassr export``'s option defaults, by destination."""
    parser = argparse.ArgumentParser(add_help=False)
    add_export_arguments(parser)
    return vars(parser.parse_args([]))


def _flag(dest: str) -> str:
    return {"trt_profile": "--no-trt-profile", "no_refit": "--no-refit"}.get(dest, "--" + dest.replace("_", "-"))


def _refuse_options_of_other_modes(args: argparse.Namespace, defaults: Mapping[str, object], *, engine: bool,
                                   triton: bool) -> None:
    """ConfigError for an option of a mode this run is not in (it would be ignored without a word)."""
    from adassr.runtime.errors import ConfigError

    def given(dests: Sequence[str]) -> list[str]:
        return [_flag(d) for d in dests if getattr(args, d, defaults.get(d)) != defaults.get(d)]

    def listed(extra: list[str]) -> str:
        return f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'}"

    if not engine:
        extra = given(_ENGINE_OPTIONS) + ([] if triton else given(("tile",)))
        if extra and triton:  # --triton-repo builds no engine: the engine comes from its own export first
            raise ConfigError(f"{listed(extra)} for building TensorRT engines, which --triton-repo does not do: build "
                              "the engine first with `adassr export --camera NAME --engine tensorrt ...`, then run "
                              "--triton-repo (its batch is --max-batch)")
        if extra:
            raise ConfigError(f"{listed(extra)} for TensorRT engines: add --engine tensorrt, or drop "
                              + ("it" if len(extra) == 1 else "them"))
    if not triton:
        extra = given(_TRITON_OPTIONS)
        if extra and engine:
            raise ConfigError(f"{listed(extra)} for the Triton repository, which an engine build does not write: run "
                              "`adassr export --triton-repo DIR ...` after it (the engine's batch is --tile-batch)")
        if extra:
            raise ConfigError(f"{listed(extra)} for the Triton repository: add --triton-repo DIR, or drop "
                              + ("it" if len(extra) == 1 else "them"))


def _build_engine(options: EngineOptions, store: Path, camera: str) -> None:
    from adassr.export.tensorrt import export_engine

    precision = options.precision
    result = export_engine(store, camera, options)
    record = result.record
    how = "reused" if not result.built else ("refitted" if record.base else "built")
    line = (f"{camera}: TensorRT {precision} engine {one_line(str(result.path))} {how} for {record.key.gpu} "
            f"(TensorRT {record.key.tensorrt_version}, key {record.key.digest[:16]})")
    if result.base is not None:
        base_how = "built now" if result.base_built else "reused"
        line += f"; base engine {result.base.file} {base_how}"
        if record.refit_s is not None and result.built:
            mode = f" ({record.refit.summary})" if record.refit is not None else ""
            line += f"; refit{mode} {record.refit_s:.1f} s"
    print(line)
