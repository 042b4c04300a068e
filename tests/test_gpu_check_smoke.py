"""The GPU check script in its CPU smoke mode (tiny sizes, seconds), and the weights carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_carry  # noqa: E402
import gpu_suite  # noqa: E402


def test_gpu_check_cpu_smoke_runs_every_section(tmp_path: Path) -> None:
    # TMPDIR: its own list of process groups (a run kills what an earlier, killed run left in the list)
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["mode"] == "cpu-smoke"
    assert list(summary["sections"]) == ["env", "gpu_tests", "latency", "niqe", "adapt_speed", "attention",
                                           "adapt_full"]
    assert all(s["status"] == "ok" for s in summary["sections"].values()), summary
    latency = summary["sections"]["latency"]
    modes = [row["mode"] for row in latency["rows"]]
    assert "torch fp32 (device)" in modes and "torch bf16 channels_last (end-to-end)" in modes
    assert all(row["p50_ms"] > 0 and row["fraction_of_bound"] is None for row in latency["rows"])
    assert latency["roofline"]["flop"] == pytest.approx(2 * latency["roofline"]["macs_per_lr_pixel"] * 24 * 32)
    assert any("TensorRT" in note for note in latency["skipped"])
    assert summary["sections"]["niqe"]["max_abs_diff"] < 1e-3
    assert "GPU check" in (tmp_path / "gpu_check.md").read_text()
    # the attention GPU tests ran through the sharded pytest plumbing and skipped on the CPU
    sharded = summary["sections"]["attention"]["gpu_tests"]
    assert sharded["status"] == "ok" and sharded["shards"] == 2
    assert sharded["collected"] >= 30 and sharded["counts"] == {"skipped": sharded["collected"]}


def test_full_groups_reach_the_adapt_full_section_and_widen_its_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_FULL_GROUPS", "_FULL_SEED"):  # main() sets them; restored after the test
        monkeypatch.setattr(gpu_suite, name, getattr(gpu_suite, name))
    assert gpu_suite.adapt_full_limit_s(1) == gpu_suite.SECTION_LIMITS_S["adapt_full"]
    assert gpu_suite.adapt_full_limit_s(3) == gpu_suite.adapt_full_limit_s(1) + 2 * gpu_suite.ADAPT_FULL_EXTRA_GROUP_S
    with pytest.raises(ValueError, match="at least one group"):
        gpu_suite.adapt_full_limit_s(0)
    code = gpu_suite.main(["--out", str(tmp_path), "--only", "adapt_full", "--cpu-smoke",
                           "--full-groups", "fuji-noisy, canon-bicubic", "--full-seed", "2"])
    assert code == 0
    section = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["adapt_full"]
    assert section["status"] == "ok" and section["groups"] == ["fuji-noisy", "canon-bicubic"]
    assert section["seed"] == 2
    for bad in (["--full-groups", " , "], ["--full-seed", "-1"]):  # refused by argparse, with a message
        with pytest.raises(SystemExit):
            gpu_suite.main(["--out", str(tmp_path), "--only", "adapt_full", *bad])
    for nothing in ("", " , "):  # crashed with FileNotFoundError on the gpu_check.md it never wrote
        with pytest.raises(SystemExit):
            gpu_suite.main(["--out", str(tmp_path / "none"), "--only", nothing, "--cpu-smoke"])


def test_adapt_full_passes_its_groups_and_seed_to_the_quality_benchmark(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], float]] = []
    monkeypatch.setattr(gpu_suite, "_run_script", lambda args, limit: calls.append((args, limit)) or {"status": "ok"})
    monkeypatch.setattr(gpu_suite, "_FULL_GROUPS", ("fuji-aniso", "canon-bicubic"))
    monkeypatch.setattr(gpu_suite, "_FULL_SEED", 1)
    result = gpu_suite.section_adapt_full(tmp_path, smoke=False)
    (args, limit), = calls
    assert args[0] == "benchmarks/adaptation_quality.py"
    assert args[args.index("--groups") + 1] == "fuji-aniso,canon-bicubic"
    assert args[args.index("--first-seed") + 1] == "1" and args[args.index("--seeds") + 1] == "1"
    assert args[args.index("--device") + 1] == "cuda" and args[args.index("--out") + 1] == str(tmp_path)
    assert limit == gpu_suite.adapt_full_limit_s(2) - 5
    assert result["groups"] == ["fuji-aniso", "canon-bicubic"] and result["seed"] == 1


def test_trajectory_is_opt_in_and_runs_the_weight_selection_benchmark_on_the_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "trajectory" in gpu_suite.OPT_IN and "trajectory" not in gpu_suite.DEFAULT_SECTIONS
    calls: list[tuple[list[str], float]] = []
    monkeypatch.setattr(gpu_suite, "_run_script", lambda args, limit: calls.append((args, limit)) or {"status": "ok"})
    monkeypatch.setattr(gpu_suite, "_FULL_SEED", 2)
    result = gpu_suite.section_trajectory(tmp_path, smoke=False)
    (args, limit), = calls
    assert args[0] == "benchmarks/weight_selection.py" and args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--groups") + 1] == ",".join(gpu_suite.TRAJECTORY_GROUPS)
    assert args[args.index("--first-seed") + 1] == "2" and args[args.index("--tag") + 1] == "gpu-dev-big-s2"
    assert args[args.index("--steps") + 1] == str(gpu_suite.TRAJECTORY_STEPS)
    assert limit == gpu_suite.SECTION_LIMITS_S["trajectory"] - 5 and result["seed"] == 2
    monkeypatch.undo()
    for name in ("_FULL_GROUPS", "_FULL_SEED"):
        monkeypatch.setattr(gpu_suite, name, getattr(gpu_suite, name))
    assert gpu_suite.main(["--out", str(tmp_path), "--only", "trajectory", "--cpu-smoke"]) == 0
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(summary["sections"]) == ["trajectory"] and summary["sections"]["trajectory"]["status"] == "ok"


def test_parallel_runs_report_each_status_and_stop_at_the_deadline() -> None:
    start = time.perf_counter()
    runs = gpu_suite._run_parallel([["-c", "print('fine')"], ["-c", "raise SystemExit(3)"],
                                    ["-c", "import time; time.sleep(60)"]], 4.0)
    assert [r["status"] for r in runs] == ["ok", "exit 3", "timeout"]
    assert "fine" in runs[0]["tail"]
    assert time.perf_counter() - start < 30


def test_pytest_counts_reads_the_summary_line() -> None:
    assert gpu_suite._pytest_counts("3 passed, 1 failed, 2 skipped in 4.1s") == {"passed": 3, "failed": 1,
                                                                                  "skipped": 2}
    assert gpu_suite._pytest_counts("no tests ran") == {}


def test_safetensors_round_trip_and_carry_of_lpips_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "a.bias": np.ones(4, np.float32)}
    data = gpu_carry.write_safetensors(tensors)
    back = gpu_carry.read_safetensors(data)
    assert back.keys() == tensors.keys() and all(np.array_equal(back[k], v) for k, v in tensors.items())
    safetensors = pytest.importorskip("safetensors.numpy")
    assert np.array_equal(safetensors.load(data)["a.weight"], tensors["a.weight"])  # the real reader agrees

    cache = tmp_path / "cache" / "lpips"
    cache.mkdir(parents=True)
    (cache / "alex.safetensors").write_bytes(data)
    (cache / "vgg.safetensors").write_bytes(gpu_carry.write_safetensors({"v": np.full(1000, 0.1, np.float32)}))
    carry = tmp_path / "carry"
    import zipfile

    wheel = tmp_path / "adassr_carry_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("adassr_carry_probe/__init__.py", "VALUE = 7\n")
    report = gpu_carry.pack(0.01, tmp_path / "cache", carry, [wheel])  # 10 KiB: no room for the backbone
    assert any("backbone" in m for m in report["missing"])
    unpacked = gpu_carry.unpack(tmp_path / "dest", carry)
    lpips = tmp_path / "dest" / "cache" / "lpips"
    sums = dict(line.split()[::-1] for line in (lpips / "SHA256SUMS").read_text().splitlines())
    for net in ("alex", "vgg"):
        payload = (lpips / f"{net}.safetensors").read_bytes()
        assert sums[f"{net}.safetensors"] == gpu_carry._sha(payload)
    alex = gpu_carry.read_safetensors((lpips / "alex.safetensors").read_bytes())
    np.testing.assert_allclose(alex["a.weight"], tensors["a.weight"], atol=2e-3)
    vgg = gpu_carry.read_safetensors((lpips / "vgg.safetensors").read_bytes())
    assert vgg["v"].dtype == np.float32 and abs(float(vgg["v"][0]) - 0.1) < 1e-4
    assert any("LPIPS-vgg weights were rounded to float16" in note for note in unpacked["notes"])
    probe = tmp_path / "dest" / "site" / "adassr_carry_probe" / "__init__.py"
    assert probe.read_text() == "VALUE = 7\n"  # not installed here, so unpacked onto the carried site folder
    assert any("adassr_carry_probe was not installed" in note for note in unpacked["notes"])


def test_carry_rounds_vgg_to_int8_when_float16_does_not_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    weight[3] = 0.0  # an all-zero channel round-trips exactly
    vgg = {"conv.weight": weight, "conv.bias": rng.standard_normal(32).astype(np.float32)}
    alex = {"a.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32)}
    cache = tmp_path / "cache" / "lpips"
    cache.mkdir(parents=True)
    (cache / "alex.safetensors").write_bytes(gpu_carry.write_safetensors(alex))
    (cache / "vgg.safetensors").write_bytes(gpu_carry.write_safetensors(vgg))
    # float16 VGG is ~8.3 KiB compressed, int8 ~5 KiB: a 7 KiB budget holds float16 Alex + int8 VGG only
    report = gpu_carry.pack(7 / 1024, tmp_path / "cache", tmp_path / "carry", [])
    kinds = {item["kind"]: item["transform"] for item in report["items"]}
    assert kinds == {"lpips-alex": "float16", "lpips-vgg": "int8"}, report
    unpacked = gpu_carry.unpack(tmp_path / "dest", tmp_path / "carry")
    back = gpu_carry.read_safetensors((tmp_path / "dest" / "cache" / "lpips" / "vgg.safetensors").read_bytes())
    assert set(back) == set(vgg) and back["conv.weight"].dtype == np.float32
    peak = np.abs(weight.reshape(32, -1)).max(axis=1)
    err = np.abs(back["conv.weight"] - weight).reshape(32, -1).max(axis=1)
    assert np.all(err <= peak / 254 + 1e-7) and np.all(back["conv.weight"][3] == 0)
    np.testing.assert_array_equal(back["conv.bias"], vgg["conv.bias"])  # 1-D tensors travel exactly
    assert any("8 bits per output channel" in note for note in unpacked["notes"])


def test_travel_light_untracks_and_restore_tracks_again(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    for name in ("benchmarks/results/a.md", "benchmarks/data/b.png", "code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 1000)
    exclude = tmp_path / ".git" / "info" / "exclude"
    exclude.write_text("# user's own line\n/scratch/")  # no final newline: kept intact
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    full = gpu_carry.travelling_bytes(tmp_path)
    assert full == 3000

    changed = gpu_carry.travel_light(tmp_path, ("benchmarks/results", "benchmarks/data", "tests/data/calibration"))
    assert changed == ["benchmarks/results", "benchmarks/data"]  # the absent folder is left alone
    assert (tmp_path / "benchmarks" / "results" / "a.md").is_file()  # files stay on disk
    assert gpu_carry.travelling_bytes(tmp_path) == 1000  # untracked and ignored: they do not travel
    assert "?? " not in git("status", "--porcelain")
    with pytest.raises(SystemExit, match="already travelling light"):
        gpu_carry.travel_light(tmp_path, ("benchmarks/results",))

    assert gpu_carry.travel_restore(tmp_path) == ["benchmarks/results", "benchmarks/data"]
    assert git("status", "--porcelain") == ""  # tracked again, nothing changed
    assert exclude.read_text() == "# user's own line\n/scratch/\n"
    assert gpu_carry.travelling_bytes(tmp_path) == full
    assert gpu_carry.travel_restore(tmp_path) == []  # a second restore does nothing

    (tmp_path / "code.py").write_text("changed")
    git("add", "code.py")
    with pytest.raises(SystemExit, match="staged changes"):
        gpu_carry.travel_light(tmp_path, ("benchmarks/results",))


def test_travel_profiles_keep_what_their_sections_read() -> None:
    check, trajectory = gpu_carry.TRAVEL_PROFILES["check"], gpu_carry.TRAVEL_PROFILES["trajectory"]
    assert check == gpu_carry.NOT_NEEDED_ON_GPU
    root = Path(__file__).resolve().parents[1]
    for folder in check + trajectory:  # each names a tracked folder of this repository
        assert (root / folder).is_dir(), folder
    # the trajectory section adapts the development groups (benchmarks/data/dev_photos) and not the
    # scored groups (the fujifilm photo); the check needs the fujifilm photo, not the development ones
    assert not any("benchmarks/data/dev_photos".startswith(f) for f in trajectory)
    assert "samples/large" in trajectory and not any("samples/large".startswith(f) for f in check)
    sys.path.insert(0, str(root / "benchmarks"))
    import adaptation_quality as aq

    dev = {g.name: g for g in aq.DEV_GROUPS}
    for name in gpu_suite.TRAJECTORY_GROUPS:
        assert all(source.startswith("photo:") for source, *_ in dev[name].sources), name


def test_bundle_mode_packs_the_results_also_when_stopped(tmp_path: Path) -> None:
    """GPU_CHECK_BUNDLE=1 (the device tool returns at most 8 files): one tarball plus the summary, written
    even when the check is stopped by a TERM (here after the env section, during the GPU tests' collection)."""
    import signal
    import tarfile
    import time

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "GPU_CHECK_BUNDLE": "1", "TMPDIR": str(tmp_path.parent)}
    proc = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the first section is done
        if line.startswith("[gpu_check] env:") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    with tarfile.open(tmp_path / "gpu_results.tgz") as archive:
        names = archive.getnames()
        summary = json.loads(archive.extractfile("gpu_results/gpu_check.json").read())  # type: ignore[union-attr]
    assert "gpu_results/gpu_check_env.json" in names
    assert summary["sections"]["env"]["status"] == "ok"
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md", "gpu_results.tgz"]


