"""CPU set-up for adaptation: bf16 only where native and measured faster (cached), thread pools; and the
precision ``auto`` picks on a CUDA GPU (a pure rule, tested without one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adassr.adapt.cpu_setup import (
    CACHE_FILE,
    Bf16Probe,
    ThreadGovernor,
    choose_cpu_precision,
    configure_cpu_threads,
    governed,
    measure_bf16,
    start_thread_governor,
    threads_are_automatic,
)
from adassr.adapt.precision import choose_cuda_precision, resolve_precision
from adassr.runtime.cpu_info import CpuInfo
from adassr.runtime.cpu_load import CpuLoad
from adassr.runtime.errors import ConfigError


def _cpu(*flags: str) -> CpuInfo:
    return CpuInfo(model_name="Test CPU", vendor="AuthenticAMD", family=25, model=17,
                   flags=frozenset({"avx", "avx2", "fma", *flags}), logical_cpus=2, physical_cores=2,
                   threads_per_core=1, clock_mhz=2600.0, clock_source="cpu MHz")


def _never(key: str) -> Bf16Probe:
    raise AssertionError("the probe must not run")


@pytest.fixture(autouse=True)
def _no_isa_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_without_native_bf16_fp32_and_no_probe(tmp_path: Path) -> None:
    assert choose_cpu_precision(tmp_path, cpu=_cpu(), measure=_never) == "fp32"
    assert not (tmp_path / CACHE_FILE).exists()


def test_isa_cap_below_avx512_means_no_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert choose_cpu_precision(tmp_path, cpu=_cpu("avx512f", "avx512_bf16"), measure=_never) == "fp32"


@pytest.mark.parametrize(("fp32_s", "bf16_s", "choice"), [(1.0, 0.6, "bf16"), (1.0, 0.95, "fp32"), (1.0, 2.0, "fp32")])
def test_probe_decides_once_and_is_cached(tmp_path: Path, fp32_s: float, bf16_s: float, choice: str) -> None:
    cpu = _cpu("avx512f", "avx512_bf16")
    calls: list[str] = []

    def fake(key: str) -> Bf16Probe:
        calls.append(key)
        return Bf16Probe(key, fp32_s, bf16_s)

    assert choose_cpu_precision(tmp_path, cpu=cpu, measure=fake, machine_is_quiet=lambda: True) == choice
    assert choose_cpu_precision(tmp_path, cpu=cpu, measure=_never) == choice  # from the cache
    assert len(calls) == 1
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    (key,) = data
    assert "Test CPU" in key and f"torch={torch.__version__}" in key
    assert data[key] == {"fp32_s": fp32_s, "bf16_s": bf16_s}


def test_a_full_disk_only_costs_the_probe_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The write itself failing (a full disk: StoreError, not OSError) ended the whole adaptation."""
    from adassr.runtime import store
    from adassr.runtime.errors import StoreError

    def full(*_a: object, **_k: object) -> None:
        raise StoreError("cannot write x: No space left on device")

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    with caplog.at_level("WARNING"):
        choice = choose_cpu_precision(tmp_path, cpu=_cpu("amx_bf16"), measure=lambda k: Bf16Probe(k, 1.0, 0.5),
                                      machine_is_quiet=lambda: True)
    assert choice == "bf16" and "could not cache the bf16 probe" in caplog.text


def test_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_text("{not json")
    cpu = _cpu("amx_bf16")
    assert choose_cpu_precision(tmp_path, cpu=cpu, measure=lambda k: Bf16Probe(k, 1.0, 0.5),
                                machine_is_quiet=lambda: True) == "bf16"
    assert json.loads((tmp_path / CACHE_FILE).read_text())


def test_real_probe_times_both() -> None:
    probe = measure_bf16("k", repeats=1)
    assert probe.fp32_s > 0 and probe.bf16_s > 0 and probe.choice in ("bf16", "fp32")


def test_threads_follow_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ADASSR_THREADS", "1")
        assert configure_cpu_threads() == 1 and torch.get_num_threads() == 1
        assert configure_cpu_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_time_budget_counts_the_set_up() -> None:
    import time

    from adassr.adapt.config import AdaptConfig
    from adassr.adapt.run import _training_budget

    config = AdaptConfig(time_budget=100.0)
    left = _training_budget(config, time.perf_counter() - 30.0).time_budget
    assert left is not None and 69.0 < left <= 70.0
    assert _training_budget(config, time.perf_counter() - 500.0).time_budget == 1e-3  # still evaluates once
    assert _training_budget(AdaptConfig(), time.perf_counter()).time_budget is None


def test_probe_on_a_busy_machine_is_not_cached(tmp_path: Path) -> None:
    cpu = _cpu("avx512f", "avx512_bf16")
    calls: list[str] = []

    def fake(key: str) -> Bf16Probe:
        calls.append(key)
        return Bf16Probe(key, 1.0, 0.5)

    for _ in range(2):
        assert choose_cpu_precision(tmp_path, cpu=cpu, measure=fake, machine_is_quiet=lambda: False) == "bf16"
    assert len(calls) == 2  # measured again: the busy-machine timing was not kept
    assert not (tmp_path / CACHE_FILE).exists()


