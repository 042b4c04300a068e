"""benchmarks/sample_range.py compares 16-bit files of fewer bits served at the container's range and at theirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from adassr.runtime.store import FALLBACK_CAMERA

from .runtime._models import publish_camera

ROOT = Path(__file__).resolve().parents[1]


def test_the_sample_range_benchmark_serves_each_depth_both_ways(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)  # a tiny real model (not scale-equivariant: LeakyReLU, biases)
    command = [sys.executable, str(ROOT / "benchmarks" / "sample_range.py"), "--store", str(store), "--crop", "32",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = (tmp_path / "out").glob("sample_range_*.json")
    result = json.loads(report.read_text())
    assert [r["bits"] for r in result["rows"]] == [10, 12, 14] and result["crop"][2] == 32
    for row in result["rows"]:
        # the sample range gives the full-range output back (to rounding); the container's range another image
        assert row["sample_range"]["psnr_db"] > 50 > row["container_range"]["psnr_db"]
        assert abs(row["sample_range"]["mean_over_full"] - 1) < 0.01
    assert (tmp_path / "out" / report.name.replace(".json", ".md")).read_text().startswith("# 16-bit files")
    (tmp_path / "empty").mkdir()
    done = subprocess.run(command[:2] + ["--store", str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stderr.startswith("error: no model for camera '_fallback'")
