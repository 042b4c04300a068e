"""What the CPU offers: usable cores, vector ISA, native bf16, and its nominal fp32 peak (torch-free).

Detection reads Linux's ``/proc/cpuinfo``, the process's CPU affinity, the cgroup CPU quota
(containers and CI runners often see every host CPU but may use only a few) and, when the kernel
exposes it, ``cpufreq/cpuinfo_max_freq``. Elsewhere it falls back to ``os.cpu_count()`` and an
unknown clock.

Usable physical cores = min(the distinct cores of the CPUs in the affinity mask, ceil(cgroup quota)),
the cores read from the ``physical id`` and ``core id`` of each CPU in ``/proc/cpuinfo`` (so SMT
siblings count once, a mask of two CPUs on two cores counts two, and a hybrid CPU's P-cores with SMT
and E-cores without are counted right); the quota is the smallest of the process's own cgroup and
those above it. Without core ids: min(mask, ceil(quota)) / hardware threads per core (at least 1).
Intra-op thread pools should use that many threads: more threads than cores only makes the spinning
workers of OpenMP / onnxruntime steal each other's time.

Nominal fp32 peak (GFLOP/s) = usable physical cores x clock (GHz) x FMA units per core x fp32
lanes per vector x 2 (an FMA is a multiply and an add):

================================  =====  =========  =============================================
vector ISA (flags)                lanes  FMA units  notes
================================  =====  =========  =============================================
AVX-512 (``avx512f``)             16     2          Intel server cores; AMD Zen 5 (family 26)
AVX-512 on AMD Zen 4 (family 25)  16     1          512-bit FMAs issue as two 256-bit halves
AVX2 + FMA (``avx2``, ``fma``)    8      2          Intel Haswell and later, AMD Zen 2 and later
AVX2 + FMA on AMD Zen 1           8      1          family 23 below model 0x30: 128-bit FMA units
AVX without FMA                   8      1          a multiply and an add per cycle
SSE2                              4      1          a multiply and an add per cycle
================================  =====  =========  =============================================

The clock is the maximum frequency when the kernel reports it, else the ``cpu MHz`` line of
``/proc/cpuinfo`` (on virtual machines usually the base clock, so turbo can exceed the "peak").
Some Intel AVX-512 parts have one FMA unit and all parts lower their clock under heavy vector
load: the figure is a nominal ceiling, not a guarantee; pass a measured value where it matters.

A ``ISA cap`` limits the vector width used in the formula to what a library was told to use
(``ONEDNN_MAX_CPU_ISA=AVX2`` / ``ATEN_CPU_CAPABILITY=avx2`` for PyTorch). onnxruntime's MLAS
kernels choose their ISA from ``cpuid`` and have no run-time switch, so onnxruntime always runs
the CPU's own ISA.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

ISAS = ("sse2", "avx", "avx2", "avx512")
"""Vector ISA levels, narrowest first."""

_LANES = {"sse2": 4, "avx": 8, "avx2": 8, "avx512": 16}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as this process can use it."""

    model_name: str
    vendor: str  # vendor_id, e.g. GenuineIntel / AuthenticAMD ("" when unknown)
    family: int | None  # cpu family (x86), None when unknown
    model: int | None  # model number within the family, None when unknown
    flags: frozenset[str]
    logical_cpus: int  # usable logical CPUs (affinity and cgroup quota applied)
    physical_cores: int  # usable physical cores (>= 1)
    threads_per_core: int  # hardware threads per core (SMT), >= 1
    clock_mhz: float | None
    clock_source: str  # "cpuinfo_max_freq", "cpu MHz" or "unknown"

    @property
    def isa(self) -> str:
        """The widest vector ISA the CPU has: avx512, avx2 (with FMA), avx or sse2."""
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags and "fma" in self.flags:
            return "avx2"
        if "avx" in self.flags:
            return "avx"
        return "sse2"

    @property
    def native_bf16(self) -> bool:
        """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def label(self) -> str:
        """``<model name>, <n> cores, flags <the ones that matter>`` for benchmark records."""
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
        flags = " ".join(f for f in wanted if f in self.flags) or "none of avx2/avx512"
        return f"{self.model_name}, {self.physical_cores} cores, flags {flags}"


@dataclass(frozen=True)
class Fp32Peak:
    """Nominal fp32 peak and the numbers that make it (see the module docstring)."""

    cores: int
    clock_ghz: float | None
    fma_units: int
    lanes: int
    isa: str

    @property
    def gflops(self) -> float | None:
        """cores x GHz x FMA units x lanes x 2, or None when the clock is unknown."""
        if self.clock_ghz is None:
            return None
        return self.cores * self.clock_ghz * self.fma_units * self.lanes * 2

    @property
    def formula(self) -> str:
        clock = "?" if self.clock_ghz is None else f"{self.clock_ghz:.3f}"
        value = "unknown (no clock)" if self.gflops is None else f"{self.gflops:.1f} GFLOP/s"
        return (f"{self.cores} cores x {clock} GHz x {self.fma_units} FMA units x {self.lanes} fp32 lanes "
                f"({self.isa}) x 2 FLOP/FMA = {value}")


def cpu_cores(text: str) -> dict[int, tuple[str, str]]:
    """``{processor number: (physical id, core id)}`` of the ``/proc/cpuinfo`` blocks that list a core id
    (SMT siblings share one pair; the cores of a hybrid CPU with and without SMT are told apart)."""
    cores: dict[int, tuple[str, str]] = {}
    for block in text.split("\n\n"):
        fields = dict((key.strip(), value.strip()) for key, sep, value in
                      (line.partition(":") for line in block.splitlines()) if sep)
        number = _int(fields.get("processor"))
        if number is not None and "core id" in fields:
            cores[number] = (fields.get("physical id", "0"), fields["core id"])
    return cores


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` as ``{key: value}``; also counts cores.

    Adds ``_physical_cores`` (distinct (physical id, core id) pairs, "" when not listed) and
    ``_processors`` (number of processor blocks).
    """
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    processors = 0
    current: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                processors += 1
                if "core id" in current:
                    cores.add((current.get("physical id", "0"), current["core id"]))
                if not first:
                    first = dict(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    first["_physical_cores"] = str(len(cores)) if cores else ""
    first["_processors"] = str(processors)
    return first


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), *,
                     self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quotas (v2 ``cpu.max``, v1 ``cfs_quota_us``) of this process's own cgroup
    (``self_cgroup``; a service started by systemd or a job scheduler sits below the mount's root) and of
    every cgroup above it: the smallest, None when none is limited."""
    v2, v1 = _own_cgroups(self_cgroup)
    limits = [_v2_quota(folder / "cpu.max") for folder in _up_to(root, v2)]
    limits += [_v1_quota(folder) for folder in _up_to(root / "cpu", v1)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def cgroup_memory_left(root: Path = Path("/sys/fs/cgroup"), *,
                       self_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes this process's cgroups still allow (v2 ``memory.max`` less ``memory.current``, v1
    ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``), of its own cgroup and every one above it: the
    least, None when none is limited. A container's limit, which ``MemAvailable`` (the host's) does not show."""
    v2, v1 = _own_cgroups(self_cgroup, "memory")
    lefts = [_left(folder, "memory.max", "memory.current", "inactive_file") for folder in _up_to(root, v2)]
    lefts += [_left(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
              for folder in _up_to(root / "memory", v1)]
    found = [left for left in lefts if left is not None]
    return min(found) if found else None


def _left(folder: Path, limit_name: str, usage_name: str, reclaimable: str) -> int | None:
    """The limit less the usage, whose page cache not in active use (``reclaimable`` in ``memory.stat``)
    counts as free: the kernel drops it before it kills (as ``docker stats`` and the kubelet count)."""
    try:
        limit = (folder / limit_name).read_text().strip()
        if limit == "max" or int(limit) >= 2**62:  # v1 writes "no limit" as a page-rounded 2**63 - 1
            return None
        usage = int((folder / usage_name).read_text().strip())
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - max(0, usage - _stat(folder / "memory.stat", reclaimable)))


def _stat(path: Path, key: str) -> int:
    """``key``'s value in a cgroup's ``memory.stat``; 0 when it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroups(self_cgroup: Path, v1_controller: str = "cpu") -> tuple[str, str]:
    """This process's cgroup v2 path and cgroup v1 ``v1_controller`` path (``""``: the root, also when unknown)."""
    v2 = v1 = ""
    try:
        text = self_cgroup.read_text()
    except OSError:
        return v2, v1
    for line in text.splitlines():
        _, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if controllers == "":
            v2 = path
        elif v1_controller in controllers.split(","):
            v1 = path
    return v2, v1


def _up_to(base: Path, path: str) -> list[Path]:
    """``base/path`` and each folder above it up to ``base`` (only those that exist; ``..`` is never followed)."""
    parts = [part for part in path.strip("/").split("/") if part and part not in (".", "..")]
    folders = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return float(quota) / float(period) if quota != "max" and float(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        q = float((folder / "cpu.cfs_quota_us").read_text())
        p = float((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _max_freq_mhz(sys_cpu: Path) -> float | None:
    try:
        return float((sys_cpu / "cpu0" / "cpufreq" / "cpuinfo_max_freq").read_text()) / 1000.0
    except (OSError, ValueError):
        return None


def _int(text: str | None, base: int = 10) -> int | None:
    try:
        return int(text, base) if text else None
    except ValueError:
        return None


def detect_cpu(
    cpuinfo: Path = Path("/proc/cpuinfo"),
    *,
    sys_cpu: Path = Path("/sys/devices/system/cpu"),
    cgroup: Path = Path("/sys/fs/cgroup"),
    self_cgroup: Path = Path("/proc/self/cgroup"),
    affinity: int | Collection[int] | None = None,
) -> CpuInfo:
    """Detect the CPU this process runs on (see the module docstring for the rules). ``affinity``: the CPUs
    this process may run on (a count ``n`` stands for CPUs ``0..n-1``); default its affinity mask."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    info = parse_cpuinfo(text) if text else {"_physical_cores": "", "_processors": "0"}
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    allowed = set(range(affinity)) if isinstance(affinity, int) else set(affinity)
    logical = max(1, len(allowed))
    quota = cgroup_cpu_limit(cgroup, self_cgroup=self_cgroup)
    if quota is not None:
        logical = max(1, min(logical, math.ceil(quota)))
    processors = _int(info.get("_processors")) or 0
    physical_all = _int(info.get("_physical_cores"))
    tpc = 1
    if physical_all and processors > physical_all:
        tpc = max(1, round(processors / physical_all))
    elif "siblings" in info and "cpu cores" in info:
        siblings, per_socket = _int(info.get("siblings")), _int(info.get("cpu cores"))
        if siblings and per_socket and siblings > per_socket:
            tpc = max(1, siblings // per_socket)
    core_of = cpu_cores(text)
    if core_of:  # the cores the allowed CPUs sit on (a CPU that cpuinfo does not list counts as a core)
        cores = len({core_of.get(cpu, ("cpu", str(cpu))) for cpu in allowed}) if allowed else 1
        physical = max(1, min(cores, logical))  # a quota of n CPUs may run n threads on n different cores
    else:
        physical = max(1, logical // tpc)
    clock = _max_freq_mhz(sys_cpu)
    source = "cpuinfo_max_freq"
    if clock is None:
        try:
            clock = float(info["cpu MHz"]) if "cpu MHz" in info else None
        except ValueError:
            clock = None
        source = "cpu MHz" if clock is not None else "unknown"
    import platform

    return CpuInfo(
        model_name=info.get("model name") or platform.processor() or platform.machine() or "unknown CPU",
        vendor=info.get("vendor_id", ""),
        family=_int(info.get("cpu family")),
        model=_int(info.get("model")),
        flags=frozenset(info.get("flags", "").split()),
        logical_cpus=logical,
        physical_cores=physical,
        threads_per_core=tpc,
        clock_mhz=clock,
        clock_source=source,
    )


def isa_cap_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The ISA PyTorch was limited to by ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA``, if any."""
    env = os.environ if environ is None else environ
    caps = []
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in ("default",):
        caps.append("sse2")
    elif aten.startswith("avx512"):
        caps.append("avx512")
    elif aten.startswith("avx2"):
        caps.append("avx2")
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if onednn:
        if onednn.startswith("AVX512") or onednn.startswith("AVX10") or onednn == "ALL":
            caps.append("avx512")
        elif onednn.startswith("AVX2"):
            caps.append("avx2")
        elif onednn.startswith("AVX"):
            caps.append("avx")
        elif onednn.startswith("SSE"):
            caps.append("sse2")
    if not caps:
        return None
    return min(caps, key=ISAS.index)


def fp32_peak(cpu: CpuInfo, *, isa_cap: str | None = None, cores: int | None = None) -> Fp32Peak:
    """The nominal fp32 peak of ``cores`` (default: the usable physical cores) at the ISA in use."""
    isa = cpu.isa
    if isa_cap is not None:
        if isa_cap not in ISAS:
            raise ValueError(f"isa_cap must be one of {ISAS}, got {isa_cap!r}")
        isa = min(isa, isa_cap, key=ISAS.index)
    amd = cpu.vendor == "AuthenticAMD"
    if isa == "avx512":
        units = 1 if amd and cpu.family == 25 else 2
    elif isa == "avx2":
        zen1 = amd and cpu.family == 23 and (cpu.model or 0) < 0x30
        units = 1 if zen1 else 2
    else:
        units = 1
    n = cores if cores is not None else cpu.physical_cores
    clock = None if cpu.clock_mhz is None else cpu.clock_mhz / 1000.0
    return Fp32Peak(cores=n, clock_ghz=clock, fma_units=units, lanes=_LANES[isa], isa=isa)


MAX_THREADS = 1024
"""The most intra-op threads any option or ``ADASSR_THREADS`` may ask for."""


def intra_op_threads(cpu: CpuInfo | None = None) -> int:
    """Threads for one intra-op pool: the usable physical cores (``ADASSR_THREADS`` overrides; an
    override outside 1..:data:`MAX_THREADS` raises ``ConfigError``)."""
    override = os.environ.get("ADASSR_THREADS", "").strip()
    if override:
        value = _int(override)
        if value is None or not 1 <= value <= MAX_THREADS:
            from adassr.runtime.errors import ConfigError

            raise ConfigError(f"ADASSR_THREADS must be an integer from 1 to {MAX_THREADS}, got {override!r}; "
                              "unset it to use one thread per usable physical core")
        return value
    return (cpu or detect_cpu()).physical_cores


_MODEL_RE = re.compile(r"\s+")


def cpu_key(cpu: CpuInfo) -> str:
    """A short stable key for caches that depend on the CPU: model name, ISA and bf16 support."""
    name = _MODEL_RE.sub(" ", cpu.model_name).strip()
    return f"{name}|{cpu.vendor}|{cpu.family}|{cpu.model}|{cpu.isa}|bf16={int(cpu.native_bf16)}"


def report_tag(machine: str, cpu: CpuInfo | None = None) -> str:
    """The report files' name part: the machine, plus the CPU's vector ISA and bf16 for a CPU report.

    CPUs of different generations share a model name (``AMD EPYC`` is Zen 2 to Zen 5 in a VM), so a
    CPU report names the ISA too, and reports from an AVX2 and an AVX-512 machine do not overwrite
    each other.
    """
    name = machine if cpu is None else f"{machine} {cpu.isa}{' bf16' if cpu.native_bf16 else ''}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80] or "machine"


def limit_opencv_threads(threads: int) -> None:
    """Give OpenCV's pool ``threads`` threads (its default counts every logical CPU of the host)."""
    import cv2

    cv2.setNumThreads(max(1, threads))
