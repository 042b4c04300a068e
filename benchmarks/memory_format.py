"""PyTorch CPU inference of the adaptation's fixed parts, NCHW against channels-last input.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/memory_format.py [--rounds 3] [--out benchmarks/results]

Times, with the backbone's real weights, the inference parts of an adaptation that run in PyTorch
outside the training step, each with an NCHW input and with the same input in channels-last
(NHWC) memory order (the model's weights stay NCHW, as in ``adapt``):

- ``weight-map trunk``: ``trunk_features`` of an LR image resized to a 256-pixel longer side
  (256 x 171 and 256 x 256), what each loss-weight map costs (``adapt/attention.py``);
- ``evaluation tail``: the tail (last 3 blocks and the upsampler) of one 128 x 128 NIQE crop,
  what every evaluation runs per crop (``adapt/loop.py``);
- ``bank front``: the frozen front (20 blocks) of 4 pairs of 24 x 24, what a training step adds
  when it draws new feature-bank pairs.

The two layouts alternate for ``--rounds`` rounds after one warm-up call each and the median is
kept, so both see the same machine load. The trunk's rate (its convolutions counted by
``export/gpu_bench.macs_per_lr_pixel``) is given in GFLOP/s and as a share of the
CPU's nominal fp32 peak (``runtime/cpu_info.py``). Results: ``<out>/memory_format_<cpu>.{json,md}``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpu_bench_setup import cpu_bench, parse_round_args, write_results
from script_cli import run_script

TAIL_FROM = 20  # the CPU default: the last 3 of 23 blocks are trained


Inputs = tuple[Any, ...]


def _cases(model: Any) -> list[tuple[str, Callable[..., Any], Inputs, float | None]]:
    """``(name, run, inputs, flop)`` per measured part; ``run(*inputs)``; ``flop`` where counted."""
    import torch

    from adassr.export.gpu_bench import macs_per_lr_pixel

    class Trunk(torch.nn.Module):  # the weight map's part of the network, for counting its convolutions
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return model.trunk_features(x)

    trunk_macs = macs_per_lr_pixel(Trunk())
    crop = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        feat, h = model.run_front(crop, TAIL_FROM)

    def tail(feat: Any, h: Any) -> Any:
        return model.run_tail(feat, h, TAIL_FROM)

    def front(x: Any) -> Any:
        return model.run_front(x, TAIL_FROM)

    return [
        ("weight-map trunk 256x171", model.trunk_features, (torch.rand(1, 3, 171, 256),),
         2 * trunk_macs * 171 * 256),
        ("weight-map trunk 256x256", model.trunk_features, (torch.rand(1, 3, 256, 256),),
         2 * trunk_macs * 256 * 256),
        ("evaluation tail, one 128x128 crop", tail, (feat, h), None),
        ("bank front, 4 pairs of 24x24", front, (torch.rand(4, 3, 24, 24),), None),
    ]


def _time(run: Callable[..., Any], inputs: Inputs, channels_last: bool) -> float:
    import torch

    layout = torch.channels_last if channels_last else torch.contiguous_format
    args = [x.contiguous(memory_format=layout) for x in inputs]
    with torch.no_grad():
        start = time.perf_counter()
        run(*args)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_round_args(__doc__, argv)

    import torch

    bench = cpu_bench()
    cpu, threads, peak, model = bench.cpu, bench.threads, bench.peak_gflops, bench.model
    rows = []
    for name, run, inputs, flop in _cases(model):
        times: dict[bool, list[float]] = {False: [], True: []}
        for layout in (False, True):
            _time(run, inputs, layout)  # warm-up: oneDNN primitive creation
        for _ in range(args.rounds):
            for layout in (False, True):
                times[layout].append(_time(run, inputs, layout))
        nchw, nhwc = (statistics.median(times[k]) for k in (False, True))
        row: dict[str, Any] = {"part": name, "nchw_s": nchw, "channels_last_s": nhwc, "speed_up": nchw / nhwc,
                               "times": {"nchw": times[False], "channels_last": times[True]}}
        if flop is not None:
            row.update(nchw_gflops=flop / nchw / 1e9, channels_last_gflops=flop / nhwc / 1e9)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    _write(args.out, cpu, threads, peak, torch.__version__, rows)
    return 0


def _write(out: Path, cpu: Any, threads: int, peak: float | None, torch_version: str,
           rows: list[dict[str, Any]]) -> None:
    result = {"cpu": cpu.label, "threads": threads, "fp32_peak_gflops": peak, "torch": torch_version, "rows": rows}
    lines = [f"# PyTorch CPU inference, NCHW vs channels-last input ({cpu.label})", "",
             f"torch {torch_version}, {threads} threads, median of the rounds (the layouts alternate); "
             f"nominal fp32 peak {'unknown' if peak is None else f'{peak:.1f} GFLOP/s'}.", "",
             "| part | NCHW s | channels-last s | speed-up | NCHW GFLOP/s (of peak) "
             "| channels-last GFLOP/s (of peak) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rates = ["-", "-"]
        if "nchw_gflops" in r and peak:
            rates = [f"{r[k]:.1f} ({r[k] / peak:.0%})" for k in ("nchw_gflops", "channels_last_gflops")]
        lines.append(f"| {r['part']} | {r['nchw_s']:.2f} | {r['channels_last_s']:.2f} | {r['speed_up']:.2f}x "
                     f"| {rates[0]} | {rates[1]} |")
    write_results(out, "memory_format", cpu, result, lines)

if __name__ == "__main__":
    run_script(main)
