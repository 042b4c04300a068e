"""benchmarks/kernel_estimation.py: the robustness report and its rebuild from stored rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_estimation.py")


def _row(true: list[float], d_final: float, d_g16: float, method: str = "cross-scale-derivative-energy") -> dict:
    return {"noise": 0.0, "quality": 60, "true": true, "estimate": [true[0] * 1.1, true[1] * 1.1, true[2]],
            "final": true, "method": method, "confidence": 0.7, "dist_estimate": d_final,
            "dist_final": d_final, "dist_g16": d_g16, "seconds": 1.0, "blockiness": 0.26}


def _result_file(tool: ModuleType, tmp_path: Path, wall: float | None) -> Path:
    rows = [_row([1.6, 1.6, 0.0], 0.04, 0.0),    # the yardstick itself: nothing beats it strictly
            _row([3.2, 1.6, 60.0], 0.01, 0.10),   # closer
            _row([1.6, 1.2, 0.0], 0.06, 0.05)]    # a miss
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in tool.KernelEstimationConfig().__dict__.items()}
    data: dict = {"machine": "test machine", "config": config, "rows": rows}
    if wall is not None:
        data["wall_seconds"] = wall
    path = tmp_path / "kernel_robustness.json"
    path.write_text(json.dumps(data))
    return path


def test_report_counts_the_yardstick_kernel_separately(tool: ModuleType, tmp_path: Path) -> None:
    text, data = tool.report_from(_result_file(tool, tmp_path, 12.0), None, None)
    cell = next(s for s in data["summaries"] if s["noise"] == 0.0 and s["quality"] == 60)
    assert cell["n"] == 3 and cell["n_others"] == 2
    assert cell["closer_final"] == pytest.approx(1 / 3)
    assert cell["closer_final_others"] == pytest.approx(1 / 2)
    assert data["worst"]["closer_final_others"] == pytest.approx(1 / 2)
    assert "| 50 % (2) |" in text and "test machine" in text and "in 12 s" in text
    assert "50 % FAIL over the kernels other than G(1.6) itself" in text


def test_report_from_needs_the_wall_time_and_a_result_file(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--wall-seconds"):
        tool.report_from(_result_file(tool, tmp_path, None), None, None)
    text, data = tool.report_from(_result_file(tool, tmp_path, None), 7.0, "other machine")
    assert data["wall_seconds"] == 7.0 and "other machine" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{\"rows\": []}")
    with pytest.raises(SystemExit, match="not a kernel_robustness.json"):
        tool.report_from(bad, 1.0, None)
