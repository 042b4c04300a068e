"""benchmarks/write_speed.py times every encoder and writes its report (a small image here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_write_speed_benchmark_times_each_encoder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "write_speed.py"), "--width", "1200", "--repeats",
                           "1", "--threads", "2", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob("write_speed_*_1200.json")
    result = json.loads(report.read_text())
    assert (result["width"], result["height"]) == (1200, 643)  # 2.3 MB: several strips in every encoder
    rows = result["rows"]
    assert [row["format"] for row in rows] == ["PNG"] * 4 + ["JPEG q95"] * 4 + ["TIFF"] * 4
    for k in range(0, 12, 4):
        names = [row["encoder"] for row in rows[k:k + 4]]
        assert names[:2] == ["adassr, 1 thread", "adassr, 2 threads"] and "OpenCV" in names[2] and "Pillow" in names[3]
        sizes = [row["file_mb"] for row in rows[k:k + 4]]
        assert sizes[0] == sizes[1] > 0 and all(row["seconds"] > 0 for row in rows[k:k + 4])
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# Write speed")