def test_bundle_mode_keeps_the_finished_sections_when_killed_outright(tmp_path: Path) -> None:
    """The device tool SIGKILLs a command at its limit: no trap runs, so the results reached $OUT only
    at exit and a killed run returned nothing. They are packed after every section now, and the
    section left running is killed by the next run."""
    import signal
    import tarfile

    pgids = tmp_path / "tmp" / "adassr_gpu_check.pgids"
    pgids.parent.mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "GPU_CHECK_BUNDLE": "1", "TMPDIR": str(pgids.parent)}
    (tmp_path / "out").mkdir()
    proc = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[gpu_check] env:") or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # the next section has started
    os.killpg(proc.pid, signal.SIGKILL)  # bash and the suite; the section runs in its own session
    proc.wait(timeout=30)
    with tarfile.open(tmp_path / "out" / "gpu_results.tgz") as archive:
        summary = json.loads(archive.extractfile("gpu_results/gpu_check.json").read())  # type: ignore[union-attr]
    assert summary["sections"]["env"]["status"] == "ok" and summary["sections"]["env"]["backbone_sha256"]
    assert (tmp_path / "out" / "gpu_check.md").is_file()
    left = [int(line.split()[0]) for line in pgids.read_text().splitlines()]
    assert left  # the running section's group (and the pytest it started), orphaned by the kill
    for pgid in left:
        os.killpg(pgid, 0)  # still running
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--only", "env"],
                   cwd=tmp_path, env={**env, "OUT": str(tmp_path / "again")}, capture_output=True, timeout=120,
                   check=False)
    time.sleep(0.5)
    for pgid in left:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


