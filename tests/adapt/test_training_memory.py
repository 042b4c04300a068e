"""The CPU training memory check: a batch the machine cannot hold fails before the set-up, with the
batch that fits, instead of the kernel's out-of-memory killer ending the run minutes on without a word."""

from __future__ import annotations

from pathlib import Path

import pytest

from adassr.adapt.config import cpu_demo_defaults
from adassr.adapt.training_memory import bank_pairs, check_training_memory, training_bytes
from adassr.runtime.cpu_info import cgroup_memory_left
from adassr.runtime.errors import ConfigError

GB = 1024**3


def test_the_cpu_defaults_fit_a_small_machine_and_a_batch_of_512_does_not() -> None:
    config = cpu_demo_defaults()
    assert training_bytes(config, scale=4, trainable="tail") < 2 * GB  # the README's main job on a 4 GB box
    check_training_memory(config, scale=4, trainable="tail", available=2 * GB)
    huge = config.with_overrides(batch=512)
    with pytest.raises(ConfigError, match=r"--batch 512 at --patch 24 \(tail parameters\) needs about "
                                          r"3\d\.\d GB of memory, and 16\.0 GB is left: use --batch (\d+) or less"):
        check_training_memory(huge, scale=4, trainable="tail", available=16 * GB)


@pytest.mark.parametrize("trainable", ["tail", "all"])
def test_the_batch_named_is_the_largest_that_fits(trainable: str) -> None:
    config = cpu_demo_defaults().with_overrides(batch=300)
    available = 8 * GB
    with pytest.raises(ConfigError, match=r"use --batch \d+ or less") as caught:
        check_training_memory(config, scale=4, trainable=trainable, available=available)
    named = int(str(caught.value).split("use --batch ")[1].split()[0])
    check_training_memory(config.with_overrides(batch=named), scale=4, trainable=trainable, available=available)
    with pytest.raises(ConfigError):
        check_training_memory(config.with_overrides(batch=named + 1), scale=4, trainable=trainable,
                              available=available)


def test_all_parameters_need_more_than_the_tail_and_the_bank_is_counted_in_tail_mode_only() -> None:
    config = cpu_demo_defaults()
    assert bank_pairs(config) == config.feature_bank  # 200 pairs: 50 steps of 4 draw as many
    assert bank_pairs(config.with_overrides(batch=512)) == 512  # at least a batch
    assert training_bytes(config.with_overrides(batch=64), scale=4, trainable="all") > \
        training_bytes(config.with_overrides(batch=64), scale=4, trainable="tail")
    without_vgg = config.with_overrides(lambda_perceptual=0.0)  # no LPIPS-VGG features in the bank
    assert training_bytes(without_vgg, scale=4, trainable="tail") < training_bytes(config, scale=4, trainable="tail")
    small_bank = config.with_overrides(feature_bank=8)
    assert training_bytes(small_bank, scale=4, trainable="tail") < training_bytes(config, scale=4, trainable="tail")
    assert training_bytes(small_bank, scale=4, trainable="all") == training_bytes(config, scale=4, trainable="all")


def test_no_batch_fits_says_what_else_to_do() -> None:
    with pytest.raises(ConfigError, match="even --batch 1 does not fit: lower --patch, or free memory"):
        check_training_memory(cpu_demo_defaults(), scale=4, trainable="tail", available=256 * 1024**2)


def test_the_memory_left_is_the_least_known_and_unknown_memory_is_no_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.adapt.training_memory as tm

    monkeypatch.setattr(tm, "mem_available_bytes", lambda: 20 * GB)
    monkeypatch.setattr(tm, "cgroup_memory_left", lambda: 3 * GB)  # a container's limit, below the host's memory
    assert tm.memory_left_bytes() == 3 * GB
    with pytest.raises(ConfigError, match=r"and 3\.0 GB is left"):
        check_training_memory(cpu_demo_defaults().with_overrides(batch=64), scale=4, trainable="tail")
    monkeypatch.setattr(tm, "mem_available_bytes", lambda: None)
    monkeypatch.setattr(tm, "cgroup_memory_left", lambda: None)
    assert tm.memory_left_bytes() is None
    check_training_memory(cpu_demo_defaults().with_overrides(batch=512), scale=4, trainable="all")  # not refused


