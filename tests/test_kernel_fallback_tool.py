"""benchmarks/kernel_fallback_calibration.py: the fallback rule scored on rows, the grid search, and the
offline evaluation of recorded rows (kernel_confidence.py collect files, kernel_estimation.py
robustness JSONs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "benchmarks" / "results" / "kernel_confidence_rows"


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_fallback_calibration.py")


def _row(gap: float, blockiness: float, dist_est: float, dist_g16: float) -> dict[str, float]:
    return {"gap": gap, "blockiness": blockiness, "dist_est": dist_est, "dist_g16": dist_g16}


ROWS_BY_HAND = [
    _row(0.001, 0.3, 0.05, 0.06),  # a small gap, the estimate closer: firing costs 0.01
    _row(0.002, 0.3, 0.09, 0.07),  # a small gap, G(1.6) closer: firing saves 0.02
    _row(0.5, 0.3, 0.02, 0.10),  # a large gap: never fires
    _row(0.001, 0.0, 0.04, 0.05),  # no JPEG: fires only with gap0 > 0
]


def test_the_rule_fires_where_the_gap_is_within_the_allowance(tool: ModuleType) -> None:
    off = tool.scored_rule(ROWS_BY_HAND, 0.0, 0.0)
    assert off["fired"] == 0 and off["mean_dist"] == pytest.approx((0.05 + 0.09 + 0.02 + 0.04) / 4)
    assert off["closer_rate"] == pytest.approx(0.75)
    by_jpeg = tool.scored_rule(ROWS_BY_HAND, 0.0, 0.01)  # allowance 0.003 on the JPEG rows, 0 on the last
    assert (by_jpeg["fired"], by_jpeg["fallback_when_estimate_closer"], by_jpeg["fallback_when_estimate_further"]) \
        == (2, 1, 1)
    assert by_jpeg["mean_dist"] == pytest.approx((0.06 + 0.07 + 0.02 + 0.04) / 4)
    assert by_jpeg["closer_rate"] == pytest.approx(0.5)  # G(1.6) returned is never closer than itself
    flat = tool.scored_rule(ROWS_BY_HAND, 0.0015, 0.0)
    assert (flat["fired"], flat["fallback_when_estimate_closer"]) == (2, 2)


def test_the_grid_search_keeps_the_fallback_off_unless_it_lowers_the_mean_distance(tool: ModuleType) -> None:
    assert tool.choose(ROWS_BY_HAND[:1] + ROWS_BY_HAND[2:])["best"]["fired"] == 0
    helped = tool.choose([_row(0.001, 0.3, 0.09, 0.07), _row(0.5, 0.3, 0.02, 0.10)])
    assert helped["best"]["fired"] == 1 and helped["best"]["mean_dist"] == pytest.approx((0.07 + 0.02) / 2)
    assert helped["no_fallback"]["fired"] == 0


def test_recorded_rows_are_read_from_both_kinds_of_file(tool: ModuleType, tmp_path: Path) -> None:
    collect = tmp_path / "rows.jsonl"
    header = {"hr_dir": "x", "seed": 0, "groups": 2, "lr_sizes": ["8 x 8"], "machine": "m"}
    fitted = {"dist_before_fallback": 0.05, "dist_g16": 0.06, "dist": 0.05,
              "diagnostics": {"fixed_gaussian_loss_gap": 0.001, "jpeg_blockiness": 0.3,
                              "estimate_before_fallback": {"sigma_x": 1.0, "sigma_y": 1.0, "theta_deg": 0.0}}}
    bicubic = {"dist_before_fallback": 0.2, "dist_g16": 0.06, "dist": 0.2, "diagnostics": {"reason": "flat"}}
    collect.write_text("\n".join(json.dumps(r) for r in (header, fitted, bicubic)) + "\n")
    assert tool.recorded_rows(collect) == [_row(0.001, 0.3, 0.05, 0.06)]
    grid = tmp_path / "kernel_robustness_x.json"
    grid.write_text(json.dumps({"rows": [{"gap": 0.002, "blockiness": 0.3, "dist_estimate": 0.09, "dist_g16": 0.07}]}))
    assert tool.recorded_rows(grid) == [_row(0.002, 0.3, 0.09, 0.07)]
    own = tmp_path / "kernel_fallback_calibration.json"
    own.write_text(json.dumps({"rows": [{"noise": 0.0, "quality": 60, "gap": 0.9, "blockiness": 0.3,
                                         "dist_est": 0.03, "dist_g16": 0.05}]}))
    assert tool.recorded_rows(own) == [_row(0.9, 0.3, 0.03, 0.05)]
    result = tool.evaluate([collect, grid, own])
    assert [result[k]["n"] for k in ("rows.jsonl", "kernel_robustness_x.json", own.name, "all")] == [1, 1, 1, 3]
    old_default = next(t for t in result["all"]["thresholds"] if (t["gap0"], t["per_blockiness"]) == (0.0, 0.05))
    assert (old_default["fired"], old_default["fallback_when_estimate_closer"]) == (2, 1)


def test_rows_without_the_loss_gap_or_unreadable_files_are_refused(tool: ModuleType, tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [{"blockiness": 0.3, "dist_estimate": 0.09, "dist_g16": 0.07}]}))
    with pytest.raises(tool.ScriptError, match=r"old\.json has no loss gap per row"):
        tool.recorded_rows(old)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(tool.ScriptError, match=r"broken\.jsonl: not rows of kernel_confidence\.py collect"):
        tool.recorded_rows(broken)
    header_only = tmp_path / "header_only.jsonl"
    header_only.write_text(json.dumps({"hr_dir": "x", "seed": 0}) + "\n")
    with pytest.raises(tool.ScriptError, match=r"header_only\.jsonl: no rows with an estimate"):
        tool.evaluate([header_only])


def test_the_committed_rows_put_the_old_default_behind_the_fallback_off(tool: ModuleType) -> None:
    """The evidence the default rests on (adapt/kernel/estimate.py, fallback_gap_per_blockiness): over the
    committed rows of the development and the held-out photos, the old 0.05 per unit of blockiness fired
    mostly on estimates closer than G(1.6) and raised the mean distance to the truth."""
    result = tool.evaluate(sorted(ROWS.glob("*.jsonl")))["all"]
    off, old = (next(t for t in result["thresholds"] if (t["gap0"], t["per_blockiness"]) == pair)
                for pair in ((0.0, 0.0), (0.0, 0.05)))
    assert old["fallback_when_estimate_closer"] > old["fallback_when_estimate_further"] > 0
    assert old["mean_dist"] > off["mean_dist"] and old["closer_rate"] < off["closer_rate"]


def test_a_zero_allowance_never_fires_even_on_a_zero_gap(tool: ModuleType) -> None:
    """The estimator's rule (``allowed_gap > 0 and gap <= allowed_gap``): a loss gap of exactly 0 (G(1.6) fits
    as well as the optimum; 9 of the committed collect rows) does not fire where the allowance is 0, so
    "off" scores the estimate itself (a mutant: the ``allowed > 0`` guard dropped)."""
    rows = [_row(0.0, 0.3, 0.05, 0.06), _row(0.0, 0.0, 0.04, 0.05), _row(0.5, 0.3, 0.02, 0.10)]
    off = tool.scored_rule(rows, 0.0, 0.0)
    assert off["fired"] == 0 and off["mean_dist"] == pytest.approx((0.05 + 0.04 + 0.02) / 3)
    by_jpeg = tool.scored_rule(rows, 0.0, 0.2)  # allowance 0.06 on the JPEG rows, still 0 without JPEG
    assert by_jpeg["fired"] == 1 and by_jpeg["mean_dist"] == pytest.approx((0.06 + 0.04 + 0.02) / 3)


def test_the_grid_search_scores_the_product_default_and_the_previous_one(tool: ModuleType) -> None:
    from adassr.adapt.kernel import KernelEstimationConfig

    default = KernelEstimationConfig()
    fit = tool.choose(ROWS_BY_HAND)
    assert fit["product_default"] == tool.scored_rule(ROWS_BY_HAND, default.fallback_gap,
                                                      default.fallback_gap_per_blockiness)
    assert fit["previous_default"] == tool.scored_rule(ROWS_BY_HAND, 0.0, 0.05)
    assert fit["previous_default"]["fired"] == 2 and fit["product_default"]["fired"] == 0  # the default is off


def test_evaluate_writes_a_line_per_set_and_threshold(tool: ModuleType, tmp_path: Path) -> None:
    """``--evaluate ... --name``: the JSON and the Markdown table hold every file's set and "all", with the
    rule's count on the closer estimate and the closer share in percent."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": ROWS_BY_HAND[:2]}))
    b.write_text(json.dumps({"rows": ROWS_BY_HAND[2:]}))
    assert tool.main(["--evaluate", str(a), str(b), "--name", "ev", "--out", str(tmp_path / "out")]) == 0
    sets = json.loads((tmp_path / "out" / "ev.json").read_text())["sets"]
    assert [(k, v["n"]) for k, v in sets.items()] == [("a.json", 2), ("b.json", 2), ("all", 4)]
    text = (tmp_path / "out" / "ev.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 * len(tool.EVALUATED)
    # the old default on all four rows: fires on the two small gaps, one of them on the closer estimate
    assert "| all | 4 | 0 | 0.05 | 2 | 1 | 0.04750 | 50.0 % |" in rows
    # gap0 0.01 fires on the three small gaps' rows, two of them on the closer estimate
    assert "| all | 4 | 0.01 | 0 | 3 | 2 | 0.05000 | 25.0 % |" in rows
    assert "| a.json | 2 | 0 | 0 | 0 | 0 | 0.07000 | 50.0 % |" in rows


def test_files_of_one_name_keep_their_own_sets_and_a_file_given_twice_is_refused(
        tool: ModuleType, tmp_path: Path) -> None:
    """Every calibration run writes kernel_fallback_calibration.json, and split robustness runs each write
    kernel_robustness.json: files of one name are told apart by their paths, not merged into one set
    (the second used to replace the first, in its own entry and in "all")."""
    first, second, named_all = tmp_path / "d1" / "k.json", tmp_path / "d2" / "k.json", tmp_path / "d3" / "all"
    for path, rows in ((first, ROWS_BY_HAND[:1]), (second, ROWS_BY_HAND[1:3]), (named_all, ROWS_BY_HAND[3:])):
        path.parent.mkdir()
        path.write_text(json.dumps({"rows": rows}))
    result = tool.evaluate([first, second, named_all])
    assert {k: v["n"] for k, v in result.items()} == {
        str(first.resolve()): 1, str(second.resolve()): 2, str(named_all.resolve()): 1, "all": 4}
    with pytest.raises(tool.ScriptError, match="given more than once"):
        tool.evaluate([first, tmp_path / "d1" / ".." / "d1" / "k.json"])


def test_robustness_rows_without_an_estimate_are_left_out(tool: ModuleType, tmp_path: Path) -> None:
    """A robustness row of the bicubic fallback (no estimate: its gap and blockiness NaN, its distance the
    bicubic kernel's) counts no more than the same row of a collect file does."""
    grid = tmp_path / "kernel_robustness_x.json"
    nan = float("nan")
    grid.write_text(json.dumps({"rows": [
        {"gap": 0.5, "blockiness": 0.3, "dist_estimate": 0.02, "dist_g16": 0.10},
        {"gap": nan, "blockiness": nan, "dist_estimate": 0.3, "dist_g16": 0.10}]}))
    assert tool.recorded_rows(grid) == [_row(0.5, 0.3, 0.02, 0.10)]
    only_bicubic = tmp_path / "kernel_robustness_y.json"
    only_bicubic.write_text(json.dumps({"rows": [{"gap": nan, "blockiness": nan, "dist_estimate": 0.3,
                                                  "dist_g16": 0.10}]}))
    with pytest.raises(tool.ScriptError, match="no rows with an estimate"):
        tool.evaluate([only_bicubic])


@pytest.mark.parametrize("name", ["sub/ev", "../ev", ".."])
def test_a_name_with_a_folder_is_refused_before_anything_is_written(
        tool: ModuleType, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "a.json"
    rows.write_text(json.dumps({"rows": ROWS_BY_HAND}))
    with pytest.raises(SystemExit) as stop:
        tool.main(["--evaluate", str(rows), "--name", name, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "--name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
