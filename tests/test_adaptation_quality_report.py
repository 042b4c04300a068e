"""benchmarks/adaptation_quality.py: joining result files of other seeds, and the HR-NIQE yardstick.

Result files are made up here (two images, known scores) so every number of the merged summary is
known in advance; the script runs as a user runs it (a subprocess), without adapting anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation_quality.py"
pytest.importorskip("torch")  # the script imports torch at start-up


def _scores(niqe: tuple[float, float], lpips: float) -> dict[str, Any]:
    per = {"a": {"niqe": niqe[0], "lpips": lpips, "psnr_y": 25.0},
           "b": {"niqe": niqe[1], "lpips": lpips, "psnr_y": 27.0}}
    return {"niqe": sum(niqe) / 2, "lpips": lpips, "psnr_y": 26.0, "per_image": per}


def _run(seed: int, niqe: tuple[float, float], lpips: float) -> dict[str, Any]:
    return {"seed": seed, "wall_s": 100.0 + seed, "steps": 150, "stop_reason": "budget", "kept_backbone": False,
            "best_step": 150, "adapted": _scores(niqe, lpips)}


def _result(runs: list[dict[str, Any]], backbone_niqe: tuple[float, float] = (4.0, 4.0)) -> dict[str, Any]:
    group = {"degradation": "made up", "images": {"a": [8, 8], "b": [8, 8]}, "sources": [], "runs": runs,
             "bicubic": _scores((8.0, 8.0), 0.5), "backbone": _scores(backbone_niqe, 0.40),
             "hr": {"niqe": 5.0, "per_image": {"a": 5.0, "b": 5.0}}}
    return {"machine": "test machine", "ablation": "product defaults", "seeds": sorted(r["seed"] for r in runs),
            "load_start": 0.5, "commit": "abc", "started": "2026-12-01 00:00:00", "groups": {"g": group}}


def _merge(tmp_path: Path, *parts: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    paths = []
    for i, part in enumerate(parts):
        path = tmp_path / f"part{i}.json"
        path.write_text(json.dumps(part))
        paths.append(str(path))
    return subprocess.run([sys.executable, str(SCRIPT), "--merge", *paths, "--out", str(tmp_path / "out"),
                           "--tag", "joined"], capture_output=True, text=True, timeout=300)


def test_merge_joins_the_seeds_of_one_group(tmp_path: Path) -> None:
    proc = _merge(tmp_path, _result([_run(0, (3.0, 3.0), 0.38)]),
                  _result([_run(2, (4.5, 4.5), 0.40), _run(1, (3.5, 3.5), 0.36)]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads((tmp_path / "out" / "adaptation_quality_v2_cpu_joined.json").read_text())
    assert merged["seeds"] == [0, 1, 2]
    assert [r["seed"] for r in merged["groups"]["g"]["runs"]] == [0, 1, 2]
    total = merged["summary"]["total"]
    assert total["runs"] == 3
    assert total["delta_lpips_mean"] == pytest.approx(((0.38 + 0.36 + 0.40) / 3) - 0.40)
    assert total["delta_niqe_mean"] == pytest.approx(((3.0 + 3.5 + 4.5) / 3) - 4.0)
    # per image abs(NIQE - 5): backbone 1.0; adapted (2.0 + 1.5 + 0.5) / 3
    assert total["niqe_gap_to_hr"]["backbone"] == pytest.approx(1.0)
    assert total["niqe_gap_to_hr"]["adapted"] == pytest.approx(4.0 / 3)
    md = (tmp_path / "out" / "adaptation_quality_v2_cpu_joined.md").read_text()
    assert "| g | made up | HR photo (ground truth) | 5.000 |" in md
    assert "Total over 3 runs" in md


def test_merge_refuses_a_seed_twice(tmp_path: Path) -> None:
    proc = _merge(tmp_path, _result([_run(0, (3.0, 3.0), 0.38)]), _result([_run(0, (3.5, 3.5), 0.36)]))
    assert proc.returncode == 2
    assert "seed(s) [0] appear twice" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_merge_refuses_groups_scored_on_other_images(tmp_path: Path) -> None:
    proc = _merge(tmp_path, _result([_run(0, (3.0, 3.0), 0.38)]),
                  _result([_run(1, (3.5, 3.5), 0.36)], backbone_niqe=(4.0, 4.2)))
    assert proc.returncode == 2
    assert "other LR images or another backbone" in proc.stderr


def test_first_seed_is_checked(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--first-seed", "-1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--first-seed >= 0" in proc.stderr


def test_an_unknown_real_group_is_refused_before_any_group_runs(tmp_path: Path) -> None:
    """A typo in --real-groups surfaced as a traceback after every synthetic group had run (an hour)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--groups", "", "--real-groups", "bogus", "--seeds", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "--real-groups: unknown camera group 'bogus'" in proc.stderr and "Traceback" not in proc.stderr
