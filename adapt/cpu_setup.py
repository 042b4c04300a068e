"""CPU set-up for adaptation: thread pools sized to the usable physical cores, and bf16 only where it pays.

Threads: PyTorch's intra-op pool and OpenCV's pool get one thread per usable physical core
(:func:`adassr.runtime.cpu_info.intra_op_threads`: affinity, cgroup quota and SMT applied;
``ADASSR_THREADS`` overrides), PyTorch's inter-op pool one thread. More threads than cores make
OpenMP's spinning workers steal each other's time, which on a CPU-limited container costs far more
than it gains.

Precision (``--precision auto`` on CPU): fp32 unless the CPU executes bf16 natively
(``avx512_bf16`` or ``amx_bf16``, and PyTorch not limited below AVX-512 by ``ATEN_CPU_CAPABILITY`` /
``ONEDNN_MAX_CPU_ISA``) *and* a short start-up probe measured bf16 autocast faster than fp32: a
train step of a stack of RRDBNet-shaped convolutions, best of three each, alternated. The verdict
is cached in ``<cache dir>/cpu_precision.json`` keyed by the CPU (model, ISA, bf16 flag), the
torch version and the thread count, so the probe runs once per machine. Without native bf16,
PyTorch emulates it and it is slower than fp32: nothing is measured and fp32 is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from adassr.runtime.cpu_info import (
    CpuInfo,
    cpu_key,
    detect_cpu,
    intra_op_threads,
    isa_cap_from_env,
    limit_opencv_threads,
)
from adassr.runtime.cpu_load import CpuLoadMonitor, LoadSource

if TYPE_CHECKING:
    from adassr.adapt.loop import ProgressEvent

log = logging.getLogger(__name__)

CACHE_FILE = "cpu_precision.json"
GOVERNOR_FIRST_LOOK_S = 0.25
"""How long :func:`start_thread_governor` watches other processes before its first decision."""
BF16_MIN_SPEEDUP = 1.1
"""bf16 is chosen only when the probe ran at least this much faster than fp32."""


def _set_pools(n: int) -> None:
    torch.set_num_threads(n)
    limit_opencv_threads(n)


def configure_cpu_threads(threads: int | None = None) -> int:
    """Size PyTorch's and OpenCV's pools (see the module docstring); returns the intra-op thread count."""
    n = threads or intra_op_threads()
    _set_pools(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op work
        torch.set_num_interop_threads(1)
    return n


def threads_are_automatic() -> bool:
    """True unless ``ADASSR_THREADS`` fixes the thread count."""
    return not os.environ.get("ADASSR_THREADS", "").strip()


class ThreadGovernor:
    """Shrinks the intra-op pools while other processes use this process's cores, and grows them back.

    :meth:`adjust` is called between training steps; at most every ``interval_s`` seconds it reads
    how busy other processes kept the CPUs since its previous reading
    (:class:`adassr.runtime.cpu_load.CpuLoadMonitor`) and sets the pools to the cores they left
    free, between 1 and ``max_threads`` (see :mod:`adassr.runtime.cpu_load` for why).
    """

    def __init__(self, max_threads: int, *, threads_per_core: int = 1, interval_s: float = 5.0,
                 monitor: LoadSource | None = None, clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = _set_pools) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self.max_threads = max_threads
        self.threads = max_threads
        self._tpc = threads_per_core
        self._interval = interval_s
        self._monitor: LoadSource = monitor if monitor is not None else CpuLoadMonitor()
        self._clock = clock
        self._set = set_threads
        self._last_check = clock()
        self.changes: list[tuple[int, int, float]] = []
        """(from, to, other processes' busy CPUs) for each change, in order."""

    def adjust(self, *, force: bool = False) -> int:
        """Re-size the pools if the interval has passed (or ``force``); returns the thread count in use."""
        now = self._clock()
        if not force and now - self._last_check < self._interval:
            return self.threads
        self._last_check = now
        load = self._monitor.since_last()
        if load is None:
            return self.threads
        wanted = load.threads_left_free(self.max_threads, self._tpc)
        if wanted != self.threads:
            # the first change is a warning (it explains a slower run), later ones are details
            log.log(logging.INFO if self.changes else logging.WARNING,
                    "other processes kept %.1f of %d CPUs busy: %s from %d to %d threads (the weights depend on the "
                    "thread count in their last bits; ADASSR_THREADS=N fixes it, for the same weights in a rerun)",
                    load.busy_cpus, load.cpus, "shrinking" if wanted < self.threads else "growing",
                    self.threads, wanted)
            self.changes.append((self.threads, wanted, load.busy_cpus))
            self._set(wanted)
            self.threads = wanted
        return self.threads


def start_thread_governor(max_threads: int) -> ThreadGovernor | None:
    """A :class:`ThreadGovernor` for pools of ``max_threads`` that has already looked at the other
    processes for :data:`GOVERNOR_FIRST_LOOK_S` and sized the pools; None when ``ADASSR_THREADS``
    fixes the count."""
    if not threads_are_automatic():
        return None
    governor = ThreadGovernor(max_threads, threads_per_core=detect_cpu().threads_per_core)
    time.sleep(GOVERNOR_FIRST_LOOK_S)
    governor.adjust(force=True)
    return governor


def governed(progress: Callable[[ProgressEvent], None] | None,
             governor: ThreadGovernor | None) -> Callable[[ProgressEvent], None] | None:
    """``progress`` with :meth:`ThreadGovernor.adjust` called before it on every event (each training step)."""
    if governor is None:
        return progress

    def call(event: ProgressEvent) -> None:
        governor.adjust()
        if progress is not None:
            progress(event)

    return call


def torch_has_native_bf16(cpu: CpuInfo | None = None) -> bool:
    """True when the CPU has bf16 instructions and PyTorch is allowed to use AVX-512."""
    cpu = cpu or detect_cpu()
    cap = isa_cap_from_env()
    return cpu.native_bf16 and cap in (None, "avx512")


@dataclass(frozen=True)
class Bf16Probe:
    """One start-up measurement (seconds per probe step, best of three)."""

    key: str
    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s

    @property
    def choice(self) -> str:
        return "bf16" if self.speedup >= BF16_MIN_SPEEDUP else "fp32"


def _probe_step_fn(bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    convs = nn.Sequential(
        nn.Conv2d(64, 32, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 64, 3, padding=1),
    )
    x = torch.rand(4, 64, 48, 48)

    def step() -> None:
        convs.zero_grad(set_to_none=True)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = convs(x)
        else:
            y = convs(x)
        y.float().square().mean().backward()

    return step


def measure_bf16(key: str, repeats: int = 3) -> Bf16Probe:
    """Time the probe step in fp32 and in bf16 autocast, alternating; best of ``repeats`` each."""
    steps = {"fp32": _probe_step_fn(False), "bf16": _probe_step_fn(True)}
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for fn in steps.values():
        fn()  # warm-up (oneDNN primitive creation)
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return Bf16Probe(key, best["fp32"], best["bf16"])


def probe_key(cpu: CpuInfo | None = None) -> str:
    cpu = cpu or detect_cpu()
    return f"{cpu_key(cpu)}|torch={torch.__version__}|threads={torch.get_num_threads()}"


def _load_is_low(cpu: CpuInfo) -> bool:
    try:
        return os.getloadavg()[0] <= cpu.logical_cpus
    except OSError:  # no load average on this platform: trust the probe
        return True


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose_cpu_precision(
    cache_dir: Path | None = None,
    *,
    cpu: CpuInfo | None = None,
    measure: Callable[[str], Bf16Probe] = measure_bf16,
    machine_is_quiet: Callable[[], bool] | None = None,
) -> str:
    """``bf16`` or ``fp32`` for ``--precision auto`` on CPU (see the module docstring).

    A probe is cached only when ``machine_is_quiet()`` (default: the 1-minute load average is at
    most the usable logical CPUs) held before it ran: a timing taken while other processes
    compete for the cores decides this run only and is measured again next time.
    """
    cpu = cpu or detect_cpu()
    if not torch_has_native_bf16(cpu):
        return "fp32"
    if cache_dir is None:
        from adassr.adapt.weights.cache import default_cache_dir

        cache_dir = default_cache_dir()
    path = cache_dir / CACHE_FILE
    key = probe_key(cpu)
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict):
        try:
            probe = Bf16Probe(key, float(entry["fp32_s"]), float(entry["bf16_s"]))
            if probe.fp32_s > 0 and probe.bf16_s > 0:
                return probe.choice
        except (KeyError, TypeError, ValueError):
            pass  # a damaged entry is measured again
    quiet = machine_is_quiet() if machine_is_quiet is not None else _load_is_low(cpu)
    probe = measure(key)
    log.info("bf16 probe on %s: fp32 %.3f s, bf16 %.3f s (%.2fx) -> %s",
             cpu.model_name, probe.fp32_s, probe.bf16_s, probe.speedup, probe.choice)
    if not quiet:
        log.info("bf16 probe not cached: other processes were using the CPU (load average above %d)",
                 cpu.logical_cpus)
        return probe.choice
    from adassr.runtime.errors import StoreError
    from adassr.runtime.store import atomic_write_bytes

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = {k: v for k, v in asdict(probe).items() if k != "key"}
        atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except (OSError, StoreError) as exc:  # a read-only or full cache only costs the probe next time
        log.warning("could not cache the bf16 probe in %s: %s", path, exc)
    return probe.choice
