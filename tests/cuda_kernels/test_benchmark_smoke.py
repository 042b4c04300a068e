"""benchmarks/attention_kernel.py keeps working: its CPU smoke mode, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_kernel.py"
METHODS = {"fused", "fused_excl1", "dense", "sdpa_bwd", "chunked"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str, Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out-dir", str(out_dir)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out_dir / "attention_kernel_cpu-smoke.json").read_text())
    return data, proc.stdout, out_dir


def test_every_method_ran_on_every_case(smoke) -> None:
    data, _, _ = smoke
    rows = data["rows"]
    assert {r["method"] for r in rows} == METHODS
    assert {(r["n"], r["dtype"]) for r in rows} == {(64, "fp32"), (144, "fp32"), (64, "bf16"), (144, "bf16")}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["tflops"] > 0 and r["repeats"] == 2


def test_checks_cover_fused_chunked_and_sdpa(smoke) -> None:
    data, _, _ = smoke
    checks = data["checks"]
    assert {c["method"] for c in checks} == {"fused", "chunked", "sdpa_bwd"}
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    # The fused kernel was checked on ragged N, exclusion and large logits.
    fused = [c for c in checks if c["method"] == "fused"]
    assert {c["radius"] for c in fused} >= {0, 1, 2} and max(c["logit"] for c in fused) >= 100


def test_reports_written_and_device_printed(smoke) -> None:
    data, stdout, out_dir = smoke
    assert stdout.startswith("device: CPU")
    md = (out_dir / "attention_kernel_cpu-smoke.md").read_text()
    assert md.startswith("# Attention column-sum benchmark: CPU")
    fused_checks = sum(c["method"] == "fused" for c in data["checks"])
    assert md.count("| fused |") == 4 + fused_checks and "## Correctness checks" in md
    assert not list(out_dir.glob("*.tmp"))  # atomic writes leave no temporaries


def test_gpu_mode_refuses_without_cuda(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr
    assert not list(tmp_path.iterdir())