def _cgroup(tmp_path: Path, lines: str) -> Path:
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(lines)
    return self_cgroup


def test_a_containers_memory_limit_is_read_from_its_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    own = root / "system.slice" / "job.service"
    own.mkdir(parents=True)
    (own / "memory.max").write_text("4294967296\n")
    (own / "memory.current").write_text("1073741824\n")
    (root / "system.slice" / "memory.max").write_text("max\n")
    v2 = _cgroup(tmp_path, "0::/system.slice/job.service\n")
    assert cgroup_memory_left(root, self_cgroup=v2) == 3 * GB
    (root / "system.slice" / "memory.max").write_text(f"{2 * GB}\n")  # a parent's smaller limit counts
    (root / "system.slice" / "memory.current").write_text(f"{GB}\n")
    assert cgroup_memory_left(root, self_cgroup=v2) == GB
    # page cache the kernel can drop is no use: a container that read 3 GB of photos (a helper's review)
    (own / "memory.current").write_text(f"{3 * GB + GB // 2}\n")
    (own / "memory.stat").write_text(f"anon {GB // 2}\nfile {3 * GB}\nactive_file 0\ninactive_file {3 * GB}\n")
    (root / "system.slice" / "memory.max").write_text("max\n")
    assert cgroup_memory_left(root, self_cgroup=v2) == 4 * GB - GB // 2

    v1_root = tmp_path / "v1"
    mine = v1_root / "memory" / "docker" / "abc"
    mine.mkdir(parents=True)
    (mine / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (mine / "memory.usage_in_bytes").write_text("123\n")
    v1 = _cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu:/\n")
    assert cgroup_memory_left(v1_root, self_cgroup=v1) is None
    (mine / "memory.limit_in_bytes").write_text(f"{2 * GB}\n")
    (mine / "memory.usage_in_bytes").write_text(f"{GB // 2}\n")
    assert cgroup_memory_left(v1_root, self_cgroup=v1) == GB + GB // 2
    (mine / "memory.stat").write_text(f"cache {GB // 4}\ninactive_file 0\ntotal_inactive_file {GB // 4}\n")
    assert cgroup_memory_left(v1_root, self_cgroup=v1) == GB + GB // 2 + GB // 4
    assert cgroup_memory_left(tmp_path / "none", self_cgroup=tmp_path / "absent") is None


def test_the_bank_holds_no_more_pairs_than_a_period_or_the_run_draws() -> None:
    config = cpu_demo_defaults()  # batch 4, a bank of 200
    assert bank_pairs(config.with_overrides(eval_every=10)) == 40  # a period of 10 steps draws 40 pairs
    assert bank_pairs(config.with_overrides(steps=5)) == 20  # a run of 5 steps (shorter than a period) draws 20


def test_the_set_up_is_counted_once_on_top_of_the_batch() -> None:
    from adassr.adapt.training_memory import SETUP_BYTES

    config = cpu_demo_defaults()
    one, two = (training_bytes(config.with_overrides(batch=b), scale=4, trainable="all") for b in (1, 2))
    assert one - (two - one) == SETUP_BYTES  # what a batch of none would still need


def test_the_limits_are_inclusive_and_a_batch_of_one_is_named() -> None:
    config = cpu_demo_defaults().with_overrides(batch=11)
    exactly = training_bytes(config, scale=4, trainable="tail")
    check_training_memory(config, scale=4, trainable="tail", available=exactly)  # equal to what is left: fits
    ten = training_bytes(config.with_overrides(batch=10), scale=4, trainable="tail")
    with pytest.raises(ConfigError, match=r"use --batch 10 or less"):
        check_training_memory(config, scale=4, trainable="tail", available=ten)
    one = training_bytes(config.with_overrides(batch=1), scale=4, trainable="tail")
    with pytest.raises(ConfigError, match=r"use --batch 1 or less"):  # not "even --batch 1 does not fit"
        check_training_memory(config, scale=4, trainable="tail", available=one)