class _ScriptedLoad:
    """A CpuLoadMonitor stand-in that replays other processes' busy CPUs (None: not measurable)."""

    def __init__(self, *busy: float | None, cpus: int = 2) -> None:
        self._busy = list(busy)
        self._cpus = cpus
        self.calls = 0

    def since_last(self) -> CpuLoad | None:
        self.calls += 1
        value = self._busy.pop(0)
        return None if value is None else CpuLoad(value, self._cpus)


def test_governor_shrinks_while_others_are_busy_and_grows_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    sizes: list[int] = []
    load = _ScriptedLoad(0.1, 1.0, 1.4, None, 0.2)
    governor = ThreadGovernor(2, interval_s=5.0, monitor=load, clock=lambda: now[0],
                              set_threads=sizes.append)
    caplog.set_level("INFO", logger="adassr.adapt.cpu_setup")
    assert governor.adjust(force=True) == 2 and sizes == []  # light load: nothing to change
    now[0] = 3.0
    assert governor.adjust() == 2 and load.calls == 1  # within the interval: not even measured
    now[0] = 5.0
    assert governor.adjust() == 1 and sizes == [1]  # one CPU busy elsewhere
    now[0] = 10.0
    assert governor.adjust() == 1 and sizes == [1]  # still busy: no change, no call
    now[0] = 15.0
    assert governor.adjust() == 1  # not measurable: keep what we have
    now[0] = 20.0
    assert governor.adjust() == 2 and sizes == [1, 2]  # the others finished
    assert governor.changes == [(2, 1, 1.0), (1, 2, 0.2)]
    levels = {r.getMessage().split(": ")[1].split(" (")[0]: r.levelname for r in caplog.records}
    assert levels == {"shrinking from 2 to 1 threads": "WARNING", "growing from 1 to 2 threads": "INFO"}
    # the weights depend on the thread count: the warning says how to get the same weights in a rerun
    assert "ADASSR_THREADS=N fixes it, for the same weights in a rerun" in caplog.records[0].getMessage()


def test_governed_progress_adjusts_before_every_event() -> None:
    from adassr.adapt.loop import ProgressEvent

    load = _ScriptedLoad(1.0, 1.0, 1.0)
    sizes: list[int] = []
    governor = ThreadGovernor(2, interval_s=0.0, monitor=load, set_threads=sizes.append)
    seen: list[int] = []
    call = governed(lambda event: seen.append(event.step), governor)
    assert call is not None
    for step in (1, 2):
        call(ProgressEvent(step, 10, 0.5, None))
    assert seen == [1, 2] and load.calls == 2 and sizes == [1]
    assert governed(None, None) is None
    quiet = governed(None, governor)
    assert quiet is not None
    quiet(ProgressEvent(3, 10, 0.5, None))  # no caller's callback: still governed


def test_governor_sets_the_real_pools() -> None:
    before = torch.get_num_threads()
    governor = ThreadGovernor(max(2, before), interval_s=0.0, monitor=_ScriptedLoad(1.0, 0.0))
    try:
        assert governor.adjust() == max(2, before) - 1 == torch.get_num_threads()
        assert governor.adjust() == max(2, before) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_are_automatic_unless_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADASSR_THREADS", raising=False)
    assert threads_are_automatic()
    monkeypatch.setenv("ADASSR_THREADS", "2")
    assert not threads_are_automatic()


def test_start_thread_governor_only_for_automatic_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ADASSR_THREADS", "2")
        assert start_thread_governor(2) is None
        monkeypatch.delenv("ADASSR_THREADS")
        governor = start_thread_governor(2)  # has looked once already: the pools fit what is free now
        assert governor is not None and 1 <= governor.threads <= 2 and governor.max_threads == 2
        assert len(governor.changes) == (governor.threads != 2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("capability", "tf32", "expected"), [
    ((9, 0), True, "fp32"),  # Hopper: TF32 convolutions, measured faster than autocast
    ((8, 0), True, "fp32"),  # Ampere
    ((8, 6), False, "bf16"),  # TF32 switched off by the user: native bf16 autocast
    ((7, 5), True, "fp16"),  # Turing: no TF32, no native bf16
    ((7, 0), False, "fp16"),  # Volta
    ((6, 1), True, "fp32"),  # Pascal: no tensor cores, fp16 at a fraction of the fp32 rate
])
def test_cuda_auto_precision_follows_tf32_and_bf16_support(capability: tuple[int, int], tf32: bool,
                                                           expected: str) -> None:
    name, reason = choose_cuda_precision(capability, tf32_convolutions=tf32)
    assert name == expected
    assert reason  # the log line says why


def test_cpu_auto_precision_is_a_cpu_precision() -> None:
    precision = resolve_precision("auto", torch.device("cpu"))
    assert precision.name in ("fp32", "bf16") and precision.device_type == "cpu"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not valid"):
        resolve_precision("int8", torch.device("cpu"))
