"""The GPU check script in its CPU smoke mode (tiny sizes, seconds), and the weights carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_carry  # noqa: E402


def test_gpu_check_cpu_smoke_runs_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
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
