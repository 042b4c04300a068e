"""CPU detection and the nominal fp32 peak formula, on recorded /proc/cpuinfo texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from adassr.runtime.cpu_info import (
    CpuInfo,
    cgroup_cpu_limit,
    cpu_key,
    detect_cpu,
    fp32_peak,
    intra_op_threads,
    isa_cap_from_env,
    parse_cpuinfo,
)
from adassr.runtime.errors import ConfigError

AVX512_FLAGS = "fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
AVX2_FLAGS = "fpu sse sse2 avx fma avx2"


def _block(proc: int, *, core: int, flags: str, vendor: str, family: int, model: int, name: str,
           mhz: str = "2596.130", siblings: int = 2, cores: int = 2) -> str:
    return (f"processor\t: {proc}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {name}\ncpu MHz\t\t: {mhz}\nphysical id\t: 0\nsiblings\t: {siblings}\n"
            f"core id\t\t: {core}\ncpu cores\t: {cores}\nflags\t\t: {flags}\n\n")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def _epyc(tmp_path: Path) -> Path:
    kw = dict(flags=AVX512_FLAGS, vendor="AuthenticAMD", family=25, model=17, name="AMD EPYC")
    return _write(tmp_path, _block(0, core=0, **kw) + _block(1, core=1, **kw))


def _intel_smt(tmp_path: Path) -> Path:
    """2 cores with hyper-threading: 4 logical CPUs, AVX2 only."""
    kw = dict(flags=AVX2_FLAGS, vendor="GenuineIntel", family=6, model=158,
              name="Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz", siblings=4, cores=2)
    return _write(tmp_path, "".join(_block(p, core=p % 2, **kw) for p in range(4)))


def test_parse_counts_physical_cores(tmp_path: Path) -> None:
    info = parse_cpuinfo(_intel_smt(tmp_path).read_text())
    assert info["_physical_cores"] == "2"
    assert info["_processors"] == "4"
    assert info["model name"].startswith("Intel(R) Core")


def test_zen4_avx512_peak_counts_one_512_bit_fma(tmp_path: Path) -> None:
    cpu = detect_cpu(_epyc(tmp_path), sys_cpu=tmp_path / "nosys", cgroup=tmp_path / "nocg", affinity=2)
    assert (cpu.isa, cpu.native_bf16, cpu.physical_cores, cpu.threads_per_core) == ("avx512", True, 2, 1)
    assert cpu.clock_source == "cpu MHz"
    peak = fp32_peak(cpu)
    assert (peak.lanes, peak.fma_units) == (16, 1)
    assert peak.gflops == pytest.approx(2 * 2.59613 * 1 * 16 * 2)
    # Capped to AVX2 the same core still issues two 256-bit FMAs: the same FLOP per cycle.
    capped = fp32_peak(cpu, isa_cap="avx2")
    assert (capped.lanes, capped.fma_units, capped.isa) == (8, 2, "avx2")
    assert capped.gflops == pytest.approx(peak.gflops)
    assert "2 cores x 2.596 GHz x 1 FMA units x 16 fp32 lanes (avx512) x 2 FLOP/FMA" in peak.formula


def test_smt_and_max_frequency(tmp_path: Path) -> None:
    freq = tmp_path / "sys" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "cpuinfo_max_freq").write_text("3400000\n")
    cpu = detect_cpu(_intel_smt(tmp_path), sys_cpu=tmp_path / "sys", cgroup=tmp_path / "nocg", affinity=4)
    assert (cpu.isa, cpu.native_bf16, cpu.threads_per_core, cpu.physical_cores) == ("avx2", False, 2, 2)
    assert (cpu.clock_mhz, cpu.clock_source) == (3400.0, "cpuinfo_max_freq")
    peak = fp32_peak(cpu)
    assert peak.gflops == pytest.approx(2 * 3.4 * 2 * 8 * 2)
    assert "avx2 fma" in cpu.label and "avx512" not in cpu.label


def test_cgroup_quota_limits_usable_cores(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(cg) == pytest.approx(1.5)
    many = "".join(_block(p, core=p, flags=AVX2_FLAGS, vendor="GenuineIntel", family=6, model=85,
                          name="Xeon", siblings=64, cores=64) for p in range(64))
    cpu = detect_cpu(_write(tmp_path, many), sys_cpu=tmp_path / "nosys", cgroup=cg, affinity=64)
    assert cpu.logical_cpus == 2 and cpu.physical_cores == 2
    (cg / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(cg) is None


def test_cgroup_v1(tmp_path: Path) -> None:
    v1 = tmp_path / "cg1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg1") is None
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(tmp_path / "cg1") == pytest.approx(3.0)


def test_usable_cores_are_the_cores_of_the_allowed_cpus(tmp_path: Path) -> None:
    """One machine-wide SMT ratio divided the allowed CPUs: two CPUs on two cores of an SMT machine (taskset,
    or a 2-CPU quota) got one thread, and a hybrid CPU (P-cores with SMT, E-cores without) more threads than
    cores (a helper's hunt)."""
    kw = dict(flags=AVX2_FLAGS, vendor="GenuineIntel", family=6, model=151, name="Core")
    smt = _write(tmp_path, "".join(_block(p, core=p % 4, siblings=8, cores=4, **kw) for p in range(8)))
    nocg, self_cg = tmp_path / "nocg", tmp_path / "none"

    def cores(path: Path, affinity: int | set[int], cgroup: Path = nocg) -> int:
        return detect_cpu(path, sys_cpu=tmp_path, cgroup=cgroup, self_cgroup=self_cg, affinity=affinity).physical_cores

    assert cores(smt, 8) == 4 and cores(smt, {0, 4}) == 1  # siblings count once
    assert cores(smt, {0, 1}) == 2 and cores(smt, {0, 1, 2, 3}) == 4  # two CPUs on two cores: two threads
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cpu.max").write_text("200000 100000\n")
    assert cores(smt, 8, cg) == 2  # a quota of two CPUs may run on two cores
    # Alder Lake style: 2 P-cores (ids 0, 4) with SMT siblings, then 4 E-cores (ids 8-11) without
    ids = [0, 0, 4, 4, 8, 9, 10, 11]
    hybrid = _write(tmp_path, "".join(_block(p, core=c, siblings=8, cores=6, **kw) for p, c in enumerate(ids)))
    assert cores(hybrid, 8) == 6 and cores(hybrid, {0, 1, 4}) == 2


def test_the_quota_of_the_process_own_cgroup_counts(tmp_path: Path) -> None:
    """Under systemd (CPUQuota=) or a job scheduler the process's cgroup is below the mount's root, whose
    cpu.max was the only one read: a half-core quota gave two threads (a helper's hunt)."""
    root = tmp_path / "cg"
    service = root / "system.slice" / "job.service"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text("50000 100000\n")
    own = tmp_path / "self_cgroup"
    own.write_text("0::/system.slice/job.service\n")
    assert cgroup_cpu_limit(root, self_cgroup=own) == pytest.approx(0.5)
    (root / "system.slice" / "cpu.max").write_text("300000 100000\n")  # a parent's looser quota: the least counts
    (service / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup=own) == pytest.approx(3.0)
    own.write_text("0::/../../etc\n")  # never above the mount
    assert cgroup_cpu_limit(root, self_cgroup=own) is None
    _docker_v1_quota(tmp_path / "cg1")  # 1.5 CPUs for /docker/abc
    own.write_text("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    assert cgroup_cpu_limit(tmp_path / "cg1", self_cgroup=own) == pytest.approx(1.5)


def _docker_v1_quota(root: Path) -> None:
    v1 = root / "cpu" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")


def test_missing_cpuinfo_falls_back(tmp_path: Path) -> None:
    cpu = detect_cpu(tmp_path / "absent", sys_cpu=tmp_path, cgroup=tmp_path, affinity=3)
    assert cpu.physical_cores == 3 and cpu.clock_mhz is None and cpu.isa == "sse2"
    assert fp32_peak(cpu).gflops is None
    assert "unknown" in fp32_peak(cpu).formula


def test_isa_cap_from_env() -> None:
    assert isa_cap_from_env({}) is None
    assert isa_cap_from_env({"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"
    assert isa_cap_from_env({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "avx2"
    assert isa_cap_from_env({"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX2"}) == "avx2"
    assert isa_cap_from_env({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "avx512"


def test_threads_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu = detect_cpu(_epyc(tmp_path), sys_cpu=tmp_path, cgroup=tmp_path, affinity=2)
    monkeypatch.delenv("ADASSR_THREADS", raising=False)
    assert intra_op_threads(cpu) == 2
    monkeypatch.setenv("ADASSR_THREADS", "1")
    assert intra_op_threads(cpu) == 1
    monkeypatch.setenv("ADASSR_THREADS", "1024")
    assert intra_op_threads(cpu) == 1024
    for bad in ("zero", "0", "-3", "99999", "²"):  # 99999 threads once ballooned to 16 GB and never finished
        monkeypatch.setenv("ADASSR_THREADS", bad)
        with pytest.raises(ConfigError, match="ADASSR_THREADS must be an integer from 1 to 1024"):
            intra_op_threads(cpu)


def test_cpu_key_distinguishes_isa(tmp_path: Path) -> None:
    a = detect_cpu(_epyc(tmp_path), sys_cpu=tmp_path, cgroup=tmp_path, affinity=2)
    b = detect_cpu(_intel_smt(tmp_path), sys_cpu=tmp_path, cgroup=tmp_path, affinity=4)
    assert cpu_key(a) != cpu_key(b) and "bf16=1" in cpu_key(a)


def test_this_machine() -> None:
    cpu = detect_cpu()
    assert cpu.physical_cores >= 1 and cpu.logical_cpus >= cpu.physical_cores


def test_the_widest_isa_needs_fma_for_avx2_and_either_bf16_flag_counts(tmp_path: Path) -> None:
    """AVX2 without FMA (some VMs mask it) issues a multiply and an add, not two FMAs: counted as AVX;
    a CPU with AMX-BF16 but no AVX512-BF16 flag still has native bf16 (mutation testing)."""
    def cpu(flags: str) -> CpuInfo:
        return detect_cpu(_write(tmp_path, _block(0, core=0, flags=flags, vendor="GenuineIntel", family=6,
                                                  model=143, name="Xeon")),
                          sys_cpu=tmp_path / "nosys", cgroup=tmp_path / "nocg", affinity=1)

    no_fma = cpu("fpu sse sse2 avx avx2")
    assert no_fma.isa == "avx" and fp32_peak(no_fma).fma_units == 1 and fp32_peak(no_fma).lanes == 8
    assert cpu("fpu sse sse2 avx fma avx2").isa == "avx2"
    assert cpu(f"{AVX512_FLAGS} amx_tile amx_bf16".replace("avx512_bf16 ", "")).native_bf16
    assert not cpu(AVX2_FLAGS).native_bf16


def test_cgroup_quotas_nested_and_named_controllers(tmp_path: Path) -> None:
    """The tightest of the own cgroup and its parents wins, ``..`` never leaves the mount, and the v1 cpu
    controller is matched by name, not as a substring of ``cpuset`` (mutation testing)."""
    root = tmp_path / "cg"
    service = root / "slice" / "job"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text("50000 100000\n")
    (root / "slice" / "cpu.max").write_text("300000 100000\n")
    own = tmp_path / "self_cgroup"
    own.write_text("0::/slice/job\n")
    assert cgroup_cpu_limit(root, self_cgroup=own) == pytest.approx(0.5)  # own tighter than its parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cpu.max").write_text("25000 100000\n")
    own.write_text("0::/../outside\n")  # would read tmp_path/outside if `..` were followed
    assert cgroup_cpu_limit(root, self_cgroup=own) is None
    _docker_v1_quota(tmp_path / "cg1")  # 1.5 CPUs for /docker/abc
    own.write_text("4:cpu,cpuacct:/docker/abc\n5:cpuset:/elsewhere\n3:cpuacct:/elsewhere\n")
    assert cgroup_cpu_limit(tmp_path / "cg1", self_cgroup=own) == pytest.approx(1.5)
