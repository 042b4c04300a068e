"""Shared set-up of the CPU micro-benchmarks (``memory_format.py``, ``weight_map_trunk.py``,
``cpu_contention.py``) and the source commit that benchmark records name (``adaptation_quality.py``).

Both take ``--rounds`` and ``--out``, pin torch's threads the way ``adapt`` does, and time the
backbone with its real weights against the CPU's nominal fp32 peak. Imported by those scripts only
(run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from script_cli import output_dir, positive_int

ROOT = Path(__file__).resolve().parents[1]


def parse_round_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """``--rounds`` (>= 1, default 3) and ``--out`` (default ``benchmarks/results``)."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds (>= 1)")
    parser.add_argument("--out", type=output_dir, default=ROOT / "benchmarks" / "results",
                        help="results folder (default benchmarks/results)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class CpuBench:
    cpu: Any  # adassr.runtime.cpu_info.CpuInfo
    threads: int
    peak_gflops: float | None
    model: Any  # the backbone RRDBNet in eval mode


def cpu_bench() -> CpuBench:
    """The CPU, torch's thread count as ``adapt`` sets it, the nominal fp32 peak of that many cores (at most
    the usable ones) at the ISA PyTorch may use (``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA``), as
    ``adassr bench latency``'s roofline counts it, and the backbone."""
    from adassr.adapt.cpu_setup import configure_cpu_threads
    from adassr.adapt.weights import load_backbone
    from adassr.runtime.cpu_info import detect_cpu, fp32_peak, isa_cap_from_env

    cpu = detect_cpu()
    threads = configure_cpu_threads()
    peak = fp32_peak(cpu, isa_cap=isa_cap_from_env(), cores=min(threads, cpu.physical_cores))
    return CpuBench(cpu, threads, peak.gflops, load_backbone().model.eval())


def write_results(out: Path, stem: str, cpu: Any, result: dict[str, Any], lines: list[str]) -> Path:
    """Write ``<out>/<stem>_<cpu tag>.json`` and ``.md`` atomically; returns the Markdown path."""
    import json

    from adassr.runtime.cpu_info import report_tag
    from adassr.runtime.store import atomic_write_bytes

    tag = report_tag(cpu.model_name, cpu)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{stem}_{tag}.json", (json.dumps(result, indent=1) + "\n").encode())
    markdown = out / f"{stem}_{tag}.md"
    atomic_write_bytes(markdown, ("\n".join(lines) + "\n").encode())
    print(f"wrote {markdown}")
    return markdown


def source_commit() -> str:
    """The short HEAD commit, with ``+uncommitted changes`` when tracked files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    # a run from a modified tree must not claim the commit's code
    return f"{head}+uncommitted changes" if head and changed else (head or "unknown")
