"""benchmarks/overlapped_writes.py times folder runs with and without background writes and compares the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_overlapped_writes_benchmark_compares_both_modes(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "overlapped_writes.py"), "--images", "2", "--model-seconds",
               "0.05", "--rounds", "1", "--formats", "jpg", "--out-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob("overlapped_writes_*.json")
    result = json.loads(report.read_text())
    (row,) = result["rows"]
    assert row["format"] == "jpg" and row["identical_files"] is True
    assert row["plain_s"] > 2 * 0.05 and row["overlapped_s"] > 2 * 0.05  # both waited for the model twice
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# Folder runs")
