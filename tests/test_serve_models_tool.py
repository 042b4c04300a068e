"""benchmarks/serve_models.py measures loads at a request and memory (tiny models here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime._models import publish_camera

ROOT = Path(__file__).resolve().parents[1]


def test_the_serve_models_benchmark_loads_at_every_request(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("the benchmark reads Linux's /proc/self/status")
    publish_camera(tmp_path / "store", "canon", seed=1)
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_models.py"), "--store",
                           str(tmp_path / "store"), "--cameras", "3", "--max-models", "1", "--rounds", "2",
                           "--threads", "1", "--out-dir", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = out.glob("serve_models_*.json")
    result = json.loads(report.read_text())
    assert result["source_camera"] == "canon" and result["cameras"] == 3 and result["max_models"] == 1
    assert len(result["rss_mb"]["lazy_after_each_pass"]) == 2
    assert 0 < result["load_s_median"] <= result["load_s_max"] and result["warm_request_s_median"] > 0
    assert result["rss_mb"]["eager_every_camera_open"] > result["rss_mb"]["eager_start"]
    assert (out / report.name.replace(".json", ".md")).read_text().startswith("# serve --max-models")


def test_the_serve_models_benchmark_needs_an_exported_camera(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_models.py"), "--store",
                           str(tmp_path / "store")], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "adassr export --backbone" in done.stderr