def test_only_groups_still_run_by_their_recorded_start_are_killed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded id reused by another program must not be killed; finished groups are forgotten."""
    monkeypatch.setattr(gpu_suite, "PIDFILE", tmp_path / "pgids")
    code, _ = gpu_suite._run_group([sys.executable, "-c", "pass"], 30, capture=True)
    assert code == 0 and (tmp_path / "pgids").read_text() == ""  # recorded while it ran, then forgotten
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (tmp_path / "pgids").write_text(f"{other.pid} 1\n")  # the id, but another start time
        assert gpu_suite.kill_stale_groups() == 0 and other.poll() is None
        gpu_suite._record_group(other.pid)
        assert gpu_suite.kill_stale_groups() == 1
        assert other.wait(timeout=10) == -9 and not (tmp_path / "pgids").exists()
    finally:
        if other.poll() is None:
            other.kill()


def test_a_timed_out_env_keeps_the_gpu_name_and_skipped_sections_are_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timed-out env section titled the report "CPU (x86_64)" on the GPU machine, and a section skipped
    for lack of time was left out of gpu_check.json without a word (a helper's review)."""
    monkeypatch.setattr(gpu_suite, "_gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    def timed_out(cmd: list[str], limit: float, capture: bool) -> tuple[None, str]:
        time.sleep(1.0)  # a section that ran out its time: 1 s here, which leaves too little for the next one
        return None, ""

    monkeypatch.setattr(gpu_suite, "_run_group", timed_out)
    code = gpu_suite.main(["--out", str(tmp_path), "--only", "env,niqe", "--cpu-smoke", "--budget-s", "10.5"])
    assert code == 1
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["machine"] == "NVIDIA H100 80GB HBM3"
    assert summary["sections"]["env"]["status"] == "timeout"
    assert summary["sections"]["niqe"] == {"status": "skipped", "reason": summary["sections"]["niqe"]["reason"]}
    assert "time budget spent" in summary["sections"]["niqe"]["reason"]
    assert "niqe" in (tmp_path / "gpu_check.md").read_text()
