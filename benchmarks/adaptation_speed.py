"""Adaptation speed: steps per second of the real internal step.

Runs ``adassr.adapt.loop.run_internal_step`` with the real Real-ESRGAN x4plus backbone on a bundled
photo for each precision (fp32, bf16; fp16 too on CUDA) and each trainable mode (tail, all),
with the perceptual term on (LPIPS-VGG, when its weights are present). The time per step is
the difference between a run of ``--steps`` steps and a run of 1 step divided by the extra
steps, so loading, the feature bank and evaluation cancel out; the one-step run's wall time is
reported as setup time.

It also counts the ATen operations one step dispatches (a 3-step minus a 1-step run under a
counting dispatch mode, view-only operations left out). On a GPU at the paper's batch the step is
bound by kernel launches, so this count, measurable on any machine, predicts the GPU step better
than CPU seconds do (a multi-tensor ``_foreach_*`` / fused optimiser call counts once although it
launches a few kernels).

    python benchmarks/adaptation_speed.py [--device cpu|cuda] [--steps 12] [--threads N] [--tag T]
        [--lr-patch P] [--trainable tail,all] [--precisions fp32,bf16,fp16]

Writes benchmarks/results/adaptation_speed_<cpu|gpu>[_T].{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from script_cli import int_at_least, output_dir, positive_int, run_script  # noqa: E402

SAMPLE = ROOT / "samples" / "cameras" / "nokia" / "iptc.jpg"
RESULTS = ROOT / "benchmarks" / "results"


VIEW_OPS = frozenset({"detach", "view", "_unsafe_view", "slice", "select", "expand", "t", "transpose", "permute",
                      "unsqueeze", "squeeze", "as_strided", "alias", "unbind", "split", "split_with_sizes",
                      "_local_scalar_dense", "lift_fresh"})
"""Operations that launch no kernel (views and metadata; ``_local_scalar_dense`` is a read of a CPU scalar)."""


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def device_label(device: torch.device) -> str:
    from adassr.export.bench import machine_name

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {machine_name()}, {torch.get_num_threads()} torch threads"


def _run(model_state, build, sampler_factory, crops, config, device, precision, trainable, perceptual,
         counter: _OpCounter | None = None) -> float:
    from adassr.adapt.loop import run_internal_step

    model = build()
    model.load_state_dict(model_state)
    start = time.perf_counter()
    with counter if counter is not None else contextlib.nullcontext():
        result = run_internal_step(model, sampler_factory(), crops, lambda sr: torch.zeros(sr.shape[0]), config,
                                   device=device, precision=precision, trainable=trainable, perceptual=perceptual)
    if result.interrupted is not None:  # the loop caught Ctrl-C / SIGTERM: this run's time is no measurement
        raise KeyboardInterrupt
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int_at_least(2), default=12,
                        help="steps of the timed run (>= 2: the time per step is a difference against a 1-step run)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--lr-patch", type=int_at_least(8), default=None,
                        help="LR patch side, >= 8 (default: the device's default)")
    parser.add_argument("--trainable", default="tail,all", help="comma-separated trainable modes (tail, all)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated precisions (default fp32,bf16, plus fp16 on CUDA)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.trainable.split(",") if m.strip()]
    if not modes or any(m not in ("tail", "all") for m in modes):
        parser.error(f"--trainable takes tail and/or all, got {args.trainable!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults
    from adassr.adapt.degradation import gaussian_kernel
    from adassr.adapt.loop import evaluation_crops
    from adassr.adapt.pairs import PairConfig, make_pair_sampler
    from adassr.adapt.precision import Precision, resolve_device
    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.quality.lpips_weights import lpips_weights_present
    from adassr.adapt.weights import load_backbone
    from adassr.runtime.images import read_image, to_float32

    device = resolve_device(args.device)
    available = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    precisions = available if args.precisions is None else [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in available for p in precisions):
        parser.error(f"--precisions takes {', '.join(available)} on {device.type}, got {args.precisions!r}")
    base = gpu_defaults() if device.type == "cuda" else cpu_demo_defaults()
    if args.lr_patch is not None:
        base = replace(base, lr_patch=args.lr_patch)
    image = to_float32(read_image(SAMPLE).pixels)
    kernel = gaussian_kernel(1.6, 1.6, 0.0, scale=4)
    backbone = load_backbone(device=str(device))
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    entry = backbone.entry
    perceptual = load_lpips("vgg", device=device) if lpips_weights_present("vgg") else None
    crops = evaluation_crops([image], base.eval_crop, 1)
    rows = []
    for trainable in modes:
        for name in precisions:
            precision = Precision(name, device.type)
            config = replace(base, eval_every=10**6, feature_bank=max(base.batch, 16))

            def sampler_factory(config=config):
                return make_pair_sampler([image], kernel, PairConfig(scale=4, lr_patch=config.lr_patch), seed=0)

            # a discarded warm-up first: the first run of a precision compiles / autotunes its kernels
            # (seconds on a GPU), which would otherwise land in the 1-step run and make s/step negative
            _run(state, entry.build, sampler_factory, crops, replace(config, steps=1), device, precision,
                 trainable, perceptual)
            one = _run(state, entry.build, sampler_factory, crops, replace(config, steps=1), device, precision,
                       trainable, perceptual)
            many = _run(state, entry.build, sampler_factory, crops, replace(config, steps=args.steps), device,
                        precision, trainable, perceptual)
            per_step = (many - one) / (args.steps - 1)
            if per_step <= 0:  # recorded, not fatal: the rows timed so far (and after) are kept
                rows.append({"trainable": trainable, "precision": name, "error": (
                    f"the {args.steps}-step run ({many:.2f} s) was not slower than the 1-step run ({one:.2f} s): "
                    "the machine was too noisy to time; run again"), "lr_patch": config.lr_patch,
                    "batch": config.batch, "perceptual": perceptual is not None})
                _write_report(args, device, rows)
                continue
            counts = []
            for steps in (1, 3):
                counter = _OpCounter()
                _run(state, entry.build, sampler_factory, crops, replace(config, steps=steps), device, precision,
                     trainable, perceptual, counter)
                counts.append(counter.counts)
            per_step_ops = {op: (counts[1][op] - counts[0][op]) / 2 for op in counts[1]
                            if op not in VIEW_OPS and counts[1][op] != counts[0][op]}
            rows.append({"trainable": trainable, "precision": name, "s_per_step": per_step,
                         "steps_per_s": 1.0 / per_step, "setup_s": one,
                         "ops_per_step": sum(per_step_ops.values()),
                         "top_ops": dict(Counter(per_step_ops).most_common(8)),
                         "lr_patch": config.lr_patch, "batch": config.batch,
                         "perceptual": perceptual is not None})
            print(rows[-1], flush=True)
            _write_report(args, device, rows)  # after every row: a run cut off keeps what it timed

    print(_write_report(args, device, rows))
    return 1 if any("error" in r for r in rows) else 0


def _write_report(args: argparse.Namespace, device: torch.device, rows: list[dict]) -> str:
    """Write ``adaptation_speed_<tag>.{json,md}`` for the rows so far; return the Markdown."""
    label = device_label(device)
    result = {"device": label, "steps_timed": args.steps, "rows": rows,
              "note": "per-step time excludes setup (front-feature bank, evaluation) by differencing runs"}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = ("gpu" if device.type == "cuda" else "cpu") + (f"_{args.tag}" if args.tag else "")
    _atomic_text(args.out / f"adaptation_speed_{tag}.json", json.dumps(result, indent=2) + "\n")
    first = rows[0] if rows else {"batch": "?", "lr_patch": "?", "perceptual": False}
    lines = [f"# Adaptation speed ({label})", "",
             f"Real-ESRGAN x4plus, batch {first['batch']}, LR patch {first['lr_patch']}, "
             f"perceptual LPIPS-VGG {'on' if first['perceptual'] else 'off'}; time per step from "
             f"{args.steps}-step minus 1-step runs.", "",
             "| trainable | precision | s/step | steps/s | setup s (1-step run) | ATen ops/step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['trainable']} | {r['precision']} | {r['error']} | | | |")
            continue
        lines.append(f"| {r['trainable']} | {r['precision']} | {r['s_per_step']:.3f} | {r['steps_per_s']:.2f} "
                     f"| {r['setup_s']:.1f} | {r['ops_per_step']:.0f} |")
    text = "\n".join(lines) + "\n"
    _atomic_text(args.out / f"adaptation_speed_{tag}.md", text)
    return text


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    run_script(main)
