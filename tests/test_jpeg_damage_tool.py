"""benchmarks/jpeg_damage.py counts refusals per kind of damage, checks the good files and times the reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_jpeg_damage_benchmark_reports_every_kind(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "jpeg_damage.py"), "--copies", "3", "--rounds", "1",
               "--out-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob("jpeg_damage_*.json")
    result = json.loads(report.read_text())
    detection = result["detection"]
    assert set(detection) == {"baseline", "progressive"}
    boundaries = detection["progressive"].pop("cut at a scan boundary, end marker kept")
    assert boundaries["copies"] >= 5 * len(result["photos"])  # every boundary of each photo's progressive file
    assert boundaries["refused"] == 0 and boundaries["read_noted"] == boundaries["read_changed"] == boundaries["copies"]
    for counts in detection.values():
        assert set(counts) == {"bytes lost", "a stretch repeated", "cut, end marker kept", "the rest zero-filled",
                               "one bit flipped"}
        assert sum(c["copies"] for c in counts.values()) == 3 * len(result["photos"])  # the kinds in turn
        assert all(c["refused"] + c["read_changed"] + c["read_unchanged"] == c["copies"] for c in counts.values())
        assert counts["cut, end marker kept"]["refused"] == counts["cut, end marker kept"]["copies"] > 0
    good = result["good_files"]
    assert len(good) >= 10 and all(g["read"] and g["pillows_pixels"] for g in good)
    assert {t["decoder"] for t in result["speed"]} == {"pillow", "turbojpeg"}
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# Damaged JPEG data")
