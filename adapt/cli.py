"""``adapt --camera NAME`` (= ``adassr adapt``). torch is imported only inside :func:`run_adapt`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adassr.adapt.config import KERNEL_MODES, PRECISIONS, TRAINABLE, WEIGHT_MODES


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("images")
    src.add_argument("--camera", help="camera group to adapt to (a subfolder, EXIF Make or filename prefix)")
    src.add_argument("--images", type=Path, help="folder of LR images (default: the bundled samples/cameras)")
    src.add_argument("--image", type=Path, help="adapt on this one image (single-image mode)")
    src.add_argument("--list", action="store_true", help="list the camera groups found and exit")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="realesrgan-x4plus", help="pretrained backbone (default %(default)s)")
    model.add_argument("--store", type=Path, default=Path("models"), help="artifact store (default ./models)")
    train = parser.add_argument_group("training (defaults: the paper's on a GPU, a small budget on CPU)")
    train.add_argument("--steps", type=int, help="T_step: maximum steps (GPU 1500, CPU 500)")
    train.add_argument("--patch", type=int, dest="lr_patch", help="LR patch size y_rd (GPU 32, CPU 24)")
    train.add_argument("--batch", type=int, help="batch size (4)")
    train.add_argument("--lr", type=float, help="Adam learning rate (1e-4)")
    train.add_argument("--ema-decay", type=float, help="EMA alpha (GPU 0.999, CPU 0.99)")
    train.add_argument("--prox-mu", type=float, help="proximal weight mu (1e-4)")
    train.add_argument("--lambda-l1", type=float, help="weighted L1 weight (1.0)")
    train.add_argument("--lambda-perceptual", type=float, help="LPIPS-VGG perceptual weight (1.0)")
    train.add_argument("--lambda-gan", type=float, help="internal patch-GAN weight (0 = off)")
    train.add_argument("--eval-every", type=int, help="NIQE evaluation period in steps (GPU 100, CPU 50)")
    train.add_argument("--eval-crop", type=int, help="LR crop side for NIQE evaluation (GPU 128, CPU 128)")
    train.add_argument("--trainable", choices=TRAINABLE, help="all | tail (auto: tail on CPU, all on GPU)")
    train.add_argument("--tail-blocks", type=int, help="RRDB blocks trained in tail mode (3)")
    train.add_argument("--feature-bank", type=int,
                       help="tail mode: augmented pairs whose front features are cached per period (GPU 128, CPU 64)")
    train.add_argument("--precision", choices=PRECISIONS, help="mixed precision (auto)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto | cpu | cuda")
    train.add_argument("--gpu", type=int, default=None, metavar="N", help="CUDA device to use (default: the first)")
    train.add_argument("--seed", type=int, help="random seed (0)")
    train.add_argument("--kernel", choices=KERNEL_MODES, help="estimate the blur kernel, or bicubic")
    train.add_argument("--weights", dest="weight_mode", choices=WEIGHT_MODES,
                       help="loss weighting: attention (default) | uniform | gradient | similarity")
    train.add_argument("--admm-iters", type=int, help="ADMM outer iterations K (1)")
    train.add_argument("--external-hr", type=Path, help="clean HR images for the external step (K > 1)")


def _config(args: argparse.Namespace):
    from dataclasses import replace

    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults
    from adassr.adapt.precision import resolve_device

    device = resolve_device(args.device or "auto")
    base = gpu_defaults() if device.type == "cuda" else cpu_demo_defaults()
    overrides = {name: getattr(args, name) for name in (
        "steps", "lr_patch", "batch", "lr", "ema_decay", "prox_mu", "lambda_l1", "lambda_perceptual",
        "lambda_gan", "eval_every", "eval_crop", "trainable", "tail_blocks", "feature_bank", "precision", "device",
        "seed", "kernel", "admm_iters", "external_hr")}
    config = base.with_overrides(**overrides)
    if args.weight_mode:
        config = replace(config, attention=replace(config.attention, mode=args.weight_mode))
    return config


def _select(args: argparse.Namespace):
    from adassr.adapt.groups import default_images_dir, select_group, single_image_group
    from adassr.runtime.errors import ConfigError

    if args.image is not None:
        if args.images is not None:
            raise ConfigError("use either --images DIR (a camera group) or --image PATH (one image), not both")
        return single_image_group(args.image, args.camera)
    if not args.camera:
        raise ConfigError("--camera NAME is required (or --image PATH); `adapt --list` shows the groups")
    return select_group(args.images or default_images_dir(), args.camera)


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
        from adassr.adapt.groups import default_images_dir, discover_groups

        for group in discover_groups(args.images or default_images_dir()).values():
            print(group.describe())
        return 0
    from adassr.adapt.precision import select_gpu
    from adassr.adapt.run import adapt_camera

    select_gpu(getattr(args, "gpu", None))
    group = _select(args)
    config = _config(args)
    print(f"adapting {args.backbone} to camera group '{group.name}' ({len(group.members)} image(s)); "
          f"{config.steps} steps max", file=sys.stderr)
    outcome = adapt_camera(group, config, store_root=args.store, backbone_name=args.backbone,
                           progress=_progress_printer(config.steps))
    verdict = ("kept the backbone (adaptation did not improve NIQE)" if outcome.kept_backbone
               else "adapted")
    print(f"camera {outcome.camera}: NIQE {outcome.niqe_before:.3f} -> {outcome.niqe_after:.3f} "
          f"({verdict}); {outcome.steps} steps in {outcome.wall_time_s:.0f} s; {outcome.stop_reason}")
    print(f"artifacts: {outcome.store_dir} (adapted.safetensors, manifest.json)")
    return 0
