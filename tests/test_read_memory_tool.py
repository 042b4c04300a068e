"""benchmarks/read_memory.py writes a row per layout, measured in a child process (tiny images here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_read_memory_benchmark_measures_every_layout(tmp_path: Path) -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the benchmark reads Linux's /proc/self/status")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "read_memory.py"), "--width", "65", "--height",
                           "47", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob("read_memory_*_65x47.json")  # sides that are no multiple of 8: measured as given
    result = json.loads(report.read_text())
    assert len(result["rows"]) == 12 and {r["case"] for r in result["rows"]} >= {"grey palette PNG", "16-bit RGB TIFF"}
    sizes = {r["case"]: r["array_bytes"] for r in result["rows"]}
    assert sizes["8-bit RGBA PNG"] == 65 * 47 * 4 and sizes["8-bit RGB PNG"] == 65 * 47 * 3  # read as such
    assert sizes["grey palette PNG"] == 65 * 47 and sizes["16-bit RGB TIFF"] == 65 * 47 * 6
    assert all(r["peak_growth_bytes"] > 0 for r in result["rows"])
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# Read peak memory")
