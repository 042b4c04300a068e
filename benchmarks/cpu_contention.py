"""CPU adaptation while other processes use the same cores: a fixed thread pool vs the thread governor.

Runs the real internal training step (Real-ESRGAN x4plus, the CPU defaults' tail mode, batch and
patch, perceptual term on when its weights are present) on a bundled photo while other processes
keep 0, 0.1, 0.25, 0.5, 1 and 2 CPUs busy (``python -c "while True: pass"`` per whole CPU, and
one process busy that share of every 20 ms for a fraction), in three modes:

- ``fixed``: one thread per usable physical core for the whole run (adassr before the governor,
  and what ``ADASSR_THREADS`` still does);
- ``one``: one thread for the whole run (``ADASSR_THREADS=1``), where the governor's rule is tested;
- ``governed``: :class:`adassr.adapt.cpu_setup.ThreadGovernor` as ``adapt`` uses it: a first look
  of 0.25 s before training, then a re-check at most every 5 s between steps.

Reports the median and mean seconds per training step (steps 2 to N-1: step 1 samples the bank of
pairs, step N evaluates) and the governor's changes.

    python benchmarks/cpu_contention.py [--steps 12] [--loads 0 0.1 0.25 0.5 1 2] [--precision auto|fp32|bf16]

Writes benchmarks/results/cpu_contention_<cpu tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_cli import output_dir, run_script  # noqa: E402

SAMPLE = ROOT / "samples" / "cameras" / "nokia" / "iptc.jpg"
RESULTS = ROOT / "benchmarks" / "results"
BUSY_CODE = "while True: pass"


DUTY_CODE = """
import time
duty, period = {duty!r}, 0.02
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < duty * period:
        pass
    time.sleep((1.0 - duty) * period)
"""


def load_commands(load: float) -> list[list[str]]:
    """Processes that together keep ``load`` CPUs busy: whole spinners, plus one busy that share of
    every 20 ms for a fractional part (>= 0.01)."""
    whole, part = int(load), round(load - int(load), 3)
    commands = [[sys.executable, "-c", BUSY_CODE] for _ in range(whole)]
    if part >= 0.01:
        commands.append([sys.executable, "-c", DUTY_CODE.format(duty=part)])
    return commands


@contextmanager
def busy_processes(load: float) -> Iterator[None]:
    """Other processes keeping ``load`` CPUs busy for the duration of the block (killed on exit, whatever happens)."""
    # a session of their own: a Ctrl-C in the terminal stops this process, which kills them (no traceback of theirs)
    children = [subprocess.Popen(command, start_new_session=True) for command in load_commands(load)]
    try:
        time.sleep(1.0 if children else 0.0)  # let them start spinning
        yield
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


def step_times(run: Callable[[Callable[[object], None]], None]) -> list[float]:
    """Seconds per training step of one run, steps 2 to N-1 (step 1 samples the bank, step N evaluates)."""
    stamps: list[float] = []

    def on_event(event: object) -> None:
        if getattr(event, "step", 0) >= 1:
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    run(on_event)
    marks = [start, *stamps]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)][1:-1]  # not set-up + step 1, nor step N


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0],
                        help="other processes' load in CPUs (whole spinners plus a duty-cycled one)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be at least 4 (steps 2 to N-1 are timed)")
    if any(not 0 <= load <= 64 for load in args.loads):
        parser.error("--loads must be between 0 and 64 CPUs")

    from adassr.adapt.config import cpu_demo_defaults
    from adassr.adapt.cpu_setup import ThreadGovernor, configure_cpu_threads, governed, start_thread_governor
    from adassr.adapt.degradation import gaussian_kernel
    from adassr.adapt.loop import evaluation_crops, run_internal_step
    from adassr.adapt.pairs import PairConfig, make_pair_sampler
    from adassr.adapt.precision import resolve_precision
    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.quality.lpips_weights import lpips_weights_present
    from adassr.adapt.weights import load_backbone
    from adassr.runtime.cpu_info import detect_cpu
    from adassr.runtime.images import read_image, to_float32

    os.environ.pop("ADASSR_THREADS", None)
    cpu = detect_cpu()
    threads = configure_cpu_threads()
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device)  # decided before any busy process starts
    image = to_float32(read_image(SAMPLE).pixels)
    kernel = gaussian_kernel(1.6, 1.6, 0.0, scale=4)
    backbone = load_backbone(device="cpu")
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    perceptual = load_lpips("vgg", device=device) if lpips_weights_present("vgg") else None
    base = cpu_demo_defaults()
    config = replace(base, steps=args.steps, eval_every=10**6, time_budget=None)
    crops = evaluation_crops([image], base.eval_crop, 1)

    def run_once(progress: Callable[[object], None]) -> None:
        model = backbone.entry.build()
        model.load_state_dict(state)
        sampler = make_pair_sampler([image], kernel, PairConfig(scale=4, lr_patch=config.lr_patch), seed=0)
        result = run_internal_step(model, sampler, crops, lambda sr: torch.zeros(sr.shape[0]), config, device=device,
                                   precision=precision, trainable="tail", perceptual=perceptual, progress=progress)
        if result.interrupted is not None:  # the loop caught Ctrl-C: stop here, not after every load's runs
            raise KeyboardInterrupt

    rows = []
    for load in args.loads:
        for mode in ("fixed", "one", "governed"):
            configure_cpu_threads(1 if mode == "one" else threads)
            with busy_processes(load):
                governor = start_thread_governor(threads) if mode == "governed" else None

                def run(progress: Callable[[object], None], gov: ThreadGovernor | None = governor) -> None:
                    run_once(governed(progress, gov))  # type: ignore[arg-type]

                times = step_times(run)
            row = {"other_load_cpus": load, "mode": mode, "steps_timed": len(times),
                   "median_s_per_step": statistics.median(times), "mean_s_per_step": statistics.fmean(times),
                   "threads_at_end": torch.get_num_threads(),
                   "changes": [] if governor is None else [list(c) for c in governor.changes]}
            rows.append(row)
            print(row, flush=True)
    configure_cpu_threads(threads)

    from cpu_bench_setup import source_commit, write_results

    result = {"cpu": cpu.label, "threads": threads, "precision": precision.name, "steps": args.steps,
              "lr_patch": config.lr_patch, "batch": config.batch, "perceptual": perceptual is not None,
              "commit": source_commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    lines = [f"# CPU adaptation with other processes on the cores ({cpu.label})", "",
             f"Real internal step, tail mode, {precision.name}, batch {config.batch}, LR patch {config.lr_patch}, "
             f"perceptual {'on' if perceptual is not None else 'off'}; {threads} threads when alone; "
             f"steps 2-{args.steps - 1} timed. Other processes: `python -c \"{BUSY_CODE}\"` per whole CPU, one "
             f"busy that share of every 20 ms for the fraction. "
             f"Commit {result['commit']}, {result['date']}.", "",
             "| others' load (CPUs) | mode | median s/step | mean s/step | threads at end | governor changes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        changes = ", ".join(f"{a}->{b} ({busy:.2f} CPUs busy)" for a, b, busy in r["changes"]) or "-"
        lines.append(f"| {r['other_load_cpus']:g} | {r['mode']} | {r['median_s_per_step']:.3f} | "
                     f"{r['mean_s_per_step']:.3f} | {r['threads_at_end']} | {changes} |")
    write_results(args.out, "cpu_contention", cpu, result, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_script(main)
