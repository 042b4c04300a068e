"""``adapt --camera NAME`` (= ``adassr adapt``). torch is imported only inside :func:`run_adapt`."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from adassr.adapt.config import AdaptConfig, AttentionConfig, CliField, cli_fields
from adassr.runtime.console import one_line
from adassr.runtime.store import DEFAULT_STORE, FALLBACK_BACKBONE, store_argument

log = logging.getLogger(__name__)


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("images")
    src.add_argument("--camera", help="camera group to adapt to (a subfolder, EXIF Make or filename prefix)")
    src.add_argument("--images", type=Path, help="folder of LR images (default: the bundled samples/cameras)")
    src.add_argument("--image", type=Path, help="adapt on this one image (single-image mode)")
    src.add_argument("--list", action="store_true", help="list the camera groups found and exit")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=FALLBACK_BACKBONE, help="pretrained backbone (default %(default)s)")
    model.add_argument("--store", type=store_argument, default=DEFAULT_STORE,
                       help=f"artifact store (default ./{DEFAULT_STORE})")
    model.add_argument("--keep-on-interrupt", action="store_true",
                       help="on Ctrl-C / SIGTERM publish the best weights evaluated so far if they beat the backbone "
                            "and the camera's current model (the manifest says so; the exit code is still 130 / "
                            "143); default: publish nothing, keep the previous model (a signal while a finished "
                            "run is saved, its last second or two, waits: that model is published)")
    model.add_argument("--replace", action="store_true",
                       help="publish this run's result even when the camera's current model scores a better NIQE on "
                            "the run's evaluation crops (default: a re-run never replaces a better model)")
    train = parser.add_argument_group("training (defaults: the paper's on a GPU, a small budget on CPU)")
    for option in _config_options():
        kwargs: dict[str, Any] = {"dest": option.dest, "help": option.help}
        if option.choices is not None:
            kwargs["choices"] = option.choices
        else:
            kwargs["type"] = option.type
        train.add_argument(option.flag, **kwargs)
    train.add_argument("--gpu", type=int, default=None, metavar="N", help="CUDA device to use (default: the first)")


def _config_options() -> list[CliField]:
    """The options of the adaptation config: every field of AdaptConfig and AttentionConfig with a flag."""
    return cli_fields(AdaptConfig) + cli_fields(AttentionConfig)


def _config(args: argparse.Namespace, *, device_type: str | None = None) -> AdaptConfig:
    """The run's config from the options; ``device_type`` (``cpu`` / ``cuda``) picks the defaults without
    asking torch which device ``--device auto`` means."""
    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults

    if device_type is None:
        from adassr.adapt.precision import resolve_device

        device_type = resolve_device(args.device or "auto").type
    base = gpu_defaults() if device_type == "cuda" else cpu_demo_defaults()
    given = vars(args)
    config = base.with_overrides(**{o.name: given[o.dest] for o in cli_fields(AdaptConfig)})
    attention = config.attention.with_overrides(**{o.name: given[o.dest] for o in cli_fields(AttentionConfig)})
    return replace(config, attention=attention)


def _select(args: argparse.Namespace):
    from adassr.adapt.groups import default_images_dir, select_group, single_image_group
    from adassr.runtime.errors import ConfigError

    if args.image is not None:
        if args.images is not None:
            raise ConfigError("use either --images DIR (a camera group) or --image PATH (one image), not both")
        group = single_image_group(args.image, args.camera)
        _warn_if_a_folder_routes_elsewhere(group, Path(args.store).expanduser())
        return group
    if not args.camera or not args.camera.strip():
        raise ConfigError("--camera NAME is required (or --image PATH); `adapt --list` shows the groups")
    images = Path(args.images or default_images_dir()).expanduser()
    store = Path(args.store).expanduser()
    if images.exists() and store.exists() and (images.resolve() == store.resolve()
                                               or store.resolve() in images.resolve().parents):
        raise ConfigError(f"--images {images} is {'' if images.resolve() == store.resolve() else 'inside '}the model "
                          f"store --store {store}, which holds models and reports, not photos; point --images at "
                          "the folder of the camera's photos")
    group = select_group(images, args.camera)
    _warn_if_a_folder_routes_elsewhere(group, store)
    return group


def _warn_if_a_folder_routes_elsewhere(group: Any, store: Path) -> None:
    """One warning for the images of ``group`` that sit in a folder named after another camera of the store:
    ``upscale`` and ``serve`` route them by that folder first, so the model adapted here would not serve them
    (``--images photos/nikon --camera canon`` with nikon in the store)."""
    import os

    from adassr.runtime.cameras import validate_group_name
    from adassr.runtime.errors import CameraError
    from adassr.runtime.store import MANIFEST_NAME

    elsewhere: dict[str, list[Path]] = {}
    for member in group.members:
        folder = Path(os.path.abspath(member.path)).parent  # named as routing names it: by the link, not its target
        try:
            name = validate_group_name(folder.name)
        except CameraError:
            continue
        if name != group.name and (store / name / MANIFEST_NAME).is_file():
            elsewhere.setdefault(name, []).append(member.path)
    for name, paths in sorted(elsewhere.items()):
        log.warning(
            "%d image(s) of group %r, e.g. %s, sit in a folder named after camera %r of the store: upscale and "
            "serve route them by that folder to %r, so the model adapted here will not serve them (unless asked "
            "for with --camera %s); move them into a folder of their own", len(paths), group.name, paths[0], name,
            name, group.name)


def _progress_printer(total_hint: int):
    state = {"niqe": None}
    tty = sys.stderr.isatty()

    def show(event) -> None:
        if event.niqe is not None:
            state["niqe"] = event.niqe
        niqe = "-" if state["niqe"] is None else f"{state['niqe']:.3f}"
        loss = "-" if event.loss is None else f"{event.loss:.4f}"
        line = f"step {event.step}/{event.total}  loss {loss}  NIQE {niqe}"
        if tty:
            print("\r" + line.ljust(60), end="" if event.step < event.total else "\n", file=sys.stderr, flush=True)
        elif event.niqe is not None:
            print(line, file=sys.stderr, flush=True)

    return show


def run_adapt(args: argparse.Namespace) -> int:
    if args.list:
        from adassr.adapt.groups import default_images_dir, listed_groups, skipped_lines

        if args.image is not None or args.camera is not None:  # ignored in silence before
            given = "--image" if args.image is not None else "--camera"
            print(f"error: --list lists the camera groups of --images DIR; drop {given}", file=sys.stderr)
            return 2
        # invalid training values fail here too (ConfigError: exit 2), not only without --list; torch is not needed
        # to list the groups (a runtime-only install asks how upscale will group its photos), so not asked
        _config(args, device_type="cuda" if args.device == "cuda" else "cpu")
        folder = args.images or default_images_dir()
        scan = listed_groups(folder)
        if not scan.groups and not scan.skipped:
            print(f"error: no images in {one_line(str(folder))} or its camera subfolders; pass the folder of your "
                  "photos with --images DIR", file=sys.stderr)
            return 2
        for group in scan.groups.values():
            print(one_line(group.describe()))
            if group.name == scan.folder_group and (also := scan.also_line()) is not None:
                print(one_line(also))
        for line in skipped_lines(scan.skipped):
            print(one_line(line))
        return 0
    from adassr.adapt.interrupts import Interrupted, catch_interrupts

    published: list[bool] = []  # set by adapt_camera as it commits the new model
    try:
        with catch_interrupts():
            return _adapt(args, published)
    except Interrupted as exc:
        if exc.note:
            print(one_line(f"adapt: {exc}; {exc.note}"), file=sys.stderr)
        elif exc.kept:  # the weights of the run the signal stopped (published is set too)
            print(f"adapt: {exc}; the best weights evaluated so far were published (--keep-on-interrupt; "
                  "the manifest says \"interrupted\": true)", file=sys.stderr)
        elif published:
            print(f"adapt: {exc} after the run had finished; the new model is published", file=sys.stderr)
        elif args.keep_on_interrupt:
            print(f"adapt: {exc} before any adapted weights were evaluated; nothing was published (the camera's "
                  "model, if it has one, is unchanged)", file=sys.stderr)
        else:
            print(f"adapt: {exc}; nothing was published, the camera's model (if it has one) is unchanged "
                  "(use --keep-on-interrupt to keep the best weights evaluated so far)", file=sys.stderr)
        return exc.exit_code
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        first_line = one_line((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
        print(f"error: out of memory while adapting ({first_line}); nothing was published, the previous model "
              "is unchanged. Read fewer or smaller images (--max-images, --max-megapixels), or lower --batch, "
              "--patch or --feature-bank", file=sys.stderr)
        return 2


def _is_out_of_memory(exc: BaseException) -> bool:
    """numpy's MemoryError, torch's OutOfMemoryError (CUDA), or the CPU allocator's RuntimeError."""
    import torch

    return (isinstance(exc, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(exc))


def _adapt(args: argparse.Namespace, published: list[bool]) -> int:
    from adassr.adapt.precision import select_gpu
    from adassr.adapt.run import adapt_camera

    select_gpu(getattr(args, "gpu", None))
    group = _select(args)
    config = _config(args)
    print(f"adapting {args.backbone} to camera group '{group.name}' ({len(group.members)} image file(s) found); "
          f"{config.steps} steps max", file=sys.stderr)
    outcome = adapt_camera(group, config, store_root=args.store, backbone_name=args.backbone,
                           progress=_progress_printer(config.steps), keep_on_interrupt=args.keep_on_interrupt,
                           replace=args.replace, on_published=lambda: published.append(True))
    if outcome.kept_current:
        print(f"camera {outcome.camera}: NIQE {outcome.niqe_before:.3f} (backbone) -> {outcome.niqe_after:.3f} "
              f"(the camera's current model, kept); {outcome.steps} steps in {outcome.wall_time_s:.0f} s; "
              f"{outcome.stop_reason}")
        print(f"artifacts: {one_line(str(outcome.store_dir))} (unchanged)")
        return 0
    if outcome.kept_backbone:
        verdict = "kept the backbone (see the stop reason)"
    elif outcome.niqe_after > outcome.niqe_before:
        verdict = f"adapted; NIQE within the backbone margin of {config.backbone_margin:g}"
    else:
        verdict = "adapted"
    print(f"camera {outcome.camera}: NIQE {outcome.niqe_before:.3f} -> {outcome.niqe_after:.3f} "
          f"({verdict}); {outcome.steps} steps in {outcome.wall_time_s:.0f} s; {outcome.stop_reason}")
    if outcome.kernel:
        print(f"blur kernel: {outcome.kernel}")
    report = f", {outcome.report}" if outcome.report else ""
    print(f"artifacts: {one_line(str(outcome.store_dir))} (adapted.safetensors, manifest.json{report})")
    if outcome.exports_dropped:
        from adassr.runtime.store import store_option

        print(f"note: the camera's ONNX and TensorRT exports were made from its previous weights and are dropped; "
              f"until `adassr export --camera {outcome.camera}{store_option(args.store)}` runs, a running server "
              "keeps serving the previous model and the store holds no model of the new weights",
              file=sys.stderr)
    return 0
