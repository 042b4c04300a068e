"""benchmarks/weight_selection.py: the selection rules replayed on made-up trajectories, and the
benchmark groups' LR file names (a name with an ``hr`` token would be left out of its group)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the benchmarks import torch at start-up
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ws():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("weight_selection")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _traj(lpips: list[float], niqe: list[float], bp: list[float]) -> list[dict[str, float]]:
    return [{"step": 50 * i, "lpips": lp, "psnr_y": 25.0 + i, "niqe": n, "bp_l1": b, "ival_l1": b,
             "ival_lpips": b, "neg_detail": b} for i, (lp, n, b) in enumerate(zip(lpips, niqe, bp, strict=True))]


def test_every_benchmark_image_is_kept_by_the_group_scanner(ws) -> None:
    from adassr.adapt.groups import marks_ground_truth

    aq = ws.aq
    for spec in aq.GROUPS + aq.DEV_GROUPS:
        for source, frame, top, left in spec.sources:
            name = aq.lr_file_name(f"{source.replace(':', '-')}{frame}_{top}_{left}")
            assert name.endswith(".png") and not marks_ground_truth(Path(name)), (spec.name, name)
    assert aq.lr_file_name("hr-astronaut0_64_64") == "photo-astronaut0_64_64.png"


def test_niqe_replay_keeps_the_backbone_when_niqe_only_rises(ws) -> None:
    traj = _traj([0.40, 0.38, 0.36, 0.35, 0.34], [4.0, 4.2, 4.4, 4.5, 4.6], [5, 4, 3, 2, 1])
    assert ws.select(traj, "niqe early stop", min_delta=0.05, patience=3) == 0
    assert ws.select(traj, "last", min_delta=0.05, patience=3) == 4
    assert ws.select(traj, "oracle (min LPIPS vs HR)", min_delta=0.05, patience=3) == 4
    assert ws.select(traj, "min bp_l1", min_delta=0.05, patience=3) == 4


def test_niqe_replay_stops_on_the_plateau_like_the_loop(ws) -> None:
    # falls by 0.3, then three decreases < 0.05: the loop stops at step 200 and keeps step 200's
    # weights (the best so far); later snapshots are never reached
    traj = _traj([0.40, 0.39, 0.38, 0.37, 0.36, 0.30], [4.0, 3.7, 3.69, 3.68, 3.67, 1.0], [1] * 6)
    assert ws.select(traj, "niqe early stop", min_delta=0.05, patience=3) == 4


def test_budgeted_rules_only_see_the_product_schedule(ws) -> None:
    assert ws.PRODUCT_STEPS == 100  # the CPU default; the rules below are written for it
    # NIQE rises by 0.2 at step 50 and 0.4 at step 100 while LPIPS falls; step 150 is past the budget
    traj = _traj([0.40, 0.38, 0.36, 0.30], [4.0, 4.2, 4.4, 3.0], [1] * 4)
    kw = {"min_delta": 0.05, "patience": 3}
    assert ws.select(traj, "niqe early stop, 100 steps", **kw) == 0
    assert ws.select(traj, "niqe early stop", **kw) == 3
    assert ws.select(traj, "last, 100 steps", **kw) == 2
    # the backbone competes with its NIQE plus the margin t: adapted weights within t win, the best NIQE first
    assert ws.select(traj, "niqe early stop, backbone +0.1, 100 steps", **kw) == 0
    assert ws.select(traj, "niqe early stop, backbone +0.25, 100 steps", **kw) == 1
    assert ws.select(traj, "niqe early stop, backbone +0.5, 100 steps", **kw) == 1
    assert ws.select(_traj([0.40, 0.38, 0.36], [4.0, 4.4, 4.3], [1] * 3),
                     "niqe early stop, backbone +0.5, 100 steps", **kw) == 2
    with pytest.raises(ValueError, match="needs a snapshot at step 100"):
        ws.select(traj[:2], "last, 100 steps", **kw)
    with pytest.raises(ValueError, match="unknown rule"):
        ws.select(traj, "median niqe", **kw)


def test_resummarise_rewrites_a_result_file_with_every_rule(ws, tmp_path: Path) -> None:
    import json

    run = {"seed": 0, "wall_s": 1.0, "scoring_s": 1.0, "kernel": {"sigma_x": 1.0, "sigma_y": 1.0},
           "trajectory": _traj([0.40, 0.30, 0.45], [4.0, 4.3, 3.9], [3.0, 2.0, 2.5])}
    result = {"machine": "m", "commit": "c", "started": "s", "seeds": [0],
              "config": {"stop_min_delta": 0.05, "stop_patience": 3, "prox_mu": 1e-4, "lambda_perceptual": 1.0,
                         "steps": 100, "eval_every": 50},
              "groups": {"g": {"runs": [run]}}, "summary": {"old rule": {}}}
    path = tmp_path / "weight_selection_x.json"
    path.write_text(json.dumps(result))
    assert ws.main(["--resummarise", str(path)]) == 0
    rewritten = json.loads(path.read_text())
    assert list(rewritten["summary"]) == list(ws.RULES)
    assert rewritten["summary"]["last, 100 steps"]["mean_dlpips"] == pytest.approx(0.05)
    row = "| niqe early stop, backbone +0.5, 100 steps | +0.0500 (100) | +0.0500 | +0.0500 | -0.100 |"
    assert row in path.with_suffix(".md").read_text()


def test_summary_reports_each_rule_against_the_backbone(ws) -> None:
    run = {"seed": 0, "trajectory": _traj([0.40, 0.30, 0.45], [4.0, 4.3, 3.9], [3.0, 2.0, 2.5])}
    result = {"config": {"stop_min_delta": 0.05, "stop_patience": 3},
              "groups": {"g": {"runs": [run]}, "h": {"runs": [dict(run, seed=1)]}}}
    summary = ws.summarise(result)
    assert summary["oracle (min LPIPS vs HR)"]["mean_dlpips"] == pytest.approx(-0.10)
    assert summary["min bp_l1"]["groups"]["g"] == {"dlpips": pytest.approx(-0.10), "dpsnr_y": 1.0,
                                                   "dniqe": pytest.approx(0.3), "steps": [50]}
    assert summary["min niqe"]["mean_dniqe"] == pytest.approx(-0.1)
    assert summary["min niqe"]["worst_group_dlpips"] == pytest.approx(0.05)
    assert summary["last"]["mean_dlpips"] == pytest.approx(0.05)
    corr = ws.rank_correlations(result)
    assert corr["bp_l1"] == pytest.approx(0.5) and corr["niqe"] == pytest.approx(-1.0)


def test_weight_drift_is_the_proximal_terms_sum_of_squares(ws) -> None:
    import torch

    start = {"a": torch.zeros(2, 2), "b": torch.ones(3)}
    moved = {"a": torch.full((2, 2), 0.5), "b": torch.tensor([1.0, 3.0, 1.0])}
    assert ws.weight_drift(moved, start) == pytest.approx(4 * 0.25 + 4.0)
    assert ws.weight_drift(start, start) == 0.0


def test_trajectory_plot_draws_every_group_of_the_files(ws, tmp_path: Path) -> None:
    import json

    pytest.importorskip("matplotlib")
    cv2 = pytest.importorskip("cv2")
    run = {"seed": 0, "trajectory": _traj([0.40, 0.30, 0.45], [4.0, 4.3, 3.9], [3.0, 2.0, 2.5])}
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"groups": {f"g{name}": {"runs": [run]}, "empty": {"runs": []}}}))
        files.append(path)
    out = tmp_path / "plots" / "t.png"
    ws.plot_trajectories(files, out)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0]  # two columns of panels (the empty group has none)
    assert image.std() > 10  # something was drawn


def test_results_name_the_commit_and_say_when_the_tree_was_modified(ws) -> None:
    import re
    import subprocess

    commit = ws.aq._commit()
    assert re.fullmatch(r"[0-9a-f]{7,}(\+uncommitted changes)?|unknown", commit), commit
    if commit != "unknown":
        dirty = subprocess.run(["git", "-C", str(BENCHMARKS.parent), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        assert commit.endswith("+uncommitted changes") == bool(dirty)


def test_snapshot_scorer_scores_tail_and_full_snapshots_alike(ws) -> None:
    """A tail-only snapshot (CPU schedule) runs the cached front and the tail; an all-layer one (GPU
    schedule) runs the whole network on the scorer's device. Equal weights must score equally, and a
    changed weight must change the scores."""
    import numpy as np
    import torch

    from adassr.adapt.archs.rrdbnet import RRDBNet

    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=3, num_grow_ch=4).eval()
    rng = np.random.default_rng(0)
    lrs = {n: rng.random((24, 28, 3), dtype=np.float32) for n in ("a", "b")}
    hrs = {n: rng.random((96, 112, 3), dtype=np.float32) for n in ("a", "b")}
    from adassr.adapt.degradation import gaussian_kernel

    kernel = gaussian_kernel(1.6, 1.2, 0.3, scale=4)

    def fake_lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # a CPU metric, as LPIPS is
        assert x.device.type == "cpu" and y.device.type == "cpu"
        return (x - y).abs().mean().reshape(1)

    scorer = ws.SnapshotScorer(model, lrs, hrs, kernel, fake_lpips, tail_blocks=1, device="cpu")
    params = dict(model.named_parameters())
    tail = {k: v.detach().clone() for k, v in params.items() if k in scorer.tail_names}
    full = {k: v.detach().clone() for k, v in params.items()}
    assert set(tail) < set(full)
    by_tail, by_full = scorer(tail), scorer(full)
    assert by_tail.keys() == {"lpips", "psnr_y", "bp_l1", "ival_l1", "ival_lpips", "neg_detail"}
    for key, value in by_tail.items():
        assert by_full[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    front = next(k for k in full if k not in scorer.tail_names)
    moved = scorer({**full, front: full[front] + 0.05})
    assert moved["bp_l1"] != pytest.approx(by_full["bp_l1"], rel=1e-6)


def test_device_cuda_without_a_gpu_is_a_usage_error(ws, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    with pytest.raises(SystemExit) as exc:
        ws.main(["--device", "cuda", "--groups", "dev-noisy"])
    assert exc.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_fewer_steps_than_the_cpu_schedule_are_refused_before_any_work(ws, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main(["--groups", "dev-noisy", "--steps", "50"])
    assert exc.value.code == 2 and "--steps must be at least 100" in capsys.readouterr().err
